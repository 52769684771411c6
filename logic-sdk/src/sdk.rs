//! [`Sdk`]: what a handler or a background task of a logic server can do to the rest of the
//! cluster: push to users, bind them, kick them, find them, and call other logic nodes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::future::join_all;
use mesh::{Cluster, Mesh, MeshError, NodeId, NodeInfo, NodeKind};
use proto::gateway::v1::{self as pb, gateway_client::GatewayClient};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::reply::BindMode;

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

/// Pushes queued for one gateway before new ones are dropped (and counted).
const PIPELINE_DEPTH: usize = 4096;

/// Metric: pushes dropped because a gateway's queue was full (counter, by gateway).
pub const PUSHES_DROPPED: &str = "switchyard_sdk_pushes_dropped_total";

/// One ordered push queue per gateway, each drained by its own task.
#[derive(Default)]
struct Pipelines {
    queues: Mutex<HashMap<NodeId, mpsc::Sender<pb::PushRequest>>>,
}

/// A cloneable handle on the cluster for logic code.
#[derive(Clone)]
pub struct Sdk {
    mesh: Mesh,
    gateway_timeout: Duration,
    pipelines: Arc<Pipelines>,
}

impl Sdk {
    pub(crate) fn new(mesh: Mesh) -> Self {
        Self {
            mesh,
            gateway_timeout: Duration::from_secs(3),
            pipelines: Arc::default(),
        }
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
        let Ok(gateways) = self.gateways() else {
            return 0;
        };
        let mut dropped = 0;
        for (gateway, user_ids) in group_by_gateway(recipients, &gateways) {
            let request = pb::PushRequest {
                user_ids,
                route,
                payload: payload.clone(),
                local_only: true,
            };
            if self.pipeline(&gateway).try_send(request).is_err() {
                dropped += 1;
                warn!(%gateway, route, "push queue to gateway is full; push dropped");
                metrics::counter!(PUSHES_DROPPED, "gateway" => gateway.to_string()).increment(1);
            }
        }
        dropped
    }

    fn pipeline(&self, gateway: &NodeId) -> mpsc::Sender<pb::PushRequest> {
        let mut queues = self
            .pipelines
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(queue) = queues.get(gateway).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
        queues.retain(|_, queue| !queue.is_closed());
        queues.insert(gateway.clone(), tx.clone());
        tokio::spawn(drain_pipeline(self.clone(), gateway.clone(), rx));
        tx
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

    /// Pushes one message to users, one call per gateway whatever the number of users.
    pub async fn push(
        &self,
        recipients: impl IntoIterator<Item = Recipient>,
        route: u32,
        payload: impl Into<Bytes>,
    ) -> Result<GatewayReport, SdkError> {
        let payload = payload.into();
        let gateways = self.gateways()?;
        let recipients: Vec<Recipient> = recipients.into_iter().collect();
        let all_users = recipients.iter().map(|r| r.user_id.clone()).collect();
        let per_gateway = group_by_gateway(recipients, &gateways);
        let calls = per_gateway.into_iter().map(|(gateway, user_ids)| {
            let request = pb::PushRequest {
                user_ids,
                route,
                payload: payload.clone(),
                local_only: true,
            };
            self.call_gateway(gateway, move |mut client| async move {
                client.push(request).await
            })
        });
        Ok(merge(all_users, join_all(calls).await))
    }

    /// Changes the bindings of users wherever they are connected; returns once the change is
    /// in force. Cover and Append require member nodes that are online.
    pub async fn bind(
        &self,
        mode: BindMode,
        user_ids: &[String],
        nodes: &[NodeId],
    ) -> Result<GatewayReport, SdkError> {
        if matches!(mode, BindMode::Cover | BindMode::Append) {
            check_bind_targets(self.cluster(), nodes)?;
        }
        let request = pb::BindRequest {
            mode: mode.to_proto() as i32,
            user_ids: user_ids.to_vec(),
            node_ids: nodes.iter().map(ToString::to_string).collect(),
            local_only: true,
        };
        self.everywhere(user_ids, move |mut client| {
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
        self.everywhere(user_ids, move |mut client| {
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
        let calls = self.gateways()?.into_iter().map(|gateway| {
            let request = request.clone();
            let mesh = self.mesh.clone();
            let timeout = self.gateway_timeout;
            async move {
                let client = GatewayClient::new(mesh.peer_channel(&gateway).ok()?);
                let reply = tokio::time::timeout(timeout, client.clone().presence(request))
                    .await
                    .ok()?
                    .ok()?;
                Some(reply.into_inner().users)
            }
        });
        let mut found = BTreeMap::new();
        for users in join_all(calls).await.into_iter().flatten() {
            for user in users.into_iter().filter(|u| u.online) {
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

    async fn everywhere<F, Fut>(
        &self,
        user_ids: &[String],
        call: F,
    ) -> Result<GatewayReport, SdkError>
    where
        F: Fn(GatewayClient<mesh::PeerChannel>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<pb::UserResults>, tonic::Status>>,
    {
        let calls = self
            .gateways()?
            .into_iter()
            .map(|gateway| self.call_gateway(gateway, call.clone()));
        Ok(merge(user_ids.to_vec(), join_all(calls).await))
    }

    async fn call_gateway<F, Fut>(
        &self,
        gateway: NodeId,
        call: F,
    ) -> (NodeId, Result<pb::UserResults, String>)
    where
        F: FnOnce(GatewayClient<mesh::PeerChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::UserResults>, tonic::Status>>,
    {
        let channel = match self.mesh.peer_channel(&gateway) {
            Ok(channel) => channel,
            Err(error) => return (gateway, Err(error.to_string())),
        };
        let result =
            match tokio::time::timeout(self.gateway_timeout, call(GatewayClient::new(channel)))
                .await
            {
                Err(_) => Err(format!("no answer within {:?}", self.gateway_timeout)),
                Ok(Err(status)) => Err(status.message().to_owned()),
                Ok(Ok(reply)) => Ok(reply.into_inner()),
            };
        (gateway, result)
    }
}

/// Users by the gateway to ask: their own when known, else every gateway.
fn group_by_gateway(
    recipients: impl IntoIterator<Item = Recipient>,
    gateways: &[NodeId],
) -> BTreeMap<NodeId, Vec<String>> {
    let mut per_gateway: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for recipient in recipients {
        match recipient.gateway {
            Some(gateway) if gateways.contains(&gateway) => {
                per_gateway
                    .entry(gateway)
                    .or_default()
                    .push(recipient.user_id);
            }
            _ => {
                for gateway in gateways {
                    per_gateway
                        .entry(gateway.clone())
                        .or_default()
                        .push(recipient.user_id.clone());
                }
            }
        }
    }
    per_gateway
}

/// Most pushes sent to a gateway in one batch.
const BATCH: usize = 512;

/// Sends one gateway's queued pushes in order, as batches of whatever is queued (one RPC per
/// batch, not per push). Ends when the gateway leaves the cluster.
async fn drain_pipeline(sdk: Sdk, gateway: NodeId, mut queue: mpsc::Receiver<pb::PushRequest>) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        if sdk.cluster().node(&gateway).is_none() {
            debug!(%gateway, "gateway left; dropping its push queue");
            break;
        }
        let request = pb::PushBatchRequest {
            pushes: std::mem::take(&mut batch),
        };
        let channel = match sdk.mesh.peer_channel(&gateway) {
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
    // The receiver drops here: `pipeline` sees the queue closed and starts a new one if the
    // gateway comes back.
}

/// Cover and Append targets must be online members.
pub(crate) fn check_bind_targets(cluster: &Cluster, nodes: &[NodeId]) -> Result<(), SdkError> {
    let members = cluster.members();
    let unknown: Vec<NodeId> = nodes
        .iter()
        .filter(|n| !members.contains_key(*n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(SdkError::UnknownNodes(unknown));
    }
    if let Some(draining) = nodes
        .iter()
        .find(|n| members.get(*n).is_some_and(|info| !info.is_online()))
    {
        return Err(SdkError::NodeDraining(draining.clone()));
    }
    Ok(())
}

fn merge(
    user_ids: Vec<String>,
    answers: Vec<(NodeId, Result<pb::UserResults, String>)>,
) -> GatewayReport {
    let mut report = GatewayReport::default();
    for user in user_ids {
        report.users.insert(user, UserOutcome::NotOnline);
    }
    for (gateway, answer) in answers {
        match answer {
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
            Err(error) => report.failed_gateways.push((gateway, error)),
        }
    }
    report
}
