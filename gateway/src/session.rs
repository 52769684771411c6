//! One client session: its identity, bindings and attributes, and its bounded outbound queue.
//! The connection task that reads frames lives in `connection.rs`.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    num::NonZeroU32,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mesh::NodeId;
use proto::logic::v1::BindMode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use wire::{Envelope, ErrorCode, envelope};

use crate::{
    binding::{self, Binding},
    outbox::{Outbound, Outbox, Refused},
};

/// Most attributes a session holds, and the largest key and value.
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// Per-session limits.
#[derive(Clone, Debug)]
pub(crate) struct SessionLimits {
    pub(crate) outbound_queue: usize,
    pub(crate) max_in_flight: usize,
    /// Requests per second and burst; `None` = unlimited.
    pub(crate) rate: Option<(NonZeroU32, NonZeroU32)>,
}

/// State that routing reads and logic servers change.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub(crate) user: Option<Arc<str>>,
    pub(crate) logged_in_at_ms: u64,
    pub(crate) bindings: Vec<Binding>,
    pub(crate) attributes: HashMap<String, String>,
    /// Nodes to tell when the session closes (besides bound nodes).
    pub(crate) watchers: BTreeSet<NodeId>,
}

/// One connected client.
pub(crate) struct Session {
    pub(crate) id: u64,
    outbound: Outbox,
    state: Mutex<SessionState>,
    /// Push sequence counter; held while enqueueing so sequence order is queue order.
    push_seq: Mutex<u64>,
    /// Message ids of requests in flight.
    in_flight: Mutex<HashSet<u32>>,
    pub(crate) permits: Arc<Semaphore>,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Stops the reader (the session is ending).
    pub(crate) stop: CancellationToken,
    /// Stops the writer at once, dropping queued frames (a client that does not read).
    pub(crate) abort: CancellationToken,
    /// Why the session ended, first reason wins.
    end: Mutex<Option<(u32, String)>>,
    /// The session's log span (node, session, peer, transport; user once logged in).
    pub(crate) span: tracing::Span,
}

impl Session {
    pub(crate) fn new(id: u64, limits: &SessionLimits, span: tracing::Span) -> Arc<Session> {
        let outbound = Outbox::new(limits.outbound_queue.max(2));
        let limiter = limits
            .rate
            .map(|(rate, burst)| RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)));
        let session = Session {
            id,
            outbound,
            state: Mutex::default(),
            push_seq: Mutex::new(0),
            in_flight: Mutex::default(),
            permits: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            limiter,
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
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

    /// Queues one envelope. A full queue means the client is not reading: the session is
    /// dropped (never waits, so a slow client never slows anyone else).
    pub(crate) fn send(&self, envelope: &Envelope) -> bool {
        self.send_frame(envelope::encode(envelope))
    }

    fn send_frame(&self, frame: Bytes) -> bool {
        match self.outbound.try_send(Outbound::Frame(frame)) {
            Ok(()) => true,
            Err(Refused::Full) => {
                self.drop_slow_consumer();
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Queues a push with the next sequence number.
    pub(crate) fn push(&self, route: u32, payload: Bytes) -> bool {
        let mut seq = lock(&self.push_seq);
        *seq += 1;
        let sent = self.send(&envelope::push(*seq, route, payload));
        if !sent {
            *seq -= 1;
        }
        sent
    }

    /// Sends a kick and closes the connection after it.
    pub(crate) fn kick(&self, code: ErrorCode, reason: &str) {
        self.kick_with(code as u32, reason);
    }

    pub(crate) fn kick_with(&self, code: u32, reason: &str) {
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
        if self.send_frame(envelope::encode(&envelope::kick(code, reason))) {
            let _ = self.outbound.try_send(Outbound::Close);
        }
        self.stop.cancel();
    }

    /// Closes after the queued frames, without a kick (the client closed, or bad framing).
    pub(crate) fn close(&self, reason: &str) {
        self.record_end(0, reason);
        let _ = self.outbound.try_send(Outbound::Close);
        self.stop.cancel();
    }

    fn drop_slow_consumer(&self) {
        let reason = "outbound queue full: the client does not read";
        if self.record_end(ErrorCode::SlowConsumer as u32, reason) {
            info!(session = self.id, "dropping a client that does not read");
            metrics::counter!(crate::metrics::KICKS, "reason" => "slow_consumer").increment(1);
        }
        self.abort.cancel();
        self.stop.cancel();
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

    /// Applies a binding change.
    pub(crate) fn bind(&self, mode: BindMode, nodes: Vec<Binding>) {
        let mut state = self.state();
        let before = state.bindings.len();
        binding::apply(&mut state.bindings, mode, nodes);
        bindings_changed(state.bindings.len() as i64 - before as i64);
        debug!(session = self.id, bindings = ?state.bindings.iter().map(|b| b.node.as_str()).collect::<Vec<_>>(), "bindings changed");
    }

    /// Drops bindings to nodes that are gone.
    pub(crate) fn drop_bindings(&self, gone: &[NodeId]) {
        let mut state = self.state();
        let before = state.bindings.len();
        state.bindings.retain(|b| !gone.contains(&b.node));
        bindings_changed(state.bindings.len() as i64 - before as i64);
    }

    /// Sets attributes (empty value removes), within the per-session bounds.
    pub(crate) fn set_attributes(&self, attributes: HashMap<String, String>) {
        let mut state = self.state();
        for (key, value) in attributes {
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
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few field updates; a panic inside one leaves the data
    // consistent enough to keep serving.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
