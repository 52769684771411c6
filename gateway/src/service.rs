//! The gateway's gRPC service for other services: Bind, Push, PushBatch, Kick, Presence. Each
//! applies to the users connected here and, unless `local_only`, forwards the others to every
//! other gateway (`Mesh::fan_out`, one call per gateway) and merges the answers.

use std::{collections::HashMap, future::Future, sync::Arc};

use bytes::Bytes;
use mesh::{NodeId, NotOnline, PeerChannel};
use proto::{
    gateway::v1::{self as pb, gateway_client::GatewayClient, gateway_server},
    logic::v1::BindMode,
};
use tonic::{Request, Response, Status};
use tracing::warn;
use wire::ErrorCode;

use crate::{
    conn::Ending,
    effects::wills_of,
    gateway::{FORWARD_TIMEOUT, Gateway},
    hold::TAKE_REUSED,
    moving::{ActivePush, Handed, Requests},
    session::Pushed,
    sessions::{LoginStamp, Older},
};

pub(crate) struct GatewayService(pub(crate) Arc<Gateway>);

fn result(user: &str, outcome: pb::Outcome, gateway: &NodeId) -> pb::UserResult {
    pb::UserResult {
        user_id: user.to_owned(),
        outcome: outcome as i32,
        gateway_node: gateway.to_string(),
    }
}

fn applied(user: &str, gateway: &NodeId) -> pb::UserResult {
    result(user, pb::Outcome::Applied, gateway)
}

fn not_online(user: &str) -> pb::UserResult {
    pb::UserResult {
        user_id: user.to_owned(),
        outcome: pb::Outcome::NotOnline as i32,
        gateway_node: String::new(),
    }
}

impl GatewayService {
    /// Forwards `call` to every other gateway for the users not found here, and merges: a
    /// user's result from another gateway replaces "not online" here.
    async fn forward<F, Fut>(
        &self,
        mut results: Vec<pb::UserResult>,
        local_only: bool,
        call: F,
    ) -> pb::UserResults
    where
        F: Fn(GatewayClient<PeerChannel>, Vec<String>) -> Fut,
        Fut: Future<Output = Result<Response<pb::UserResults>, Status>>,
    {
        let missing: Vec<String> = results
            .iter()
            .filter(|r| r.outcome == pb::Outcome::NotOnline as i32)
            .map(|r| r.user_id.clone())
            .collect();
        if local_only || missing.is_empty() {
            return pb::UserResults { results };
        }
        let gateway = &self.0;
        let answers = gateway
            .mesh
            .fan_out(gateway.other_gateways(), FORWARD_TIMEOUT, |channel| {
                call(GatewayClient::new(channel), missing.clone())
            })
            .await;
        let mut found: HashMap<String, pb::UserResult> = HashMap::new();
        for answer in answers {
            match answer.result {
                Ok(reply) => {
                    for result in reply.results {
                        if result.outcome != pb::Outcome::NotOnline as i32 {
                            found.insert(result.user_id.clone(), result);
                        }
                    }
                }
                Err(error) => {
                    warn!(gateway = %answer.node, %error, "a forwarded call was not answered")
                }
            }
        }
        for result in &mut results {
            if let Some(remote) = found.remove(&result.user_id) {
                *result = remote;
            }
        }
        pb::UserResults { results }
    }

    fn check_push(&self, route: u32, payload: &Bytes) -> Result<(), Status> {
        if self.0.push_fits(route, payload) {
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "a push of {} payload bytes exceeds the client frame limit of {} bytes (--max-frame-bytes); it could never be delivered",
            payload.len(),
            self.0.limits.max_frame
        )))
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
        let bindings = gateway
            .bindings_for(mode, &ids)
            .map_err(|refused| match refused {
                NotOnline::Unknown(_) => Status::invalid_argument(refused.to_string()),
                NotOnline::Draining(_) => Status::failed_precondition(refused.to_string()),
            })?;
        // Wills are kept for the first node bound (with COVER or APPEND).
        let wills = match (mode, ids.first()) {
            (BindMode::Cover | BindMode::Append, Some(node)) => wills_of(node, &request.wills),
            _ => Vec::new(),
        };
        let results = request
            .user_ids
            .iter()
            .map(|user| match gateway.sessions.by_user(user) {
                Some(session) => {
                    session.bind(
                        mode,
                        bindings.clone(),
                        wills.clone(),
                        request.revoke_wills.clone(),
                    );
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
        self.check_push(request.route, &request.payload)?;
        let gateway = &self.0;
        let _active = ActivePush::new(&gateway.forwards);
        let results = request
            .user_ids
            .iter()
            .map(
                |user| match gateway.push_one(user, request.route, &request.payload) {
                    Pushed::Queued => applied(user, &gateway.node_id),
                    Pushed::TooLarge | Pushed::Closed => not_online(user),
                },
            )
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
        let _active = ActivePush::new(&gateway.forwards);
        let mut reply = pb::PushBatchReply::default();
        for push in request.into_inner().pushes {
            if !gateway.push_fits(push.route, &push.payload) {
                warn!(
                    route = push.route,
                    size = push.payload.len(),
                    max = gateway.limits.max_frame,
                    "refusing a push over the client frame limit"
                );
                ::metrics::counter!(crate::metrics::FRAMES_REFUSED, "reason" => "too_large")
                    .increment(1);
                reply.too_large += 1;
                continue;
            }
            for user in &push.user_ids {
                match gateway.push_one(user, push.route, &push.payload) {
                    Pushed::Queued => reply.delivered += 1,
                    Pushed::TooLarge => reply.too_large += 1,
                    Pushed::Closed => reply.not_online += 1,
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
        let older_than = request.older_than.as_ref().map(LoginStamp::from_proto);
        let results = request
            .user_ids
            .iter()
            .map(|user| {
                let found = match &older_than {
                    Some(stamp) => gateway.sessions.older_than(user, stamp),
                    None => gateway
                        .sessions
                        .by_user(user)
                        .map_or(Older::None, Older::Found),
                };
                match found {
                    Older::Found(session) => {
                        gateway.kick_session(&session, code, &request.reason);
                        applied(user, &gateway.node_id)
                    }
                    Older::NewerHere => result(user, pb::Outcome::NewerHere, &gateway.node_id),
                    Older::None => not_online(user),
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

    async fn adopt_sessions(
        &self,
        request: Request<pb::SessionSnapshots>,
    ) -> Result<Response<pb::AdoptedSessions>, Status> {
        if !self.0.accepts_new_work() {
            return Err(Status::unavailable("this gateway is draining"));
        }
        let adopted = request
            .into_inner()
            .sessions
            .into_iter()
            .map(|snapshot| {
                if snapshot.user_id.is_empty() {
                    pb::Adopted {
                        refused: "only a logged-in session can move".into(),
                        ..pb::Adopted::default()
                    }
                } else {
                    self.0.adopt(snapshot)
                }
            })
            .collect();
        Ok(Response::new(pb::AdoptedSessions { adopted }))
    }

    async fn take_session(
        &self,
        request: Request<pb::TakeSessionRequest>,
    ) -> Result<Response<pb::Adopted>, Status> {
        let request = request.into_inner();
        let gateway = &self.0;
        let session = gateway
            .sessions
            .by_id(request.session_id)
            .filter(|s| s.user().as_deref() == Some(request.user_id.as_str()))
            .ok_or_else(|| Status::not_found("no such session here"))?;
        if session.epoch() != request.epoch {
            return Err(Status::failed_precondition(TAKE_REUSED));
        }
        let to = NodeId::new(request.to_gateway.as_str());
        let Handed { adopted, conn, .. } = gateway
            .hand_over(&session, &to, Requests::Ignore)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        if let Some(conn) = conn {
            // Its client resumed elsewhere: this connection is over, without a kick.
            conn.close_as(
                Ending::Replaced,
                "the session was resumed on another gateway",
            );
        }
        Ok(Response::new(adopted))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardBatch>,
    ) -> Result<Response<pb::ForwardAck>, Status> {
        self.0.take_forwarded(request.into_inner());
        Ok(Response::new(pb::ForwardAck {}))
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
            .map(|user| {
                match gateway
                    .sessions
                    .by_user(user)
                    // A login still being answered does not count yet (see `login_pending`).
                    .filter(|s| !s.state().login_pending)
                {
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
                }
            })
            .collect();
        let missing: Vec<String> = users
            .iter()
            .filter(|u| !u.online)
            .map(|u| u.user_id.clone())
            .collect();
        if !request.local_only && !missing.is_empty() {
            let forwarded = pb::PresenceRequest {
                user_ids: missing,
                local_only: true,
            };
            let answers = gateway
                .mesh
                .fan_out(gateway.other_gateways(), FORWARD_TIMEOUT, |channel| {
                    let forwarded = forwarded.clone();
                    async move { GatewayClient::new(channel).presence(forwarded).await }
                })
                .await;
            let mut found: HashMap<String, pb::UserPresence> = HashMap::new();
            for reply in answers.into_iter().filter_map(|a| a.result.ok()) {
                for user in reply.users.into_iter().filter(|u| u.online) {
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
