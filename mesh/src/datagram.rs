//! Unreliable mesh messages: one authenticated UDP datagram each, fire and forget.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use prost::Message;
use proto::mesh::v1::MeshDatagram;
use tokio::{net::UdpSocket, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

use crate::{
    auth::{Credential, TAG_LEN},
    handler::{DispatchError, Handlers, MeshContext},
    metrics,
    node::NodeId,
};

/// Largest payload an unreliable message carries (a loopback or LAN datagram, less headers).
pub const MAX_DATAGRAM_PAYLOAD: usize = 60_000;

/// How many unreliable messages may be handled at once; more are dropped (they are unreliable).
const MAX_CONCURRENT_HANDLERS: usize = 1024;

/// Seals a message for sending: tag followed by the encoded message.
pub(crate) fn seal(credential: &Credential, message: &MeshDatagram) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(TAG_LEN + body.len());
    out.extend_from_slice(&credential.tag(&body));
    out.extend_from_slice(&body);
    out
}

/// Receives datagrams and runs their handlers until `shutdown`.
pub(crate) async fn receive(
    socket: Arc<UdpSocket>,
    credential: Credential,
    handlers: Arc<Handlers>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDLERS));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(error) => {
                    debug!(%error, "datagram receive failed");
                    continue;
                }
            },
        };
        let Some(message) = accept(&credential, &buf[..len], from) else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::record_datagram("in", "overloaded");
            continue;
        };
        let handlers = handlers.clone();
        tracker.spawn(async move {
            let command = message.command;
            let ctx = MeshContext {
                from: NodeId::new(message.from_node),
                command,
            };
            let outcome = match handlers.dispatch(ctx, message.payload).await {
                Ok(_) => "ok",
                Err(DispatchError::NoHandler) => "no_handler",
                Err(DispatchError::Handler(error)) => {
                    debug!(command, %error, "unreliable message handler failed");
                    "handler_error"
                }
            };
            metrics::record_handled(command, outcome);
            drop(permit);
        });
    }
}

pub(crate) fn accept(
    credential: &Credential,
    datagram: &[u8],
    from: SocketAddr,
) -> Option<MeshDatagram> {
    let Some(body) = credential.open(datagram) else {
        debug!(%from, len = datagram.len(), "dropping a datagram without a valid cluster tag");
        metrics::record_datagram("in", "unauthenticated");
        return None;
    };
    match MeshDatagram::decode(Bytes::copy_from_slice(body)) {
        Ok(message) => {
            metrics::record_datagram("in", "ok");
            Some(message)
        }
        Err(error) => {
            debug!(%from, %error, "dropping an undecodable datagram");
            metrics::record_datagram("in", "undecodable");
            None
        }
    }
}
