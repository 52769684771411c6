//! The cluster handle: this node's record, the members, node events and load publishing.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{broadcast, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    change::{self, NodeEvent},
    membership::{Members, Membership},
    metrics,
    node::{Load, NodeId, NodeInfo, NodeKind, NodeState, QuorumState},
};

/// How many node events a slow subscriber may fall behind before it sees `Lagged`.
const EVENT_BUFFER: usize = 1024;

/// A cloneable handle on the cluster as this node sees it.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node's record as it publishes it. `in_flight` is filled in at publish time.
    me: Mutex<NodeInfo>,
    membership: Arc<dyn Membership>,
    members: watch::Receiver<Arc<Members>>,
    events: broadcast::Sender<NodeEvent>,
    in_flight: AtomicU64,
    /// `me.quorum`, readable without the lock (0 unmanaged, 1 serving, 2 fenced).
    quorum: AtomicU8,
    /// Serialises publishes so an older record never overwrites a newer one.
    publishing: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// Publishes `me`, then follows membership: node events go to subscribers and this node's
    /// load is republished every `load_interval` when it changed. Tasks stop with `shutdown`.
    pub async fn start(
        membership: Arc<dyn Membership>,
        me: NodeInfo,
        load_interval: Duration,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let members = membership.members();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                me: Mutex::new(me),
                membership,
                members,
                events,
                in_flight: AtomicU64::new(0),
                quorum: AtomicU8::new(0),
                publishing: tokio::sync::Mutex::new(()),
            }),
        };
        cluster.publish().await;
        tracker.spawn(cluster.clone().follow_members(shutdown.clone()));
        tracker.spawn(cluster.clone().publish_load(load_interval, shutdown));
        cluster
    }

    /// This node's id.
    pub fn self_id(&self) -> NodeId {
        self.lock_me().id.clone()
    }

    /// This node's record, as last set locally.
    pub fn self_info(&self) -> NodeInfo {
        let mut me = self.lock_me().clone();
        me.load.in_flight = self.inner.in_flight.load(Ordering::Relaxed);
        me
    }

    /// The current members, this node included (online or draining; never gone).
    pub fn members(&self) -> Arc<Members> {
        self.inner.members.borrow().clone()
    }

    /// A receiver that sees every change of the member list.
    pub fn watch_members(&self) -> watch::Receiver<Arc<Members>> {
        self.inner.members.clone()
    }

    /// One member's record.
    pub fn node(&self, id: &NodeId) -> Option<NodeInfo> {
        self.inner.members.borrow().get(id).cloned()
    }

    /// A member's gRPC address, without copying its record (the per-call lookup).
    pub fn grpc_addr(&self, id: &NodeId) -> Option<std::net::SocketAddr> {
        self.inner.members.borrow().get(id).map(|n| n.grpc_addr)
    }

    /// The members of one kind, online or draining, in node id order.
    pub fn nodes_by_kind(&self, kind: &str) -> Vec<NodeInfo> {
        self.inner
            .members
            .borrow()
            .values()
            .filter(|n| n.kind.as_str() == kind)
            .cloned()
            .collect()
    }

    /// The other members of one kind (online or draining), in node id order: the targets of a
    /// fan-out from this node.
    pub fn peers_of_kind(&self, kind: &str) -> Vec<NodeId> {
        let me = self.self_id();
        self.inner
            .members
            .borrow()
            .values()
            .filter(|n| n.kind.as_str() == kind && n.id != me)
            .map(|n| n.id.clone())
            .collect()
    }

    /// Checks that every node in `ids` is an online member: the rule for anything that sends
    /// new work to a node (binding users to it, say).
    pub fn require_online(&self, ids: &[NodeId]) -> Result<(), NotOnline> {
        let members = self.inner.members.borrow();
        let unknown: Vec<NodeId> = ids
            .iter()
            .filter(|id| !members.contains_key(*id))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(NotOnline::Unknown(unknown));
        }
        match ids
            .iter()
            .find(|id| members.get(*id).is_some_and(|n| !n.is_online()))
        {
            Some(draining) => Err(NotOnline::Draining(draining.clone())),
            None => Ok(()),
        }
    }

    /// True when `id` is a member and online (not draining).
    pub fn is_node_online(&self, id: &NodeId) -> bool {
        self.inner
            .members
            .borrow()
            .get(id)
            .is_some_and(NodeInfo::is_online)
    }

    /// True while this node is online (not draining).
    pub fn is_self_online(&self) -> bool {
        self.lock_me().state == NodeState::Online
    }

    /// True when this node takes new work: new clients, rooms, placements, bindings. The one
    /// place that decides it (online: not draining, and not fenced off from the majority), so
    /// every server asks the same question the same way.
    pub fn accepts_new_work(&self) -> bool {
        self.is_self_online() && !self.is_fenced()
    }

    /// Where this node stands with the majority (lock-free: asked on every routed call).
    pub fn quorum(&self) -> QuorumState {
        match self.inner.quorum.load(Ordering::Relaxed) {
            1 => QuorumState::Serving,
            2 => QuorumState::Fenced,
            _ => QuorumState::Unmanaged,
        }
    }

    /// True when this node is cut off from the majority of the regular nodes.
    pub fn is_fenced(&self) -> bool {
        self.quorum() == QuorumState::Fenced
    }

    /// True when this node is online and part of a cluster: what `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.is_self_online() && self.inner.membership.is_joined()
    }

    /// Node events from now on: joined, went offline, load changed, gone.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    /// Changes this node's load figures; they are published within one load interval.
    /// `in_flight` is counted by [`Cluster::track_request`] and is not set here.
    pub fn update_load(&self, update: impl FnOnce(&mut Load)) {
        update(&mut self.lock_me().load);
    }

    /// Counts one request in flight until the guard drops.
    pub fn track_request(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Replaces the routes this node serves (and those callable before login) and publishes
    /// them at once.
    pub async fn set_routes(&self, mut routes: Vec<u32>, mut public_routes: Vec<u32>) {
        routes.sort_unstable();
        routes.dedup();
        public_routes.retain(|r| routes.binary_search(r).is_ok());
        public_routes.sort_unstable();
        public_routes.dedup();
        {
            let mut me = self.lock_me();
            me.routes = routes;
            me.public_routes = public_routes;
        }
        self.publish().await;
    }

    /// Marks this node offline (draining) and publishes it at once: peers stop sending new work.
    pub async fn go_offline(&self) {
        self.lock_me().state = NodeState::Offline;
        self.publish().await;
        info!(node = %self.self_id(), "node is offline: draining");
    }

    /// Publishes where this node stands with the majority (unchanged: nothing is sent).
    pub async fn set_quorum(&self, quorum: QuorumState) {
        {
            let mut me = self.lock_me();
            if me.quorum == quorum {
                return;
            }
            me.quorum = quorum;
            let code = match quorum {
                QuorumState::Unmanaged => 0,
                QuorumState::Serving => 1,
                QuorumState::Fenced => 2,
            };
            self.inner.quorum.store(code, Ordering::Relaxed);
        }
        self.publish().await;
    }

    /// Comes back online after a cancelled drain: peers send new work again.
    pub async fn go_online(&self) {
        self.lock_me().state = NodeState::Online;
        self.publish().await;
        info!(node = %self.self_id(), "node is online again");
    }

    /// Leaves the cluster: peers see this node gone as soon as gossip carries the news.
    pub async fn leave(&self) {
        self.inner.membership.leave().await;
        info!(node = %self.self_id(), "node left the cluster");
    }

    /// Stops taking part without a word, as a crashed node would: peers notice only through
    /// failure detection. For fault-injection tests.
    pub async fn abort(&self) {
        self.inner.membership.abort().await;
        warn!(node = %self.self_id(), "node aborted: it stopped gossiping without leaving");
    }

    async fn publish(&self) {
        let _order = self.inner.publishing.lock().await;
        let record = self.self_info();
        self.inner.membership.publish(&record).await;
    }

    fn lock_me(&self) -> std::sync::MutexGuard<'_, NodeInfo> {
        // A panic while holding this lock only ever interrupts a plain field assignment.
        self.inner
            .me
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn follow_members(self, shutdown: CancellationToken) {
        let mut watch = self.inner.members.clone();
        let mut known = watch.borrow_and_update().clone();
        let mut gauges = HashSet::new();
        metrics::set_member_gauges(&known, &mut gauges);
        for event in change::diff(&Members::new(), &known) {
            let _ = self.inner.events.send(event);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = watch.changed() => if changed.is_err() { return },
            }
            let next = watch.borrow_and_update().clone();
            for event in change::diff(&known, &next) {
                log_event(&event);
                // No subscriber is fine: events are for whoever listens.
                let _ = self.inner.events.send(event);
            }
            metrics::set_member_gauges(&next, &mut gauges);
            known = next;
        }
    }

    async fn publish_load(self, every: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let load = self.self_info().load;
            if last != Some(load) {
                self.publish().await;
                last = Some(load);
            }
        }
    }
}

fn log_event(event: &NodeEvent) {
    let node = event.node();
    match event {
        NodeEvent::Joined(_) => {
            info!(peer = %node.id, kind = %node.kind, addr = %node.grpc_addr, "node joined")
        }
        NodeEvent::WentOffline(_) => info!(peer = %node.id, kind = %node.kind, "node went offline"),
        NodeEvent::CameOnline(_) => {
            info!(peer = %node.id, kind = %node.kind, "node came back online")
        }
        // A node that was draining left as planned; one that was online died or was cut off.
        NodeEvent::Gone(_) if node.is_online() => {
            warn!(peer = %node.id, kind = %node.kind, "node is gone without draining (failed or unreachable)")
        }
        NodeEvent::Gone(_) => info!(peer = %node.id, kind = %node.kind, "node left the cluster"),
        NodeEvent::LoadChanged(_) | NodeEvent::Updated(_) => {}
    }
}

/// Why nodes may not be given new work: see [`Cluster::require_online`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotOnline {
    /// These ids are not members of the cluster (never seen, left, or declared dead).
    #[error("unknown node ids: {}", join(.0))]
    Unknown(Vec<NodeId>),
    /// This member is draining and takes no new work.
    #[error("node {0} is draining and takes no new work")]
    Draining(NodeId),
}

fn join(ids: &[NodeId]) -> String {
    ids.iter()
        .map(NodeId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Counts a request in flight; see [`Cluster::track_request`].
pub struct InFlight(Cluster);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds this node's first record.
pub fn new_record(
    id: NodeId,
    kind: NodeKind,
    grpc_addr: std::net::SocketAddr,
    datagram_addr: std::net::SocketAddr,
) -> NodeInfo {
    let started_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    NodeInfo {
        id,
        kind,
        grpc_addr,
        datagram_addr,
        client_addr: None,
        routes: Vec::new(),
        public_routes: Vec::new(),
        state: NodeState::Online,
        load: Load::default(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at_ms,
        admin_addr: None,
        regular: false,
        quorum: QuorumState::Unmanaged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::LocalMembership;

    #[tokio::test]
    async fn a_single_node_cluster_follows_its_own_state_and_load() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let addr = "127.0.0.1:1".parse().expect("literal");
        let me = new_record(NodeId::new("solo"), NodeKind::new("room"), addr, addr);
        let membership = Arc::new(LocalMembership::new());
        let cluster = Cluster::start(
            membership,
            me,
            Duration::from_millis(10),
            stop.clone(),
            &tracker,
        )
        .await;
        let mut events = cluster.subscribe();
        assert!(cluster.is_ready());
        assert!(cluster.is_node_online(&NodeId::new("solo")));

        let guard = cluster.track_request();
        cluster.update_load(|load| load.rooms = 3);
        loop {
            if let NodeEvent::LoadChanged(node) = events.recv().await.expect("event")
                && node.load.rooms == 3
            {
                assert_eq!(
                    node.load.in_flight, 1,
                    "requests in flight are part of the load"
                );
                break;
            }
        }
        drop(guard);

        cluster.go_offline().await;
        loop {
            if let NodeEvent::WentOffline(node) = events.recv().await.expect("event") {
                assert_eq!(node.id.as_str(), "solo");
                break;
            }
        }
        assert!(!cluster.is_self_online());
        assert!(!cluster.is_ready());
        assert_eq!(
            cluster.nodes_by_kind("room").len(),
            1,
            "a draining node is still a member"
        );
        cluster.leave().await;
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
