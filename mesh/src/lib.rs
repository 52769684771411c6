//! Switchyard's cluster runtime: what every node (gateway, room server, match server, or a
//! logic server of your own) knows about the others, and how it talks to them.
//!
//! # Layout
//! - [`node`]: the node record (id, kind, addresses, routes, state, load).
//! - `record`: the record as gossiped key/values (pure encode/decode).
//! - [`membership`]: the membership abstraction and its backends (gossip, local).
//! - `change`: node events derived from two member lists (pure diff).
//! - [`cluster`]: the [`Cluster`] handle: members, node events, this node's state and load.
//! - [`mesh`](crate::Mesh): request/response, reliable and unreliable send-many, handlers.
//! - `fanout`: one gRPC call to several nodes at once, every outcome reported.
//! - `handler`: the handler registry. `pool`: one gRPC channel per peer.
//! - [`http2`]: the HTTP/2 settings of every connection between nodes (server and channel).
//! - `retry`: which failed calls a peer certainly did not process; sending those again.
//! - `service`: the gRPC service peers call. `datagram`: unreliable messages over UDP.
//! - `auth`: the cluster credential on calls and datagrams. [`metrics`]: metric names.
//! - `fuzzing` (hidden): the private decoders, for the fuzz targets in `fuzzing/`.

mod auth;
mod change;
pub mod cluster;
mod datagram;
mod error;
mod fanout;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
pub mod http2;
pub mod membership;
mod mesh;
pub mod metrics;
pub mod node;
mod pool;
mod record;
mod retry;
mod service;

pub use auth::{AddCredential, BadSecret, CREDENTIAL_HEADER, CheckCredential, Credential};
pub use change::NodeEvent;
pub use cluster::NotOnline;
pub use cluster::{Cluster, InFlight};
pub use datagram::MAX_DATAGRAM_PAYLOAD;
pub use error::{HandlerError, MeshError};
pub use fanout::Answer;
pub use handler::MeshContext;
pub use mesh::{Delivery, Mesh, MeshSettings, UnreliableReport, command};
pub use node::{Load, NodeId, NodeInfo, NodeKind, NodeState, QuorumState};
pub use pool::PeerChannel;
pub use retry::{MAX_ATTEMPTS, retrying_unprocessed, unprocessed};
pub use service::{MeshGrpcService, MeshService};
