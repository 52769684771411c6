//! The gateway's gRPC service for other services: Bind, Push, Kick, Presence. Each applies to
//! the users connected here and, unless `local_only`, forwards the others to every other
//! gateway (one call per gateway) and merges the answers.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use futures::future::join_all;
use mesh::NodeId;
use proto::{
    gateway::v1::{self as pb, gateway_client::GatewayClient, gateway_server},
    logic::v1::BindMode,
};
use tonic::{Request, Response, Status};
use tracing::warn;
use wire::ErrorCode;

use crate::gateway::Gateway;

/// Time allowed to another gateway for a forwarded call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct GatewayService(pub(crate) Arc<Gateway>);

fn applied(user: &str, gateway: &NodeId) -> pb::UserResult {
    pb::UserResult {
        user_id: user.to_owned(),
        outcome: pb::Outcome::Applied as i32,
        gateway_node: gateway.to_string(),
    }
}

fn not_online(user: &str) -> pb::UserResult {
    pb::UserResult {
        user_id: user.to_owned(),
        outcome: pb::Outcome::NotOnline as i32,
        gateway_node: String::new(),
    }
}

impl GatewayService {
    /// Forwards `call` to every other gateway for the users not found here, and merges.
    async fn forward<F, Fut>(
        &self,
        mut results: Vec<pb::UserResult>,
        local_only: bool,
        call: F,
    ) -> pb::UserResults
    where
        F: Fn(GatewayClient<mesh::PeerChannel>, Vec<String>) -> Fut,
        Fut: Future<Output = Result<Response<pb::UserResults>, Status>>,
    {
        let missing: Vec<String> = results
            .iter()
            .filter(|r| r.outcome != pb::Outcome::Applied as i32)
            .map(|r| r.user_id.clone())
            .collect();
        if local_only || missing.is_empty() {
            return pb::UserResults { results };
        }
        let gateway = &self.0;
        let calls = gateway.other_gateways().into_iter().filter_map(|node| {
            let channel = gateway.mesh.peer_channel(&node).ok()?;
            let call = call(GatewayClient::new(channel), missing.clone());
            Some(async move { (node, tokio::time::timeout(FORWARD_TIMEOUT, call).await) })
        });
        let mut found: HashMap<String, pb::UserResult> = HashMap::new();
        for (node, answer) in join_all(calls).await {
            match answer {
                Ok(Ok(reply)) => {
                    for result in reply.into_inner().results {
                        if result.outcome == pb::Outcome::Applied as i32 {
                            found.insert(result.user_id.clone(), result);
                        }
                    }
                }
                Ok(Err(status)) => warn!(%node, %status, "a gateway refused a forwarded call"),
                Err(_) => warn!(%node, "a gateway did not answer a forwarded call in time"),
            }
        }
        for result in &mut results {
            if let Some(remote) = found.remove(&result.user_id) {
                *result = remote;
            }
        }
        pb::UserResults { results }
    }
}

#[tonic::async_trait]
impl gateway_server::Gateway for GatewayService {
    async fn bind(
        &self,
        request: Request<pb::BindRequest>,
    ) -> Result<Response<pb::UserResults>, Status> {
        let request = request.into_inner();
        let mode = BindMode::try_from(request.mode)
            .ok()
            .filter(|m| *m != BindMode::Unspecified)
            .ok_or_else(|| {
                Status::invalid_argument("bind mode must be COVER, APPEND, REMOVE or CLEAR")
            })?;
        let gateway = &self.0;
        let ids: Vec<NodeId> = request
            .node_ids
            .iter()
            .map(|id| NodeId::new(id.as_str()))
            .collect();
        let bindings = gateway.bindings_for(mode, &ids).map_err(|unknown| {
            let names: Vec<&str> = unknown.iter().map(NodeId::as_str).collect();
            Status::invalid_argument(format!("unknown node ids: {}", names.join(", ")))
        })?;
        if matches!(mode, BindMode::Cover | BindMode::Append)
            && let Some(draining) = ids
                .iter()
                .find(|id| !gateway.mesh.cluster().is_node_online(id))
        {
            return Err(Status::failed_precondition(format!(
                "node {draining} is draining and takes no new users"
            )));
        }
        let results = request
            .user_ids
            .iter()
            .map(|user| match gateway.sessions.by_user(user) {
                Some(session) => {
                    session.bind(mode, bindings.clone());
                    applied(user, &gateway.node_id)
                }
                None => not_online(user),
            })
            .collect();
        let reply = self
            .forward(results, request.local_only, |mut client, users| {
                let forwarded = pb::BindRequest {
                    user_ids: users,
                    local_only: true,
                    ..request.clone()
                };
                async move { client.bind(forwarded).await }
            })
            .await;
        Ok(Response::new(reply))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::UserResults>, Status> {
        let request = request.into_inner();
        let gateway = &self.0;
        let delivered = gateway.push_local(&request.user_ids, request.route, &request.payload);
        let results = request
            .user_ids
            .iter()
            .map(|user| {
                if delivered.get(user) == Some(&true) {
                    applied(user, &gateway.node_id)
                } else {
                    not_online(user)
                }
            })
            .collect();
        let reply = self
            .forward(results, request.local_only, |mut client, users| {
                let forwarded = pb::PushRequest {
                    user_ids: users,
                    local_only: true,
                    ..request.clone()
                };
                async move { client.push(forwarded).await }
            })
            .await;
        Ok(Response::new(reply))
    }

    async fn push_batch(
        &self,
        request: Request<pb::PushBatchRequest>,
    ) -> Result<Response<pb::PushBatchReply>, Status> {
        let gateway = &self.0;
        let mut reply = pb::PushBatchReply::default();
        for push in request.into_inner().pushes {
            for user in &push.user_ids {
                if gateway.push_one(user, push.route, &push.payload) {
                    reply.delivered += 1;
                } else {
                    reply.not_online += 1;
                }
            }
        }
        Ok(Response::new(reply))
    }

    async fn kick(
        &self,
        request: Request<pb::KickRequest>,
    ) -> Result<Response<pb::UserResults>, Status> {
        let request = request.into_inner();
        let gateway = &self.0;
        let code = if request.code == 0 {
            ErrorCode::Kicked as u32
        } else {
            request.code
        };
        let results = request
            .user_ids
            .iter()
            .map(|user| {
                let session = gateway.sessions.by_user(user).filter(|s| {
                    request.logged_in_before_ms == 0
                        || s.state().logged_in_at_ms < request.logged_in_before_ms
                });
                match session {
                    Some(session) => {
                        session.kick_with(code, &request.reason);
                        applied(user, &gateway.node_id)
                    }
                    None => not_online(user),
                }
            })
            .collect();
        let reply = self
            .forward(results, request.local_only, |mut client, users| {
                let forwarded = pb::KickRequest {
                    user_ids: users,
                    local_only: true,
                    ..request.clone()
                };
                async move { client.kick(forwarded).await }
            })
            .await;
        Ok(Response::new(reply))
    }

    async fn presence(
        &self,
        request: Request<pb::PresenceRequest>,
    ) -> Result<Response<pb::PresenceResponse>, Status> {
        let request = request.into_inner();
        let gateway = &self.0;
        let mut users: Vec<pb::UserPresence> = request
            .user_ids
            .iter()
            .map(|user| match gateway.sessions.by_user(user) {
                Some(session) => pb::UserPresence {
                    user_id: user.clone(),
                    online: true,
                    gateway_node: gateway.node_id.to_string(),
                    session_id: session.id,
                },
                None => pb::UserPresence {
                    user_id: user.clone(),
                    ..Default::default()
                },
            })
            .collect();
        let missing: Vec<String> = users
            .iter()
            .filter(|u| !u.online)
            .map(|u| u.user_id.clone())
            .collect();
        if !request.local_only && !missing.is_empty() {
            let calls = gateway.other_gateways().into_iter().filter_map(|node| {
                let channel = gateway.mesh.peer_channel(&node).ok()?;
                let forwarded = pb::PresenceRequest {
                    user_ids: missing.clone(),
                    local_only: true,
                };
                Some(async move {
                    let mut client = GatewayClient::new(channel);
                    tokio::time::timeout(FORWARD_TIMEOUT, client.presence(forwarded)).await
                })
            });
            let mut found: HashMap<String, pb::UserPresence> = HashMap::new();
            for reply in join_all(calls).await.into_iter().flatten().flatten() {
                for user in reply.into_inner().users.into_iter().filter(|u| u.online) {
                    found.insert(user.user_id.clone(), user);
                }
            }
            for user in &mut users {
                if let Some(remote) = found.remove(&user.user_id) {
                    *user = remote;
                }
            }
        }
        Ok(Response::new(pb::PresenceResponse { users }))
    }
}
