//! The gateway's shared state: what every connection, the gRPC service and drain use. The jobs
//! that act on it live in their own files: `request.rs` (the request path), `effects.rs` (what
//! a logic response asks of a session, login included), `drain.rs`, `service.rs`.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::AtomicI64},
    time::Duration,
};

use bytes::Bytes;
use mesh::{Mesh, NodeId, NodeKind};
use proto::logic::v1::SessionEnded;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    conn::ConnLimits,
    hold::ResumeSettings,
    link::Links,
    majority::Majority,
    moving::Forwards,
    router::Router,
    session::{Session, SessionLimits},
    sessions::Sessions,
    token::Tokens,
};

/// Settings of the request path.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) max_frame: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) session: SessionLimits,
    pub(crate) conn: ConnLimits,
    pub(crate) fallback_routes: HashSet<u32>,
    pub(crate) max_sessions: u64,
    /// See `Config::redirect_margin`.
    pub(crate) redirect_margin: f64,
    /// Kernel send buffer of each client socket (bytes).
    pub(crate) socket_send_buffer: usize,
}

/// Metric handles of the per-request and per-push paths, resolved once (a labelled
/// `counter!` looks its series up in the registry on every call).
pub(crate) struct HotMetrics {
    pub(crate) requests_ok: ::metrics::Counter,
    pub(crate) request_duration: ::metrics::Histogram,
    pub(crate) pushes: ::metrics::Counter,
}

impl HotMetrics {
    fn new() -> Self {
        Self {
            requests_ok: ::metrics::counter!(crate::metrics::REQUESTS, "status" => "ok"),
            request_duration: ::metrics::histogram!(crate::metrics::REQUEST_DURATION),
            pushes: ::metrics::counter!(crate::metrics::PUSHES),
        }
    }
}

/// State shared by every connection of this gateway.
pub(crate) struct Gateway {
    pub(crate) node_id: NodeId,
    pub(crate) mesh: Mesh,
    pub(crate) sessions: Sessions,
    pub(crate) router: Router,
    pub(crate) limits: Limits,
    /// Connection tasks, link tasks, logins.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the gateway stops (after its drain): link tasks end.
    pub(crate) stopping: CancellationToken,
    /// The links to logic nodes.
    pub(crate) links: Links,
    pub(crate) metrics: HotMetrics,
    /// Makes and checks resume tokens.
    pub(crate) tokens: Tokens,
    pub(crate) resume: ResumeSettings,
    /// Sessions held without a connection.
    pub(crate) detached: AtomicI64,
    /// Users whose session moved away from here, and the queues forwarding their pushes.
    pub(crate) forwards: Forwards,
    /// Fencing, kept capacity, lost gateways.
    pub(crate) majority: Majority,
}

/// Time a gateway has to answer a call forwarded from another gateway.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

impl Gateway {
    pub(crate) fn new(
        mesh: Mesh,
        limits: Limits,
        tokens: Tokens,
        resume: ResumeSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id: mesh.cluster().self_id(),
            mesh,
            sessions: Sessions::default(),
            router: Router::default(),
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
            links: Links::default(),
            metrics: HotMetrics::new(),
            tokens,
            resume,
            detached: AtomicI64::new(0),
            forwards: Forwards::default(),
            majority: Majority::new(limits.max_sessions),
            limits,
        })
    }

    /// True while this gateway takes new clients.
    pub(crate) fn accepts_new_work(&self) -> bool {
        self.mesh.cluster().accepts_new_work()
    }

    /// Publishes the session count in this node's load figures.
    pub(crate) fn sessions_changed(&self, count: usize) {
        ::metrics::gauge!(crate::metrics::SESSIONS).set(count as f64);
        self.mesh
            .cluster()
            .update_load(|load| load.sessions = count as u64);
    }

    /// Every other gateway of the cluster.
    pub(crate) fn other_gateways(&self) -> Vec<NodeId> {
        self.mesh.cluster().peers_of_kind(NodeKind::GATEWAY)
    }

    /// Tells bound and watching logic nodes that a session closed, each down its link after
    /// the session's last calls to it.
    pub(crate) fn session_closed(self: &Arc<Self>, session: &Session, reason: &str) {
        let (user, nodes) = {
            let state = session.state();
            let mut nodes: Vec<NodeId> = state.bindings.iter().map(|b| b.node.clone()).collect();
            nodes.extend(state.watchers.iter().cloned());
            nodes.sort();
            nodes.dedup();
            (state.user.clone(), nodes)
        };
        if nodes.is_empty() {
            return;
        }
        let closed = SessionEnded {
            session_id: session.id,
            user_id: user.as_deref().unwrap_or_default().to_owned(),
            gateway_node: self.node_id.to_string(),
            reason: reason.to_owned(),
        };
        for node in nodes {
            self.send_closed(&node, closed.clone());
        }
    }

    /// True when a push of `payload` fits the client frame limit (the largest sequence
    /// number and route included).
    pub(crate) fn push_fits(&self, route: u32, payload: &Bytes) -> bool {
        wire::envelope::push_len(route, payload.len()) <= self.limits.max_frame
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
