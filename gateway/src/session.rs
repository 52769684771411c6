//! One client session: its identity, bindings and attributes, and its bounded outbound queue.
//! The connection task that reads frames lives in `connection.rs`.
//!
//! Two rules hold for everything queued here: nothing larger than the client frame limit is
//! ever queued (a frame the server built must never cost a client its connection), and nothing
//! waits on the client (the queue is bounded in bytes and age; past that the client is dropped
//! as a slow consumer, told so when its socket still takes the kick).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    num::NonZeroU32,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mesh::NodeId;
use prost::Message;
use proto::logic::v1::BindMode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};
use wire::{Envelope, ErrorCode, envelope};

use crate::{
    binding::{self, Binding},
    outbox::{Outbound, Outbox, OutboxLimits, PushFrame, Refused},
    sessions::LoginStamp,
};

/// Most attributes a session holds, and the largest key and value.
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_BYTES: usize = 1024;
/// Longest kick reason sent to a client (longer reasons from logic servers are cut).
pub(crate) const MAX_REASON_BYTES: usize = 256;

/// Per-session limits.
#[derive(Clone, Debug)]
pub(crate) struct SessionLimits {
    /// Largest frame the client accepts (the same limit it is held to).
    pub(crate) max_frame: usize,
    pub(crate) outbox: OutboxLimits,
    pub(crate) max_in_flight: usize,
    /// Requests per second and burst; `None` = unlimited.
    pub(crate) rate: Option<(NonZeroU32, NonZeroU32)>,
}

/// State that routing reads and logic servers change.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub(crate) user: Option<Arc<str>>,
    /// When the user logged in on this session (the order that decides between two logins).
    pub(crate) login: Option<LoginStamp>,
    pub(crate) bindings: Vec<Binding>,
    pub(crate) attributes: HashMap<String, String>,
    /// Nodes to tell when the session closes (besides bound nodes).
    pub(crate) watchers: BTreeSet<NodeId>,
}

/// What a logic response asks of the session besides login, applied under one lock.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) bind: Option<(BindMode, Vec<Binding>)>,
    pub(crate) attributes: HashMap<String, String>,
    pub(crate) watch: Option<NodeId>,
}

/// What became of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued with the next sequence number.
    Queued,
    /// Its frame would exceed the client frame limit: refused, never queued.
    TooLarge,
    /// The session is closing (or was just dropped as a slow consumer).
    Closed,
}

/// One connected client.
pub(crate) struct Session {
    pub(crate) id: u64,
    max_frame: usize,
    outbound: Outbox,
    state: Mutex<SessionState>,
    /// Push sequence counter; held while enqueueing so sequence order is queue order.
    push_seq: Mutex<u64>,
    /// Message ids of requests in flight.
    in_flight: Mutex<HashSet<u32>>,
    pub(crate) permits: Arc<Semaphore>,
    max_in_flight: u32,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Stops the reader (the session is ending).
    pub(crate) stop: CancellationToken,
    /// Stops taking new requests, the session staying open (drain: answer what is in flight,
    /// then kick).
    pub(crate) quiesce: CancellationToken,
    /// Set once the session is ending: the writer has only its last words (a kick) to send.
    ending: AtomicBool,
    /// Why the session ended (code, reason), first reason wins.
    end: Mutex<Option<(u32, String)>>,
    /// The session's log span (node, session, peer, transport; user once logged in).
    pub(crate) span: tracing::Span,
}

impl Session {
    pub(crate) fn new(id: u64, limits: &SessionLimits, span: tracing::Span) -> Arc<Session> {
        let limiter = limits
            .rate
            .map(|(rate, burst)| RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)));
        let max_in_flight = limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS) as u32;
        let session = Session {
            id,
            max_frame: limits.max_frame,
            outbound: Outbox::new(limits.outbox),
            state: Mutex::default(),
            push_seq: Mutex::new(0),
            in_flight: Mutex::default(),
            permits: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            limiter,
            stop: CancellationToken::new(),
            quiesce: CancellationToken::new(),
            ending: AtomicBool::new(false),
            end: Mutex::new(None),
            span,
        };
        live_objects_changed(1);
        Arc::new(session)
    }

    /// The outbound queue (read by the connection's writer task only).
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbound
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SessionState> {
        lock(&self.state)
    }

    /// The logged-in user, if any.
    pub(crate) fn user(&self) -> Option<Arc<str>> {
        self.state().user.clone()
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
                session = self.id,
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

    /// Queues a push with the next sequence number (numbers stay gap-free: a push that is not
    /// queued takes none).
    pub(crate) fn push(&self, route: u32, payload: Bytes) -> Pushed {
        let mut seq = lock(&self.push_seq);
        if !self.fits(&envelope::push(*seq + 1, route, payload.clone())) {
            return Pushed::TooLarge;
        }
        let push = PushFrame {
            seq: *seq + 1,
            route,
            payload,
        };
        match self.outbound.try_send(Outbound::Push(push)) {
            Ok(()) => {
                *seq += 1;
                Pushed::Queued
            }
            Err(Refused::SlowConsumer) => {
                self.drop_slow_consumer();
                Pushed::Closed
            }
            Err(Refused::Closed) => Pushed::Closed,
        }
    }

    /// Sends a kick and closes the connection after it. A reason longer than
    /// [`MAX_REASON_BYTES`] is cut.
    pub(crate) fn kick(&self, code: ErrorCode, reason: &str) {
        self.kick_with(code as u32, reason);
    }

    pub(crate) fn kick_with(&self, code: u32, reason: &str) {
        let reason = truncate(reason, MAX_REASON_BYTES);
        if !self.record_end(code, reason) {
            return;
        }
        info!(
            session = self.id,
            code = wire::envelope::code_name(code),
            reason,
            "kicking session"
        );
        metrics::counter!(crate::metrics::KICKS, "reason" => wire::envelope::code_name(code))
            .increment(1);
        self.last_words(code, reason);
    }

    /// Queues the kick and the close, as the last things this connection sends.
    fn last_words(&self, code: u32, reason: &str) {
        self.ending.store(true, Ordering::Relaxed);
        let kick = envelope::encode(&envelope::kick(code, reason));
        if self.outbound.try_send(Outbound::Frame(kick)).is_err() {
            // Only a backlog can refuse it: make room, it is the last frame.
            self.outbound.clear();
            let kick = envelope::encode(&envelope::kick(code, reason));
            let _ = self.outbound.try_send(Outbound::Frame(kick));
        }
        let _ = self.outbound.try_send(Outbound::Close);
        self.stop.cancel();
    }

    /// Closes after the queued frames, without a kick (the client closed, say).
    pub(crate) fn close(&self, reason: &str) {
        self.close_with(0, reason);
    }

    /// Closes after the queued frames, without a kick frame, recording `code` as the reason
    /// (a WebSocket close status is chosen from it).
    pub(crate) fn close_with(&self, code: u32, reason: &str) {
        self.record_end(code, reason);
        self.ending.store(true, Ordering::Relaxed);
        let _ = self.outbound.try_send(Outbound::Close);
        self.stop.cancel();
    }

    /// Drops a client that does not read: its backlog is forgotten and the `SLOW_CONSUMER`
    /// kick is queued as its last frame (delivered if the socket still takes it).
    pub(crate) fn drop_slow_consumer(&self) {
        let reason = "the client does not read what is sent to it";
        if !self.record_end(ErrorCode::SlowConsumer as u32, reason) {
            return;
        }
        info!(session = self.id, "dropping a client that does not read");
        metrics::counter!(crate::metrics::KICKS, "reason" => "slow_consumer").increment(1);
        self.outbound.clear();
        self.last_words(ErrorCode::SlowConsumer as u32, reason);
    }

    /// True once the session is ending: only its last frames remain to be written.
    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Relaxed)
    }

    fn record_end(&self, code: u32, reason: &str) -> bool {
        let mut end = lock(&self.end);
        if end.is_some() {
            return false;
        }
        *end = Some((code, reason.to_owned()));
        true
    }

    /// Why the session ended.
    pub(crate) fn end_reason(&self) -> String {
        lock(&self.end)
            .as_ref()
            .map_or_else(|| "connection closed".to_owned(), |(_, r)| r.clone())
    }

    /// The code the session ended with (0: no kick).
    pub(crate) fn end_code(&self) -> u32 {
        lock(&self.end).as_ref().map_or(0, |(code, _)| *code)
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

    /// Waits until no request of this session is in flight (call after the reader stopped
    /// taking new ones).
    pub(crate) async fn requests_done(&self) {
        if let Ok(all) = self.permits.acquire_many(self.max_in_flight).await {
            drop(all);
        }
    }

    /// Applies a logic response's binding change, attributes and watch in one critical
    /// section, so a request routed concurrently sees all of them or none.
    pub(crate) fn apply(&self, effects: Effects) {
        let mut state = self.state();
        if let Some((mode, nodes)) = effects.bind {
            let before = state.bindings.len();
            binding::apply(&mut state.bindings, mode, nodes);
            bindings_changed(state.bindings.len() as i64 - before as i64);
            debug!(session = self.id, bindings = ?state.bindings.iter().map(|b| b.node.as_str()).collect::<Vec<_>>(), "bindings changed");
        }
        for (key, value) in effects.attributes {
            if value.is_empty() {
                state.attributes.remove(&key);
            } else if key.len() <= MAX_ATTRIBUTE_BYTES
                && value.len() <= MAX_ATTRIBUTE_BYTES
                && (state.attributes.len() < MAX_ATTRIBUTES || state.attributes.contains_key(&key))
            {
                state.attributes.insert(key, value);
            } else {
                debug!(
                    session = self.id,
                    key, "attribute refused: over the session's bounds"
                );
            }
        }
        if let Some(node) = effects.watch {
            state.watchers.insert(node);
        }
    }

    /// Applies a binding change alone (the gateway service's Bind).
    pub(crate) fn bind(&self, mode: BindMode, nodes: Vec<Binding>) {
        self.apply(Effects {
            bind: Some((mode, nodes)),
            ..Effects::default()
        });
    }

    /// Drops bindings to nodes that are gone.
    pub(crate) fn drop_bindings(&self, gone: &[NodeId]) {
        let mut state = self.state();
        let before = state.bindings.len();
        state.bindings.retain(|b| !gone.contains(&b.node));
        bindings_changed(state.bindings.len() as i64 - before as i64);
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

impl Drop for Session {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        bindings_changed(-(state.bindings.len() as i64));
        live_objects_changed(-1);
    }
}

/// Bindings held by every session of this process (the gateway runs one per process).
static BINDINGS: AtomicI64 = AtomicI64::new(0);
/// Session objects alive in this process.
static LIVE_OBJECTS: AtomicI64 = AtomicI64::new(0);

fn bindings_changed(delta: i64) {
    if delta != 0 {
        let now = BINDINGS.fetch_add(delta, Ordering::Relaxed) + delta;
        metrics::gauge!(crate::metrics::BINDINGS).set(now as f64);
    }
}

fn live_objects_changed(delta: i64) {
    let now = LIVE_OBJECTS.fetch_add(delta, Ordering::Relaxed) + delta;
    metrics::gauge!(crate::metrics::SESSION_OBJECTS).set(now as f64);
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
