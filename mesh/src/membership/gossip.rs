//! The embedded membership backend: chitchat gossip over UDP, with our own failure detection.
//!
//! Each node gossips its record as key/values. A node that stops gracefully publishes
//! `state=left` before it stops gossiping, so peers drop it at once. A node that dies is dropped
//! once its heartbeat has stood still for the failure detection time (plus one gossip interval)
//! on the observer's own live clock; the rule and why it holds under pauses, starvation and
//! packet loss are in `liveness`.
//!
//! # Why not chitchat's failure detector
//!
//! Chitchat decides liveness with a phi-accrual detector: phi is the silence divided by the mean
//! interval between heartbeat updates. Heartbeats reach a node through several peers, several
//! times per gossip round, so that mean is a small and varying fraction of the gossip interval
//! and no threshold maps to a fixed time: with a 2 s detection time, a node paused for 0.8 s
//! was dropped, and dead ones after 0.4-0.8 s. `extra_liveness_predicate` cannot help: it sees a
//! node's state, not time, and only runs when chitchat's live set changes.
//!
//! So chitchat keeps doing what it does well, dissemination (scuttlebutt anti-entropy: records
//! and heartbeats), and a follower task here reads every node's heartbeat each half gossip
//! interval and judges it with [`Liveness`]. Chitchat's detector is set far out of the way (see
//! [`failure_detector_config`]): it only steers gossip away from long-dead nodes and lets
//! chitchat forget them an hour later.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion, transport::UdpTransport,
};
use tokio::{
    sync::{Mutex, Notify, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{
    Members, Membership,
    liveness::{Change, Liveness, Status},
};
use crate::{
    metrics,
    node::{NodeId, NodeInfo},
    record::{self, Decoded, RecordError},
};

/// Settings of the gossip backend.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Nodes with another cluster id ignore each other.
    pub cluster_id: String,
    /// Gossip addresses of seed nodes (`host:port`); empty for the first node of a cluster.
    pub seeds: Vec<String>,
    /// How often each node gossips with a few peers.
    pub gossip_interval: Duration,
    /// How long a peer may stay silent before this node drops it. A peer silent for less is
    /// never dropped; a dead one is dropped within this time plus about two gossip intervals
    /// of its last heartbeat. Time this node itself spends paused or starved does not count.
    pub failure_detection: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            cluster_id: "switchyard".into(),
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(100),
            failure_detection: Duration::from_secs(2),
        }
    }
}

/// Membership by chitchat gossip.
pub struct GossipMembership {
    handle: Mutex<Option<ChitchatHandle>>,
    chitchat: Arc<Mutex<Chitchat>>,
    members: watch::Receiver<Arc<Members>>,
    joined: Arc<AtomicBool>,
    /// Wakes the follower when this node published a change, so its own record shows at once.
    published: Arc<Notify>,
    /// Stops the follower; cancelled by `leave`, `abort` and drop.
    stop: CancellationToken,
    tracker: TaskTracker,
    gossip_interval: Duration,
    gossip_addr: SocketAddr,
}

fn free_udp_port(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind(listen)?.local_addr()
}

impl GossipMembership {
    /// Starts gossiping on `listen` as node `me`. Port 0 picks a free port.
    pub async fn start(
        config: &GossipConfig,
        me: &NodeInfo,
        listen: SocketAddr,
    ) -> std::io::Result<Self> {
        // chitchat binds its socket itself: with port 0, find a free port first, and try again
        // should another process take it in between.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let gossip_addr = if listen.port() == 0 {
                free_udp_port(listen)?
            } else {
                listen
            };
            match Self::start_at(config, me, gossip_addr).await {
                Err(error) if listen.port() == 0 && attempts < 5 => {
                    debug!(%error, "gossip port was taken; trying another");
                }
                result => return result,
            }
        }
    }

    /// The gossip address peers use for this node.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    async fn start_at(
        config: &GossipConfig,
        me: &NodeInfo,
        gossip_addr: SocketAddr,
    ) -> std::io::Result<Self> {
        let advertise = advertised(gossip_addr, me.grpc_addr);
        let generation = me.started_at_ms;
        let chitchat_id = ChitchatId::new(me.id.as_str(), generation, advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: gossip_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: failure_detector_config(config),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let initial = record::encode(me)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let handle = chitchat::spawn_chitchat(chitchat_config, initial, &UdpTransport)
            .await
            .map_err(std::io::Error::other)?;
        let chitchat = handle.chitchat();
        let joined = Arc::new(AtomicBool::new(config.seeds.is_empty()));
        let (members_tx, members) = watch::channel(Arc::new(Members::new()));
        let published = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let follower = Follower {
            me: chitchat_id,
            gossip_interval: config.gossip_interval,
            failure_detection: config.failure_detection,
            liveness: Liveness::new(config.failure_detection, config.gossip_interval),
            records: HashMap::new(),
            members: members_tx,
            joined: joined.clone(),
        };
        tracker.spawn(follower.run(chitchat.clone(), published.clone(), stop.clone()));
        info!(node = %me.id, %gossip_addr, seeds = ?config.seeds, "gossip membership started");
        Ok(Self {
            handle: Mutex::new(Some(handle)),
            chitchat,
            members,
            joined,
            published,
            stop,
            tracker,
            gossip_interval: config.gossip_interval,
            gossip_addr: advertise,
        })
    }
}

impl Drop for GossipMembership {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Chitchat's phi-accrual detector, set out of the way of ours: it no longer decides
/// membership, it only picks gossip targets (live nodes first) and lets chitchat forget a node
/// an hour after it marked it dead. Phi is the silence over the mean interval between heartbeat
/// updates; updates arrive several times per gossip round (a mean of a sixth of the interval
/// is typical), so a threshold of 16 × (limit / interval) marks a node dead a few times later
/// than [`Liveness`] drops it, and never before.
fn failure_detector_config(config: &GossipConfig) -> FailureDetectorConfig {
    let limit = config.failure_detection + config.gossip_interval;
    FailureDetectorConfig {
        phi_threshold: 16.0 * limit.as_secs_f64() / config.gossip_interval.as_secs_f64(),
        sampling_window_size: 1000,
        max_interval: limit,
        initial_interval: config.gossip_interval,
        dead_node_grace_period: Duration::from_secs(3600),
    }
}

/// The gossip address peers should use: the socket's own, unless it is bound to an unspecified
/// address, in which case the host of the advertised gRPC address stands in.
fn advertised(gossip: SocketAddr, grpc: SocketAddr) -> SocketAddr {
    if gossip.ip().is_unspecified() {
        SocketAddr::new(grpc.ip(), gossip.port())
    } else {
        gossip
    }
}

/// A node's record as last read from gossip, decoded once per version.
struct Record {
    version: u64,
    decoded: Result<Decoded, RecordError>,
}

/// Why a node is not a member (any more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Departure {
    /// It announced that it left.
    Left,
    /// Its heartbeat stood still for the limit (this long, on the live clock).
    Silent(Duration),
    /// Its record does not decode.
    Unreadable,
    /// Gossip no longer knows it (or knows it but has not heard it speak yet).
    Forgotten,
}

impl Departure {
    fn reason(self) -> &'static str {
        match self {
            Departure::Left => "left",
            Departure::Silent(_) => "silent",
            Departure::Unreadable => "unreadable",
            Departure::Forgotten => "forgotten",
        }
    }
}

/// The task that turns chitchat's node states into the member list: it reads every node's
/// heartbeat and record each half gossip interval (and whenever a record changed), judges
/// liveness, and publishes the members when they changed.
struct Follower {
    me: ChitchatId,
    gossip_interval: Duration,
    failure_detection: Duration,
    liveness: Liveness<ChitchatId>,
    records: HashMap<ChitchatId, Record>,
    members: watch::Sender<Arc<Members>>,
    joined: Arc<AtomicBool>,
}

impl Follower {
    async fn run(
        mut self,
        chitchat: Arc<Mutex<Chitchat>>,
        published: Arc<Notify>,
        stop: CancellationToken,
    ) {
        // Chitchat's watcher fires when a record changes (not on heartbeats): it only makes
        // record changes show sooner than the next tick.
        let mut records_changed = chitchat.lock().await.live_nodes_watcher();
        let mut ticks = tokio::time::interval(self.gossip_interval / 2);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
                () = published.notified() => {}
                changed = records_changed.changed() => if changed.is_err() { return },
            }
            let changed = {
                let chitchat = chitchat.lock().await;
                self.observe(chitchat.node_states(), Instant::now())
            };
            if changed {
                self.publish();
            }
        }
    }

    /// Reads every node's heartbeat and record; true when anything that decides membership
    /// changed.
    fn observe(&mut self, states: &BTreeMap<ChitchatId, NodeState>, now: Instant) -> bool {
        let mut changed = false;
        let mut heartbeats = Vec::with_capacity(states.len());
        for (id, state) in states {
            if *id != self.me {
                heartbeats.push((id.clone(), u64::from(state.heartbeat())));
            }
            let version = state.max_version();
            if self.records.get(id).is_some_and(|r| r.version == version) {
                continue;
            }
            if state.num_key_values() == 0 {
                // Heard of through a digest; its record has not arrived yet.
                continue;
            }
            let decoded = record::decode(&id.node_id, |k| state.get(k));
            if let Err(error) = &decoded
                && self.records.get(id).is_none_or(|r| r.decoded.is_ok())
            {
                warn!(peer = %id.node_id, %error, "ignoring a node with an unreadable record");
            }
            self.records.insert(id.clone(), Record { version, decoded });
            changed = true;
        }
        let known = self.records.len();
        self.records.retain(|id, _| states.contains_key(id));
        changed |= self.records.len() != known;

        let stalled_before = self.liveness.stalled();
        let changes = self.liveness.observe(now, heartbeats);
        let stalled = self.liveness.stalled() - stalled_before;
        if !stalled.is_zero() {
            ::metrics::histogram!(metrics::GOSSIP_STALL).record(stalled.as_secs_f64());
            if stalled >= self.failure_detection / 4 {
                warn!(
                    node = %self.me.node_id,
                    stalled_ms = stalled.as_millis(),
                    "this node stalled; the time it lost does not count as silence of its peers"
                );
            } else {
                debug!(
                    node = %self.me.node_id,
                    stalled_ms = stalled.as_millis(),
                    "gossip follower ran late"
                );
            }
        }
        for change in &changes {
            match change {
                Change::Live(id) => debug!(
                    peer = %id.node_id,
                    generation = id.generation_id,
                    "heartbeat advancing"
                ),
                Change::Gone { peer, silence } => debug!(
                    peer = %peer.node_id,
                    generation = peer.generation_id,
                    silence_ms = silence.as_millis(),
                    "heartbeat stood still"
                ),
            }
        }
        changed || !changes.is_empty()
    }

    /// Publishes the members when they changed; counts and logs the nodes dropped.
    fn publish(&mut self) {
        let (members, departures) = self.members();
        let previous = self.members.borrow().clone();
        if *previous == members {
            return;
        }
        for (id, node) in previous.iter() {
            if members.contains_key(id) || id.as_str() == &*self.me.node_id {
                continue;
            }
            let departure = departures.get(id).copied().unwrap_or(Departure::Forgotten);
            ::metrics::counter!(metrics::NODES_GONE, "reason" => departure.reason()).increment(1);
            match departure {
                Departure::Silent(silence) => warn!(
                    peer = %id,
                    kind = %node.kind,
                    silence_ms = silence.as_millis(),
                    limit_ms = (self.failure_detection + self.gossip_interval).as_millis(),
                    "node gone: its heartbeat stood still for the failure detection time"
                ),
                Departure::Left => debug!(peer = %id, kind = %node.kind, "node gone: it left"),
                other => warn!(peer = %id, kind = %node.kind, reason = other.reason(), "node gone"),
            }
        }
        if members.keys().any(|id| id.as_str() != &*self.me.node_id) {
            self.joined.store(true, Ordering::Relaxed);
        }
        debug!(members = members.len(), "membership changed");
        self.members.send_replace(Arc::new(members));
    }

    /// The members as the records and liveness stand, and why each other known node is not one.
    fn members(&self) -> (Members, HashMap<NodeId, Departure>) {
        // A node id may appear with several generations while a restarted node's old one ages
        // out: its newest live generation speaks for it, else its newest one.
        let mut chosen: BTreeMap<&str, (&ChitchatId, bool)> = BTreeMap::new();
        for id in self.records.keys() {
            if id.node_id == self.me.node_id && *id != self.me {
                // An earlier life of this node: this one speaks for it.
                continue;
            }
            let live = *id == self.me || self.liveness.status(id) == Some(Status::Live);
            let entry = chosen.entry(&*id.node_id).or_insert((id, live));
            if (live, id.generation_id) > (entry.1, entry.0.generation_id) {
                *entry = (id, live);
            }
        }
        let mut members = Members::new();
        let mut departures = HashMap::new();
        for (node_id, (id, live)) in chosen {
            let departure = match &self.records[id].decoded {
                Ok(Decoded::Member(info)) if live => {
                    members.insert(info.id.clone(), NodeInfo::clone(info));
                    continue;
                }
                Ok(Decoded::Member(_)) => match self.liveness.status(id) {
                    Some(Status::Gone) => {
                        Departure::Silent(self.liveness.silence(id).unwrap_or_default())
                    }
                    _ => Departure::Forgotten,
                },
                Ok(Decoded::Left) => Departure::Left,
                Err(_) => Departure::Unreadable,
            };
            departures.insert(NodeId::new(node_id), departure);
        }
        (members, departures)
    }
}

#[async_trait]
impl Membership for GossipMembership {
    async fn publish(&self, record: &NodeInfo) {
        {
            let mut chitchat = self.chitchat.lock().await;
            let state = chitchat.self_node_state();
            for (key, value) in record::encode(record) {
                state.set(key, value);
            }
        }
        self.published.notify_one();
    }

    fn members(&self) -> watch::Receiver<Arc<Members>> {
        self.members.clone()
    }

    fn is_joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    async fn leave(&self) {
        {
            let mut chitchat = self.chitchat.lock().await;
            chitchat
                .self_node_state()
                .set(record::key::STATE, record::STATE_LEFT);
        }
        self.published.notify_one();
        // Two gossip rounds carry the tombstone to peers before we go silent.
        tokio::time::sleep(self.gossip_interval * 3).await;
        self.abort().await;
    }

    async fn abort(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(handle) = self.handle.lock().await.take()
            && let Err(error) = handle.shutdown().await
        {
            warn!(%error, "gossip did not shut down cleanly");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cluster::new_record, node::NodeKind};

    const DETECTION: Duration = Duration::from_millis(400);
    const GOSSIP: Duration = Duration::from_millis(20);

    async fn start(id: &str, seeds: &[SocketAddr]) -> GossipMembership {
        let config = GossipConfig {
            cluster_id: "gossip-test".into(),
            seeds: seeds.iter().map(ToString::to_string).collect(),
            gossip_interval: GOSSIP,
            failure_detection: DETECTION,
        };
        let addr = "127.0.0.1:1".parse().expect("literal");
        let me = new_record(NodeId::new(id), NodeKind::new("node"), addr, addr);
        GossipMembership::start(&config, &me, "127.0.0.1:0".parse().expect("literal"))
            .await
            .expect("gossip starts")
    }

    /// Waits until `members` satisfies `wanted`; returns when it did.
    async fn wait_until(
        members: &mut watch::Receiver<Arc<Members>>,
        wanted: impl Fn(&Members) -> bool,
    ) -> Instant {
        tokio::time::timeout(Duration::from_secs(10), members.wait_for(|m| wanted(m)))
            .await
            .expect("in time")
            .expect("membership running");
        Instant::now()
    }

    fn has(id: &str) -> impl Fn(&Members) -> bool {
        let id = NodeId::new(id);
        move |m| m.contains_key(&id)
    }

    #[tokio::test]
    async fn an_aborted_node_is_dropped_after_the_detection_time_and_a_leaving_one_at_once() {
        let a = start("a", &[]).await;
        let b = start("b", &[a.gossip_addr()]).await;
        let c = start("c", &[a.gossip_addr()]).await;
        for node in [&b, &c] {
            wait_until(&mut node.members(), |m| m.len() == 3).await;
            assert!(node.is_joined());
        }
        let mut members = a.members();
        wait_until(&mut members, |m| m.len() == 3).await;

        let aborted_at = Instant::now();
        b.abort().await;
        let gone_at = wait_until(&mut members, |m| !has("b")(m)).await;
        let detection = gone_at - aborted_at;
        assert!(detection >= DETECTION, "dropped after {detection:?}");
        assert!(detection < DETECTION * 4, "dropped after {detection:?}");

        let leaving = tokio::spawn(async move {
            c.leave().await;
            c
        });
        let left_at = Instant::now();
        let gone_at = wait_until(&mut members, |m| !has("c")(m)).await;
        assert!(
            gone_at - left_at < DETECTION,
            "a leaving node is dropped at once"
        );
        let c = leaving.await.expect("leave");
        assert!(c.tracker.is_empty(), "the follower ended with the leave");
        assert!(b.tracker.is_empty(), "the follower ended with the abort");
        a.abort().await;
    }

    #[tokio::test]
    async fn dropping_the_membership_stops_its_follower() {
        let a = start("a", &[]).await;
        let tracker = a.tracker.clone();
        tracker.close();
        assert_eq!(tracker.len(), 1);
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the follower ends when the membership is dropped");
    }
}
