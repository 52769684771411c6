//! A session's life beyond its connection: held for the resume window when its connection
//! drops without a goodbye, resumed by a token on the gateway holding it,
//! ended (rooms and queues told), kicked; and the wills of a node delivered when that node is
//! gone.
//!
//! | the connection ends by | the session |
//! |---|---|
//! | GOODBYE, a WebSocket close frame | ends at once; bound and watching nodes are told |
//! | dropping (closed without goodbye, reset, idle timeout) | is held, detached, for `--resume-window-ms`; ends when the window passes |
//! | a kick (logged in elsewhere, kicked by a server, slow consumer, bad input) | ends at once |
//! | a resume on another connection | lives on, on that connection |

use std::{sync::Arc, time::Duration};

use mesh::{NodeEvent, NodeId};
use proto::{
    client::v1::{self as client_pb, Resumed},
    gateway::v1::{TakeSessionRequest, gateway_client::GatewayClient},
};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use wire::{Envelope, ErrorCode, envelope};

use crate::{
    conn::{Conn, Ending},
    gateway::{Gateway, now_ms},
    session::{Session, Will},
    token::{Claims, TokenError},
};

/// Time another gateway has to hand over a session for a resume.
const TAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a gateway answers a TakeSession whose epoch has passed (the mesh keeps a status's
/// text, not its code).
pub(crate) const TAKE_REUSED: &str = "the session's token was used already";

/// Settings of held sessions and tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResumeSettings {
    /// How long a session whose connection dropped is held.
    pub(crate) window: Duration,
    /// How long a resume token is good for.
    pub(crate) token_ttl: Duration,
}

impl Gateway {
    /// What a client needs to resume `session` at `epoch`.
    pub(crate) fn session_info(&self, session: &Session, epoch: u64) -> client_pb::SessionInfo {
        let user = session.user().as_deref().unwrap_or_default().to_owned();
        let expires_at_ms = now_ms() + self.resume.token_ttl.as_millis() as u64;
        let token = self.tokens.issue(&Claims {
            cluster: self.tokens.cluster().to_owned(),
            user: user.clone(),
            session: session.id,
            gateway: self.node_id.to_string(),
            epoch,
            expires_at_ms,
        });
        client_pb::SessionInfo {
            session_id: session.id,
            resume_token: token,
            token_expires_at_ms: expires_at_ms,
            resume_window_ms: self.resume.window.as_millis() as u64,
            user_id: user,
        }
    }

    /// A connection ended: what becomes of the session it carried.
    pub(crate) fn connection_ended(self: &Arc<Self>, conn: &Arc<Conn>, session: &Arc<Session>) {
        if !session.carried_by(conn) {
            // Resumed elsewhere, moved, or already ended.
            return;
        }
        match conn.ending() {
            Ending::Replaced | Ending::Moved => {}
            Ending::Dropped if session.user().is_some() => self.hold(session, conn),
            Ending::Goodbye => self.end_session(session, "goodbye", &conn.end_reason()),
            Ending::Dropped => self.end_session(session, "dropped", &conn.end_reason()),
            Ending::Kicked(_) => self.end_session(session, "kicked", &conn.end_reason()),
        }
    }

    /// Holds a session whose connection dropped, for the resume window.
    fn hold(self: &Arc<Self>, session: &Arc<Session>, conn: &Arc<Conn>) {
        if !session.detach(conn) {
            return;
        }
        let window = self.resume.window;
        info!(session = session.id, user = session.user().as_deref().unwrap_or(""), ?window, reason = %conn.end_reason(), "connection dropped; session held for a resume");
        ::metrics::counter!(crate::metrics::SESSIONS_HELD).increment(1);
        self.detached_changed(1);
        self.hold_detached(session);
    }

    /// Ends `session` (held without a connection) when the resume window passes, unless it
    /// was resumed (or moved) meanwhile.
    pub(crate) fn hold_detached(self: &Arc<Self>, session: &Arc<Session>) {
        let window = self.resume.window;
        let gateway = self.clone();
        let session = session.clone();
        self.tracker.spawn(async move {
            let held_since = session.life();
            tokio::select! {
                _ = tokio::time::sleep(window) => {}
                _ = gateway.stopping.cancelled() => return,
            }
            // Still detached since then: nobody resumed it in time.
            if session.life() == held_since {
                gateway.end_session(&session, "window_passed", "the resume window passed");
            }
        });
    }

    /// Counts sessions held without a connection (gauge).
    pub(crate) fn detached_changed(&self, delta: i64) {
        let now = self
            .detached
            .fetch_add(delta, std::sync::atomic::Ordering::Relaxed)
            + delta;
        ::metrics::gauge!(crate::metrics::SESSIONS_DETACHED).set(now as f64);
    }

    /// Ends a session: it leaves the table and the nodes it is bound to or watched by are told.
    /// `cause` labels the count of ended sessions; `reason` is what the nodes are told.
    pub(crate) fn end_session(
        self: &Arc<Self>,
        session: &Arc<Session>,
        cause: &'static str,
        reason: &str,
    ) {
        let Some(ended) = session.end() else {
            return;
        };
        if ended.was_detached {
            self.detached_changed(-1);
        }
        if let Some(conn) = ended.conn
            && !conn.is_ending()
        {
            conn.close_as(Ending::Kicked(0), reason);
        }
        let count = self.sessions.remove(session);
        self.sessions_changed(count);
        self.session_closed(session, reason);
        if let Some(user) = session.user() {
            ::metrics::counter!(crate::metrics::SESSIONS_ENDED, "cause" => cause).increment(1);
            info!(
                session = session.id,
                user = %user,
                cause,
                reason,
                "session ended"
            );
        }
    }

    /// Kicks a session: its connection gets the kick (and the session ends with it); a held
    /// session just ends.
    pub(crate) fn kick_session(self: &Arc<Self>, session: &Arc<Session>, code: u32, reason: &str) {
        match session.conn() {
            Some(conn) => conn.kick_with(code, reason),
            None => self.end_session(session, "kicked", reason),
        }
    }

    /// Handles a RESUME on `conn`, which carries the anonymous session `current`: answers it
    /// (with the replayed pushes after a success) and returns the session the connection
    /// carries from now on.
    pub(crate) async fn resume(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        current: &Arc<Session>,
        request: Envelope,
    ) -> Option<Arc<Session>> {
        let msg_id = request.msg_id;
        let refuse = |code: ErrorCode, text: &str| {
            ::metrics::counter!(crate::metrics::RESUMES, "outcome" => wire::envelope::code_name(code as u32)).increment(1);
            conn.send(&envelope::error(msg_id, 0, code, text));
            None
        };
        let Some(resume) = request.resume else {
            return refuse(ErrorCode::BadRequest, "a resume carries its token");
        };
        if current.user().is_some() {
            return refuse(
                ErrorCode::AlreadyLoggedIn,
                "this connection already carries a session",
            );
        }
        let claims = match self.tokens.check(&resume.token, now_ms()) {
            Ok(claims) => claims,
            Err(TokenError::Invalid) => {
                return refuse(ErrorCode::TokenInvalid, "not a token of this cluster");
            }
            Err(TokenError::WrongCluster) => {
                return refuse(
                    ErrorCode::TokenWrongCluster,
                    "the token was issued by another cluster",
                );
            }
            Err(TokenError::Expired) => {
                return refuse(ErrorCode::TokenExpired, "the token expired");
            }
        };
        if !resume.user_id.is_empty() && resume.user_id != claims.user {
            return refuse(ErrorCode::TokenWrongUser, "the token is another user's");
        }
        // Held here, or taken from the gateway holding it (it hands the session over, then
        // answers).
        let (session, epoch) = match self.sessions.by_id(claims.session) {
            Some(session) => (session, claims.epoch),
            None => match self.take_session(&claims).await {
                Ok(session) => {
                    let epoch = session.epoch();
                    (session, epoch)
                }
                Err(ErrorCode::SessionGone) if self.holder_fenced_off(&claims) => {
                    return self.restart(conn, current, msg_id, &claims).await;
                }
                Err(code) => return refuse(code, refusal_text(code)),
            },
        };
        if session.user().as_deref() != Some(claims.user.as_str()) {
            return refuse(ErrorCode::TokenWrongUser, "the token is another user's");
        }
        let user = claims.user.clone();
        let resumed = session.resume(conn, epoch, resume.last_seq, |epoch, resumed, first_seq| {
            let mut answer = envelope::response(msg_id, 0, 0, String::new(), bytes::Bytes::new());
            answer.resumed = Some(Resumed {
                resumed,
                first_seq,
                session: Some(self.session_info(&session, epoch)),
                user_id: user.clone(),
            });
            answer
        });
        let resumption = match resumed {
            Ok(resumption) => resumption,
            Err(code) => return refuse(code, refusal_text(code)),
        };
        if resumption.was_detached {
            self.detached_changed(-1);
        }
        if let Some(old) = resumption.replaced {
            old.close_as(
                Ending::Replaced,
                "the session was resumed on another connection",
            );
        }
        // The anonymous session this connection started with is not needed any more.
        if current.end().is_some() {
            let count = self.sessions.remove(current);
            self.sessions_changed(count);
        }
        conn.span.record("user", claims.user.as_str());
        info!(session = session.id, user = %claims.user, resumed = resumption.resumed, first_seq = resumption.first_seq, "session resumed");
        let outcome = if resumption.resumed { "resumed" } else { "gap" };
        ::metrics::counter!(crate::metrics::RESUMES, "outcome" => outcome).increment(1);
        Some(session)
    }

    /// True when the gateway that issued `claims` is cut off from this gateway's side of the
    /// cluster, which keeps the majority: not a member here, or fenced.
    fn holder_fenced_off(&self, claims: &Claims) -> bool {
        let cluster = self.mesh.cluster();
        if cluster.quorum() != mesh::QuorumState::Serving {
            return false;
        }
        cluster
            .node(&NodeId::new(claims.gateway.as_str()))
            .is_none_or(|holder| holder.quorum == mesh::QuorumState::Fenced)
    }

    /// A resume whose session is out of reach on a fenced gateway (which ended it when it was
    /// fenced): the token still proves the user, so the session starts again here, logged in
    /// (older sessions of the user are kicked as for any login) with nothing else: the answer
    /// says `resumed: false` and the pushes start again at 1.
    async fn restart(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        current: &Arc<Session>,
        msg_id: u32,
        claims: &Claims,
    ) -> Option<Arc<Session>> {
        if let Err(refusal) = self.login(current, &claims.user).await {
            ::metrics::counter!(crate::metrics::RESUMES, "outcome" => "restart_refused")
                .increment(1);
            conn.send(&envelope::error(msg_id, 0, refusal.code(), refusal.text()));
            return None;
        }
        let mut answer = envelope::response(msg_id, 0, 0, String::new(), bytes::Bytes::new());
        answer.resumed = Some(Resumed {
            resumed: false,
            first_seq: 1,
            session: Some(self.session_info(current, current.epoch())),
            user_id: claims.user.clone(),
        });
        conn.send(&answer);
        conn.span.record("user", claims.user.as_str());
        info!(session = current.id, user = %claims.user, holder = %claims.gateway, "session started again: its gateway is cut off from the majority");
        ::metrics::counter!(crate::metrics::RESUMES, "outcome" => "restarted").increment(1);
        Some(current.clone())
    }

    /// Takes a session held by another gateway for a resume here: asks the gateway the token
    /// names or, when that one is gone, every other gateway (a drained gateway hands its held
    /// sessions on).
    async fn take_session(self: &Arc<Self>, claims: &Claims) -> Result<Arc<Session>, ErrorCode> {
        let holder = NodeId::new(claims.gateway.as_str());
        if holder == self.node_id {
            return Err(ErrorCode::SessionGone);
        }
        let request = TakeSessionRequest {
            session_id: claims.session,
            epoch: claims.epoch,
            user_id: claims.user.clone(),
            to_gateway: self.node_id.to_string(),
        };
        let asked = if self.mesh.cluster().members().contains_key(&holder) {
            vec![holder]
        } else {
            self.other_gateways()
        };
        let answers = self
            .mesh
            .fan_out(asked, TAKE_TIMEOUT, |channel| {
                let request = request.clone();
                async move { GatewayClient::new(channel).take_session(request).await }
            })
            .await;
        let mut refusal = ErrorCode::SessionGone;
        for answer in answers {
            match answer.result {
                Ok(_) => {
                    return self
                        .sessions
                        .by_id(claims.session)
                        .ok_or(ErrorCode::SessionGone);
                }
                Err(mesh::MeshError::Transport { message, .. }) if message == TAKE_REUSED => {
                    refusal = ErrorCode::TokenReused;
                }
                Err(error) => debug!(gateway = %answer.node, %error, "no session to take there"),
            }
        }
        Err(refusal)
    }

    /// Follows membership: a node that is gone (it left, or was declared dead) has its wills
    /// delivered (see [`Gateway::node_gone`]).
    pub(crate) async fn follow_nodes(self: Arc<Self>) {
        let mut events = self.mesh.cluster().subscribe();
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = self.stopping.cancelled() => return,
            };
            match event {
                Ok(NodeEvent::Gone(node)) => self.node_gone(&node.id),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Events were missed: every will of a node that is not a member now.
                    let members = self.mesh.cluster().members();
                    let mut gone: Vec<NodeId> = Vec::new();
                    for session in self.sessions.all() {
                        for will in &session.state().wills {
                            if !members.contains_key(&will.node) && !gone.contains(&will.node) {
                                gone.push(will.node.clone());
                            }
                        }
                    }
                    for node in gone {
                        self.node_gone(&node);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// `node` is gone: every session holding wills of it is unbound from it, then gets them.
    pub(crate) fn node_gone(&self, node: &NodeId) {
        let started = Instant::now();
        let mut sessions = 0;
        let mut wills = 0;
        for session in self.sessions.all() {
            let due = session.wills_due(node);
            if !due.is_empty() {
                sessions += 1;
                wills += self.deliver_wills(&session, due);
            }
        }
        if sessions > 0 {
            warn!(%node, sessions, wills, elapsed = ?started.elapsed(), "a node is gone: its users unbound and its wills delivered");
        }
    }

    /// Pushes a gone node's wills to a session; returns how many.
    pub(crate) fn deliver_wills(&self, session: &Session, wills: Vec<Will>) -> usize {
        let count = wills.len();
        for will in wills {
            session.push(will.route, will.payload);
            ::metrics::counter!(crate::metrics::WILLS_DELIVERED).increment(1);
        }
        count
    }
}

fn refusal_text(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::TokenReused => "the token was used already",
        ErrorCode::SessionGone => "the session is gone; log in again",
        _ => "the session cannot be resumed",
    }
}
