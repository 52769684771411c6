//! The request path: where a client request goes (`router::decide`), its call on the node's
//! link (`link.rs`), and its answer, with the one mapping from what happened to the
//! client-visible code:
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
//!
//! No task is spawned per request: the connection's reader starts it, the link's task finishes
//! it (only a login, which asks the other gateways, finishes on a task of its own).

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use mesh::NodeId;
use proto::logic::v1::{self as pb, LogicRequest, LogicResponse};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tracing::{info, warn};
use wire::{Envelope, envelope};

use crate::{
    conn::{Conn, truncate},
    gateway::Gateway,
    link::{Failure, Pending},
    refusal::Refusal,
    router::{self, Decision},
    session::{Pushed, Session},
};

/// Longest error text of a logic server's answer passed to a client.
const MAX_ERROR_TEXT: usize = 1024;

/// Where a request goes, and what the logic node is told about the session.
struct Target {
    node: NodeId,
    /// Chosen by a binding.
    bound: bool,
    /// The node serves the route as public (so a login in its reply counts).
    public: bool,
    user: Option<Arc<str>>,
    attributes: HashMap<String, String>,
}

impl Gateway {
    /// Starts one request, whose in-flight slot is `permit`: answered at once when the gateway
    /// refuses it, else handed to the node's link, which finishes it.
    pub(crate) fn start_request(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        session: &Arc<Session>,
        request: Envelope,
        permit: OwnedSemaphorePermit,
    ) {
        let started = Instant::now();
        let (msg_id, route) = (request.msg_id, request.route);
        let target = match self.decide(session, route) {
            Ok(target) => target,
            Err(refusal) => {
                return self.respond(conn, msg_id, route, Err(refusal), permit, started);
            }
        };
        let call = LogicRequest {
            route,
            payload: request.payload,
            session_id: session.id,
            user_id: target.user.as_deref().unwrap_or_default().to_owned(),
            gateway_node: self.node_id.to_string(),
            attributes: target.attributes,
        };
        self.router
            .counter(&target.node)
            .fetch_add(1, Ordering::Relaxed);
        let pending = Pending {
            session: session.clone(),
            conn: conn.clone(),
            msg_id,
            route,
            node: target.node.clone(),
            public: target.public,
            bound: target.bound,
            permit,
            started,
            sent_on: None,
        };
        if let Err((failure, pending)) = self.call(&target.node, call, pending) {
            self.finish(pending, Err(failure));
        }
    }

    /// Finishes a request with what its node answered, or why it did not.
    pub(crate) fn finish(
        self: &Arc<Self>,
        pending: Pending,
        outcome: Result<LogicResponse, Failure>,
    ) {
        let node = pending.node.clone();
        self.router.counter(&node).fetch_sub(1, Ordering::Relaxed);
        let reply = match outcome {
            Ok(reply) => reply,
            Err(failure) => {
                let refusal = match failure {
                    Failure::Timeout => Refusal::UpstreamTimeout,
                    Failure::Unreachable => {
                        self.router.suspect(&node);
                        warn!(session = pending.session.id, %node, "logic node unreachable");
                        Refusal::UpstreamUnreachable
                    }
                    Failure::Gone if pending.bound => {
                        info!(session = pending.session.id, %node, "dropping the binding to a node that is gone");
                        let wills = pending.session.drop_bindings(std::slice::from_ref(&node));
                        self.deliver_wills(&pending.session, wills);
                        Refusal::BoundNodeGone
                    }
                    Failure::Gone => Refusal::UpstreamUnreachable,
                };
                return self.respond_pending(pending, Err(refusal));
            }
        };
        self.router.answered(&node);
        let logs_in = reply.status == 0 && !reply.login_user_id.is_empty() && pending.public;
        if logs_in {
            // A login asks the other gateways about older sessions of the user: off the link.
            let gateway = self.clone();
            self.tracker.spawn(async move {
                let answer = match gateway.login(&pending.session, &reply.login_user_id).await {
                    Ok(()) => gateway
                        .answer(&pending, &node, reply)
                        .and_then(|response| gateway.with_session_info(&pending, response)),
                    Err(refusal) => Err(refusal),
                };
                gateway.respond_pending(pending, answer);
            });
        } else {
            if reply.status == 0 && !reply.login_user_id.is_empty() {
                warn!(session = pending.session.id, %node, "ignoring a login from a route that is not public");
            }
            // A suggested move (room affinity) is rare: only then is the session kept past
            // the answer.
            let suggestion = (reply.status == 0 && !reply.move_to_gateway.is_empty()).then(|| {
                let to = NodeId::new(reply.move_to_gateway.as_str());
                (to, pending.conn.clone(), pending.session.clone())
            });
            let answer = self.answer(&pending, &node, reply);
            let answered = answer.is_ok();
            self.respond_pending(pending, answer);
            if let Some((to, conn, session)) = suggestion.filter(|_| answered) {
                self.suggest_move(&conn, &session, to);
            }
        }
    }

    /// Applies what an answer asks of the session (bindings, attributes, watch), and builds
    /// the response.
    fn answer(
        &self,
        pending: &Pending,
        node: &NodeId,
        reply: LogicResponse,
    ) -> Result<Envelope, Refusal> {
        let session = &pending.session;
        self.apply_effects(session, node, &reply)?;
        let error = match Refusal::text_for_code(reply.status) {
            Some(fixed) => fixed.to_owned(),
            None => truncate(&reply.error, MAX_ERROR_TEXT).to_owned(),
        };
        let response = envelope::response(
            pending.msg_id,
            pending.route,
            reply.status,
            error,
            reply.payload,
        );
        if !pending.conn.fits(&response) {
            warn!(session = session.id, %node, route = pending.route, "the logic server's answer exceeds the client frame limit");
            return Err(Refusal::ResponseTooLarge);
        }
        Ok(response)
    }

    /// A login's answer, with what the client needs to resume the session.
    fn with_session_info(
        &self,
        pending: &Pending,
        mut response: Envelope,
    ) -> Result<Envelope, Refusal> {
        let session = &pending.session;
        response.session = Some(self.session_info(session, session.epoch()));
        if pending.conn.fits(&response) {
            Ok(response)
        } else {
            Err(Refusal::ResponseTooLarge)
        }
    }

    fn respond_pending(&self, pending: Pending, answer: Result<Envelope, Refusal>) {
        let Pending {
            conn,
            msg_id,
            route,
            permit,
            started,
            ..
        } = pending;
        self.respond(&conn, msg_id, route, answer, permit, started);
    }

    /// Answers a request: frees its message id, queues the response, frees its slot.
    fn respond(
        &self,
        conn: &Conn,
        msg_id: u32,
        route: u32,
        answer: Result<Envelope, Refusal>,
        permit: OwnedSemaphorePermit,
        started: Instant,
    ) {
        let (response, then_kick) = match answer {
            Ok(response) => (response, None),
            Err(refusal) => (
                envelope::error(msg_id, route, refusal.code(), refusal.text()),
                (refusal == Refusal::LoggedInElsewhere).then_some(refusal),
            ),
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
        // Free the id before the client can see the response and reuse it.
        conn.end_request(msg_id);
        conn.send(&response);
        if let Some(refusal) = then_kick {
            // The session lost a login race.
            conn.kick(refusal.code(), refusal.text());
        }
        drop(permit);
    }

    /// Delivers a node's push to the users of it held here (the payload shared, not copied);
    /// users who moved away recently have it forwarded.
    pub(crate) fn deliver(&self, delivery: pb::Delivery, from: &NodeId) {
        let (found, mut missing) = self.sessions.by_users(&delivery.user_ids);
        let mut queued = 0;
        for (user, session) in found {
            match session.push(delivery.route, delivery.payload.clone()) {
                Pushed::Queued => queued += 1,
                Pushed::TooLarge => {}
                // Ended just now: moved away, perhaps.
                Pushed::Closed => missing.push(user),
            }
        }
        self.metrics.pushes.increment(queued);
        for user in missing {
            self.forward_if_moved(
                user,
                delivery.route,
                &delivery.payload,
                Some(from),
                delivery.to_every_gateway,
            );
        }
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
            let wills = session.drop_bindings(&gone);
            self.deliver_wills(session, wills);
        }
        match decision {
            Decision::Send { node, bound } => {
                let public = table
                    .members
                    .get(&node)
                    .is_some_and(|n| n.serves_publicly(route));
                Ok(Target {
                    node,
                    bound,
                    public,
                    user,
                    attributes,
                })
            }
            Decision::Refuse(refusal) => Err(refusal),
        }
    }

    /// Pushes to one user if connected here.
    /// Users who moved away recently have it forwarded (and count as reached here).
    pub(crate) fn push_one(&self, user: &str, route: u32, payload: &bytes::Bytes) -> Pushed {
        let outcome = self
            .sessions
            .by_user(user)
            .map_or(Pushed::Closed, |s| s.push(route, payload.clone()));
        match outcome {
            Pushed::Queued => self.metrics.pushes.increment(1),
            Pushed::Closed if self.forward_if_moved(user, route, payload, None, false) => {
                return Pushed::Queued;
            }
            _ => {}
        }
        outcome
    }
}
