//! The mesh: server-to-server messaging between cluster nodes.
//!
//! Request/response to one node, reliable send-many with a delivery limit, and unreliable
//! send-many over datagrams. Handlers are registered per command id; several handlers for one
//! id all run, in registration order.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use proto::mesh::v1::{MeshDatagram, MeshRequest};
use tokio::{net::UdpSocket, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug_span};

use crate::{
    auth::Credential,
    cluster::Cluster,
    datagram::{self, MAX_DATAGRAM_PAYLOAD},
    error::{HandlerError, MeshError},
    handler::{self, DispatchError, Handlers, MeshContext},
    metrics,
    node::NodeId,
    pool::{PeerChannel, PeerPool},
    retry::retrying_unprocessed,
    service::{self, MeshGrpcService, MeshService},
};

/// Command ids Switchyard reserves for itself (applications use ids from 0x1000 on).
pub mod command {
    /// Echoes its payload; every node answers it.
    pub const PING: u32 = 0x0001;
    /// Highest reserved id.
    pub const RESERVED_MAX: u32 = 0x0fff;
}

/// Timeouts of mesh calls.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    /// Default time a request waits for its reply.
    pub request_timeout: Duration,
    /// Time a reliable send keeps retrying one target before reporting it failed.
    pub send_many_timeout: Duration,
    /// Time one attempt of a reliable send waits for its acknowledgement.
    pub attempt_timeout: Duration,
    /// Time to establish a connection to a peer.
    pub connect_timeout: Duration,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(3),
            send_many_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// The outcome of a reliable send to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The target.
    pub node: NodeId,
    /// `Ok` once the target acknowledged the message.
    pub result: Result<(), MeshError>,
}

/// What an unreliable send did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnreliableReport {
    /// Datagrams handed to the network.
    pub sent: usize,
    /// Targets that are not members (nothing was sent to them).
    pub unknown: Vec<NodeId>,
    /// Targets whose datagram the local socket could not take at once (dropped, never waited).
    pub dropped: Vec<NodeId>,
}

/// A cloneable handle on this node's mesh.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    cluster: Cluster,
    handlers: Arc<Handlers>,
    pool: PeerPool,
    credential: Credential,
    datagrams: Arc<UdpSocket>,
    settings: MeshSettings,
}

impl Mesh {
    /// Starts the mesh of this node: datagram receiver, peer pool, built-in commands.
    pub fn start(
        cluster: Cluster,
        credential: Credential,
        settings: MeshSettings,
        datagram_socket: UdpSocket,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let handlers = Arc::new(Handlers::default());
        let datagrams = Arc::new(datagram_socket);
        let pool = PeerPool::new(credential.clone(), settings.connect_timeout);
        tracker.spawn(
            pool.clone()
                .follow(cluster.watch_members(), shutdown.clone()),
        );
        tracker.spawn(datagram::receive(
            datagrams.clone(),
            credential.clone(),
            handlers.clone(),
            tracker.clone(),
            shutdown,
        ));
        let mesh = Mesh {
            inner: Arc::new(Inner {
                me: cluster.self_id(),
                cluster,
                handlers,
                pool,
                credential,
                datagrams,
                settings,
            }),
        };
        mesh.handle(command::PING, |_, payload| async move { Ok(payload) });
        mesh
    }

    /// The cluster this mesh belongs to.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The gRPC service peers call; add it to this node's server.
    pub fn grpc_service(&self) -> MeshGrpcService {
        let service = MeshService {
            handlers: self.inner.handlers.clone(),
            cluster: self.inner.cluster.clone(),
        };
        service::grpc_service(service, self.inner.credential.clone())
    }

    /// Registers a handler of raw payloads for `command`.
    pub fn handle<F, Fut>(&self, command: u32, f: F)
    where
        F: Fn(MeshContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
    {
        self.inner.handlers.add(command, handler::bytes_handler(f));
    }

    /// Registers a handler of protobuf messages for `command`. A payload that does not decode
    /// as `Req` is answered with [`HandlerError::BAD_PAYLOAD`]; the handler does not run.
    pub fn handle_message<Req, Resp, F, Fut>(&self, command: u32, f: F)
    where
        Req: Message + Default + 'static,
        Resp: Message + 'static,
        F: Fn(MeshContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
    {
        self.inner
            .handlers
            .add(command, handler::message_handler(f));
    }

    /// The pooled, credentialed channel to a member node, for the node's other gRPC services
    /// (one connection per peer, shared with the mesh).
    pub fn peer_channel(&self, node: &NodeId) -> Result<PeerChannel, MeshError> {
        let addr = self
            .inner
            .cluster
            .grpc_addr(node)
            .ok_or_else(|| MeshError::NodeUnknown(node.clone()))?;
        Ok(self.inner.pool.channel(node, addr))
    }

    /// True when a handler is registered here for `command`.
    pub fn has_handler(&self, command: u32) -> bool {
        self.inner.handlers.has(command)
    }

    /// Sends `payload` to `node` and waits for the reply, within the default request timeout.
    /// A draining (offline) node still answers: it finishes existing work.
    pub async fn request(
        &self,
        node: &NodeId,
        command: u32,
        payload: impl Into<Bytes>,
    ) -> Result<Bytes, MeshError> {
        self.request_with_timeout(node, command, payload, self.inner.settings.request_timeout)
            .await
    }

    /// [`Mesh::request`] with an explicit timeout.
    pub async fn request_with_timeout(
        &self,
        node: &NodeId,
        command: u32,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, MeshError> {
        let started = Instant::now();
        let result = self.call_once(node, command, payload.into(), timeout).await;
        let outcome = result.as_ref().map_or_else(MeshError::outcome, |_| "ok");
        metrics::record_call(command, outcome, started.elapsed());
        result
    }

    /// Sends a protobuf request and decodes the protobuf reply.
    pub async fn request_message<Req: Message, Resp: Message + Default>(
        &self,
        node: &NodeId,
        command: u32,
        request: &Req,
    ) -> Result<Resp, MeshError> {
        let reply = self.request(node, command, request.encode_to_vec()).await?;
        Resp::decode(reply).map_err(|e| MeshError::Decode {
            node: node.clone(),
            message: e.to_string(),
        })
    }

    /// Reliable send to many nodes: at most `delivery_limit` targets in flight at once; each
    /// target is retried until it acknowledges or the send-many timeout passes. Results come in
    /// the order of `nodes`.
    pub async fn send_many(
        &self,
        command: u32,
        nodes: &[NodeId],
        payload: impl Into<Bytes>,
        delivery_limit: usize,
    ) -> Vec<Delivery> {
        let payload = payload.into();
        let deliveries = nodes.iter().cloned().map(|node| {
            let payload = payload.clone();
            async move {
                let started = Instant::now();
                let result = self.deliver(&node, command, payload).await;
                let outcome = result.as_ref().map_or_else(MeshError::outcome, |_| "ok");
                metrics::record_call(command, outcome, started.elapsed());
                Delivery { node, result }
            }
        });
        futures::stream::iter(deliveries)
            .buffered(delivery_limit.max(1))
            .collect()
            .await
    }

    /// Unreliable send to many nodes: one datagram each, no acknowledgement, no retry. Never
    /// waits: a datagram the socket cannot take at once is dropped and reported.
    pub fn usend_many(
        &self,
        command: u32,
        nodes: &[NodeId],
        payload: &[u8],
    ) -> Result<UnreliableReport, MeshError> {
        if payload.len() > MAX_DATAGRAM_PAYLOAD {
            return Err(MeshError::TooLarge {
                size: payload.len(),
                max: MAX_DATAGRAM_PAYLOAD,
            });
        }
        let message = MeshDatagram {
            command,
            from_node: self.inner.me.to_string(),
            payload: Bytes::copy_from_slice(payload),
        };
        let sealed = datagram::seal(&self.inner.credential, &message);
        let members = self.inner.cluster.members();
        let mut report = UnreliableReport::default();
        for node in nodes {
            let Some(info) = members.get(node) else {
                report.unknown.push(node.clone());
                continue;
            };
            match self
                .inner
                .datagrams
                .try_send_to(&sealed, info.datagram_addr)
            {
                Ok(_) => {
                    report.sent += 1;
                    metrics::record_datagram("out", "sent");
                }
                Err(_) => {
                    report.dropped.push(node.clone());
                    metrics::record_datagram("out", "dropped");
                }
            }
        }
        Ok(report)
    }

    async fn deliver(&self, node: &NodeId, command: u32, payload: Bytes) -> Result<(), MeshError> {
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.send_many_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(MeshError::Timeout {
                    node: node.clone(),
                    after: settings.send_many_timeout,
                });
            }
            let attempt = remaining.min(settings.attempt_timeout);
            match self
                .call_once(node, command, payload.clone(), attempt)
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) if error.is_retryable() => {
                    let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn call_once(
        &self,
        node: &NodeId,
        command: u32,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, MeshError> {
        let inner = &self.inner;
        let span = debug_span!("mesh_call", node = %inner.me, peer = %node, command);
        if *node == inner.me {
            let ctx = MeshContext {
                from: inner.me.clone(),
                command,
            };
            let dispatch = inner.handlers.dispatch(ctx, payload).instrument(span);
            return match tokio::time::timeout(timeout, dispatch).await {
                Err(_) => Err(MeshError::Timeout {
                    node: node.clone(),
                    after: timeout,
                }),
                Ok(result) => result.map_err(|e| dispatch_error(node, command, e)),
            };
        }
        let Some(addr) = inner.cluster.grpc_addr(node) else {
            return Err(MeshError::NodeUnknown(node.clone()));
        };
        let message = MeshRequest {
            command,
            from_node: inner.me.to_string(),
            payload,
        };
        // A call the peer certainly did not process (refused by its GOAWAY, say) goes out
        // again within the same timeout: it cannot run twice.
        let result = retrying_unprocessed(timeout, |left| {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(left);
            let mut client = inner.pool.client(node, addr);
            async move { client.call(request).await }.instrument(span.clone())
        })
        .await;
        let reply = match result {
            Err(_) => {
                return Err(MeshError::Timeout {
                    node: node.clone(),
                    after: timeout,
                });
            }
            Ok(Err(status)) => return Err(status_error(node, timeout, &status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match reply.error {
            None => Ok(reply.payload),
            Some(e) if e.no_handler => Err(MeshError::NoHandler {
                node: node.clone(),
                command,
            }),
            Some(e) => Err(MeshError::Handler {
                node: node.clone(),
                code: e.code,
                message: e.message,
            }),
        }
    }
}

fn dispatch_error(node: &NodeId, command: u32, error: DispatchError) -> MeshError {
    match error {
        DispatchError::NoHandler => MeshError::NoHandler {
            node: node.clone(),
            command,
        },
        DispatchError::Handler(e) => MeshError::Handler {
            node: node.clone(),
            code: e.code,
            message: e.message,
        },
    }
}

pub(crate) fn status_error(node: &NodeId, timeout: Duration, status: &tonic::Status) -> MeshError {
    match status.code() {
        tonic::Code::Unauthenticated => MeshError::Unauthenticated(node.clone()),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => MeshError::Timeout {
            node: node.clone(),
            after: timeout,
        },
        _ => MeshError::Transport {
            node: node.clone(),
            message: status.message().to_owned(),
        },
    }
}
