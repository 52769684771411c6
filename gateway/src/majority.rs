//! What the cluster's majority means for a gateway (see the `quorum` crate):
//!
//! - **Fenced** (cut off from the majority of the regular nodes): every client is disconnected
//!   with `PARTITIONED` and its session ended here (a resume elsewhere finds the majority's
//!   side; nothing here survives to be logged in twice after the heal), and new connections
//!   are refused with the same code until the gateway is back.
//! - **Kept capacity**: while regular gateways of the configuration are gone, the gateways
//!   that serve raise their capacity to cover the missing ones' (their share, rounded up),
//!   and lower it back when they return; a lowered limit only turns new clients away.
//! - **Logged in once**: a login waits while a gateway that may still hold the user neither
//!   answered nor is certainly fenced (see [`Gateway::wait_for_unanswered_gateways`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh::{NodeEvent, NodeId, NodeKind, QuorumState, membership::Members};
use quorum::{Member, Quorum, is_gateway};
use tracing::{info, warn};
use wire::ErrorCode;

use crate::gateway::Gateway;

/// What a fenced gateway tells its clients.
const PARTITIONED_TEXT: &str =
    "this gateway is cut off from the majority of the cluster; connect to another gateway";

/// The majority's view as this gateway keeps it.
#[derive(Debug)]
pub(crate) struct Majority {
    /// Sessions accepted now: `--max-sessions`, raised while regular gateways are gone.
    capacity: AtomicU64,
    /// How long a node out of touch with the majority takes to fence itself.
    fence_after: Mutex<Duration>,
    /// Gateways that left the member list recently, and when.
    lost: Mutex<HashMap<NodeId, Instant>>,
}

impl Majority {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            capacity: AtomicU64::new(capacity),
            fence_after: Mutex::new(quorum::Settings::new("", false).fence_after),
            lost: Mutex::new(HashMap::new()),
        }
    }

    /// Sessions this gateway accepts now (0: unlimited).
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }
}

/// The capacity a serving gateway keeps: its own (`base`) plus an equal share, rounded up, of
/// the capacity of the configuration's gateways that are not members now, shared among the
/// online gateways. Unlimited stays unlimited; a gateway that does not serve keeps its own.
pub(crate) fn kept_capacity(
    base: u64,
    me: &NodeId,
    regular: &[Member],
    members: &Members,
    state: QuorumState,
) -> u64 {
    if base == 0 || state != QuorumState::Serving {
        return base;
    }
    let missing: u64 = regular
        .iter()
        .filter(|m| is_gateway(m) && m.id != me.as_str())
        .filter(|m| !members.contains_key(&NodeId::new(m.id.as_str())))
        .map(|m| m.capacity)
        .sum();
    let online = members
        .values()
        .filter(|n| n.kind.as_str() == NodeKind::GATEWAY && n.is_online())
        .count()
        .max(1) as u64;
    base + missing.div_ceil(online)
}

impl Gateway {
    /// Follows the quorum and the member list: fences, unfences, keeps the capacity.
    pub(crate) async fn follow_quorum(self: Arc<Self>, quorum: Quorum) {
        *lock(&self.majority.fence_after) = quorum.fence_after();
        let mut status = quorum.watch();
        let mut members = self.mesh.cluster().watch_members();
        let mut events = self.mesh.cluster().subscribe();
        let mut fenced = false;
        loop {
            let (state, regular) = {
                let status = status.borrow_and_update();
                (status.state, status.regular.clone())
            };
            if state == QuorumState::Fenced && !fenced {
                self.disconnect_everyone();
            } else if state != QuorumState::Fenced && fenced {
                info!("back in touch with the majority: taking clients again");
            }
            fenced = state == QuorumState::Fenced;
            let members_now = members.borrow_and_update().clone();
            let capacity = kept_capacity(
                self.limits.max_sessions,
                &self.node_id,
                &regular,
                &members_now,
                state,
            );
            let before = self.majority.capacity.swap(capacity, Ordering::Relaxed);
            if before != capacity {
                info!(
                    capacity,
                    base = self.limits.max_sessions,
                    "capacity changed: regular gateways are gone or back"
                );
                self.mesh
                    .cluster()
                    .update_load(|load| load.capacity = capacity);
            }
            tokio::select! {
                _ = self.stopping.cancelled() => return,
                changed = status.changed() => if changed.is_err() { return },
                changed = members.changed() => if changed.is_err() { return },
                event = events.recv() => {
                    // One that drained left after handing its sessions on; one that went
                    // silent while online may be serving on the other side of a partition.
                    if let Ok(NodeEvent::Gone(node)) = event
                        && node.kind.as_str() == NodeKind::GATEWAY
                        && node.state == mesh::NodeState::Online
                    {
                        lock(&self.majority.lost).insert(node.id.clone(), Instant::now());
                    }
                }
            }
        }
    }

    /// Fenced: every client is disconnected with `PARTITIONED`; held sessions end.
    fn disconnect_everyone(self: &Arc<Self>) {
        let sessions = self.sessions.all();
        warn!(
            sessions = sessions.len(),
            "fenced: disconnecting every client"
        );
        for session in sessions {
            self.kick_session(&session, ErrorCode::Partitioned as u32, PARTITIONED_TEXT);
        }
        ::metrics::counter!(crate::metrics::FENCES).increment(1);
    }

    /// True while this gateway is fenced.
    pub(crate) fn is_fenced(&self) -> bool {
        self.mesh.cluster().is_fenced()
    }

    /// A login's kick reached every other gateway but `unanswered` of them: when the cluster
    /// keeps a majority, waits until those (and gateways lost from the member list lately)
    /// are certainly fenced, so the user is never logged in on two serving gateways at once.
    /// Returns how long it waited.
    pub(crate) async fn wait_for_unanswered_gateways(&self, unanswered: usize) -> Duration {
        if self.mesh.cluster().quorum() != QuorumState::Serving {
            return Duration::ZERO;
        }
        let fence_after = *lock(&self.majority.fence_after);
        let now = Instant::now();
        // A gateway that does not answer is out of touch with us now, so with the majority
        // (of which we are part) no later than now.
        let mut until = (unanswered > 0).then(|| now + fence_after);
        {
            let mut lost = lock(&self.majority.lost);
            lost.retain(|_, at| *at + fence_after > now);
            for at in lost.values() {
                until = until.max(Some(*at + fence_after));
            }
        }
        let Some(until) = until else {
            return Duration::ZERO;
        };
        let wait = until.saturating_duration_since(now);
        tokio::time::sleep(wait).await;
        wait
    }

    /// The text sent to clients refused while fenced.
    pub(crate) fn partitioned_text(&self) -> &'static str {
        PARTITIONED_TEXT
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use mesh::{NodeInfo, cluster::new_record};

    use super::*;

    fn member(id: &str, kind: &str, capacity: u64) -> Member {
        Member {
            id: id.into(),
            kind: kind.into(),
            capacity,
            ..Member::default()
        }
    }

    fn gateway(id: &str) -> NodeInfo {
        let addr = "127.0.0.1:1".parse().expect("literal");
        new_record(NodeId::new(id), NodeKind::new("gateway"), addr, addr)
    }

    fn members(ids: &[&str]) -> Members {
        ids.iter()
            .map(|id| (NodeId::new(*id), gateway(id)))
            .collect()
    }

    #[test]
    fn serving_gateways_cover_the_capacity_of_regular_gateways_that_are_gone() {
        let me = NodeId::new("g1");
        let config = [
            member("g1", "gateway", 100),
            member("g2", "gateway", 100),
            member("g3", "gateway", 101),
            member("r1", "room", 0),
        ];
        let serving = QuorumState::Serving;
        // Everyone here: own capacity.
        let all = members(&["g1", "g2", "g3", "r1"]);
        assert_eq!(kept_capacity(100, &me, &config, &all, serving), 100);
        // g3 gone: its 101 shared by two, rounded up.
        let two = members(&["g1", "g2"]);
        assert_eq!(kept_capacity(100, &me, &config, &two, serving), 151);
        // g2 and g3 gone: all of it here.
        let alone = members(&["g1"]);
        assert_eq!(kept_capacity(100, &me, &config, &alone, serving), 301);
        // A temporary gateway shares the load too (it is online), but is not covered.
        let with_temp = members(&["g1", "g2", "t1"]);
        assert_eq!(kept_capacity(100, &me, &config, &with_temp, serving), 134);
        // Unlimited stays unlimited; fenced or unmanaged: own capacity.
        assert_eq!(kept_capacity(0, &me, &config, &two, serving), 0);
        assert_eq!(
            kept_capacity(100, &me, &config, &two, QuorumState::Fenced),
            100
        );
        assert_eq!(
            kept_capacity(100, &me, &config, &two, QuorumState::Unmanaged),
            100
        );
    }
}
