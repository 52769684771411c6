//! Membership: which nodes are in the cluster and what their records say.
//!
//! Callers see one abstraction, [`Membership`]; backends decide how records travel. The embedded
//! default is [`GossipMembership`] (chitchat's scuttlebutt gossip for dissemination, our own
//! heartbeat-progress failure detection in `liveness`; no external service). [`LocalMembership`] is a single-node, in-memory backend for
//! unit tests. A store-backed backend (etcd) can be added beside them without touching callers.

mod gossip;
mod liveness;
mod local;

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use tokio::sync::watch;

pub use gossip::{GossipConfig, GossipMembership};
pub use local::LocalMembership;

use crate::node::{NodeId, NodeInfo};

/// The members of the cluster (online or draining; never gone), this node included.
pub type Members = BTreeMap<NodeId, NodeInfo>;

/// A membership backend.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Publishes this node's record. Unchanged fields cost nothing.
    async fn publish(&self, record: &NodeInfo);

    /// The current members; the receiver sees every change.
    fn members(&self) -> watch::Receiver<Arc<Members>>;

    /// True once this node is part of a cluster: it configured no seeds (it is the first node),
    /// or it has exchanged state with at least one peer.
    fn is_joined(&self) -> bool;

    /// Announces that this node leaves, gives peers a moment to learn it, and stops taking part.
    async fn leave(&self);

    /// Stops taking part without announcing anything, as a crash would (fault injection).
    async fn abort(&self);
}
