//! The gateway's shared state and the request path: route a client request to a logic node,
//! apply what the response asks (login, "me" bindings, attributes), answer the client.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures::future::join_all;
use mesh::{Mesh, NodeId, NodeKind};
use proto::{
    gateway::v1::{KickRequest, gateway_client::GatewayClient},
    logic::v1::{BindMode, LogicRequest, LogicResponse, SessionEnded, logic_client::LogicClient},
};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wire::{Envelope, ErrorCode, envelope};

use crate::{
    binding::Binding,
    router::{self, Decision, Router},
    session::{Session, SessionLimits},
    sessions::Sessions,
};

/// Settings of the request path.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) max_frame: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) session: SessionLimits,
    pub(crate) fallback_routes: HashSet<u32>,
    pub(crate) max_sessions: u64,
}

/// Metric handles of the per-request and per-push paths, resolved once (a labelled
/// `counter!` looks its series up in the registry on every call).
pub(crate) struct HotMetrics {
    requests_ok: ::metrics::Counter,
    request_duration: ::metrics::Histogram,
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
    /// Connection tasks and session-closed notifications.
    pub(crate) tracker: TaskTracker,
    pub(crate) metrics: HotMetrics,
}

impl Gateway {
    pub(crate) fn new(mesh: Mesh, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            node_id: mesh.cluster().self_id(),
            mesh,
            sessions: Sessions::default(),
            router: Router::default(),
            limits,
            tracker: TaskTracker::new(),
            metrics: HotMetrics::new(),
        })
    }

    pub(crate) fn is_draining(&self) -> bool {
        !self.mesh.cluster().is_self_online()
    }

    /// Publishes the session count in this node's load figures.
    pub(crate) fn sessions_changed(&self, count: usize) {
        ::metrics::gauge!(crate::metrics::SESSIONS).set(count as f64);
        self.mesh
            .cluster()
            .update_load(|load| load.sessions = count as u64);
    }

    /// Handles one request envelope and returns the response to send.
    pub(crate) async fn handle_request(
        &self,
        session: &Arc<Session>,
        request: Envelope,
    ) -> Envelope {
        let started = Instant::now();
        let (msg_id, route) = (request.msg_id, request.route);
        let response = match self.route_request(session, request).await {
            Ok(response) => response,
            Err((code, text)) => envelope::error(msg_id, route, code, text),
        };
        if response.status == 0 {
            self.metrics.requests_ok.increment(1);
        } else {
            let status = wire::envelope::code_name(response.status);
            ::metrics::counter!(crate::metrics::REQUESTS, "status" => status).increment(1);
        }
        self.metrics
            .request_duration
            .record(started.elapsed().as_secs_f64());
        response
    }

    async fn route_request(
        &self,
        session: &Arc<Session>,
        request: Envelope,
    ) -> Result<Envelope, Refusal> {
        let fallback = self.limits.fallback_routes.contains(&request.route);
        let Target {
            node,
            bound,
            public,
            user,
            attributes,
        } = self.decide(session, request.route, fallback)?;
        let call = LogicRequest {
            route: request.route,
            payload: request.payload,
            session_id: session.id,
            user_id: user.as_deref().unwrap_or_default().to_owned(),
            gateway_node: self.node_id.to_string(),
            attributes,
        };
        // Only a bound request on a fallback route may need the request a second time.
        let retry = (bound && fallback).then(|| call.clone());
        let (node, public, reply) = match self.call_logic(&node, call).await {
            Ok(reply) => (node, public, reply),
            Err(UpstreamError::Timeout) => {
                return Err((
                    ErrorCode::UpstreamTimeout,
                    "the server did not answer in time",
                ));
            }
            Err(UpstreamError::Failed(reason)) if bound => {
                warn!(session = session.id, %node, %reason, "bound node unreachable; dropping the binding");
                session.drop_bindings(std::slice::from_ref(&node));
                let Some(call) = retry else {
                    return Err((
                        ErrorCode::BoundNodeUnavailable,
                        "the node this user is bound to is unreachable",
                    ));
                };
                // The route falls back to normal selection: try once more, unbound.
                let target = self.decide(session, request.route, fallback)?;
                match self.call_logic(&target.node, call).await {
                    Ok(reply) => (target.node, target.public, reply),
                    Err(UpstreamError::Timeout) => {
                        return Err((
                            ErrorCode::UpstreamTimeout,
                            "the server did not answer in time",
                        ));
                    }
                    Err(UpstreamError::Failed(_)) => {
                        return Err((
                            ErrorCode::UpstreamFailed,
                            "the server for this route failed",
                        ));
                    }
                }
            }
            Err(UpstreamError::Failed(reason)) => {
                warn!(session = session.id, %node, %reason, "logic node unreachable");
                return Err((
                    ErrorCode::UpstreamFailed,
                    "the server for this route failed",
                ));
            }
        };
        self.apply_effects(session, &node, public, &reply).await;
        Ok(envelope::response(
            request.msg_id,
            request.route,
            reply.status,
            reply.error,
            reply.payload,
        ))
    }

    /// Where the session's request for `route` goes, with what the logic node needs to know.
    fn decide(&self, session: &Session, route: u32, fallback: bool) -> Result<Target, Refusal> {
        let table = self.router.table(self.mesh.cluster().members());
        let (user, attributes, decision, gone) = {
            let state = session.state();
            let (decision, gone) = router::decide(
                &table,
                route,
                state.user.is_some(),
                &state.bindings,
                fallback,
                |n| self.router.load(n),
                |id| self.router.is_healthy(id),
                |n| rand::random_range(0..n),
            );
            (state.user.clone(), state.attributes.clone(), decision, gone)
        };
        if !gone.is_empty() {
            info!(session = session.id, nodes = ?gone, "dropping bindings to nodes that are gone");
            session.drop_bindings(&gone);
        }
        match decision {
            Decision::Send { node, bound } => {
                let public = table
                    .members
                    .get(&node)
                    .is_some_and(|n| n.serves_publicly(route));
                Ok(Target {
                    node,
                    bound,
                    public,
                    user,
                    attributes,
                })
            }
            Decision::Refuse(code, text) => Err((code, text)),
        }
    }

    async fn call_logic(
        &self,
        node: &NodeId,
        request: LogicRequest,
    ) -> Result<LogicResponse, UpstreamError> {
        let channel = self
            .mesh
            .peer_channel(node)
            .map_err(|e| UpstreamError::Failed(e.to_string()))?;
        let counter = self.router.counter(node);
        counter.fetch_add(1, Ordering::Relaxed);
        let timeout = self.limits.request_timeout;
        let mut call = tonic::Request::new(request);
        call.set_timeout(timeout);
        let result = tokio::time::timeout(timeout, LogicClient::new(channel).handle(call)).await;
        counter.fetch_sub(1, Ordering::Relaxed);
        match result {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                Err(UpstreamError::Timeout)
            }
            Ok(Err(status)) => {
                self.router.suspect(node);
                Err(UpstreamError::Failed(status.message().to_owned()))
            }
            Ok(Ok(reply)) => {
                self.router.answered(node);
                Ok(reply.into_inner())
            }
        }
    }

    /// Applies what a logic response asks of the session, before the client sees it.
    async fn apply_effects(
        &self,
        session: &Arc<Session>,
        node: &NodeId,
        public: bool,
        reply: &LogicResponse,
    ) {
        if reply.status != 0 {
            return;
        }
        if !reply.login_user_id.is_empty() {
            if public {
                self.login(session, &reply.login_user_id).await;
            } else {
                warn!(session = session.id, %node, "ignoring a login from a route that is not public");
            }
        }
        if let Some(change) = &reply.bind_me {
            let mode = BindMode::try_from(change.mode).unwrap_or(BindMode::Unspecified);
            let ids: Vec<NodeId> = change
                .node_ids
                .iter()
                .map(|id| NodeId::new(id.as_str()))
                .collect();
            match self.bindings_for(mode, &ids) {
                Ok(bindings) => session.bind(mode, bindings),
                Err(unknown) => {
                    warn!(session = session.id, %node, ?unknown, "ignoring a bind to unknown nodes")
                }
            }
        }
        if !reply.set_attributes.is_empty() {
            session.set_attributes(reply.set_attributes.clone());
        }
        if reply.watch_session {
            session.state().watchers.insert(node.clone());
        }
    }

    /// Bindings for `ids`, checked against the cluster: Cover and Append need member nodes;
    /// Remove and Clear take any id (a gone node can be unbound).
    pub(crate) fn bindings_for(
        &self,
        mode: BindMode,
        ids: &[NodeId],
    ) -> Result<Vec<Binding>, Vec<NodeId>> {
        let table = self.router.table(self.mesh.cluster().members());
        let mut bindings = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for id in ids {
            match table.routes_of(id) {
                Some(routes) => bindings.push(Binding {
                    node: id.clone(),
                    routes,
                }),
                None if matches!(mode, BindMode::Remove | BindMode::Clear) => {
                    bindings.push(Binding {
                        node: id.clone(),
                        routes: Arc::from(Vec::new()),
                    });
                }
                None => unknown.push(id.clone()),
            }
        }
        if unknown.is_empty() {
            Ok(bindings)
        } else {
            Err(unknown)
        }
    }

    /// Attaches a user to a session; an older session of the same user is kicked, here or on
    /// any other gateway, before the login response goes out.
    async fn login(&self, session: &Arc<Session>, user: &str) {
        let now = now_ms();
        let user: Arc<str> = Arc::from(user);
        if let Some(displaced) = self.sessions.login(session, user.clone(), now) {
            displaced.kick(
                ErrorCode::LoggedInElsewhere,
                "logged in from another connection",
            );
        }
        session.span.record("user", &*user);
        info!(session = session.id, user = %user, "logged in");
        let kick = KickRequest {
            user_ids: vec![user.to_string()],
            code: ErrorCode::LoggedInElsewhere as u32,
            reason: "logged in from another connection".into(),
            local_only: true,
            logged_in_before_ms: now,
        };
        let others = self.other_gateways();
        let calls = others.iter().map(|gateway| {
            let kick = kick.clone();
            async move {
                let channel = self.mesh.peer_channel(gateway).ok()?;
                let mut client = GatewayClient::new(channel);
                tokio::time::timeout(Duration::from_secs(2), client.kick(kick))
                    .await
                    .ok()?
                    .ok()
            }
        });
        for (gateway, answered) in others.iter().zip(join_all(calls).await) {
            if answered.is_none() {
                warn!(%gateway, user = %user, "could not ask a gateway to kick an older session");
            }
        }
    }

    /// Every other gateway of the cluster.
    pub(crate) fn other_gateways(&self) -> Vec<NodeId> {
        self.mesh
            .cluster()
            .nodes_by_kind(NodeKind::GATEWAY)
            .into_iter()
            .map(|n| n.id)
            .filter(|id| *id != self.node_id)
            .collect()
    }

    /// Tells bound and watching logic nodes that a session closed (in the background).
    pub(crate) fn session_closed(&self, session: &Session) {
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
            reason: session.end_reason(),
        };
        for node in nodes {
            let Ok(channel) = self.mesh.peer_channel(&node) else {
                continue;
            };
            let closed = closed.clone();
            self.tracker.spawn(async move {
                let mut client = LogicClient::new(channel);
                match tokio::time::timeout(Duration::from_secs(2), client.session_closed(closed))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) => debug!(%node, %status, "session-closed notice failed"),
                    Err(_) => debug!(%node, "session-closed notice timed out"),
                }
            });
        }
    }

    /// Drain on shutdown: tell every client this gateway is going offline, wait for them to
    /// leave within `grace`, then close the rest with `SERVER_DRAINING`.
    pub(crate) async fn drain(&self, grace: Duration) {
        let sessions = self.sessions.all();
        info!(
            sessions = sessions.len(),
            ?grace,
            "draining: telling clients this gateway is going offline"
        );
        let offline = envelope::offline(grace.as_millis() as u64);
        for session in &sessions {
            session.send(&offline);
        }
        let deadline = Instant::now() + grace.saturating_sub(Duration::from_millis(500));
        while self.sessions.len() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let remaining = self.sessions.all();
        if !remaining.is_empty() {
            info!(
                sessions = remaining.len(),
                "closing sessions still open at the end of the drain"
            );
        }
        for session in remaining {
            session.kick(ErrorCode::ServerDraining, "gateway shutting down");
        }
        let wait_until = Instant::now() + Duration::from_millis(400);
        while self.sessions.len() > 0 && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pushes to the users connected here; returns per-user success.
    pub(crate) fn push_local(
        &self,
        users: &[String],
        route: u32,
        payload: &Bytes,
    ) -> HashMap<String, bool> {
        users
            .iter()
            .map(|user| (user.clone(), self.push_one(user, route, payload)))
            .collect()
    }

    /// Pushes to one user if connected here.
    pub(crate) fn push_one(&self, user: &str, route: u32, payload: &Bytes) -> bool {
        let delivered = self
            .sessions
            .by_user(user)
            .is_some_and(|s| s.push(route, payload.clone()));
        if delivered {
            self.metrics.pushes.increment(1);
        }
        delivered
    }
}

/// An error the gateway answers itself: the client-visible code and text.
type Refusal = (ErrorCode, &'static str);

/// Where a request goes, and what the logic node is told about the session.
struct Target {
    node: NodeId,
    /// Chosen by a binding (not by load).
    bound: bool,
    /// The node serves the route as public (so a login in its reply counts).
    public: bool,
    user: Option<Arc<str>>,
    attributes: HashMap<String, String>,
}

/// Why a call to a logic node failed.
#[derive(Debug)]
enum UpstreamError {
    Timeout,
    Failed(String),
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
