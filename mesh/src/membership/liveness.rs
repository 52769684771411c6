//! Which peers are alive, judged from their gossip heartbeats on this node's own clock. Pure:
//! no IO, table-tested.
//!
//! # The rule
//!
//! Every node's heartbeat counter grows while it gossips, and gossip carries it to every peer
//! about once per gossip interval. A peer is **gone** once this observer has seen its heartbeat
//! stand still for `failure_detection` plus one gossip interval: the gossip interval is the
//! normal gap between two heartbeats, so silence starts when the next one is overdue. That
//! makes the two promises hold whatever the network does in between:
//!
//! - a peer silent for less than `failure_detection` is never dropped (a paused process, a
//!   starved one, lost datagrams: nothing but silence counts);
//! - a dead peer is dropped within about `failure_detection` plus two gossip intervals of its
//!   last heartbeat.
//!
//! A peer seen for the first time is **pending** until its heartbeat advances once, so a long
//! dead node that peers still gossip about is never reported as a member. A gone peer whose
//! heartbeat advances again (it was paused for longer than the detection time, say) is live
//! again.
//!
//! # Stalls of the observer
//!
//! Silence is measured on the observer's *live clock*, not on the wall clock: each observation
//! advances it by the time since the previous one, but by at most one gossip interval. When this
//! process is paused or starved, the observations come late, and the time it lost is not counted
//! as silence of its peers: after a stall of any length a peer has gained at most one gossip
//! interval of silence, and the gossip that waited in the socket meanwhile gets processed before
//! anyone is judged.

use std::{collections::HashMap, hash::Hash, time::Duration};

use tokio::time::Instant;

/// Whether a peer is alive, as this observer judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Seen, but its heartbeat has not advanced yet.
    Pending,
    /// Its heartbeat advanced within the limit.
    Live,
    /// Its heartbeat stood still for the limit.
    Gone,
}

/// A change of a peer's status, as [`Liveness::observe`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change<K> {
    /// The peer's heartbeat advanced for the first time, or again after it was gone.
    Live(K),
    /// The peer's heartbeat stood still for the limit.
    Gone {
        peer: K,
        /// How long it stood still, on the live clock.
        silence: Duration,
    },
}

/// The liveness of every peer this observer knows about.
#[derive(Debug)]
pub(crate) struct Liveness<K> {
    /// How long a heartbeat may stand still before its peer is gone: the failure detection
    /// time plus one gossip interval.
    limit: Duration,
    /// The most one observation adds to the live clock (one gossip interval).
    max_step: Duration,
    /// This observer's live time: the wall time of its observations minus what its own stalls
    /// lost.
    clock: Duration,
    /// The wall time of the previous observation.
    observed_at: Option<Instant>,
    /// The wall time the live clock did not count, in total.
    stalled: Duration,
    /// Counts observations; a peer not seen in the latest one is forgotten.
    observations: u64,
    peers: HashMap<K, Peer>,
}

#[derive(Debug)]
struct Peer {
    /// The observation that last saw it.
    seen_in: u64,
    heartbeat: u64,
    /// The live clock when the heartbeat last advanced (or was first seen).
    advanced_at: Duration,
    status: Status,
}

impl<K: Clone + Eq + Hash> Liveness<K> {
    /// A detector that drops a peer whose heartbeat stood still for `failure_detection` plus
    /// one `gossip_interval`.
    pub(crate) fn new(failure_detection: Duration, gossip_interval: Duration) -> Self {
        Self {
            limit: failure_detection + gossip_interval,
            max_step: gossip_interval,
            clock: Duration::ZERO,
            observed_at: None,
            stalled: Duration::ZERO,
            observations: 0,
            peers: HashMap::new(),
        }
    }

    /// Takes in every peer's heartbeat as of `now` and reports whose status changed. Peers not
    /// among `heartbeats` are forgotten (gossip no longer knows them); a forgotten peer seen again
    /// starts over as pending.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        heartbeats: impl IntoIterator<Item = (K, u64)>,
    ) -> Vec<Change<K>> {
        if let Some(previous) = self.observed_at {
            let elapsed = now.saturating_duration_since(previous);
            let counted = elapsed.min(self.max_step);
            self.clock += counted;
            self.stalled += elapsed - counted;
        }
        self.observed_at = Some(now);

        self.observations += 1;
        let mut changes = Vec::new();
        for (key, heartbeat) in heartbeats {
            match self.peers.get_mut(&key) {
                Some(peer) => {
                    peer.seen_in = self.observations;
                    if heartbeat > peer.heartbeat {
                        peer.heartbeat = heartbeat;
                        peer.advanced_at = self.clock;
                        if peer.status != Status::Live {
                            peer.status = Status::Live;
                            changes.push(Change::Live(key));
                        }
                    }
                }
                None => {
                    self.peers.insert(
                        key,
                        Peer {
                            seen_in: self.observations,
                            heartbeat,
                            advanced_at: self.clock,
                            status: Status::Pending,
                        },
                    );
                }
            }
        }
        let observation = self.observations;
        self.peers.retain(|_, peer| peer.seen_in == observation);

        for (key, peer) in &mut self.peers {
            let silence = self.clock - peer.advanced_at;
            if peer.status == Status::Live && silence >= self.limit {
                peer.status = Status::Gone;
                changes.push(Change::Gone {
                    peer: key.clone(),
                    silence,
                });
            }
        }
        changes
    }

    /// A peer's status; `None` for a peer not seen in the last observation.
    pub(crate) fn status(&self, peer: &K) -> Option<Status> {
        self.peers.get(peer).map(|p| p.status)
    }

    /// How long a peer's heartbeat has stood still, on the live clock.
    pub(crate) fn silence(&self, peer: &K) -> Option<Duration> {
        self.peers.get(peer).map(|p| self.clock - p.advanced_at)
    }

    /// The wall time between observations that the live clock did not count: how long this
    /// observer itself stalled, in total.
    pub(crate) fn stalled(&self) -> Duration {
        self.stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DETECTION: Duration = Duration::from_millis(2000);
    const GOSSIP: Duration = Duration::from_millis(100);
    const TICK: Duration = Duration::from_millis(50);

    /// One observation: when (ms since the start) and the heartbeats seen then.
    type Step = (u64, Vec<(&'static str, u64)>);

    /// Runs the observations; returns the changes, each with the time it happened (ms).
    fn run(steps: &[Step]) -> Vec<(u64, String)> {
        let start = Instant::now();
        let mut liveness = Liveness::new(DETECTION, GOSSIP);
        let mut log = Vec::new();
        for (at, heartbeats) in steps {
            let now = start + Duration::from_millis(*at);
            for change in liveness.observe(now, heartbeats.iter().copied()) {
                log.push(match change {
                    Change::Live(k) => (*at, format!("live {k}")),
                    Change::Gone { peer, silence } => {
                        (*at, format!("gone {peer} after {}", silence.as_millis()))
                    }
                });
            }
        }
        log
    }

    /// Observations every `every` ms from `from` to `to` (inclusive); `heartbeats(t)` gives
    /// what is seen at time t.
    fn every(
        every: u64,
        from: u64,
        to: u64,
        heartbeats: impl Fn(u64) -> Vec<(&'static str, u64)>,
    ) -> Vec<Step> {
        (from..=to)
            .step_by(every as usize)
            .map(|t| (t, heartbeats(t)))
            .collect()
    }

    /// Observations every tick (50 ms).
    fn ticks(
        from: u64,
        to: u64,
        heartbeats: impl Fn(u64) -> Vec<(&'static str, u64)>,
    ) -> Vec<Step> {
        every(TICK.as_millis() as u64, from, to, heartbeats)
    }

    fn check(steps: Vec<Step>, expected: &[(u64, &str)]) {
        let expected: Vec<(u64, String)> =
            expected.iter().map(|&(t, s)| (t, s.to_owned())).collect();
        assert_eq!(run(&steps), expected);
    }

    #[test]
    fn a_peer_is_pending_until_its_heartbeat_advances() {
        check(vec![(0, vec![("a", 5)]), (50, vec![("a", 5)])], &[]);
        check(
            vec![(0, vec![("a", 5)]), (50, vec![("a", 6)])],
            &[(50, "live a")],
        );
        // A peer that never advances is never reported, however long it stays.
        check(ticks(0, 10_000, |_| vec![("dead", 7)]), &[]);
    }

    #[test]
    fn a_silent_peer_is_gone_after_the_detection_time_plus_one_gossip_interval() {
        // Heartbeats every 100 ms until 1000 ms, then nothing: gone at 1000 + 2000 + 100.
        let steps = ticks(0, 4000, |t| vec![("a", t.min(1000) / 100)]);
        check(steps, &[(100, "live a"), (3100, "gone a after 2100")]);
    }

    #[test]
    fn a_peer_silent_for_less_than_the_limit_is_never_gone() {
        // Stands still from 1000 ms to 3050 ms (2050 ms, under the limit of 2100 ms).
        let steps = ticks(0, 6000, |t| {
            let hb = if (1000..3050).contains(&t) {
                10
            } else {
                t / 100
            };
            vec![("a", hb)]
        });
        check(steps, &[(100, "live a")]);
    }

    #[test]
    fn a_gone_peer_that_speaks_again_is_live_again() {
        let steps = ticks(0, 5000, |t| {
            let hb = if (1000..4000).contains(&t) {
                10
            } else {
                t / 100
            };
            vec![("a", hb)]
        });
        check(
            steps,
            &[
                (100, "live a"),
                (3100, "gone a after 2100"),
                (4000, "live a"),
            ],
        );
    }

    #[test]
    fn peers_are_judged_each_on_its_own() {
        let steps = ticks(0, 4000, |t| vec![("a", t / 100), ("b", t.min(500) / 100)]);
        check(
            steps,
            &[
                (100, "live a"),
                (100, "live b"),
                (2600, "gone b after 2100"),
            ],
        );
    }

    #[test]
    fn a_forgotten_peer_starts_over_as_pending() {
        check(
            vec![
                (0, vec![("a", 1)]),
                (50, vec![("a", 2)]),
                (100, vec![]),
                (150, vec![("a", 3)]),
                (200, vec![("a", 4)]),
            ],
            &[(50, "live a"), (200, "live a")],
        );
    }

    #[test]
    fn a_heartbeat_that_goes_back_is_not_a_sign_of_life() {
        let steps = ticks(0, 3000, |t| vec![("a", if t < 500 { t / 100 } else { 1 })]);
        check(steps, &[(100, "live a"), (2500, "gone a after 2100")]);
    }

    #[test]
    fn the_observers_own_stall_is_not_silence_of_its_peers() {
        // The observer is paused from 1000 ms to 6000 ms: nothing observed meanwhile. The
        // gossip that waited in its socket is processed right after it resumes (6010 ms).
        let mut steps = ticks(0, 1000, |t| vec![("a", t / 100)]);
        steps.push((6000, vec![("a", 10)]));
        steps.extend(ticks(6010, 8000, |t| vec![("a", t / 100)]));
        check(steps.clone(), &[(100, "live a")]);

        let start = Instant::now();
        let mut liveness = Liveness::new(DETECTION, GOSSIP);
        for (at, heartbeats) in steps {
            liveness.observe(start + Duration::from_millis(at), heartbeats);
        }
        assert_eq!(liveness.status(&"a"), Some(Status::Live));
        assert_eq!(liveness.stalled(), Duration::from_millis(4900));
    }

    #[test]
    fn a_peer_that_died_while_the_observer_stalled_is_gone_after_the_limit_of_live_time() {
        // The peer dies at 1000 ms; the observer stalls from 1500 ms to 4500 ms. Live time
        // since the last heartbeat: 500 ms before the stall, 100 ms for it, then 1500 ms more.
        let mut steps = ticks(0, 1500, |t| vec![("a", t.min(1000) / 100)]);
        steps.extend(ticks(4500, 7000, |_| vec![("a", 10)]));
        check(steps, &[(100, "live a"), (6000, "gone a after 2100")]);
    }

    #[test]
    fn a_starved_observer_counts_only_its_own_live_time() {
        // The observer gets to run once every 250 ms; each time counts for one gossip interval
        // (100 ms). The peer dies at 1000 ms: 2100 ms of live time later is 21 observations.
        let steps = every(250, 0, 8000, |t| vec![("a", t.min(1000) / 100)]);
        check(steps, &[(250, "live a"), (6250, "gone a after 2100")]);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_measured_on_tokio_time() {
        let mut liveness = Liveness::new(DETECTION, GOSSIP);
        let mut heartbeat = 0;
        for _ in 0..10 {
            heartbeat += 1;
            liveness.observe(Instant::now(), [("a", heartbeat)]);
            tokio::time::sleep(TICK).await;
        }
        let mut changes = Vec::new();
        while changes.is_empty() {
            tokio::time::sleep(TICK).await;
            changes = liveness.observe(Instant::now(), [("a", heartbeat)]);
        }
        assert_eq!(
            changes,
            [Change::Gone {
                peer: "a",
                silence: DETECTION + GOSSIP
            }]
        );
        assert_eq!(liveness.silence(&"a"), Some(DETECTION + GOSSIP));
    }
}
