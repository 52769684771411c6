//! What a logic response asks of the session, applied before the client sees the response:
//! login (public routes only), then "me" bindings, attributes and watch under one lock.
//!
//! Login decides between two sessions of one user by their login stamps (`sessions.rs`): the
//! local table first, then every other gateway is asked to kick sessions of the user older
//! than this one. A gateway that holds a newer one says so, and then this login loses. Each
//! gateway registers its login before it asks the others, so of two concurrent logins at
//! least one sees the other, and the order decides: exactly one session survives.

use std::{sync::Arc, time::Duration};

use mesh::{NodeId, NotOnline};
use proto::{
    gateway::v1::{self as pb, gateway_client::GatewayClient},
    logic::v1::{BindMode, LogicResponse},
};
use tracing::{info, warn};
use wire::ErrorCode;

use crate::{
    binding::Binding,
    gateway::{Gateway, now_ms},
    refusal::Refusal,
    session::{Effects, Session, Will},
    sessions::Login,
};

/// Longest user id a login may attach (a longer one is a logic server bug).
pub(crate) const MAX_USER_ID_BYTES: usize = 256;

/// Time each other gateway has to answer a login's kick.
const LOGIN_KICK_TIMEOUT: Duration = Duration::from_secs(2);

impl Gateway {
    /// Applies what a successful logic response asks of the session besides a login ("me"
    /// bindings, attributes, watch), in one critical section.
    pub(crate) fn apply_effects(
        &self,
        session: &Session,
        node: &NodeId,
        reply: &LogicResponse,
    ) -> Result<(), Refusal> {
        if reply.status != 0 {
            return Ok(());
        }
        let mut effects = Effects::default();
        // The node a will is for: the one this answer binds the user to, else this one.
        let mut will_node = node.clone();
        if let Some(change) = &reply.bind_me {
            let mode = BindMode::try_from(change.mode).unwrap_or(BindMode::Unspecified);
            let ids: Vec<NodeId> = change
                .node_ids
                .iter()
                .map(|id| NodeId::new(id.as_str()))
                .collect();
            if matches!(mode, BindMode::Cover | BindMode::Append)
                && let Some(first) = ids.first()
            {
                will_node = first.clone();
            }
            match self.bindings_for(mode, &ids) {
                Ok(bindings) => effects.bind = Some((mode, bindings)),
                Err(refused) => {
                    warn!(session = session.id, %node, %refused, "a logic server asked for a binding that cannot be applied");
                    return Err(Refusal::Internal);
                }
            }
        }
        effects.attributes = reply.set_attributes.clone();
        if reply.watch_session {
            effects.watch = Some(node.clone());
        }
        if !reply.wills.is_empty() || !reply.revoke_wills.is_empty() {
            effects.wills = wills_of(&will_node, &reply.wills);
            effects.revoke_wills = reply.revoke_wills.clone();
            effects.will_node = Some(will_node);
        }
        session.apply(effects);
        Ok(())
    }

    /// Bindings for `ids`, checked against the cluster: Cover and Append need online members;
    /// Remove and Clear take any id (a gone node can be unbound).
    pub(crate) fn bindings_for(
        &self,
        mode: BindMode,
        ids: &[NodeId],
    ) -> Result<Vec<Binding>, NotOnline> {
        if matches!(mode, BindMode::Cover | BindMode::Append) {
            self.mesh.cluster().require_online(ids)?;
        }
        let table = self.router.table(self.mesh.cluster().members());
        Ok(ids
            .iter()
            .map(|id| Binding {
                node: id.clone(),
                routes: table.routes_of(id).unwrap_or_else(|| Arc::from(Vec::new())),
            })
            .collect())
    }

    /// Attaches a user to a session. An older session of the same user is kicked, here or on
    /// any other gateway, before the login response goes out; if another gateway holds a newer
    /// one, this login loses (`LOGGED_IN_ELSEWHERE`) and this session is kicked instead.
    pub(crate) async fn login(
        self: &Arc<Self>,
        session: &Arc<Session>,
        user: &str,
    ) -> Result<(), Refusal> {
        if user.len() > MAX_USER_ID_BYTES {
            warn!(
                session = session.id,
                len = user.len(),
                "a logic server logged in a user id over the limit"
            );
            return Err(Refusal::Internal);
        }
        let login = self
            .sessions
            .login(session, Arc::from(user), &self.node_id, now_ms())?;
        let Login::New { stamp, displaced } = login else {
            return Ok(());
        };
        if let Some(displaced) = displaced {
            self.kick_session(
                &displaced,
                ErrorCode::LoggedInElsewhere as u32,
                "logged in from another connection",
            );
        }
        if let Some(conn) = session.conn() {
            conn.span.record("user", user);
        }
        let kick = pb::KickRequest {
            user_ids: vec![user.to_owned()],
            code: ErrorCode::LoggedInElsewhere as u32,
            reason: "logged in from another connection".into(),
            local_only: true,
            older_than: Some(stamp.to_proto()),
        };
        let answers = self
            .mesh
            .fan_out(self.other_gateways(), LOGIN_KICK_TIMEOUT, |channel| {
                let kick = kick.clone();
                async move { GatewayClient::new(channel).kick(kick).await }
            })
            .await;
        let unanswered = answers
            .iter()
            .filter(|a| a.result.as_ref().is_err_and(mesh::MeshError::is_no_answer))
            .count();
        let waited = self.wait_for_unanswered_gateways(unanswered).await;
        if !waited.is_zero() {
            ::metrics::counter!(crate::metrics::LOGIN_WAITS).increment(1);
            info!(
                session = session.id,
                user,
                ?waited,
                unanswered,
                "the login waited until gateways that did not answer were certainly fenced"
            );
        }
        let mut newer_elsewhere = None;
        for answer in answers {
            match answer.result {
                Ok(results) => {
                    if results
                        .results
                        .iter()
                        .any(|r| r.outcome == pb::Outcome::NewerHere as i32)
                    {
                        newer_elsewhere = Some(answer.node);
                    }
                }
                Err(error) => {
                    warn!(gateway = %answer.node, user, %error, "could not ask a gateway to kick an older session");
                }
            }
        }
        if let Some(gateway) = newer_elsewhere {
            info!(session = session.id, user, %gateway, "a newer login of the same user holds; this one loses");
            // The request is answered with the refusal, then the session is kicked.
            self.sessions.forget_user(session);
            return Err(Refusal::LoggedInElsewhere);
        }
        session.state().login_pending = false;
        info!(session = session.id, user, "logged in");
        Ok(())
    }
}

/// The wills `node` left, as the session keeps them (each payload shared, not copied).
pub(crate) fn wills_of(node: &NodeId, wills: &[proto::logic::v1::Will]) -> Vec<Will> {
    wills
        .iter()
        .map(|will| Will {
            node: node.clone(),
            key: will.key.clone(),
            route: will.route,
            payload: will.payload.clone(),
        })
        .collect()
}
