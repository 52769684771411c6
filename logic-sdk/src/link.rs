//! The logic node's side of a link (`Logic.Link`: one long-lived stream per gateway). Calls
//! come up in the order the gateway took them; the calls of one session are handled one at a
//! time, in that order, and every session at once. Answers and pushes for the gateway's users
//! go down in the order they were produced, as many per message as are queued.
//!
//! One task per link reads the calls and runs their handlers (polled together, no task per
//! call); its `Down` queue is what the response stream sends.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use mesh::NodeId;
use prost::Message;
use proto::logic::v1::{
    self as pb, DownItem, down_item::Item as DownKind, up_item::Item as UpKind,
};
use tokio::sync::Notify;
use tracing::debug;

/// Bytes of one message down a link, about (a single larger item goes alone).
const MESSAGE_BYTES: usize = 1 << 20;

/// Bytes of pushes queued for one gateway before further pushes are refused (answers are
/// always taken: the gateway bounds its calls in flight).
const MAX_QUEUED_PUSH_BYTES: usize = 16 << 20;

/// What handles a link's calls: the server's routes behind one function per kind of item.
pub(crate) trait Handle: Send + Sync + 'static {
    /// Handles one call from `gateway`.
    fn call(
        &self,
        request: pb::LogicRequest,
        gateway: &NodeId,
    ) -> BoxFuture<'static, pb::LogicResponse>;
    /// Handles a session-closed notice.
    fn closed(&self, ended: pb::SessionEnded) -> BoxFuture<'static, ()>;
    /// A user's session moved from `gateway` to another: pushes follow it; `down` (the link
    /// from `gateway`) gets the acknowledgement after the pushes already bound for it.
    fn moved(&self, moved: pb::Moved, gateway: &NodeId, down: &Arc<Down>);
}

/// The queue of what goes down a link.
pub(crate) struct Down {
    state: Mutex<DownState>,
    ready: Notify,
    /// Everything queued has been taken (sent).
    emptied: Notify,
}

#[derive(Default)]
struct DownState {
    items: Vec<DownItem>,
    /// Encoded size of `items`, and of the pushes among them.
    bytes: usize,
    push_bytes: usize,
    closed: bool,
}

/// Why a push was not queued on a link.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The gateway does not take what is sent to it fast enough.
    Full,
    /// The link is closed.
    Closed,
}

impl Down {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            ready: Notify::new(),
            emptied: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, DownState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, id: u64, response: pb::LogicResponse) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            let item = DownItem {
                item: Some(DownKind::Answer(pb::Answer {
                    id,
                    response: Some(response),
                })),
            };
            state.bytes += item.encoded_len();
            state.items.push(item);
        }
        self.ready.notify_one();
    }

    /// Queues a push for users of the gateway.
    pub(crate) fn push(&self, delivery: pb::Delivery) -> Result<(), Refused> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            let size = delivery.encoded_len();
            if state.push_bytes + size > MAX_QUEUED_PUSH_BYTES {
                return Err(Refused::Full);
            }
            state.push_bytes += size;
            state.bytes += size;
            state.items.push(DownItem {
                item: Some(DownKind::Push(delivery)),
            });
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next message: everything queued, once something is. `None` once closed and empty.
    pub(crate) async fn next(&self) -> Option<pb::Down> {
        loop {
            {
                let mut state = self.lock();
                if !state.items.is_empty() {
                    let message = take_message(&mut state);
                    if state.items.is_empty() {
                        self.emptied.notify_waiters();
                    }
                    return Some(message);
                }
                if state.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Queues the acknowledgement of a move: nothing more for `user_id` comes down this link.
    pub(crate) fn moved_ack(&self, user_id: String) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            let item = DownItem {
                item: Some(DownKind::MovedAck(pb::MovedAck { user_id })),
            };
            state.bytes += item.encoded_len();
            state.items.push(item);
        }
        self.ready.notify_one();
    }

    /// Waits until everything queued so far has been taken to be sent.
    pub(crate) async fn sent(&self) {
        loop {
            let emptied = self.emptied.notified();
            {
                let state = self.lock();
                if state.items.is_empty() || state.closed {
                    return;
                }
            }
            emptied.await;
        }
    }

    /// Closes the queue: nothing more is taken; what is queued is still sent.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// Takes the queued items, up to about [`MESSAGE_BYTES`] (at least one), as one message.
fn take_message(state: &mut DownState) -> pb::Down {
    if state.bytes <= MESSAGE_BYTES {
        state.bytes = 0;
        state.push_bytes = 0;
        return pb::Down {
            items: std::mem::take(&mut state.items),
        };
    }
    let mut size = 0;
    let mut count = 0;
    let mut pushes = 0;
    for item in &state.items {
        let len = item.encoded_len();
        if count > 0 && size + len > MESSAGE_BYTES {
            break;
        }
        size += len;
        count += 1;
        if let Some(DownKind::Push(push)) = &item.item {
            pushes += push.encoded_len();
        }
    }
    state.push_bytes = state.push_bytes.saturating_sub(pushes);
    state.bytes = state.bytes.saturating_sub(size);
    let items = if count == state.items.len() {
        std::mem::take(&mut state.items)
    } else {
        state.items.drain(..count).collect()
    };
    pb::Down { items }
}

/// One unit of work for a session: a call (answered) or its closed notice (not answered).
enum Work {
    Call(pb::Call),
    Closed(pb::SessionEnded),
}

impl Work {
    fn session(&self) -> u64 {
        match self {
            Work::Call(call) => call.request.as_ref().map_or(0, |r| r.session_id),
            Work::Closed(ended) => ended.session_id,
        }
    }
}

/// Serves one link until the gateway closes it (or it breaks): reads calls, runs them in
/// order per session, queues the answers on `down`, then closes `down`.
pub(crate) async fn serve(
    handle: Arc<dyn Handle>,
    gateway: NodeId,
    mut up: tonic::Streaming<pb::Up>,
    down: Arc<Down>,
) {
    // However this ends (the gateway closed the link, or the node stops and drops this task),
    // the down stream ends too, so the server's shutdown does not wait on it.
    let _closing = CloseOnDrop(down.clone());
    let mut running: FuturesUnordered<BoxFuture<'static, u64>> = FuturesUnordered::new();
    // Sessions with work running, and the work of each that waits its turn.
    let mut waiting: HashMap<u64, VecDeque<Work>> = HashMap::new();
    let mut reading = true;
    loop {
        tokio::select! {
            message = up.message(), if reading => match message {
                Ok(Some(message)) => {
                    for item in message.items {
                        let work = match item.item {
                            Some(UpKind::Call(call)) => Work::Call(call),
                            Some(UpKind::Closed(ended)) => Work::Closed(ended),
                            Some(UpKind::Moved(moved)) => {
                                handle.moved(moved, &gateway, &down);
                                continue;
                            }
                            None => continue,
                        };
                        let session = work.session();
                        match waiting.get_mut(&session) {
                            Some(queue) => queue.push_back(work),
                            None => {
                                waiting.insert(session, VecDeque::new());
                                running.push(run(&handle, &gateway, &down, work));
                            }
                        }
                    }
                }
                Ok(None) => reading = false,
                Err(status) => {
                    debug!(%gateway, %status, "link from the gateway broke");
                    reading = false;
                }
            },
            Some(session) = running.next(), if !running.is_empty() => {
                match waiting.get_mut(&session).and_then(VecDeque::pop_front) {
                    Some(next) => running.push(run(&handle, &gateway, &down, next)),
                    None => {
                        waiting.remove(&session);
                    }
                }
            }
            else => break,
        }
    }
}

/// Closes a link's down queue when dropped.
struct CloseOnDrop(Arc<Down>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Runs one unit of work; resolves to its session once done (its answer queued).
fn run(
    handle: &Arc<dyn Handle>,
    gateway: &NodeId,
    down: &Arc<Down>,
    work: Work,
) -> BoxFuture<'static, u64> {
    let session = work.session();
    match work {
        Work::Call(call) => {
            let answering = handle.call(call.request.unwrap_or_default(), gateway);
            let down = down.clone();
            Box::pin(async move {
                down.answer(call.id, answering.await);
                session
            })
        }
        Work::Closed(ended) => {
            let closing = handle.closed(ended);
            Box::pin(async move {
                closing.await;
                session
            })
        }
    }
}

/// The links this node serves, by gateway: pushes for a gateway's users go down its link.
#[derive(Default)]
pub(crate) struct Links {
    by_gateway: Mutex<HashMap<NodeId, Arc<Down>>>,
}

impl Links {
    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, Arc<Down>>> {
        self.by_gateway
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the link of `gateway` (a newer link replaces an older one).
    pub(crate) fn attach(&self, gateway: &NodeId, down: &Arc<Down>) {
        self.lock().insert(gateway.clone(), down.clone());
    }

    /// Forgets the link of `gateway` if it is still `down`.
    pub(crate) fn detach(&self, gateway: &NodeId, down: &Arc<Down>) {
        let mut links = self.lock();
        if links.get(gateway).is_some_and(|d| Arc::ptr_eq(d, down)) {
            links.remove(gateway);
        }
    }

    /// Every open link.
    pub(crate) fn all(&self) -> Vec<Arc<Down>> {
        self.lock()
            .values()
            .filter(|d| !d.is_closed())
            .cloned()
            .collect()
    }

    /// The open link of `gateway`, if any.
    pub(crate) fn get(&self, gateway: &NodeId) -> Option<Arc<Down>> {
        self.lock().get(gateway).filter(|d| !d.is_closed()).cloned()
    }
}

/// Down messages as the response stream of `Logic.Link`.
pub(crate) fn down_stream(
    down: Arc<Down>,
) -> impl futures::Stream<Item = Result<pb::Down, tonic::Status>> + Send + 'static {
    futures::stream::unfold(down, |down| async move {
        down.next().await.map(|message| (Ok(message), down))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(size: usize) -> pb::Delivery {
        pb::Delivery {
            route: 1,
            payload: vec![0; size].into(),
            user_ids: vec!["u".into()],
            to_every_gateway: false,
        }
    }

    #[tokio::test]
    async fn what_is_queued_goes_down_in_one_message_in_order() {
        let down = Down::new();
        down.answer(1, pb::LogicResponse::default());
        down.push(delivery(3)).expect("queued");
        down.answer(2, pb::LogicResponse::default());
        let message = down.next().await.expect("a message");
        let kinds: Vec<&str> = message
            .items
            .iter()
            .map(|i| match &i.item {
                Some(DownKind::Answer(a)) if a.id == 1 => "answer 1",
                Some(DownKind::Answer(_)) => "answer 2",
                Some(DownKind::Push(_)) => "push",
                Some(DownKind::MovedAck(_)) => "moved ack",
                None => "none",
            })
            .collect();
        assert_eq!(kinds, ["answer 1", "push", "answer 2"]);
    }

    #[tokio::test]
    async fn a_large_backlog_goes_down_in_messages_of_about_a_mebibyte() {
        let down = Down::new();
        for _ in 0..3 {
            down.push(delivery(600 << 10)).expect("queued");
        }
        down.answer(9, pb::LogicResponse::default());
        let sizes: Vec<usize> = [down.next().await, down.next().await, down.next().await]
            .into_iter()
            .map(|m| m.expect("a message").items.len())
            .collect();
        assert_eq!(
            sizes,
            [1, 1, 2],
            "one large push a message; the answer rides the last"
        );
    }

    #[tokio::test]
    async fn pushes_beyond_the_queue_bound_are_refused_and_a_closed_queue_ends() {
        let down = Down::new();
        down.push(delivery(MAX_QUEUED_PUSH_BYTES - 64))
            .expect("fits");
        assert_eq!(down.push(delivery(1024)), Err(Refused::Full));
        assert!(down.next().await.is_some(), "what was queued still goes");
        down.push(delivery(1024)).expect("room again once sent");
        down.close();
        assert_eq!(down.push(delivery(1)), Err(Refused::Closed));
        assert!(down.next().await.is_some());
        assert!(down.next().await.is_none());
    }
}
