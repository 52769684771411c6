//! The node record: who a node is, what it serves, its state and its load.

use std::{fmt, net::SocketAddr, sync::Arc};

/// A node's id: unique in the cluster, stable across restarts when configured.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Wraps a string as a node id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        Self::new(id)
    }
}

/// What a node is: `gateway`, `room`, `match`, or any custom kind a logic server chooses.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKind(Arc<str>);

impl NodeKind {
    /// Gateways hold client connections.
    pub const GATEWAY: &'static str = "gateway";
    /// Room servers (logic-room).
    pub const ROOM: &'static str = "room";
    /// Match servers (logic-match).
    pub const MATCH: &'static str = "match";

    /// Wraps a string as a node kind.
    pub fn new(kind: impl Into<Arc<str>>) -> Self {
        Self(kind.into())
    }

    /// The kind as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl From<&str> for NodeKind {
    fn from(kind: &str) -> Self {
        Self::new(kind)
    }
}

/// Where a node is in its life. A node that has left is not a member at all ("gone").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Serving, and accepting new clients, rooms and sessions.
    Online,
    /// Draining: it keeps serving existing work but takes nothing new. Next it leaves.
    Offline,
}

impl NodeState {
    /// The lowercase name used in records, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Online => "online",
            NodeState::Offline => "offline",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a node stands with the cluster's majority (see the `quorum` crate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QuorumState {
    /// No configuration of regular nodes exists (or none is known here): every node serves.
    #[default]
    Unmanaged,
    /// In touch with a majority of the regular nodes: serving.
    Serving,
    /// Cut off from the majority: serving nobody until back in touch.
    Fenced,
}

impl QuorumState {
    /// The lowercase name used in records, logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumState::Unmanaged => "unmanaged",
            QuorumState::Serving => "serving",
            QuorumState::Fenced => "fenced",
        }
    }

    /// Parses [`QuorumState::as_str`]'s names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "unmanaged" => Some(QuorumState::Unmanaged),
            "serving" => Some(QuorumState::Serving),
            "fenced" => Some(QuorumState::Fenced),
            _ => None,
        }
    }
}

/// Load figures a node publishes at least every second; routing and placement read them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Load {
    /// Client sessions held (gateways) or user sessions served (logic servers).
    pub sessions: u64,
    /// Rooms hosted (room servers).
    pub rooms: u64,
    /// Requests being handled right now (mesh handlers and routed client commands).
    pub in_flight: u64,
    /// How many sessions the node accepts in all; 0 means unlimited.
    pub capacity: u64,
}

/// Everything the cluster knows about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Unique, stable id.
    pub id: NodeId,
    /// What the node is.
    pub kind: NodeKind,
    /// Address of the node's gRPC server (mesh, health and the node's own services).
    pub grpc_addr: SocketAddr,
    /// Address of the node's UDP socket for unreliable mesh messages.
    pub datagram_addr: SocketAddr,
    /// The address clients connect to (gateways only), e.g. `ws://host:7000/ws`.
    pub client_addr: Option<String>,
    /// Client route ids (`cmd << 16 | sub_cmd`) this node serves, sorted and deduplicated.
    pub routes: Vec<u32>,
    /// The subset of `routes` clients may call before logging in (login itself, say).
    pub public_routes: Vec<u32>,
    /// Online or draining.
    pub state: NodeState,
    /// Latest published load figures.
    pub load: Load,
    /// Software version of the node.
    pub version: String,
    /// Start time, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The node's admin HTTP address (`host:port`), for operators and the admin API's redirects.
    pub admin_addr: Option<String>,
    /// A regular node counts toward the cluster's majority; a temporary one never does.
    pub regular: bool,
    /// Whether the node is in touch with the majority.
    pub quorum: QuorumState,
}

impl NodeInfo {
    /// True when the node accepts new work: online, and not fenced off from the majority.
    pub fn is_online(&self) -> bool {
        self.state == NodeState::Online && self.quorum != QuorumState::Fenced
    }

    /// True when the node announces `route` among the routes it serves.
    pub fn serves(&self, route: u32) -> bool {
        self.routes.binary_search(&route).is_ok()
    }

    /// True when `route` is served here and callable before login.
    pub fn serves_publicly(&self, route: u32) -> bool {
        self.public_routes.binary_search(&route).is_ok()
    }
}
