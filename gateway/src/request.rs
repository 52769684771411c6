//! The request path: where a client request goes (`router::decide`), the call to that logic
//! node, and the one mapping from what happened to the client-visible code:
//!
//! | what happened | code | binding |
//! |---|---|---|
//! | the node answered | its status | as the answer asks |
//! | no answer within `--request-timeout-ms` (a slow or paused node) | `UPSTREAM_TIMEOUT` | kept |
//! | the node could not be reached (refused, reset) but is still a member | `UPSTREAM_FAILED` | kept |
//! | the bound node left the cluster or was declared dead | `BOUND_NODE_UNAVAILABLE` | dropped |
//!
//! A binding is dropped only when its node is confirmed gone (membership: it left, or it was
//! silent for the whole failure-detection time), never on one failed call: a node that hiccups
//! keeps its users.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use mesh::{MeshError, NodeId};
use proto::logic::v1::{LogicRequest, LogicResponse, logic_client::LogicClient};
use tokio::time::Instant;
use tracing::{info, warn};
use wire::{Envelope, envelope};

use crate::{
    gateway::Gateway,
    refusal::Refusal,
    router::{self, Decision},
    session::{Session, truncate},
};

/// Longest error text of a logic server's answer passed to a client.
const MAX_ERROR_TEXT: usize = 1024;

/// Where a request goes, and what the logic node is told about the session.
struct Target {
    node: NodeId,
    /// The node serves the route as public (so a login in its reply counts).
    public: bool,
    user: Option<Arc<str>>,
    attributes: HashMap<String, String>,
}

/// Why a call to a logic node got no answer.
#[derive(Debug)]
enum Upstream {
    /// No answer in time.
    Timeout,
    /// Refused, reset, or otherwise not reachable, while still a member.
    Unreachable(String),
    /// Not a member any more (it left between the decision and the call); nothing was sent.
    Gone(LogicRequest),
}

/// The answer to one request, and whether the session ends after it.
pub(crate) struct Handled {
    pub(crate) response: Envelope,
    /// The session lost a login race: kick it once the response is queued.
    pub(crate) then_kick: Option<Refusal>,
}

impl Gateway {
    /// Handles one request envelope: the response to send, and what follows it.
    pub(crate) async fn handle_request(
        &self,
        session: &Arc<Session>,
        request: Envelope,
    ) -> Handled {
        let started = Instant::now();
        let (msg_id, route) = (request.msg_id, request.route);
        let mut then_kick = None;
        let response = match self.route_request(session, request).await {
            Ok(response) => response,
            Err(refusal) => {
                if refusal == Refusal::LoggedInElsewhere {
                    then_kick = Some(refusal);
                }
                envelope::error(msg_id, route, refusal.code(), refusal.text())
            }
        };
        if response.status == 0 {
            self.metrics.requests_ok.increment(1);
        } else {
            let status = wire::envelope::code_name(response.status);
            ::metrics::counter!(crate::metrics::REQUESTS, "status" => status).increment(1);
        }
        self.metrics
            .request_duration
            .record(started.elapsed().as_secs_f64());
        Handled {
            response,
            then_kick,
        }
    }

    async fn route_request(
        &self,
        session: &Arc<Session>,
        request: Envelope,
    ) -> Result<Envelope, Refusal> {
        let (msg_id, route) = (request.msg_id, request.route);
        let mut target = self.decide(session, route)?;
        let mut call = LogicRequest {
            route,
            payload: request.payload,
            session_id: session.id,
            user_id: target.user.as_deref().unwrap_or_default().to_owned(),
            gateway_node: self.node_id.to_string(),
            attributes: std::mem::take(&mut target.attributes),
        };
        let mut reply = self.call_logic(&target.node, call).await;
        if let Err(Upstream::Gone(unsent)) = reply {
            // The node left after the decision: decide again (a binding to it is dropped).
            target = self.decide(session, route)?;
            call = unsent;
            reply = self.call_logic(&target.node, call).await;
        }
        let reply = match reply {
            Ok(reply) => reply,
            Err(Upstream::Timeout) => return Err(Refusal::UpstreamTimeout),
            Err(Upstream::Unreachable(reason)) => {
                warn!(session = session.id, node = %target.node, %reason, "logic node unreachable");
                return Err(Refusal::UpstreamUnreachable);
            }
            Err(Upstream::Gone(_)) => return Err(Refusal::UpstreamUnreachable),
        };
        self.apply_effects(session, &target.node, target.public, &reply)
            .await?;
        let error = match Refusal::text_for_code(reply.status) {
            Some(fixed) => fixed.to_owned(),
            None => truncate(&reply.error, MAX_ERROR_TEXT).to_owned(),
        };
        let response = envelope::response(msg_id, route, reply.status, error, reply.payload);
        if !session.fits(&response) {
            warn!(session = session.id, node = %target.node, route, "the logic server's answer exceeds the client frame limit");
            return Err(Refusal::ResponseTooLarge);
        }
        Ok(response)
    }

    /// Where the session's request for `route` goes, with what the logic node needs to know.
    fn decide(&self, session: &Session, route: u32) -> Result<Target, Refusal> {
        let fallback = self.limits.fallback_routes.contains(&route);
        let table = self.router.table(self.mesh.cluster().members());
        let (user, attributes, decision, gone) = {
            let state = session.state();
            let (decision, gone) = router::decide(
                &table,
                route,
                state.user.is_some(),
                &state.bindings,
                fallback,
                |n| self.router.load(n),
                |id| self.router.is_healthy(id),
                |n| rand::random_range(0..n),
            );
            (state.user.clone(), state.attributes.clone(), decision, gone)
        };
        if !gone.is_empty() {
            info!(session = session.id, nodes = ?gone, "dropping bindings to nodes that are gone");
            session.drop_bindings(&gone);
        }
        match decision {
            Decision::Send { node, .. } => {
                let public = table
                    .members
                    .get(&node)
                    .is_some_and(|n| n.serves_publicly(route));
                Ok(Target {
                    node,
                    public,
                    user,
                    attributes,
                })
            }
            Decision::Refuse(refusal) => Err(refusal),
        }
    }

    /// Calls `Logic.Handle` on `node` within the request timeout: one deadline, so a slow node
    /// is always a timeout (the transport's own deadline error is a timeout too).
    async fn call_logic(
        &self,
        node: &NodeId,
        request: LogicRequest,
    ) -> Result<LogicResponse, Upstream> {
        let channel = match self.mesh.peer_channel(node) {
            Ok(channel) => channel,
            Err(MeshError::NodeUnknown(_)) => return Err(Upstream::Gone(request)),
            Err(other) => return Err(Upstream::Unreachable(other.to_string())),
        };
        let counter = self.router.counter(node);
        counter.fetch_add(1, Ordering::Relaxed);
        // One deadline for every attempt; a call the node certainly did not process (turned
        // away by a GOAWAY, refused, never sent) is sent again within it.
        let result = mesh::retrying_unprocessed(self.limits.request_timeout, |left| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(left);
            let mut client = LogicClient::new(channel.clone());
            async move { client.handle(call).await }
        })
        .await;
        counter.fetch_sub(1, Ordering::Relaxed);
        match result {
            Err(_) => Err(Upstream::Timeout),
            Ok(Err(status)) => match status.code() {
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Err(Upstream::Timeout),
                _ => {
                    self.router.suspect(node);
                    Err(Upstream::Unreachable(status.message().to_owned()))
                }
            },
            Ok(Ok(reply)) => {
                self.router.answered(node);
                Ok(reply.into_inner())
            }
        }
    }
}
