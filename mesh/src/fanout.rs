//! One way to call a gRPC service on several nodes at once: every call concurrent, each within
//! a timeout, every node's outcome reported (never dropped), failures as [`MeshError`]s.
//!
//! The gateway forwards bind/push/kick/presence to the other gateways with it, logins kick
//! older sessions with it, and the logic SDK reaches every gateway with it.

use std::{future::Future, time::Duration};

use futures::future::join_all;

use crate::{MeshError, NodeId, PeerChannel, mesh::Mesh};

/// What one node answered in a fan-out.
#[derive(Debug)]
pub struct Answer<T> {
    /// The node called.
    pub node: NodeId,
    /// Its reply, or why there is none.
    pub result: Result<T, MeshError>,
}

impl Mesh {
    /// Calls `call` on each of `nodes` at once, each with its own pooled channel and within
    /// `timeout`, and returns every node's answer in the order of `nodes`. A node that is not
    /// a member is answered [`MeshError::NodeUnknown`] without a call.
    pub async fn fan_out<T, F, Fut>(
        &self,
        nodes: impl IntoIterator<Item = NodeId>,
        timeout: Duration,
        call: F,
    ) -> Vec<Answer<T>>
    where
        F: Fn(PeerChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let calls = nodes.into_iter().map(|node| {
            let channel = self.peer_channel(&node);
            let call = &call;
            async move {
                let result = match channel {
                    Err(error) => Err(error),
                    // A call the node certainly did not process is sent again, within the
                    // same timeout.
                    Ok(channel) => {
                        match crate::retry::retrying_unprocessed(timeout, |_| call(channel.clone()))
                            .await
                        {
                            Err(_) => Err(MeshError::Timeout {
                                node: node.clone(),
                                after: timeout,
                            }),
                            Ok(Err(status)) => {
                                Err(crate::mesh::status_error(&node, timeout, &status))
                            }
                            Ok(Ok(reply)) => Ok(reply.into_inner()),
                        }
                    }
                };
                Answer { node, result }
            }
        });
        join_all(calls).await
    }
}
