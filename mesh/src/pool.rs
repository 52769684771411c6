//! One pooled gRPC channel per peer node, kept in step with membership.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use proto::mesh::v1::mesh_client::MeshClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use tracing::debug;

use crate::{
    auth::{AddCredential, Credential},
    http2,
    membership::Members,
    node::NodeId,
};

/// A pooled channel to a peer with the cluster credential on every call: build any generated
/// gRPC client on it (`LogicClient::new(channel)`); clones share the one connection.
pub type PeerChannel = InterceptedService<Channel, AddCredential>;

pub(crate) type PeerClient = MeshClient<PeerChannel>;

/// Peer channels by node id. A channel connects lazily and reconnects by itself; it is dropped
/// when its node leaves the member list and replaced when the node's address changes.
#[derive(Clone)]
pub(crate) struct PeerPool {
    peers: Arc<RwLock<HashMap<NodeId, (SocketAddr, Channel)>>>,
    credential: Credential,
    connect_timeout: Duration,
}

impl PeerPool {
    pub(crate) fn new(credential: Credential, connect_timeout: Duration) -> Self {
        Self {
            peers: Arc::default(),
            credential,
            connect_timeout,
        }
    }

    /// The mesh client for `node` at `addr`, creating the channel on first use.
    pub(crate) fn client(&self, node: &NodeId, addr: SocketAddr) -> PeerClient {
        MeshClient::new(self.channel(node, addr))
    }

    /// The credentialed channel to `node` at `addr`, creating it on first use.
    pub(crate) fn channel(&self, node: &NodeId, addr: SocketAddr) -> PeerChannel {
        let known = self
            .read()
            .get(node)
            .filter(|(a, _)| *a == addr)
            .map(|(_, c)| c.clone());
        let channel = known.unwrap_or_else(|| {
            let channel = self.connect(addr);
            let mut peers = self
                .peers
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            peers.insert(node.clone(), (addr, channel.clone()));
            channel
        });
        InterceptedService::new(channel, self.credential.client_interceptor())
    }

    fn connect(&self, addr: SocketAddr) -> Channel {
        http2::endpoint(format!("http://{addr}"), self.connect_timeout).connect_lazy()
    }

    /// Drops channels of nodes that are no longer members.
    pub(crate) async fn follow(
        self,
        mut members: watch::Receiver<Arc<Members>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let current = members.borrow_and_update().clone();
            {
                let mut peers = self
                    .peers
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                peers.retain(|id, (addr, _)| {
                    let keep = current.get(id).is_some_and(|n| n.grpc_addr == *addr);
                    if !keep {
                        debug!(peer = %id, "closing channel to a node that left");
                    }
                    keep
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = members.changed() => if changed.is_err() { return },
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, (SocketAddr, Channel)>> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
