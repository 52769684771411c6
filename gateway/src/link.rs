//! The gateway's side of its links: one long-lived stream (`Logic.Link`) to each logic node it
//! calls, carrying its calls up and the node's answers and pushes down, each message holding
//! whatever was queued. A call is queued in the order the session's requests were read, so the
//! node sees one session's requests in the order they were sent; no task is spawned per call:
//! the link's task completes each call when its answer (or its deadline) comes.
//!
//! What happens to a call when something goes wrong, and the code its request is answered with:
//!
//! | what happened | code |
//! |---|---|
//! | no answer by the deadline (`--request-timeout-ms`) | `UPSTREAM_TIMEOUT` |
//! | the link broke after the call was sent, or the node cannot be reached | `UPSTREAM_FAILED` |
//! | the node left the cluster (or was declared dead) before answering | `BOUND_NODE_UNAVAILABLE` when the call went there by a binding (dropped), else `UPSTREAM_FAILED` |
//!
//! A call still queued when a link breaks was never sent: it goes on the next stream.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use mesh::NodeId;
use prost::Message;
use proto::logic::v1::{
    self as pb, UpItem, down_item::Item as DownKind, logic_client::LogicClient,
    up_item::Item as UpKind,
};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit},
    time::Instant,
};
use tracing::{debug, info, warn};

use crate::{conn::Conn, gateway::Gateway, session::Session};

/// The metadata entry in which the gateway names itself when it opens a link.
const NODE_HEADER: &str = "x-switchyard-node";

/// Most bytes of calls in one message up a link (at least one call goes, whatever its size).
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Largest message a link takes from a node (a node's answers and pushes are each bounded by
/// the client frame limit; messages of several are split near 1 MiB by the node).
pub(crate) const MAX_DECODING_BYTES: usize = 64 << 20;

/// How long a link waits before it tries to reach its node again.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// A request handed to a link, waiting for its answer.
pub(crate) struct Pending {
    pub(crate) session: Arc<Session>,
    /// The connection the request came on (the answer goes there).
    pub(crate) conn: Arc<Conn>,
    pub(crate) msg_id: u32,
    pub(crate) route: u32,
    /// The node called.
    pub(crate) node: NodeId,
    /// The node serves the route as public (a login in its answer counts).
    pub(crate) public: bool,
    /// A binding chose the node (when the node is gone, the binding goes too).
    pub(crate) bound: bool,
    /// The session's in-flight slot, freed with the answer.
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) started: Instant,
    /// Which stream carried the call, once one did (`None` when it is created).
    pub(crate) sent_on: Option<u64>,
}

/// Why a call got no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No answer by the deadline.
    Timeout,
    /// The node could not be reached, or the link broke after the call was sent.
    Unreachable,
    /// The node left the cluster before answering.
    Gone,
}

#[derive(Default)]
struct State {
    /// Items not yet handed to a stream.
    queue: Vec<UpItem>,
    queued_bytes: usize,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Call ids with their deadlines, in the order queued (the timeout is the same for every
    /// call, so this is deadline order).
    deadlines: VecDeque<(Instant, u64)>,
    /// The stream now carrying calls (0 before the first).
    stream: u64,
    /// The last attempt to reach the node failed: calls fail at once until one succeeds.
    unreachable: bool,
    /// The node left: no more calls.
    closed: bool,
}

/// The link to one logic node.
pub(crate) struct Link {
    node: NodeId,
    state: Mutex<State>,
    /// Something was queued (or the link closed).
    ready: Notify,
    /// A call was queued while none was waiting: the link's task has a deadline to watch.
    first_deadline: Notify,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a call; gives it back when the link cannot take it.
    fn call(
        &self,
        request: pb::LogicRequest,
        pending: Pending,
        deadline: Instant,
    ) -> Result<(), (Failure, Pending)> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err((Failure::Gone, pending));
            }
            if state.unreachable {
                return Err((Failure::Unreachable, pending));
            }
            state.next_id += 1;
            let id = state.next_id;
            let item = UpItem {
                item: Some(UpKind::Call(pb::Call {
                    id,
                    request: Some(request),
                })),
            };
            state.queued_bytes += item.encoded_len();
            state.queue.push(item);
            state.pending.insert(id, pending);
            if state.deadlines.is_empty() {
                self.first_deadline.notify_one();
            }
            state.deadlines.push_back((deadline, id));
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a notice about a session (closed, moved) after the session's calls.
    fn notice(&self, notice: UpKind) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.queue.push(UpItem { item: Some(notice) });
        }
        self.ready.notify_one();
    }

    /// The next message for stream `stream`: what is queued, once something is (calls whose
    /// request was already answered by a timeout are left out). `None` once the link closed or
    /// a newer stream took over.
    async fn next_up(&self, stream: u64) -> Option<pb::Up> {
        loop {
            {
                let mut state = self.lock();
                if state.closed || state.stream != stream {
                    return None;
                }
                if !state.queue.is_empty() {
                    return Some(take_message(&mut state, stream));
                }
            }
            self.ready.notified().await;
        }
    }

    /// The answer to call `id`, if it is still waiting.
    fn take(&self, id: u64) -> Option<Pending> {
        self.lock().pending.remove(&id)
    }

    /// Calls whose deadline passed by `now`.
    fn expired(&self, now: Instant) -> Vec<Pending> {
        let mut state = self.lock();
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = state.deadlines.front() {
            if deadline > now {
                break;
            }
            state.deadlines.pop_front();
            if let Some(pending) = state.pending.remove(&id) {
                expired.push(pending);
            }
        }
        expired
    }

    /// The next deadline of a call still waiting.
    fn next_deadline(&self) -> Option<Instant> {
        let mut state = self.lock();
        while let Some(&(deadline, id)) = state.deadlines.front() {
            if state.pending.contains_key(&id) {
                return Some(deadline);
            }
            state.deadlines.pop_front();
        }
        None
    }

    /// A new stream takes over; returns its number.
    fn new_stream(&self) -> u64 {
        let mut state = self.lock();
        state.stream += 1;
        state.unreachable = false;
        state.stream
    }

    /// The stream `stream` ended: the calls it carried that are still waiting fail (they may or
    /// may not have been handled); calls still queued wait for the next stream.
    fn stream_ended(&self, stream: u64) -> Vec<Pending> {
        let mut state = self.lock();
        if state.stream == stream {
            // Wake a sender still waiting for work on it, so it ends.
            state.stream += 1;
        }
        let lost: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, p)| p.sent_on == Some(stream))
            .map(|(id, _)| *id)
            .collect();
        let failed = lost
            .iter()
            .filter_map(|id| state.pending.remove(id))
            .collect();
        drop(state);
        self.ready.notify_waiters();
        failed
    }

    /// The node could not be reached: every call not yet answered fails, and new ones fail at
    /// once until a stream opens.
    fn unreachable(&self) -> Vec<Pending> {
        let mut state = self.lock();
        state.unreachable = true;
        state.queue.clear();
        state.queued_bytes = 0;
        state.deadlines.clear();
        state.pending.drain().map(|(_, p)| p).collect()
    }

    /// The node left: the link takes nothing more; every call not yet answered fails.
    fn close(&self) -> Vec<Pending> {
        let mut state = self.lock();
        state.closed = true;
        state.queue.clear();
        state.deadlines.clear();
        let failed = state.pending.drain().map(|(_, p)| p).collect();
        drop(state);
        self.ready.notify_waiters();
        failed
    }
}

/// Takes the queued items (up to [`MAX_MESSAGE_BYTES`], at least one) as one message, marking
/// their calls sent on `stream`.
fn take_message(state: &mut State, stream: u64) -> pb::Up {
    let items = if state.queued_bytes <= MAX_MESSAGE_BYTES {
        state.queued_bytes = 0;
        std::mem::take(&mut state.queue)
    } else {
        let mut size = 0;
        let mut count = 0;
        for item in &state.queue {
            size += item.encoded_len();
            count += 1;
            if size >= MAX_MESSAGE_BYTES {
                break;
            }
        }
        state.queued_bytes = state.queued_bytes.saturating_sub(size);
        state.queue.drain(..count).collect()
    };
    let mut sent = Vec::with_capacity(items.len());
    for item in items {
        if let Some(UpKind::Call(call)) = &item.item {
            match state.pending.get_mut(&call.id) {
                Some(pending) => pending.sent_on = Some(stream),
                // Already answered (timed out while queued): not worth sending.
                None => continue,
            }
        }
        sent.push(item);
    }
    pb::Up { items: sent }
}

/// Every link of this gateway, by node.
#[derive(Default)]
pub(crate) struct Links {
    by_node: Mutex<HashMap<NodeId, Arc<Link>>>,
}

impl Links {
    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, Arc<Link>>> {
        self.by_node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The link to `node`, opened (its task started) if there is none.
    fn get(&self, gateway: &Arc<Gateway>, node: &NodeId) -> Arc<Link> {
        let mut links = self.lock();
        if let Some(link) = links.get(node) {
            return link.clone();
        }
        let link = Arc::new(Link {
            node: node.clone(),
            state: Mutex::default(),
            ready: Notify::new(),
            first_deadline: Notify::new(),
        });
        links.insert(node.clone(), link.clone());
        gateway.tracker.spawn(run(gateway.clone(), link.clone()));
        link
    }

    fn forget(&self, link: &Arc<Link>) {
        let mut links = self.lock();
        if links.get(&link.node).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(&link.node);
        }
    }
}

impl Gateway {
    /// Hands a call to `node`'s link; gives the request back when the node cannot take it.
    pub(crate) fn call(
        self: &Arc<Self>,
        node: &NodeId,
        request: pb::LogicRequest,
        pending: Pending,
    ) -> Result<(), (Failure, Pending)> {
        if !self.mesh.cluster().members().contains_key(node) {
            return Err((Failure::Gone, pending));
        }
        let deadline = Instant::now() + self.limits.request_timeout;
        self.links.get(self, node).call(request, pending, deadline)
    }

    /// Tells `node` that a session closed, after the session's calls to it.
    pub(crate) fn send_closed(self: &Arc<Self>, node: &NodeId, ended: pb::SessionEnded) {
        if self.mesh.cluster().members().contains_key(node) {
            self.links.get(self, node).notice(UpKind::Closed(ended));
        }
    }

    /// Tells `node` that a user's session moved to another gateway, after the session's calls
    /// to it; false when the node is not a member (nothing more comes from it).
    pub(crate) fn send_moved(self: &Arc<Self>, node: &NodeId, moved: pb::Moved) -> bool {
        if !self.mesh.cluster().members().contains_key(node) {
            return false;
        }
        self.links.get(self, node).notice(UpKind::Moved(moved));
        true
    }
}

/// The life of one link: open a stream, carry calls and answers until it ends, open another;
/// until the node leaves the cluster or the gateway stops.
async fn run(gateway: Arc<Gateway>, link: Arc<Link>) {
    let node = link.node.clone();
    let mut backoff = RECONNECT_MIN;
    loop {
        if !gateway.mesh.cluster().members().contains_key(&node) {
            info!(%node, "the node left; closing its link");
            for pending in link.close() {
                gateway.finish(pending, Err(Failure::Gone));
            }
            gateway.links.forget(&link);
            return;
        }
        match open(&gateway, &link).await {
            Ok((stream, down)) => {
                backoff = RECONNECT_MIN;
                carry(&gateway, &link, down).await;
                for pending in link.stream_ended(stream) {
                    gateway.finish(pending, Err(Failure::Unreachable));
                }
            }
            Err(reason) => {
                debug!(%node, %reason, "cannot open the link; calls fail until it opens");
                for pending in link.unreachable() {
                    gateway.finish(pending, Err(Failure::Unreachable));
                }
            }
        }
        if gateway.stopping.is_cancelled() {
            for pending in link.close() {
                gateway.finish(pending, Err(Failure::Unreachable));
            }
            return;
        }
        // Wait before trying again; calls queued meanwhile still time out on time.
        let again = Instant::now() + backoff;
        loop {
            let deadline = link.next_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(again) => break,
                _ = link.first_deadline.notified(), if deadline.is_none() => {}
                _ = sleep_until(deadline) => {
                    for pending in link.expired(Instant::now()) {
                        gateway.finish(pending, Err(Failure::Timeout));
                    }
                }
                _ = gateway.stopping.cancelled() => break,
            }
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Opens a stream to the link's node.
async fn open(
    gateway: &Arc<Gateway>,
    link: &Arc<Link>,
) -> Result<(u64, tonic::Streaming<pb::Down>), String> {
    let channel = gateway
        .mesh
        .peer_channel(&link.node)
        .map_err(|e| e.to_string())?;
    let stream = link.new_stream();
    let up = futures::stream::unfold(link.clone(), move |link| async move {
        link.next_up(stream).await.map(|up| (up, link))
    });
    let mut request = tonic::Request::new(up);
    if let Ok(me) = gateway.node_id.as_str().parse() {
        request.metadata_mut().insert(NODE_HEADER, me);
    }
    let mut client = LogicClient::new(channel).max_decoding_message_size(MAX_DECODING_BYTES);
    let opened = tokio::time::timeout(gateway.limits.request_timeout, client.link(request)).await;
    match opened {
        Ok(Ok(response)) => Ok((stream, response.into_inner())),
        Ok(Err(status)) => {
            link.stream_ended(stream);
            Err(status.to_string())
        }
        Err(_) => {
            link.stream_ended(stream);
            Err("no answer in time".into())
        }
    }
}

/// Carries one stream: answers and pushes as they come down, deadlines as they pass; returns
/// when the stream ends.
async fn carry(gateway: &Arc<Gateway>, link: &Arc<Link>, mut down: tonic::Streaming<pb::Down>) {
    loop {
        let deadline = link.next_deadline();
        let message = tokio::select! {
            message = down.message() => message,
            _ = sleep_until(deadline) => {
                for pending in link.expired(Instant::now()) {
                    gateway.finish(pending, Err(Failure::Timeout));
                }
                continue;
            }
            _ = link.first_deadline.notified(), if deadline.is_none() => continue,
            _ = gateway.stopping.cancelled() => return,
        };
        match message {
            Ok(Some(message)) => {
                for item in message.items {
                    match item.item {
                        Some(DownKind::Answer(answer)) => {
                            if let Some(pending) = link.take(answer.id) {
                                gateway.finish(pending, Ok(answer.response.unwrap_or_default()));
                            }
                        }
                        Some(DownKind::Push(delivery)) => gateway.deliver(delivery, &link.node),
                        Some(DownKind::MovedAck(ack)) => {
                            gateway.moved_acked(ack.user_id, link.node.clone());
                        }
                        None => {}
                    }
                }
            }
            Ok(None) => {
                debug!(node = %link.node, "the node ended its link");
                return;
            }
            Err(status) => {
                warn!(node = %link.node, %status, "link to a logic node broke");
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
