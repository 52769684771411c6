//! The cluster admin operations (InitCluster, RegisterNode, PurgeNode, ListNodes, ListRooms,
//! DrainNode, UndrainNode) and the one table of their refusals. The admin HTTP endpoint
//! (`admin.rs`) and the gRPC `Admin` service (`node.rs`) both call these and only translate:
//! JSON and status codes there, messages and `tonic::Code`s here.
//!
//! An operation that runs on another node (purge off the Raft leader, a drain off the node
//! named, InitCluster on a temporary node) is refused with [`AdminError::Elsewhere`]: HTTP
//! answers 307 with that node's URL, gRPC `FAILED_PRECONDITION` with the same URL in metadata.

use std::{net::SocketAddr, time::Duration};

use axum::http::StatusCode;
use mesh::{Cluster, Mesh, MeshError, NodeId, NodeInfo, NodeKind, QuorumState};
use proto::admin::v1 as admin_pb;
use quorum::{Member, Quorum, QuorumError};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::drain::{DrainControl, DrainRefused, DrainStatus};

/// How long ListRooms waits for each node's answer.
const LIST_ROOMS_TIMEOUT: Duration = Duration::from_secs(1);

/// Metadata key of the admin URL a gRPC call is redirected to.
pub(crate) const LOCATION_HEADER: &str = "x-switchyard-location";
/// Metadata key of the gRPC address a gRPC call is redirected to.
pub(crate) const GRPC_HEADER: &str = "x-switchyard-grpc";
/// Metadata key of a refusal's code (the HTTP API's `error`).
pub(crate) const ERROR_HEADER: &str = "x-switchyard-error";

/// The admin HTTP paths of the operations, which redirects name.
pub(crate) mod path {
    pub(crate) const INIT: &str = "/admin/cluster/init";
    pub(crate) const REGISTER: &str = "/admin/cluster/register";
    pub(crate) const PURGE: &str = "/admin/cluster/purge";
    pub(crate) const NODES: &str = "/admin/cluster/nodes";
    pub(crate) const ROOMS: &str = "/admin/cluster/rooms";
    pub(crate) const DRAIN: &str = "/admin/cluster/drain";
    pub(crate) const UNDRAIN: &str = "/admin/cluster/undrain";
}

/// Why a cluster admin operation was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// The request is malformed or names nodes the operation cannot take (`code` says which).
    #[error("{message}")]
    Invalid {
        /// `bad_request`, `unknown_node`, `not_regular`, `temporary`.
        code: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The node named is not a member of the cluster.
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(String),
    /// Purge of a node outside the configuration.
    #[error("node {0} is not a regular node of the configuration")]
    NotConfigured(String),
    /// InitCluster on a configured cluster.
    #[error("the cluster configuration already exists")]
    AlreadyInitialized,
    /// Purge of a node that is still a member.
    #[error("node {0} is alive: only a node that is gone can be purged")]
    Live(String),
    /// Undrain with nothing to cancel, or too late.
    #[error(transparent)]
    Drain(DrainRefused),
    /// The operation runs on another node.
    #[error("this runs on node {}", .0.node)]
    Elsewhere(Elsewhere),
    /// The operation cannot complete now (`code`: `no_leader`, `raft`, `unreachable`).
    #[error("{message}")]
    Unavailable {
        /// Which.
        code: &'static str,
        /// Why.
        message: String,
    },
}

/// Where an operation refused here runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Elsewhere {
    /// The node's id.
    pub(crate) node: String,
    /// Its admin HTTP address (`host:port`), if it published one.
    pub(crate) admin: Option<String>,
    /// Its gRPC address.
    pub(crate) grpc: String,
    /// The operation's admin HTTP path.
    pub(crate) path: &'static str,
}

impl Elsewhere {
    /// The operation's URL on that node.
    pub(crate) fn url(&self) -> Option<String> {
        self.admin
            .as_ref()
            .map(|admin| format!("http://{admin}{}", self.path))
    }
}

impl AdminError {
    /// The one table: the refusal's code, HTTP status and gRPC code.
    pub(crate) fn table(&self) -> (&'static str, StatusCode, tonic::Code) {
        use tonic::Code;
        match self {
            AdminError::Invalid { code, .. } => {
                (code, StatusCode::BAD_REQUEST, Code::InvalidArgument)
            }
            AdminError::UnknownNode(_) => ("unknown_node", StatusCode::NOT_FOUND, Code::NotFound),
            AdminError::NotConfigured(_) => {
                ("not_configured", StatusCode::NOT_FOUND, Code::NotFound)
            }
            AdminError::AlreadyInitialized => (
                "already_initialized",
                StatusCode::CONFLICT,
                Code::AlreadyExists,
            ),
            AdminError::Live(_) => ("live", StatusCode::CONFLICT, Code::FailedPrecondition),
            AdminError::Drain(DrainRefused::NotDraining) => (
                "not_draining",
                StatusCode::CONFLICT,
                Code::FailedPrecondition,
            ),
            AdminError::Drain(DrainRefused::Stopping) => {
                ("stopping", StatusCode::CONFLICT, Code::FailedPrecondition)
            }
            // Without an admin address there is no URL to send an HTTP caller to.
            AdminError::Elsewhere(elsewhere) if elsewhere.admin.is_none() => (
                "elsewhere",
                StatusCode::SERVICE_UNAVAILABLE,
                Code::FailedPrecondition,
            ),
            AdminError::Elsewhere(_) => (
                "elsewhere",
                StatusCode::TEMPORARY_REDIRECT,
                Code::FailedPrecondition,
            ),
            AdminError::Unavailable { code, .. } => {
                (code, StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable)
            }
        }
    }

    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        AdminError::Invalid {
            code,
            message: message.into(),
        }
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        AdminError::Unavailable {
            code,
            message: message.into(),
        }
    }
}

impl From<QuorumError> for AdminError {
    fn from(error: QuorumError) -> Self {
        match error {
            QuorumError::Temporary => AdminError::invalid("temporary", error.to_string()),
            QuorumError::AlreadyInitialized => AdminError::AlreadyInitialized,
            QuorumError::UnknownNode(id) => AdminError::UnknownNode(id),
            QuorumError::NotRegular(_) => AdminError::invalid("not_regular", error.to_string()),
            QuorumError::Live(id) => AdminError::Live(id),
            QuorumError::NotConfigured(id) => AdminError::NotConfigured(id),
            // Callers that can redirect turn this into `Elsewhere` first.
            QuorumError::NotLeader { .. } => {
                AdminError::unavailable("no_leader", error.to_string())
            }
            QuorumError::Raft(_) => AdminError::unavailable("raft", error.to_string()),
            QuorumError::Unreachable { .. } => {
                AdminError::unavailable("unreachable", error.to_string())
            }
        }
    }
}

impl From<AdminError> for tonic::Status {
    fn from(error: AdminError) -> Self {
        let (code, _, grpc) = error.table();
        let mut metadata = tonic::metadata::MetadataMap::new();
        let mut insert = |key: &'static str, value: &str| {
            if let Ok(value) = value.parse() {
                metadata.insert(key, value);
            }
        };
        insert(ERROR_HEADER, code);
        if let AdminError::Elsewhere(elsewhere) = &error {
            if let Some(url) = elsewhere.url() {
                insert(LOCATION_HEADER, &url);
            }
            insert(GRPC_HEADER, &elsewhere.grpc);
        }
        tonic::Status::with_metadata(grpc, error.to_string(), metadata)
    }
}

/// ListNodes: every member and the configuration's regular nodes that are gone.
#[derive(Debug, Serialize)]
pub(crate) struct NodeList {
    /// The node that answered.
    #[serde(rename = "self")]
    pub(crate) self_id: String,
    /// The Raft leader, if known.
    pub(crate) leader: Option<String>,
    /// The answering node's standing with the majority.
    pub(crate) quorum: &'static str,
    /// In node id order.
    pub(crate) nodes: Vec<NodeRow>,
}

/// One node of [`NodeList`].
#[derive(Debug, Serialize)]
pub(crate) struct NodeRow {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) addresses: Addresses,
    /// `online`, `offline` (draining), `fenced` or `gone`.
    pub(crate) state: &'static str,
    /// `regular` or `temporary`.
    pub(crate) role: &'static str,
    pub(crate) capacity: u64,
    /// None for a gone node.
    pub(crate) load: Option<LoadRow>,
    /// Client sessions held (gateways).
    pub(crate) connected: Option<u64>,
    pub(crate) version: Option<String>,
    pub(crate) member_since_ms: u64,
    pub(crate) leader: bool,
}

/// A node's addresses, where known.
#[derive(Debug, Serialize)]
pub(crate) struct Addresses {
    pub(crate) grpc: String,
    /// Known for the answering node only (gossip records do not carry it).
    pub(crate) gossip: Option<String>,
    pub(crate) admin: Option<String>,
    pub(crate) client: Option<String>,
}

/// A member's published load.
#[derive(Debug, Serialize)]
pub(crate) struct LoadRow {
    pub(crate) sessions: u64,
    pub(crate) rooms: u64,
    pub(crate) in_flight: u64,
}

/// ListRooms: what every node hosting rooms answered.
#[derive(Debug, Serialize)]
pub(crate) struct RoomList {
    /// The rooms as the nodes describe them (`room_id`, `host`, `members`, `gateways`), in
    /// room id order.
    pub(crate) rooms: Vec<serde_json::Value>,
    /// Nodes that did not answer in time, or answered something other than a JSON array.
    pub(crate) unanswered: Vec<String>,
}

/// The cluster admin operations of this node. Cloneable.
#[derive(Clone)]
pub(crate) struct ClusterAdmin {
    pub(crate) cluster: Cluster,
    pub(crate) mesh: Mesh,
    pub(crate) quorum: Quorum,
    pub(crate) drains: DrainControl,
    /// This node's gossip address (the records do not carry one).
    pub(crate) gossip: SocketAddr,
}

impl ClusterAdmin {
    /// InitCluster: forms the configuration from `nodes` (on a regular node; a temporary one
    /// sends the caller to a regular member).
    pub(crate) async fn init(&self, nodes: &[String]) -> Result<(), AdminError> {
        if !self.quorum.is_regular() {
            return Err(self.regular_member().map_or_else(
                || QuorumError::Temporary.into(),
                |node| AdminError::Elsewhere(elsewhere_of(&node, path::INIT)),
            ));
        }
        if nodes.is_empty() {
            return Err(AdminError::invalid(
                "bad_request",
                "name the regular nodes to form the configuration with",
            ));
        }
        if !self.quorum.status().regular.is_empty() {
            return Err(AdminError::AlreadyInitialized);
        }
        // Checked here, at once: `Quorum::init` waits up to 10 s for gossip to show every
        // node as a regular member, whatever is wrong.
        let members = self.cluster.members();
        for id in nodes {
            match members.get(&NodeId::new(id.as_str())) {
                None => {
                    return Err(AdminError::invalid(
                        "unknown_node",
                        format!("node {id} is not a member of the cluster"),
                    ));
                }
                Some(node) if !node.regular => {
                    return Err(QuorumError::NotRegular(id.clone()).into());
                }
                Some(_) => {}
            }
        }
        self.quorum.init(nodes).await.map_err(AdminError::from)
    }

    /// RegisterNode: adds this node to the configuration through `contact`, a regular member.
    pub(crate) async fn register(&self, contact: &str) -> Result<(), AdminError> {
        let node = self
            .cluster
            .node(&NodeId::new(contact))
            .ok_or_else(|| AdminError::UnknownNode(contact.to_owned()))?;
        if !node.regular {
            return Err(QuorumError::NotRegular(contact.to_owned()).into());
        }
        Ok(self.quorum.register_via(&node.id).await?)
    }

    /// PurgeNode: removes a regular node that is gone (on the leader).
    pub(crate) async fn purge(&self, node: &str) -> Result<(), AdminError> {
        let result = if self.quorum.is_regular() {
            self.quorum.purge(node).await
        } else {
            Err(QuorumError::NotLeader {
                leader: self.quorum.leader(),
            })
        };
        result.map_err(|error| match error {
            QuorumError::NotLeader {
                leader: Some(leader),
            } => AdminError::Elsewhere(self.elsewhere(&leader, path::PURGE)),
            error => error.into(),
        })
    }

    /// ListNodes.
    pub(crate) fn nodes(&self) -> NodeList {
        let status = self.quorum.status();
        let me = self.cluster.self_id();
        let members = self.cluster.members();
        let is_leader = |id: &str| status.leader.as_deref() == Some(id);
        let mut nodes: Vec<NodeRow> = members
            .values()
            .map(|node| {
                let since = status.member(node.id.as_str()).map(|m| m.since_ms);
                NodeRow {
                    id: node.id.to_string(),
                    kind: node.kind.to_string(),
                    addresses: Addresses {
                        grpc: node.grpc_addr.to_string(),
                        gossip: (node.id == me).then(|| self.gossip.to_string()),
                        admin: node.admin_addr.clone(),
                        client: node.client_addr.clone(),
                    },
                    state: state_of(node),
                    role: if node.regular { "regular" } else { "temporary" },
                    capacity: node.load.capacity,
                    load: Some(LoadRow {
                        sessions: node.load.sessions,
                        rooms: node.load.rooms,
                        in_flight: node.load.in_flight,
                    }),
                    connected: (node.kind.as_str() == NodeKind::GATEWAY)
                        .then_some(node.load.sessions),
                    version: Some(node.version.clone()),
                    member_since_ms: since.unwrap_or(node.started_at_ms),
                    leader: is_leader(node.id.as_str()),
                }
            })
            .collect();
        let gone = status
            .regular
            .iter()
            .filter(|m| !members.contains_key(&NodeId::new(m.id.as_str())));
        nodes.extend(gone.map(|member| NodeRow {
            id: member.id.clone(),
            kind: member.kind.clone(),
            addresses: Addresses {
                grpc: member.grpc.clone(),
                gossip: None,
                admin: member.admin.clone(),
                client: None,
            },
            state: "gone",
            role: "regular",
            capacity: member.capacity,
            load: None,
            connected: None,
            version: None,
            member_since_ms: member.since_ms,
            leader: is_leader(&member.id),
        }));
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        NodeList {
            self_id: me.to_string(),
            leader: status.leader.clone(),
            quorum: status.state.as_str(),
            nodes,
        }
    }

    /// ListRooms: asks every member for its rooms ([`crate::admin::LIST_ROOMS`]) at once, each
    /// within 1 s; nodes without a handler host no rooms and are skipped.
    pub(crate) async fn rooms(&self) -> RoomList {
        let mut asks = JoinSet::new();
        for node in self.cluster.members().keys().cloned() {
            let mesh = self.mesh.clone();
            asks.spawn(async move {
                let reply = mesh
                    .request_with_timeout(
                        &node,
                        crate::admin::LIST_ROOMS,
                        &b"{}"[..],
                        LIST_ROOMS_TIMEOUT,
                    )
                    .await;
                (node, reply)
            });
        }
        let mut list = RoomList {
            rooms: Vec::new(),
            unanswered: Vec::new(),
        };
        while let Some(asked) = asks.join_next().await {
            let Ok((node, reply)) = asked else { continue };
            let rooms = match reply {
                Err(MeshError::NoHandler { .. }) => continue,
                Ok(reply) => serde_json::from_slice::<Vec<serde_json::Value>>(&reply).ok(),
                Err(_) => None,
            };
            match rooms {
                Some(rooms) => list.rooms.extend(rooms),
                None => list.unanswered.push(node.to_string()),
            }
        }
        list.rooms
            .sort_by(|a, b| a["room_id"].as_str().cmp(&b["room_id"].as_str()));
        list.unanswered.sort();
        list
    }

    /// DrainNode: drains `node` when it is this one, else sends the caller there.
    pub(crate) fn drain(
        &self,
        node: &str,
        grace: Option<Duration>,
    ) -> Result<admin_pb::DrainStatus, AdminError> {
        self.here(node, path::DRAIN)?;
        Ok(self.drain_here(grace))
    }

    /// UndrainNode: cancels `node`'s drain when it is this one, else sends the caller there.
    pub(crate) fn undrain(&self, node: &str) -> Result<admin_pb::DrainStatus, AdminError> {
        self.here(node, path::UNDRAIN)?;
        self.undrain_here()
    }

    /// Drains this node (`grace`: the node's own when `None`).
    pub(crate) fn drain_here(&self, grace: Option<Duration>) -> admin_pb::DrainStatus {
        self.drain_status(self.drains.drain(grace))
    }

    /// Cancels this node's drain.
    pub(crate) fn undrain_here(&self) -> Result<admin_pb::DrainStatus, AdminError> {
        self.drains
            .undrain()
            .map(|status| self.drain_status(status))
            .map_err(AdminError::Drain)
    }

    /// Where this node's drain stands, as the admin API reports it.
    pub(crate) fn drain_status(&self, status: DrainStatus) -> admin_pb::DrainStatus {
        let me = self.cluster.self_id();
        let load = self.cluster.node(&me).map(|n| n.load).unwrap_or_default();
        admin_pb::DrainStatus {
            node_id: me.to_string(),
            state: status.state.as_str().to_owned(),
            grace_left_ms: status.grace_left.as_millis() as u64,
            holding: load.sessions + load.rooms,
        }
    }

    /// Ok when `node` is this node; else where the operation at `path` runs.
    fn here(&self, node: &str, path: &'static str) -> Result<(), AdminError> {
        if node == self.cluster.self_id().as_str() {
            return Ok(());
        }
        match self.cluster.node(&NodeId::new(node)) {
            Some(info) => Err(AdminError::Elsewhere(elsewhere_of(&info, path))),
            None => Err(AdminError::UnknownNode(node.to_owned())),
        }
    }

    /// Where `member` runs the operation at `path`: its gossip record when it is a member
    /// (current addresses), else what the configuration recorded.
    fn elsewhere(&self, member: &Member, path: &'static str) -> Elsewhere {
        match self.cluster.node(&NodeId::new(member.id.as_str())) {
            Some(info) => elsewhere_of(&info, path),
            None => Elsewhere {
                node: member.id.clone(),
                admin: member.admin.clone(),
                grpc: member.grpc.clone(),
                path,
            },
        }
    }

    /// A regular member with an admin address, online ones first, by id.
    fn regular_member(&self) -> Option<NodeInfo> {
        let members = self.cluster.members();
        let mut regular: Vec<&NodeInfo> = members
            .values()
            .filter(|n| n.regular && n.admin_addr.is_some())
            .collect();
        regular.sort_by_key(|n| !n.is_online());
        regular.first().map(|n| (*n).clone())
    }
}

/// A drain's grace as asked in ms (0: the node's own).
pub(crate) fn grace(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn elsewhere_of(node: &NodeInfo, path: &'static str) -> Elsewhere {
    Elsewhere {
        node: node.id.to_string(),
        admin: node.admin_addr.clone(),
        grpc: node.grpc_addr.to_string(),
        path,
    }
}

/// A member's state in ListNodes: fenced over online/offline.
fn state_of(node: &NodeInfo) -> &'static str {
    if node.quorum == QuorumState::Fenced {
        "fenced"
    } else {
        node.state.as_str()
    }
}

impl From<NodeList> for admin_pb::ListNodesResponse {
    fn from(list: NodeList) -> Self {
        admin_pb::ListNodesResponse {
            self_id: list.self_id,
            leader: list.leader.unwrap_or_default(),
            quorum: list.quorum.to_owned(),
            nodes: list.nodes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<NodeRow> for admin_pb::ClusterNode {
    fn from(row: NodeRow) -> Self {
        admin_pb::ClusterNode {
            id: row.id,
            kind: row.kind,
            addresses: Some(admin_pb::NodeAddresses {
                grpc: row.addresses.grpc,
                gossip: row.addresses.gossip.unwrap_or_default(),
                admin: row.addresses.admin.unwrap_or_default(),
                client: row.addresses.client.unwrap_or_default(),
            }),
            state: row.state.to_owned(),
            role: row.role.to_owned(),
            capacity: row.capacity,
            load: row.load.map(|load| admin_pb::NodeLoad {
                sessions: load.sessions,
                rooms: load.rooms,
                in_flight: load.in_flight,
            }),
            connected: row.connected,
            version: row.version.unwrap_or_default(),
            member_since_ms: row.member_since_ms,
            leader: row.leader,
        }
    }
}

impl From<RoomList> for admin_pb::ListRoomsResponse {
    fn from(list: RoomList) -> Self {
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
        let texts = |value: &serde_json::Value| {
            value
                .as_array()
                .map(|items| items.iter().map(text).collect())
                .unwrap_or_default()
        };
        admin_pb::ListRoomsResponse {
            rooms: list
                .rooms
                .iter()
                .map(|room| admin_pb::ListedRoom {
                    room_id: text(&room["room_id"]),
                    host: text(&room["host"]),
                    members: texts(&room["members"]),
                    gateways: texts(&room["gateways"]),
                })
                .collect(),
            unanswered: list.unanswered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elsewhere(admin: Option<&str>) -> AdminError {
        AdminError::Elsewhere(Elsewhere {
            node: "b".into(),
            admin: admin.map(str::to_owned),
            grpc: "127.0.0.1:7101".into(),
            path: path::PURGE,
        })
    }

    #[test]
    fn every_refusal_has_one_code_one_http_status_and_one_grpc_code() {
        let cases = [
            (
                AdminError::invalid("not_regular", "t"),
                ("not_regular", 400, tonic::Code::InvalidArgument),
            ),
            (
                AdminError::UnknownNode("x".into()),
                ("unknown_node", 404, tonic::Code::NotFound),
            ),
            (
                AdminError::NotConfigured("x".into()),
                ("not_configured", 404, tonic::Code::NotFound),
            ),
            (
                AdminError::AlreadyInitialized,
                ("already_initialized", 409, tonic::Code::AlreadyExists),
            ),
            (
                AdminError::Live("x".into()),
                ("live", 409, tonic::Code::FailedPrecondition),
            ),
            (
                AdminError::Drain(DrainRefused::NotDraining),
                ("not_draining", 409, tonic::Code::FailedPrecondition),
            ),
            (
                elsewhere(Some("127.0.0.1:9101")),
                ("elsewhere", 307, tonic::Code::FailedPrecondition),
            ),
            (
                elsewhere(None),
                ("elsewhere", 503, tonic::Code::FailedPrecondition),
            ),
            (
                QuorumError::Raft("no majority".into()).into(),
                ("raft", 503, tonic::Code::Unavailable),
            ),
        ];
        for (error, (code, http, grpc)) in cases {
            let (c, h, g) = error.table();
            assert_eq!((c, h.as_u16(), g), (code, http, grpc), "{error:?}");
        }
    }

    #[test]
    fn a_redirected_grpc_call_names_the_url_and_the_grpc_address() {
        let status = tonic::Status::from(elsewhere(Some("127.0.0.1:9101")));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let meta = |key| status.metadata().get(key).and_then(|v| v.to_str().ok());
        assert_eq!(
            meta(LOCATION_HEADER),
            Some("http://127.0.0.1:9101/admin/cluster/purge")
        );
        assert_eq!(meta(GRPC_HEADER), Some("127.0.0.1:7101"));
        assert_eq!(meta(ERROR_HEADER), Some("elsewhere"));
    }
}
