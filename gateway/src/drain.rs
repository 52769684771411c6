//! Drain: the gateway is going away. Every client is told (`OFFLINE` with the grace left) and
//! may leave; when the grace ends, each remaining session stops taking requests, gets an answer
//! to every request it sent before that moment, and is then kicked with `SERVER_DRAINING`, at
//! the time the notice announced.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use tokio::time::Instant;
use tracing::{info, warn};
use wire::{ErrorCode, envelope};

use crate::gateway::{Gateway, Limits};

/// How long drain waits for kicked sessions to finish closing.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The longest a drain with `grace` takes: the grace, the answers to requests in flight at its
/// end, and the closing (the node gives the drain this long, plus a margin).
pub(crate) fn budget(grace: Duration, limits: &Limits) -> Duration {
    grace + limits.request_timeout + CLOSE_WAIT
}

impl Gateway {
    /// Drains within [`budget`]: see the module doc.
    pub(crate) async fn drain(self: &Arc<Self>, grace: Duration) {
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
        if !self.wait_until_empty(deadline).await {
            let remaining = self.sessions.all();
            info!(
                sessions = remaining.len(),
                "grace over: answering requests in flight, then closing the remaining sessions"
            );
            let request_timeout = self.limits.request_timeout;
            join_all(remaining.into_iter().map(|session| async move {
                // A session held for a resume has nobody to tell: it ends.
                let Some(conn) = session.conn() else {
                    self.end_session(&session, "shutdown", "gateway shutting down");
                    return;
                };
                conn.quiesce.cancel();
                if tokio::time::timeout(request_timeout, conn.requests_done())
                    .await
                    .is_err()
                {
                    warn!(
                        session = session.id,
                        "requests still in flight at the drain kick"
                    );
                }
                conn.kick(ErrorCode::ServerDraining, "gateway shutting down");
            }))
            .await;
        }
        if !self.wait_until_empty(Instant::now() + CLOSE_WAIT).await {
            warn!(
                sessions = self.sessions.len(),
                "sessions still open at the end of the drain"
            );
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
