//! The gRPC side of the mesh: receives calls from peers and runs the handlers.

use std::sync::Arc;

use proto::mesh::v1::{
    self as pb,
    mesh_server::{Mesh as MeshRpc, MeshServer},
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};
use tracing::{Instrument, debug, debug_span};

use crate::{
    auth::{CheckCredential, Credential},
    cluster::Cluster,
    handler::{DispatchError, Handlers, MeshContext},
    metrics,
    node::NodeId,
};

/// The mesh gRPC service with its credential check, ready to add to a server.
pub type MeshGrpcService = InterceptedService<MeshServer<MeshService>, CheckCredential>;

/// Runs handlers for calls from peers.
pub struct MeshService {
    pub(crate) handlers: Arc<Handlers>,
    pub(crate) cluster: Cluster,
}

pub(crate) fn grpc_service(service: MeshService, credential: Credential) -> MeshGrpcService {
    MeshServer::with_interceptor(service, CheckCredential(credential))
}

#[tonic::async_trait]
impl MeshRpc for MeshService {
    async fn call(
        &self,
        request: Request<pb::MeshRequest>,
    ) -> Result<Response<pb::MeshReply>, Status> {
        let request = request.into_inner();
        let command = request.command;
        let span = debug_span!("mesh_handle", node = %self.cluster.self_id(), from = %request.from_node, command);
        let _in_flight = self.cluster.track_request();
        let ctx = MeshContext {
            from: NodeId::new(request.from_node),
            command,
        };
        let result = self
            .handlers
            .dispatch(ctx, request.payload)
            .instrument(span)
            .await;
        let (reply, outcome) = match result {
            Ok(payload) => (
                pb::MeshReply {
                    payload,
                    error: None,
                },
                "ok",
            ),
            Err(DispatchError::NoHandler) => {
                let error = pb::HandlerError {
                    code: 0,
                    message: String::new(),
                    no_handler: true,
                };
                (
                    pb::MeshReply {
                        payload: Default::default(),
                        error: Some(error),
                    },
                    "no_handler",
                )
            }
            Err(DispatchError::Handler(e)) => {
                debug!(command, code = e.code, message = %e.message, "mesh handler failed");
                let error = pb::HandlerError {
                    code: e.code,
                    message: e.message,
                    no_handler: false,
                };
                (
                    pb::MeshReply {
                        payload: Default::default(),
                        error: Some(error),
                    },
                    "handler_error",
                )
            }
        };
        metrics::record_handled(command, outcome);
        Ok(Response::new(reply))
    }
}
