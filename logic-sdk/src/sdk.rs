//! [`Sdk`]: what a handler or a background task of a logic server can do to the rest of the
//! cluster: push to users, bind them, kick them, find them, and call other logic nodes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::future::join_all;
use mesh::{Answer, Cluster, Mesh, MeshError, NodeId, NodeInfo, NodeKind, NotOnline};
use prost::Message;
use proto::gateway::v1::{self as pb, gateway_client::GatewayClient};
use runtime::node::Tasks;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::{
    link::Links,
    reply::{BindMode, Will},
};

/// Who a push goes to: a user, and the gateway holding them when the caller knows it (then
/// only that gateway is asked).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Recipient {
    /// The user.
    pub user_id: String,
    /// The gateway the user is connected to, if known.
    pub gateway: Option<NodeId>,
}

impl Recipient {
    /// A user on a known gateway.
    pub fn at(user_id: impl Into<String>, gateway: NodeId) -> Self {
        Self {
            user_id: user_id.into(),
            gateway: Some(gateway),
        }
    }
}

impl From<&str> for Recipient {
    fn from(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            gateway: None,
        }
    }
}

impl From<String> for Recipient {
    fn from(user_id: String) -> Self {
        Self {
            user_id,
            gateway: None,
        }
    }
}

/// What happened for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserOutcome {
    /// Done, on this gateway.
    Applied(NodeId),
    /// The user is not connected to any gateway that answered.
    NotOnline,
}

/// Per-user outcomes, and the gateways that failed to answer (their users may be
/// `NotOnline` only because their gateway did not answer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayReport {
    /// One entry per requested user.
    pub users: BTreeMap<String, UserOutcome>,
    /// Gateways that did not answer, and why.
    pub failed_gateways: Vec<(NodeId, String)>,
}

impl GatewayReport {
    /// The outcome for one user.
    pub fn outcome(&self, user_id: &str) -> Option<&UserOutcome> {
        self.users.get(user_id)
    }

    /// True when every user was reached.
    pub fn all_applied(&self) -> bool {
        self.users
            .values()
            .all(|o| matches!(o, UserOutcome::Applied(_)))
    }
}

/// Replies of a request / multiple-response call; nodes that failed are named, never dropped.
#[derive(Debug, Default)]
pub struct MultiResponse {
    /// Replies by node, in node id order.
    pub replies: Vec<(NodeInfo, Bytes)>,
    /// Nodes that failed or did not answer in time.
    pub failed: Vec<(NodeId, MeshError)>,
}

/// Why an SDK call was refused before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdkError {
    /// Binding to nodes that are not members of the cluster.
    #[error("unknown node ids: {0:?}")]
    UnknownNodes(Vec<NodeId>),
    /// Binding to a node that is draining.
    #[error("node {0} is draining and takes no new users")]
    NodeDraining(NodeId),
    /// No gateway is a member of the cluster.
    #[error("no gateway in the cluster")]
    NoGateway,
}

impl From<NotOnline> for SdkError {
    fn from(error: NotOnline) -> Self {
        match error {
            NotOnline::Unknown(nodes) => SdkError::UnknownNodes(nodes),
            NotOnline::Draining(node) => SdkError::NodeDraining(node),
        }
    }
}

/// Pushes queued for one gateway before new ones are dropped (and counted).
const PIPELINE_DEPTH: usize = 4096;

/// Metric: pushes dropped because a gateway's queue was full (counter, by gateway).
pub const PUSHES_DROPPED: &str = "switchyard_sdk_pushes_dropped_total";

/// One ordered push queue per gateway, each drained by its own task.
#[derive(Default)]
struct Pipelines {
    queues: Mutex<HashMap<NodeId, Pipeline>>,
}

/// A gateway's push queue, and how many pushes in it are not yet handed on.
#[derive(Clone)]
struct Pipeline {
    queue: mpsc::Sender<Queued>,
    pending: Arc<AtomicUsize>,
}

/// What a gateway's push queue carries.
enum Queued {
    /// A push to send.
    Push(pb::PushRequest),
    /// The acknowledgement of a user's move: after the pushes queued before it.
    MovedAck(String),
    /// Answer once every push queued before this one has been sent (or given up on).
    Flush(oneshot::Sender<()>),
}

/// Where users whose session moved to another gateway are now, as their old gateway told
/// this node; their pushes go there, whatever gateway the caller names.
#[derive(Default)]
struct Moves {
    to: Mutex<HashMap<String, (NodeId, tokio::time::Instant)>>,
}

/// How long a move is remembered (by then the app has learnt the user's new gateway from the
/// user's own requests).
const MOVE_MEMORY: Duration = Duration::from_secs(600);

impl Moves {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (NodeId, tokio::time::Instant)>> {
        self.to
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, user: String, gateway: NodeId) {
        let now = tokio::time::Instant::now();
        let mut moves = self.lock();
        if moves.len() > 1024 {
            moves.retain(|_, (_, at)| now.duration_since(*at) < MOVE_MEMORY);
        }
        moves.insert(user, (gateway, now));
    }

    /// Where `user` is now, if a move of theirs is remembered.
    fn gateway_of(&self, user: &str) -> Option<NodeId> {
        let moves = self.lock();
        if moves.is_empty() {
            return None;
        }
        moves
            .get(user)
            .filter(|(_, at)| at.elapsed() < MOVE_MEMORY)
            .map(|(gateway, _)| gateway.clone())
    }
}

/// A cloneable handle on the cluster for logic code.
#[derive(Clone)]
pub struct Sdk {
    mesh: Mesh,
    gateway_timeout: Duration,
    pipelines: Arc<Pipelines>,
    links: Arc<Links>,
    moves: Arc<Moves>,
    tasks: Tasks,
}

impl Sdk {
    pub(crate) fn new(mesh: Mesh, tasks: Tasks) -> Self {
        Self {
            mesh,
            gateway_timeout: Duration::from_secs(3),
            pipelines: Arc::default(),
            links: Arc::default(),
            moves: Arc::default(),
            tasks,
        }
    }

    /// The gateway `user` moved to, when this node heard of the move lately (a room handing
    /// its members to another server passes this on).
    pub fn moved_to(&self, user: &str) -> Option<NodeId> {
        self.moves.gateway_of(user)
    }

    /// The links gateways opened to this node.
    pub(crate) fn links(&self) -> &Links {
        &self.links
    }

    /// A user's session moved from `from` to `moved.to_gateway`: later pushes go there, and
    /// `from` is told (after the pushes already bound for it) that nothing more comes its way.
    pub(crate) fn user_moved(
        &self,
        moved: proto::logic::v1::Moved,
        from: &NodeId,
        down: &Arc<crate::link::Down>,
    ) {
        self.moves
            .record(moved.user_id.clone(), NodeId::new(moved.to_gateway));
        let pipeline = self.pipeline(from);
        if pipeline.pending.load(Ordering::Acquire) == 0 {
            down.moved_ack(moved.user_id);
            return;
        }
        pipeline.pending.fetch_add(1, Ordering::AcqRel);
        if pipeline
            .queue
            .try_send(Queued::MovedAck(moved.user_id.clone()))
            .is_err()
        {
            pipeline.pending.fetch_sub(1, Ordering::AcqRel);
            // The queue is full: the pushes in it are dropped anyway; say so now.
            down.moved_ack(moved.user_id);
        }
    }

    /// Runs a background task of this server (a room actor, a retry loop) until it ends or the
    /// node stops, after its drain; the node's shutdown waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Queues a push without waiting for it. Pushes queued for one gateway are delivered in
    /// the order they were queued, so every user sees them in that order; a slow or dead
    /// gateway delays only its own queue. Returns how many gateway queues were full (those
    /// pushes are dropped, logged and counted).
    pub fn push_ordered(
        &self,
        recipients: impl IntoIterator<Item = Recipient>,
        route: u32,
        payload: impl Into<Bytes>,
    ) -> usize {
        let payload = payload.into();
        let mut dropped = 0;
        let every_gateway = || self.gateways().unwrap_or_default();
        let grouped = group_by_gateway(recipients, every_gateway, |user| {
            self.moves.gateway_of(user)
        });
        for ((gateway, to_every_gateway), user_ids) in grouped {
            let pipeline = self.pipeline(&gateway);
            // Nothing of this gateway's queue is waiting: straight down its link (the order
            // stays: nothing queued earlier can still overtake).
            if pipeline.pending.load(Ordering::Acquire) == 0
                && let Some(link) = self.links.get(&gateway)
            {
                let delivery = proto::logic::v1::Delivery {
                    route,
                    payload: payload.clone(),
                    user_ids,
                    to_every_gateway,
                };
                if let Err(refused) = link.push(delivery) {
                    dropped += 1;
                    warn!(%gateway, route, ?refused, "push to gateway dropped: its link does not take it");
                    metrics::counter!(PUSHES_DROPPED, "gateway" => gateway.to_string())
                        .increment(1);
                }
                continue;
            }
            let request = pb::PushRequest {
                user_ids,
                route,
                payload: payload.clone(),
                local_only: true,
                to_every_gateway,
            };
            pipeline.pending.fetch_add(1, Ordering::AcqRel);
            if pipeline.queue.try_send(Queued::Push(request)).is_err() {
                pipeline.pending.fetch_sub(1, Ordering::AcqRel);
                dropped += 1;
                warn!(%gateway, route, "push queue to gateway is full; push dropped");
                metrics::counter!(PUSHES_DROPPED, "gateway" => gateway.to_string()).increment(1);
            }
        }
        dropped
    }

    /// Waits until every push queued so far with [`Sdk::push_ordered`] has been sent (or
    /// given up on): call it at the end of a drain so the last pushes leave before the node.
    pub async fn flush_pushes(&self) {
        let queues: Vec<mpsc::Sender<Queued>> = self
            .lock_pipelines()
            .values()
            .map(|p| p.queue.clone())
            .collect();
        let flushed = queues.into_iter().map(|queue| async move {
            let (done, sent) = oneshot::channel();
            if queue.send(Queued::Flush(done)).await.is_ok() {
                // A queue that ends first (its gateway left) has nothing more to send.
                let _ = sent.await;
            }
        });
        join_all(flushed).await;
        // And what went straight down the links.
        let links = self.links.all();
        let sent = links.iter().map(|link| link.sent());
        let _ = tokio::time::timeout(self.gateway_timeout, join_all(sent)).await;
    }

    fn lock_pipelines(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Pipeline>> {
        self.pipelines
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pipeline(&self, gateway: &NodeId) -> Pipeline {
        let mut queues = self.lock_pipelines();
        if let Some(pipeline) = queues.get(gateway).filter(|p| !p.queue.is_closed()) {
            return pipeline.clone();
        }
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
        let pipeline = Pipeline {
            queue: tx,
            pending: Arc::default(),
        };
        queues.retain(|_, p| !p.queue.is_closed());
        queues.insert(gateway.clone(), pipeline.clone());
        self.spawn(drain_pipeline(
            self.clone(),
            gateway.clone(),
            rx,
            pipeline.pending.clone(),
        ));
        pipeline
    }

    /// This node's mesh (register mesh handlers, send to nodes).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The cluster as this node sees it.
    pub fn cluster(&self) -> &Cluster {
        self.mesh.cluster()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.cluster().self_id()
    }

    /// Gateways lost for good: each one that went silent while online (it crashed, or a
    /// partition cut it off; a drained gateway hands its sessions on and is not reported) and
    /// is still not a member `grace` later. Its sessions never said goodbye here: a server
    /// forgets the users that gateway still holds for it (room members, queued players), as
    /// the gateway would have told it when their resume window ended. A user who came back
    /// through another gateway within the grace (and acted here) is held by that one.
    pub fn gateways_lost(&self, grace: Duration) -> mpsc::UnboundedReceiver<NodeId> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cluster = self.cluster().clone();
        let mut events = cluster.subscribe();
        let tasks = self.tasks.clone();
        self.spawn(async move {
            loop {
                let node = match events.recv().await {
                    Ok(mesh::NodeEvent::Gone(node)) => node,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if node.kind.as_str() != NodeKind::GATEWAY || node.state != mesh::NodeState::Online
                {
                    continue;
                }
                let (cluster, tx) = (cluster.clone(), tx.clone());
                tasks.spawn(async move {
                    tokio::time::sleep(grace).await;
                    if cluster.node(&node.id).is_none() {
                        warn!(gateway = %node.id, ?grace, "gateway lost: forgetting the users it held");
                        let _ = tx.send(node.id);
                    }
                });
            }
        });
        rx
    }

    /// Pushes one message to users, one call per gateway whatever the number of users: the
    /// gateways of recipients whose gateway is known, and every gateway when one is not.
    pub async fn push(
        &self,
        recipients: impl IntoIterator<Item = Recipient>,
        route: u32,
        payload: impl Into<Bytes>,
    ) -> Result<GatewayReport, SdkError> {
        let recipients: Vec<Recipient> = recipients
            .into_iter()
            .map(|mut r| {
                if let Some(moved) = self.moves.gateway_of(&r.user_id) {
                    r.gateway = Some(moved);
                }
                r
            })
            .collect();
        let named: Vec<&NodeId> = recipients
            .iter()
            .filter_map(|r| r.gateway.as_ref())
            .collect();
        let (targets, to_every_gateway) =
            push_targets(&recipients, self.gateways_knowing(&named).await?);
        let payload: Bytes = payload.into();
        let user_ids: Vec<String> = recipients.iter().map(|r| r.user_id.clone()).collect();
        // Each gateway is asked for the users it holds, or (a recipient's gateway unknown)
        // every gateway for everyone: a gateway forwards a push for a user who just moved
        // away only when the push was meant for it alone.
        let mut per_gateway: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
        for recipient in recipients {
            match recipient.gateway {
                Some(gateway) if !to_every_gateway => {
                    per_gateway
                        .entry(gateway)
                        .or_default()
                        .push(recipient.user_id);
                }
                _ => {}
            }
        }
        if to_every_gateway {
            per_gateway = targets
                .into_iter()
                .map(|gateway| (gateway, user_ids.clone()))
                .collect();
        }
        let calls = per_gateway.into_iter().map(|(gateway, users)| {
            let request = pb::PushRequest {
                user_ids: users,
                route,
                payload: payload.clone(),
                local_only: true,
                to_every_gateway,
            };
            self.mesh
                .fan_out(vec![gateway], self.gateway_timeout, move |channel| {
                    let request = request.clone();
                    async move { GatewayClient::new(channel).push(request).await }
                })
        });
        let answers = futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        Ok(merge(user_ids, answers))
    }

    /// Changes the bindings of users wherever they are connected; returns once the change is
    /// in force. Cover and Append require member nodes that are online.
    pub async fn bind(
        &self,
        mode: BindMode,
        user_ids: &[String],
        nodes: &[NodeId],
    ) -> Result<GatewayReport, SdkError> {
        self.bind_with_wills(mode, user_ids, nodes, &[]).await
    }

    /// [`Sdk::bind`], leaving `wills` for the first of `nodes` (with Cover or Append) in each
    /// user's session, as [`crate::Reply::will`] does for the requesting user: a will replaces
    /// the session's will with the same key, whichever node left it (a room moving to another
    /// server moves its members' wills with it).
    pub async fn bind_with_wills(
        &self,
        mode: BindMode,
        user_ids: &[String],
        nodes: &[NodeId],
        wills: &[Will],
    ) -> Result<GatewayReport, SdkError> {
        if matches!(mode, BindMode::Cover | BindMode::Append) {
            self.cluster().require_online(nodes)?;
        }
        let request = pb::BindRequest {
            mode: mode.to_proto() as i32,
            user_ids: user_ids.to_vec(),
            node_ids: nodes.iter().map(ToString::to_string).collect(),
            local_only: true,
            wills: wills.iter().map(Will::to_proto).collect(),
            revoke_wills: Vec::new(),
        };
        self.everywhere(user_ids, |mut client| {
            let request = request.clone();
            async move { client.bind(request).await }
        })
        .await
    }

    /// Disconnects users with a reason.
    pub async fn kick(&self, user_ids: &[String], reason: &str) -> Result<GatewayReport, SdkError> {
        let request = pb::KickRequest {
            user_ids: user_ids.to_vec(),
            code: 0,
            reason: reason.to_owned(),
            local_only: true,
            older_than: None,
        };
        self.everywhere(user_ids, |mut client| {
            let request = request.clone();
            async move { client.kick(request).await }
        })
        .await
    }

    /// Where users are connected: gateway and session id, for those online.
    pub async fn presence(
        &self,
        user_ids: &[String],
    ) -> Result<BTreeMap<String, (NodeId, u64)>, SdkError> {
        let request = pb::PresenceRequest {
            user_ids: user_ids.to_vec(),
            local_only: true,
        };
        let answers = self
            .mesh
            .fan_out(
                self.gateways_knowing(&[]).await?,
                self.gateway_timeout,
                |channel| {
                    let request = request.clone();
                    async move { GatewayClient::new(channel).presence(request).await }
                },
            )
            .await;
        let mut found = BTreeMap::new();
        // A gateway that did not answer holds nobody we can see.
        for reply in answers.into_iter().filter_map(|a| a.result.ok()) {
            for user in reply.users.into_iter().filter(|u| u.online) {
                found.insert(
                    user.user_id,
                    (NodeId::new(user.gateway_node), user.session_id),
                );
            }
        }
        Ok(found)
    }

    /// Request/response to one node by id, over the mesh.
    pub async fn call(
        &self,
        node: &NodeId,
        command: u32,
        payload: impl Into<Bytes>,
    ) -> Result<Bytes, MeshError> {
        self.mesh.request(node, command, payload).await
    }

    /// Request / multiple-response: asks every online node of `kind` at once, each within
    /// `per_node_timeout`. Nodes that fail or are slow are named in `failed`.
    pub async fn call_kind(
        &self,
        kind: &str,
        command: u32,
        payload: impl Into<Bytes>,
        per_node_timeout: Duration,
    ) -> MultiResponse {
        let payload = payload.into();
        let nodes: Vec<NodeInfo> = self
            .cluster()
            .nodes_by_kind(kind)
            .into_iter()
            .filter(NodeInfo::is_online)
            .collect();
        let calls = nodes.into_iter().map(|node| {
            let payload = payload.clone();
            async move {
                let result = self
                    .mesh
                    .request_with_timeout(&node.id, command, payload, per_node_timeout)
                    .await;
                (node, result)
            }
        });
        let mut response = MultiResponse::default();
        for (node, result) in join_all(calls).await {
            match result {
                Ok(reply) => response.replies.push((node, reply)),
                Err(error) => response.failed.push((node.id, error)),
            }
        }
        response
    }

    fn gateways(&self) -> Result<Vec<NodeId>, SdkError> {
        let gateways: Vec<NodeId> = self
            .cluster()
            .nodes_by_kind(NodeKind::GATEWAY)
            .into_iter()
            .map(|n| n.id)
            .collect();
        if gateways.is_empty() {
            return Err(SdkError::NoGateway);
        }
        Ok(gateways)
    }

    /// The gateways, once at least one is known and every gateway in `named` is: a gateway that
    /// just joined may already send requests here before gossip has shown it to this node (a
    /// node becomes a member once its heartbeat is seen to advance). Waits at most
    /// [`JOIN_WAIT`], then answers with what is known.
    async fn gateways_knowing(&self, named: &[&NodeId]) -> Result<Vec<NodeId>, SdkError> {
        let mut members = self.cluster().watch_members();
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        loop {
            let known = {
                let members = members.borrow_and_update();
                named.iter().all(|id| members.contains_key(*id))
            };
            if known && let Ok(gateways) = self.gateways() {
                return Ok(gateways);
            }
            match tokio::time::timeout_at(deadline, members.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.gateways(),
            }
        }
    }

    /// Calls every gateway with `call` and reports each user's outcome.
    async fn everywhere<F, Fut>(
        &self,
        user_ids: &[String],
        call: F,
    ) -> Result<GatewayReport, SdkError>
    where
        F: Fn(GatewayClient<mesh::PeerChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::UserResults>, tonic::Status>>,
    {
        let answers = self
            .mesh
            .fan_out(
                self.gateways_knowing(&[]).await?,
                self.gateway_timeout,
                |channel| call(GatewayClient::new(channel)),
            )
            .await;
        Ok(merge(user_ids.to_vec(), answers))
    }
}

/// The gateways a push goes to: those of the recipients when every recipient's gateway is
/// known and a member, else every gateway.
fn push_targets(recipients: &[Recipient], gateways: Vec<NodeId>) -> (Vec<NodeId>, bool) {
    let mut known = BTreeSet::new();
    for recipient in recipients {
        match &recipient.gateway {
            Some(gateway) if gateways.contains(gateway) => known.insert(gateway.clone()),
            _ => return (gateways, true),
        };
    }
    (known.into_iter().collect(), false)
}

/// Users by the gateway to ask: where they moved to when a move is remembered, else their own
/// gateway when known, else every gateway (listed only when a recipient's gateway is unknown;
/// those deliveries are marked as sent to every gateway).
fn group_by_gateway(
    recipients: impl IntoIterator<Item = Recipient>,
    every_gateway: impl FnOnce() -> Vec<NodeId>,
    moved_to: impl Fn(&str) -> Option<NodeId>,
) -> BTreeMap<(NodeId, bool), Vec<String>> {
    let mut per_gateway: BTreeMap<(NodeId, bool), Vec<String>> = BTreeMap::new();
    let mut every_gateway = Some(every_gateway);
    let mut gateways: Vec<NodeId> = Vec::new();
    for recipient in recipients {
        let gateway = moved_to(&recipient.user_id).or(recipient.gateway);
        match gateway {
            // A named gateway gets the push even before it is a member here: its pipeline
            // waits for it to appear (it sent the request that made this push).
            Some(gateway) => {
                per_gateway
                    .entry((gateway, false))
                    .or_default()
                    .push(recipient.user_id);
            }
            None => {
                if let Some(list) = every_gateway.take() {
                    gateways = list();
                }
                for gateway in &gateways {
                    per_gateway
                        .entry((gateway.clone(), true))
                        .or_default()
                        .push(recipient.user_id.clone());
                }
            }
        }
    }
    per_gateway
}

/// Longest an SDK call waits for a gateway it is asked to reach to become a member.
const JOIN_WAIT: Duration = Duration::from_secs(2);

/// Most pushes sent to a gateway in one batch.
const BATCH: usize = 512;

/// Most bytes of pushes sent to a gateway in one call: well below the 4 MiB a gRPC server
/// accepts by default, so a burst of large pushes is split instead of refused as a whole.
const BATCH_BYTES: usize = 1024 * 1024;

/// Sends one gateway's queued pushes in order, as batches of whatever is queued (one RPC per
/// batch, not per push). Ends when the gateway leaves the cluster or the node stops.
async fn drain_pipeline(
    sdk: Sdk,
    gateway: NodeId,
    mut queue: mpsc::Receiver<Queued>,
    pending: Arc<AtomicUsize>,
) {
    let mut queued = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut queued, BATCH).await > 0 {
        if sdk.gateways_knowing(&[&gateway]).await.is_err()
            || sdk.cluster().node(&gateway).is_none()
        {
            debug!(%gateway, "gateway gone (or never seen); dropping its push queue");
            break;
        }
        let mut pushes = Vec::new();
        for item in queued.drain(..) {
            match item {
                Queued::Push(push) => pushes.push(push),
                Queued::MovedAck(user) => {
                    let sent = pushes.len() + 1;
                    send_pushes(&sdk, &gateway, std::mem::take(&mut pushes)).await;
                    if let Some(link) = sdk.links.get(&gateway) {
                        link.moved_ack(user);
                    }
                    pending.fetch_sub(sent, Ordering::AcqRel);
                }
                Queued::Flush(done) => {
                    let sent = pushes.len();
                    send_pushes(&sdk, &gateway, std::mem::take(&mut pushes)).await;
                    pending.fetch_sub(sent, Ordering::AcqRel);
                    let _ = done.send(());
                }
            }
        }
        let sent = pushes.len();
        send_pushes(&sdk, &gateway, pushes).await;
        pending.fetch_sub(sent, Ordering::AcqRel);
    }
    // The receiver drops here: `pipeline` sees the queue closed and starts a new one if the
    // gateway comes back; pending flushes see their queue gone.
}

/// Sends pushes to one gateway in order: down the link the gateway opened to this node when
/// there is one, else in `PushBatch` calls of at most [`BATCH_BYTES`].
async fn send_pushes(sdk: &Sdk, gateway: &NodeId, pushes: Vec<pb::PushRequest>) {
    if pushes.is_empty() {
        return;
    }
    if let Some(link) = sdk.links.get(gateway) {
        for push in pushes {
            let delivery = proto::logic::v1::Delivery {
                route: push.route,
                payload: push.payload,
                user_ids: push.user_ids,
                to_every_gateway: push.to_every_gateway,
            };
            if let Err(refused) = link.push(delivery) {
                warn!(%gateway, ?refused, "push to gateway dropped: its link does not take it");
                metrics::counter!(PUSHES_DROPPED, "gateway" => gateway.to_string()).increment(1);
            }
        }
        return;
    }
    for pushes in batches(pushes, BATCH_BYTES) {
        let request = pb::PushBatchRequest { pushes };
        let channel = match sdk.mesh.peer_channel(gateway) {
            Ok(channel) => channel,
            Err(error) => {
                warn!(%gateway, %error, "ordered pushes dropped: gateway unreachable");
                continue;
            }
        };
        let mut client = GatewayClient::new(channel);
        match tokio::time::timeout(sdk.gateway_timeout, client.push_batch(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => warn!(%gateway, %status, "ordered pushes failed"),
            Err(_) => warn!(%gateway, "ordered pushes timed out"),
        }
    }
}

/// Splits pushes, in order, into batches of at most `max_bytes` encoded (a larger push goes
/// alone).
fn batches(pushes: Vec<pb::PushRequest>, max_bytes: usize) -> Vec<Vec<pb::PushRequest>> {
    let mut batches: Vec<Vec<pb::PushRequest>> = Vec::new();
    let mut bytes = 0;
    for push in pushes {
        let size = push.encoded_len();
        match batches.last_mut() {
            Some(batch) if bytes + size <= max_bytes => {
                batch.push(push);
                bytes += size;
            }
            _ => {
                batches.push(vec![push]);
                bytes = size;
            }
        }
    }
    batches
}

fn merge(user_ids: Vec<String>, answers: Vec<Answer<pb::UserResults>>) -> GatewayReport {
    let mut report = GatewayReport::default();
    for user in user_ids {
        report.users.insert(user, UserOutcome::NotOnline);
    }
    for Answer { node, result } in answers {
        match result {
            Ok(results) => {
                for result in results.results {
                    if result.outcome == pb::Outcome::Applied as i32 {
                        report.users.insert(
                            result.user_id,
                            UserOutcome::Applied(NodeId::new(result.gateway_node)),
                        );
                    }
                }
            }
            Err(error) => report.failed_gateways.push((node, error.to_string())),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(user: &str, bytes: usize) -> pb::PushRequest {
        pb::PushRequest {
            user_ids: vec![user.to_owned()],
            route: 1,
            payload: Bytes::from(vec![0; bytes]),
            local_only: true,
            to_every_gateway: false,
        }
    }

    fn users(batches: &[Vec<pb::PushRequest>]) -> Vec<Vec<&str>> {
        batches
            .iter()
            .map(|b| b.iter().map(|p| p.user_ids[0].as_str()).collect())
            .collect()
    }

    #[test]
    fn large_pushes_are_split_into_batches_in_order() {
        let size = push("a", 100).encoded_len();
        let check = |pushes: Vec<pb::PushRequest>, max: usize, expected: Vec<Vec<&str>>| {
            assert_eq!(users(&batches(pushes, max)), expected);
        };
        check(vec![], size, vec![]);
        check(
            vec![push("a", 100), push("b", 100), push("c", 100)],
            3 * size,
            vec![vec!["a", "b", "c"]],
        );
        check(
            vec![push("a", 100), push("b", 100), push("c", 100)],
            2 * size,
            vec![vec!["a", "b"], vec!["c"]],
        );
        // A push larger than the limit still goes, alone.
        check(
            vec![push("a", 100), push("big", 1000), push("c", 100)],
            2 * size,
            vec![vec!["a"], vec!["big"], vec!["c"]],
        );
    }

    #[test]
    fn a_push_goes_to_the_recipients_gateways_or_everywhere_when_one_is_unknown() {
        let gateways = vec![NodeId::new("g1"), NodeId::new("g2"), NodeId::new("g3")];
        let check = |recipients: Vec<Recipient>, expected: &[&str], everywhere: bool| {
            let (targets, to_every) = push_targets(&recipients, gateways.clone());
            let targets: Vec<&str> = targets.iter().map(NodeId::as_str).collect();
            assert_eq!(
                (targets, to_every),
                (expected.to_vec(), everywhere),
                "{recipients:?}"
            );
        };
        check(
            vec![
                Recipient::at("a", NodeId::new("g2")),
                Recipient::at("b", NodeId::new("g2")),
            ],
            &["g2"],
            false,
        );
        check(
            vec![
                Recipient::at("a", NodeId::new("g3")),
                Recipient::at("b", NodeId::new("g1")),
            ],
            &["g1", "g3"],
            false,
        );
        check(
            vec![Recipient::at("a", NodeId::new("g1")), Recipient::from("b")],
            &["g1", "g2", "g3"],
            true,
        );
        // A gateway that is no longer a member: the user may have moved anywhere.
        check(
            vec![Recipient::at("a", NodeId::new("gone"))],
            &["g1", "g2", "g3"],
            true,
        );
    }

    fn config(id: &str, kind: &str, seeds: &[std::net::SocketAddr]) -> runtime::NodeConfig {
        let mut config = runtime::NodeConfig::new(kind);
        config.id = NodeId::new(id);
        config.secret = "logic-sdk-test-secret".into();
        config.gossip.cluster_id = format!("sdk-unit-{}", std::process::id());
        config.gossip.seeds = seeds.iter().map(ToString::to_string).collect();
        config.gossip.gossip_interval = Duration::from_millis(50);
        config.drain_grace = Duration::from_secs(1);
        config
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn push_pipelines_stop_when_the_node_shuts_down() {
        // A node of kind gateway without the gateway service: pushes to it fail, but its
        // pipeline lives as long as nothing stops it.
        let listeners = runtime::Listeners::loopback().await.expect("bind");
        let mut gateway =
            runtime::Node::start(config("gw", NodeKind::GATEWAY, &[]), listeners, |_| {})
                .await
                .expect("gateway node starts");
        gateway.serve(|routes| routes).await.expect("serves");
        let listeners = runtime::Listeners::loopback().await.expect("bind");
        let seeds = [gateway.addrs().gossip];
        let running = crate::LogicServer::new("pusher")
            .start(config("pusher", "pusher", &seeds), listeners)
            .await
            .expect("logic server starts");
        let sdk = running.sdk.clone();
        testkit::eventually(
            "the logic node sees the gateway",
            Duration::from_secs(5),
            || sdk.gateways().is_ok(),
        )
        .await;
        sdk.push_ordered([Recipient::at("ann", NodeId::new("gw"))], 1, "hello");
        sdk.flush_pushes().await;
        let open = |sdk: &Sdk| {
            sdk.lock_pipelines()
                .values()
                .filter(|p| !p.queue.is_closed())
                .count()
        };
        assert_eq!(open(&sdk), 1, "one pipeline, to the one gateway");

        running.node.shutdown(|| async {}).await;
        assert_eq!(open(&sdk), 0, "the pipeline stopped with the node");
    }
}
