//! A single-node membership kept in memory, for unit tests. No binary defaults to it.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Members, Membership};
use crate::node::NodeInfo;

/// Membership of a cluster of one: this node only.
pub struct LocalMembership {
    members: watch::Sender<Arc<Members>>,
}

impl LocalMembership {
    /// A membership holding nothing until the first [`Membership::publish`].
    pub fn new() -> Self {
        Self {
            members: watch::Sender::new(Arc::default()),
        }
    }
}

impl Default for LocalMembership {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Membership for LocalMembership {
    async fn publish(&self, record: &NodeInfo) {
        self.members.send_if_modified(|members| {
            if members.get(&record.id) == Some(record) {
                return false;
            }
            let mut next = Members::clone(members);
            next.insert(record.id.clone(), record.clone());
            *members = Arc::new(next);
            true
        });
    }

    fn members(&self) -> watch::Receiver<Arc<Members>> {
        self.members.subscribe()
    }

    fn is_joined(&self) -> bool {
        true
    }

    async fn leave(&self) {
        self.members.send_replace(Arc::default());
    }

    async fn abort(&self) {
        self.members.send_replace(Arc::default());
    }
}
