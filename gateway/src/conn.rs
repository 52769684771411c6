//! One client connection's own state: its bounded outbound queue, its requests in flight and
//! rate limit, and how it ends. A connection carries one session at a time (`session.rs`); a
//! session outlives its connection when the connection drops, and can move to another
//! connection (a resume) or another gateway (a migration).
//!
//! Two rules hold for everything queued here: nothing larger than the client frame limit is
//! ever queued (a frame the server built must never cost a client its connection), and nothing
//! waits on the client (the queue is bounded in bytes and age; past that the client is dropped
//! as a slow consumer, told so when its socket still takes the kick).

use std::{
    collections::HashSet,
    num::NonZeroU32,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use wire::{Envelope, ErrorCode, envelope};

use crate::{
    outbox::{Outbound, Outbox, OutboxLimits, PushFrame, Refused},
    socket::Socket,
};

/// Longest kick reason sent to a client (longer reasons from logic servers are cut).
pub(crate) const MAX_REASON_BYTES: usize = 256;

/// Per-connection limits.
#[derive(Clone, Debug)]
pub(crate) struct ConnLimits {
    /// Largest frame the client accepts (the same limit it is held to).
    pub(crate) max_frame: usize,
    pub(crate) outbox: OutboxLimits,
    pub(crate) max_in_flight: usize,
    /// Requests per second and burst; `None` = unlimited.
    pub(crate) rate: Option<(NonZeroU32, NonZeroU32)>,
}

/// How a connection ended, which decides what becomes of its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The client said goodbye (GOODBYE, or a WebSocket close frame): the session ends.
    Goodbye,
    /// The connection dropped without a goodbye (closed, reset, silent): the session is held
    /// for the resume window.
    Dropped,
    /// The gateway closed it with a kick (or for bad input): the session ends.
    Kicked(u32),
    /// A newer connection resumed the session: the session lives on there.
    Replaced,
    /// The session moved to another gateway (MIGRATE_TO sent): it lives on there.
    Moved,
}

/// One client connection.
pub(crate) struct Conn {
    max_frame: usize,
    outbound: Outbox,
    /// The client's TCP socket, for pushes written in place while the writer is idle (none for
    /// WebSocket, whose frames only the writer's WebSocket stream writes).
    socket: Option<Socket>,
    /// Message ids of requests in flight.
    in_flight: Mutex<HashSet<u32>>,
    pub(crate) permits: Arc<Semaphore>,
    max_in_flight: u32,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Stops the reader (the connection is ending).
    pub(crate) stop: CancellationToken,
    /// Stops taking new requests, the connection staying open (drain: answer what is in flight,
    /// then move or kick).
    pub(crate) quiesce: CancellationToken,
    /// Set once the connection is ending: the writer has only its last words to send.
    ending: AtomicBool,
    /// How and why the connection ended, first reason wins.
    end: Mutex<Option<(Ending, String)>>,
    /// The connection's log span (node, session, peer, transport; user once logged in).
    pub(crate) span: tracing::Span,
}

impl Conn {
    pub(crate) fn new(
        limits: &ConnLimits,
        span: tracing::Span,
        socket: Option<Socket>,
    ) -> Arc<Conn> {
        let limiter = limits
            .rate
            .map(|(rate, burst)| RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)));
        let max_in_flight = limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS) as u32;
        Arc::new(Conn {
            max_frame: limits.max_frame,
            outbound: Outbox::new(limits.outbox),
            socket,
            in_flight: Mutex::default(),
            permits: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            limiter,
            stop: CancellationToken::new(),
            quiesce: CancellationToken::new(),
            ending: AtomicBool::new(false),
            end: Mutex::new(None),
            span,
        })
    }

    /// The outbound queue (read by the connection's writer task only).
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbound
    }

    /// True when an envelope's frame fits the client's frame limit.
    pub(crate) fn fits(&self, envelope: &Envelope) -> bool {
        envelope.encoded_len() <= self.max_frame
    }

    /// Queues one envelope. A frame over the client frame limit is never queued (it is logged
    /// and counted: the server built it, so it is a server-side bug). A client that is not
    /// reading is dropped (never waited for, so a slow client never slows anyone else).
    pub(crate) fn send(&self, envelope: &Envelope) -> bool {
        if !self.fits(envelope) {
            error!(
                size = envelope.encoded_len(),
                max = self.max_frame,
                kind = envelope.kind,
                route = envelope.route,
                "refusing to send a frame over the client frame limit"
            );
            metrics::counter!(crate::metrics::FRAMES_REFUSED, "reason" => "too_large").increment(1);
            return false;
        }
        self.send_frame(envelope::encode(envelope))
    }

    fn send_frame(&self, frame: Bytes) -> bool {
        match self.outbound.try_send(Outbound::Frame(frame)) {
            Ok(()) => true,
            Err(Refused::SlowConsumer) => {
                self.drop_slow_consumer();
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Queues a push (its size already checked by the session). False when the connection no
    /// longer takes it (closing, or just dropped as a slow consumer).
    pub(crate) fn queue_push(&self, push: PushFrame) -> bool {
        match self.queue(Outbound::Push(push)) {
            Ok(()) => true,
            Err(Refused::SlowConsumer) => {
                self.drop_slow_consumer();
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Queues a push, written in place when the socket allows (see `socket.rs`). Responses
    /// always go through the writer: in a closed loop, a response written in place at once
    /// spreads the clients' next requests out, and the gateway then spends more per request
    /// than when they come back in bursts (`bench s3-round-trip` at 100 connections: about 15%
    /// more server CPU per request; nothing gained at one connection).
    fn queue(&self, item: Outbound) -> Result<(), Refused> {
        match &self.socket {
            Some(socket) => self
                .outbound
                .send_or_write(item, |item| socket.write_in_place(item)),
            None => self.outbound.try_send(item),
        }
    }

    /// Sends a kick and closes the connection after it. A reason longer than
    /// [`MAX_REASON_BYTES`] is cut.
    pub(crate) fn kick(&self, code: ErrorCode, reason: &str) {
        self.kick_with(code as u32, reason);
    }

    pub(crate) fn kick_with(&self, code: u32, reason: &str) {
        let reason = truncate(reason, MAX_REASON_BYTES);
        if !self.record_end(Ending::Kicked(code), reason) {
            return;
        }
        info!(
            code = wire::envelope::code_name(code),
            reason, "kicking a connection"
        );
        metrics::counter!(crate::metrics::KICKS, "reason" => wire::envelope::code_name(code))
            .increment(1);
        self.last_words(&envelope::kick(code, reason));
    }

    /// Queues `last` (a kick) and the close, as the last things this connection
    /// sends.
    pub(crate) fn last_words(&self, last: &Envelope) {
        self.ending.store(true, Ordering::Relaxed);
        let frame = envelope::encode(last);
        if self
            .outbound
            .try_send(Outbound::Frame(frame.clone()))
            .is_err()
        {
            // Only a backlog can refuse it: make room, it is the last frame.
            self.outbound.clear();
            let _ = self.outbound.try_send(Outbound::Frame(frame));
        }
        let _ = self.outbound.try_send(Outbound::Close);
        self.stop.cancel();
    }

    /// Ends the connection after the queued frames, without a frame of its own, recording how
    /// (a WebSocket close status is chosen from a kick's code).
    pub(crate) fn close_as(&self, ending: Ending, reason: &str) {
        self.record_end(ending, reason);
        self.ending.store(true, Ordering::Relaxed);
        let _ = self.outbound.try_send(Outbound::Close);
        self.stop.cancel();
    }

    /// Ends the connection with `last` as its last frame, recording how.
    pub(crate) fn end_with(&self, ending: Ending, reason: &str, last: &Envelope) {
        if self.record_end(ending, reason) {
            self.last_words(last);
        }
    }

    /// Drops a client that does not read: its backlog is forgotten and the `SLOW_CONSUMER`
    /// kick is queued as its last frame (delivered if the socket still takes it).
    pub(crate) fn drop_slow_consumer(&self) {
        let reason = "the client does not read what is sent to it";
        let code = ErrorCode::SlowConsumer as u32;
        if !self.record_end(Ending::Kicked(code), reason) {
            return;
        }
        info!("dropping a client that does not read");
        metrics::counter!(crate::metrics::KICKS, "reason" => "slow_consumer").increment(1);
        self.outbound.clear();
        self.last_words(&envelope::kick(code, reason));
    }

    /// True once the connection is ending: only its last frames remain to be written.
    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Relaxed)
    }

    fn record_end(&self, ending: Ending, reason: &str) -> bool {
        let mut end = lock(&self.end);
        if end.is_some() {
            return false;
        }
        *end = Some((ending, reason.to_owned()));
        true
    }

    /// How the connection ended (a connection still open counts as dropped).
    pub(crate) fn ending(&self) -> Ending {
        lock(&self.end)
            .as_ref()
            .map_or(Ending::Dropped, |(e, _)| *e)
    }

    /// Why the connection ended.
    pub(crate) fn end_reason(&self) -> String {
        lock(&self.end)
            .as_ref()
            .map_or_else(|| "connection closed".to_owned(), |(_, r)| r.clone())
    }

    /// The code the connection ended with (0: no kick).
    pub(crate) fn end_code(&self) -> u32 {
        match lock(&self.end).as_ref() {
            Some((Ending::Kicked(code), _)) => *code,
            _ => 0,
        }
    }

    /// Takes one request-rate token; false when over the limit.
    pub(crate) fn allow_request(&self) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check().is_ok())
    }

    /// Marks a message id in flight; false if it already is.
    pub(crate) fn begin_request(&self, msg_id: u32) -> bool {
        lock(&self.in_flight).insert(msg_id)
    }

    pub(crate) fn end_request(&self, msg_id: u32) {
        lock(&self.in_flight).remove(&msg_id);
    }

    /// Stops this connection's requests: waits until none is in flight, and no new one starts
    /// until the permit returned is dropped (the reader waits for it).
    pub(crate) async fn hold_requests(&self) -> Option<OwnedSemaphorePermit> {
        self.permits
            .clone()
            .acquire_many_owned(self.max_in_flight)
            .await
            .ok()
    }

    /// Waits until no request of this connection is in flight (call after the reader stopped
    /// taking new ones).
    pub(crate) async fn requests_done(&self) {
        if let Ok(all) = self.permits.acquire_many(self.max_in_flight).await {
            drop(all);
        }
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few field updates; a panic inside one leaves the data
    // consistent enough to keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), "abc");
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(truncate("aé", 2), "a");
    }
}
