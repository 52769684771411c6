//! Drain: the gateway is going away. Every client is told (`OFFLINE` with the grace left) and
//! may move at once (`MIGRATE`) or leave; when the grace ends, each remaining session stops
//! taking requests, gets an answer to every request it sent before that moment, and is then
//! moved to the least-loaded other gateway (`MIGRATE_TO`), or, with none online, kicked with
//! `SERVER_DRAINING`, at the time the notice announced.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wire::{ErrorCode, envelope};

use crate::{
    gateway::{Gateway, Limits},
    moving::Requests,
    session::Session,
};

/// How long drain waits for kicked sessions to finish closing.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How much longer than its grace a drain may take: the answers to requests in flight at the
/// grace's end, the moves, and the closing (the node gives the drain this long, plus a margin).
pub(crate) fn overrun(limits: &Limits) -> Duration {
    limits.request_timeout + CLOSE_WAIT * 2
}

impl Gateway {
    /// Drains within the grace and [`overrun`]: see the module doc. A drain cancelled
    /// (`undrain`) before the grace ends stops there: the clients that moved are gone, the
    /// others stay (they were told OFFLINE; nothing more happens to them).
    pub(crate) async fn drain(self: &Arc<Self>, grace: Duration, undrain: CancellationToken) {
        let deadline = Instant::now() + grace;
        let sessions = self.sessions.all();
        info!(
            sessions = sessions.len(),
            ?grace,
            "draining: telling clients this gateway is going offline"
        );
        let offline = envelope::offline(grace.as_millis() as u64);
        for conn in sessions.iter().filter_map(|session| session.conn()) {
            conn.send(&offline);
        }
        drop(sessions);
        let emptied = tokio::select! {
            emptied = self.wait_until_empty(deadline) => emptied,
            _ = undrain.cancelled() => {
                info!(sessions = self.sessions.len(), "drain cancelled: keeping the sessions still here");
                return;
            }
        };
        if !emptied {
            let remaining = self.sessions.all();
            info!(
                sessions = remaining.len(),
                "grace over: answering requests in flight, then closing the remaining sessions"
            );
            let request_timeout = self.limits.request_timeout;
            join_all(remaining.into_iter().map(|session| async move {
                let outcome = self.drain_session(&session, request_timeout).await;
                ::metrics::counter!(crate::metrics::DRAIN_OUTCOMES, "outcome" => outcome)
                    .increment(1);
            }))
            .await;
        }
        if !self.wait_until_empty(Instant::now() + CLOSE_WAIT).await {
            warn!(
                sessions = self.sessions.len(),
                "sessions still open at the end of the drain"
            );
        }
        // Pushes for the sessions that moved follow them until every node has switched.
        self.settle_forwards(CLOSE_WAIT).await;
    }

    /// Moves one session that is still here at the end of the grace to another gateway (its
    /// client told `MIGRATE_TO` after every request it sent was answered), or, with no other
    /// gateway online, kicks it (`SERVER_DRAINING`) or ends it if it is held without a
    /// connection. Returns the outcome's label.
    async fn drain_session(
        self: &Arc<Self>,
        session: &Arc<Session>,
        request_timeout: Duration,
    ) -> &'static str {
        let Some(conn) = session.conn() else {
            if let Some(to) = self.move_target()
                && self.hand_over(session, &to, Requests::Ignore).await.is_ok()
            {
                return "migrated";
            }
            self.end_session(session, "shutdown", "gateway shutting down");
            return "ended";
        };
        // Answered before anything else, a kick included (a move would wait for them too).
        conn.quiesce.cancel();
        if tokio::time::timeout(request_timeout, conn.requests_done())
            .await
            .is_err()
        {
            warn!(
                session = session.id,
                "requests still in flight at the drain's end"
            );
        }
        match self.migrate(&conn, session).await {
            Ok(()) => "migrated",
            Err(error) => {
                info!(session = session.id, %error, "cannot move the session; kicking it");
                conn.kick(ErrorCode::ServerDraining, "gateway shutting down");
                "kicked"
            }
        }
    }

    /// Waits until no session is left or `deadline` passes; true when none is left.
    async fn wait_until_empty(&self, deadline: Instant) -> bool {
        loop {
            let changed = self.sessions.changed();
            if self.sessions.len() == 0 {
                return true;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return self.sessions.len() == 0,
            }
        }
    }
}
