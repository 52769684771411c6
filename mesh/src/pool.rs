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
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tracing::debug;

use crate::{
    auth::{AddCredential, Credential},
    membership::Members,
    node::NodeId,
};

pub(crate) type PeerClient = MeshClient<InterceptedService<Channel, AddCredential>>;

/// Peer channels by node id. A channel connects lazily and reconnects by itself; it is dropped
/// when its node leaves the member list and replaced when the node's address changes.
#[derive(Clone)]
pub(crate) struct PeerPool {
    peers: Arc<RwLock<HashMap<NodeId, (SocketAddr, PeerClient)>>>,
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

    /// The client for `node` at `addr`, creating the channel on first use.
    pub(crate) fn client(&self, node: &NodeId, addr: SocketAddr) -> PeerClient {
        if let Some((known, client)) = self.read().get(node)
            && *known == addr
        {
            return client.clone();
        }
        let client = self.connect(addr);
        let mut peers = self
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.insert(node.clone(), (addr, client.clone()));
        client
    }

    fn connect(&self, addr: SocketAddr) -> PeerClient {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address is a valid URI authority")
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        MeshClient::with_interceptor(channel, self.credential.client_interceptor())
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, (SocketAddr, PeerClient)>> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
