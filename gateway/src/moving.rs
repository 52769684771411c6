//! Sessions that move between gateways, and pushes that follow them.
//!
//! A session moves by a hand-over (`hand_over`): the old gateway marks it moving, sends a
//! snapshot of it as it was then to the new gateway (`AdoptSessions`, in batches of the
//! sessions waiting to move there), and once that gateway holds it:
//! 1. registers a forwarding entry for the user and, under the session's pushes lock, queues the
//!    pushes that came during the move to be forwarded, so every later push for the user is
//!    forwarded after them, in the order it arrives;
//! 2. tells every node the session was bound to or watched by that the user moved (`Moved`, up
//!    the link after the session's calls). Each node sends the user's later pushes to the new
//!    gateway and answers `MovedAck` after the pushes it had already sent this way; the old
//!    gateway forwards those, then a `Flushed` marker for that node.
//!
//! Make before break: pushes that come during the move are still numbered and delivered here
//! (the client's blackout is its reconnect, not the hand-over). The new gateway numbers their
//! forwarded copies from the snapshot's `next_seq` in the same order, so they get the same seq;
//! a client that resumes before the copies arrive names pushes not numbered there yet, and
//! those are held, not sent again (`Session::resume`).
//!
//! The new gateway numbers forwarded pushes at once and holds back pushes that reach it
//! directly until every such node is flushed (or `SETTLE` passes), so the user gets each push
//! once, in each node's order, with no gap in `seq`. Deliveries a node sent to every gateway
//! (recipient's gateway unknown) are not forwarded: the new gateway got its own copy.
//!
//! The same hand-over serves a drain (the gateway moves its sessions to the least-loaded other
//! gateway and tells each client `MIGRATE_TO`), a client's `MIGRATE`, and a resume on another
//! gateway (`TakeSession`: the gateway holding the session hands it to the one asking).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use mesh::{NodeId, PeerChannel};
use prost::Message;
use proto::{
    client::v1::{Envelope, Kind, MigrateTo},
    gateway::v1::{self as pb, forward_item::Item, gateway_client::GatewayClient},
    logic::v1::Moved,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, info, warn};
use wire::{ErrorCode, envelope};

use crate::{
    conn::{Conn, Ending},
    gateway::{FORWARD_TIMEOUT, Gateway},
    session::{Pushed, Session, snapshot_nodes},
};

/// How long pushes for a moved user are forwarded to its new gateway.
const FORWARD_FOR: Duration = Duration::from_secs(60);
/// How long an adopted session holds back pushes that reach it directly while the old gateway
/// still forwards (a node that never answers `Moved` does not hold them for longer).
const SETTLE: Duration = Duration::from_secs(10);
/// Forwarded items queued toward one gateway before more are dropped (and counted).
const FORWARD_QUEUE: usize = 65_536;
/// Most items in one `Forward` call.
const FORWARD_BATCH: usize = 1024;
/// Most sessions in one `AdoptSessions` call. A drain moves its sessions in waves of at most
/// `MOVE_BATCH * MOVE_CALLS`: a session waiting for its wave is served here as before (its
/// requests and pushes flow), so a client's blackout is its own wave's move and reconnect,
/// not the whole drain's.
const MOVE_BATCH: usize = 1024;
/// `AdoptSessions` calls in flight toward one gateway.
const MOVE_CALLS: usize = 4;
/// Most bytes of snapshots in one `AdoptSessions` call (a snapshot carries its session's replay
/// ring, at most 1 MiB): calls stay small however many sessions wait.
const MOVE_BYTES: usize = 2 << 20;

/// Milliseconds since this process's first call (a clock for `Forwards::any`).
fn since_start_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Why a session could not move.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MoveError {
    #[error("the session is not here to move (ended, or moving already)")]
    NotHere,
    #[error("no other gateway can take it")]
    NoGateway,
    #[error("the other gateway did not adopt it: {0}")]
    NotAdopted(String),
    #[error("its requests in flight were not answered in time")]
    Busy,
}

struct Forwarding {
    to: NodeId,
    until: Instant,
}

/// A session the other gateway holds now.
pub(crate) struct Handed {
    pub(crate) adopted: pb::Adopted,
    /// The connection that carried the session here (to be told where it went).
    pub(crate) conn: Option<Arc<Conn>>,
    /// The connection's requests stay stopped while this lives: drop it once the connection
    /// is told where the session went (nothing read after the move may run here).
    pub(crate) held: Option<OwnedSemaphorePermit>,
}

/// What a hand-over gives.
pub(crate) type HandedOver = Result<Handed, MoveError>;

/// Whether a hand-over stops the connection's requests first (answering those in flight).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requests {
    /// The client moves with this connection (drain, `MIGRATE`): its requests stop when its
    /// batch starts; until then it is served as before.
    Hold,
    /// The client is on another connection already (a resume elsewhere).
    Ignore,
}

/// A session waiting for its batch of hand-overs.
pub(crate) struct HandOver {
    session: Arc<Session>,
    requests: Requests,
    done: oneshot::Sender<HandedOver>,
}

/// A session marked moving, with its snapshot, waiting for its call.
struct Moving {
    waiting: HandOver,
    was_detached: bool,
    /// The nodes it was bound to or watched by (told `Moved` once it moved).
    nodes: Vec<NodeId>,
    snapshot: pb::SessionSnapshot,
    held: Option<OwnedSemaphorePermit>,
}

/// Users whose session moved away from here, and the ordered queues toward their gateways.
#[derive(Default)]
pub(crate) struct Forwards {
    /// Hand-overs waiting, by gateway (`Gateway::hand_over`).
    movers: Mutex<HashMap<NodeId, mpsc::UnboundedSender<HandOver>>>,
    users: Mutex<HashMap<String, Forwarding>>,
    queues: Mutex<HashMap<NodeId, mpsc::Sender<pb::ForwardItem>>>,
    /// Until when some user's pushes are forwarded, in ms since `epoch` (a push for a user not
    /// here checks this before taking the lock).
    active_until_ms: AtomicU64,
    /// `Moved` notices not answered yet, and items queued or being sent: a draining gateway
    /// waits for both to reach 0 (briefly) before it leaves.
    unacked: AtomicUsize,
    unsent: AtomicUsize,
    /// Push and PushBatch calls being handled now, by ticket (a `Moved` answer waits for
    /// those that started before it: a node's awaited push may still be on its way in).
    active_pushes: Mutex<ActivePushes>,
}

#[derive(Default)]
struct ActivePushes {
    next: u64,
    running: std::collections::BTreeSet<u64>,
}

impl Forwards {
    fn active(&self) -> MutexGuard<'_, ActivePushes> {
        self.active_pushes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The ticket the next push call takes: calls with a smaller one started before now.
    fn push_mark(&self) -> u64 {
        self.active().next
    }

    /// True once every push call that started before `mark` is done.
    fn pushes_done_before(&self, mark: u64) -> bool {
        self.active()
            .running
            .first()
            .is_none_or(|first| *first >= mark)
    }
}

/// Marks one Push or PushBatch call while it is handled.
pub(crate) struct ActivePush<'a> {
    forwards: &'a Forwards,
    ticket: u64,
}

impl<'a> ActivePush<'a> {
    pub(crate) fn new(forwards: &'a Forwards) -> Self {
        let mut active = forwards.active();
        let ticket = active.next;
        active.next += 1;
        active.running.insert(ticket);
        Self { forwards, ticket }
    }
}

impl Drop for ActivePush<'_> {
    fn drop(&mut self) {
        self.forwards.active().running.remove(&self.ticket);
    }
}

impl Forwards {
    /// True when some user's pushes are being forwarded.
    pub(crate) fn any(&self) -> bool {
        since_start_ms() < self.active_until_ms.load(Ordering::Relaxed)
    }

    fn users(&self) -> MutexGuard<'_, HashMap<String, Forwarding>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where `user`'s pushes go now, if they moved away from here recently.
    fn target(&self, user: &str) -> Option<NodeId> {
        let users = self.users();
        users
            .get(user)
            .filter(|f| f.until > Instant::now())
            .map(|f| f.to.clone())
    }

    fn start(&self, user: &str, to: &NodeId) {
        let mut users = self.users();
        let now = Instant::now();
        users.retain(|_, f| f.until > now);
        users.insert(
            user.to_owned(),
            Forwarding {
                to: to.clone(),
                until: now + FORWARD_FOR,
            },
        );
        let until = since_start_ms() + FORWARD_FOR.as_millis() as u64;
        self.active_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// True when every `Moved` was answered and everything forwarded was sent.
    pub(crate) fn settled(&self) -> bool {
        self.unacked.load(Ordering::Acquire) == 0 && self.unsent.load(Ordering::Acquire) == 0
    }

    fn unacked_done(&self) {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Nothing of `node`'s for `user` comes this way any more; the new gateway is told after
    /// what was forwarded.
    pub(crate) fn flushed(&self, user: &str, node: &NodeId) {
        let Some(to) = self.target(user) else { return };
        let item = Item::Flushed(pb::Flushed {
            user_id: user.to_owned(),
            node: node.to_string(),
        });
        self.enqueue(&to, item);
    }

    fn enqueue(&self, to: &NodeId, item: Item) {
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = queues.get(to) else {
            warn!(gateway = %to, "no forwarding queue toward a gateway; dropping a forwarded item");
            return;
        };
        self.unsent.fetch_add(1, Ordering::AcqRel);
        if queue
            .try_send(pb::ForwardItem { item: Some(item) })
            .is_err()
        {
            self.unsent.fetch_sub(1, Ordering::AcqRel);
            warn!(gateway = %to, "the forwarding queue is full; dropping a forwarded push");
            ::metrics::counter!(crate::metrics::FORWARDS, "outcome" => "dropped").increment(1);
        }
    }
}

impl Gateway {
    /// Hands `session` over to gateway `to` (see the module doc); on success the session is
    /// over here, its connection (if any) returned to be told where it went. Hand-overs to one
    /// gateway go in batches (one `AdoptSessions` call for all that are waiting, a few calls
    /// at once): a drain that moves thousands of clients makes tens of calls, not thousands.
    /// A session waiting for its batch is not moving yet: its pushes still flow, and (with
    /// `Requests::Hold`) its requests are served until the batch starts.
    pub(crate) async fn hand_over(
        self: &Arc<Self>,
        session: &Arc<Session>,
        to: &NodeId,
        requests: Requests,
    ) -> HandedOver {
        let (done, answer) = oneshot::channel();
        let waiting = HandOver {
            session: session.clone(),
            requests,
            done,
        };
        if self.mover(to).send(waiting).is_err() {
            return Err(MoveError::NotAdopted("the gateway is stopping".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(MoveError::NotAdopted("the gateway is stopping".into())))
    }

    /// The queue of hand-overs to `to`, and its task.
    fn mover(self: &Arc<Self>, to: &NodeId) -> mpsc::UnboundedSender<HandOver> {
        let mut movers = self
            .forwards
            .movers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mover) = movers.get(to).filter(|m| !m.is_closed()) {
            return mover.clone();
        }
        // Unbounded, yet bounded by the sessions here: each waits in it at most once.
        let (tx, rx) = mpsc::unbounded_channel();
        movers.insert(to.clone(), tx.clone());
        self.tracker.spawn(self.clone().move_loop(to.clone(), rx));
        tx
    }

    /// Takes the hand-overs waiting for `to` in batches, a few batches at once.
    async fn move_loop(
        self: Arc<Self>,
        to: NodeId,
        mut waiting: mpsc::UnboundedReceiver<HandOver>,
    ) {
        let calls = Arc::new(Semaphore::new(MOVE_CALLS));
        let mut batch = Vec::with_capacity(MOVE_BATCH);
        loop {
            let Ok(call) = calls.clone().acquire_owned().await else {
                return;
            };
            if waiting.recv_many(&mut batch, MOVE_BATCH).await == 0 {
                return;
            }
            let (gateway, to, batch) = (self.clone(), to.clone(), std::mem::take(&mut batch));
            self.tracker.spawn(async move {
                gateway.hand_over_batch(&to, batch).await;
                drop(call);
            });
        }
    }

    /// One batch of hand-overs: each session's requests stopped (those in flight answered),
    /// each marked moving, then `AdoptSessions` calls of at most `MOVE_BYTES` of snapshots
    /// each (a session's replay ring travels with it), and each session finished (moved away)
    /// or back as it was.
    async fn hand_over_batch(self: &Arc<Self>, to: &NodeId, batch: Vec<HandOver>) {
        let held = futures::future::join_all(batch.iter().map(|w| self.hold_requests(w))).await;
        let mut calls: Vec<Vec<Moving>> = vec![Vec::new()];
        let mut bytes = 0;
        for (waiting, held) in batch.into_iter().zip(held) {
            let held = match held {
                Ok(held) => held,
                Err(error) => {
                    let _ = waiting.done.send(Err(error));
                    continue;
                }
            };
            let Some(was_detached) = waiting.session.start_moving() else {
                let _ = waiting.done.send(Err(MoveError::NotHere));
                continue;
            };
            let snapshot = waiting.session.snapshot(&self.node_id);
            let size = snapshot.encoded_len();
            if bytes + size > MOVE_BYTES && calls.last().is_some_and(|c| !c.is_empty()) {
                calls.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            calls.last_mut().expect("one call at least").push(Moving {
                nodes: snapshot_nodes(&snapshot),
                waiting,
                was_detached,
                snapshot,
                held,
            });
        }
        let calls = calls.into_iter().filter(|call| !call.is_empty());
        futures::future::join_all(calls.map(|call| self.adopt_there(to, call))).await;
    }

    /// Stops the requests of the connection a session moves with, once those in flight are
    /// answered (a request cut off by a slow node is answered within the request timeout).
    async fn hold_requests(
        &self,
        waiting: &HandOver,
    ) -> Result<Option<OwnedSemaphorePermit>, MoveError> {
        if waiting.requests == Requests::Ignore {
            return Ok(None);
        }
        let Some(conn) = waiting.session.conn() else {
            return Ok(None);
        };
        let wait = self.limits.request_timeout + Duration::from_secs(1);
        tokio::select! {
            held = tokio::time::timeout(wait, conn.hold_requests()) => held.map_err(|_| MoveError::Busy),
            // Gone meanwhile: the session moves without it.
            _ = conn.stop.cancelled() => Ok(None),
        }
    }

    /// One `AdoptSessions` call, and what becomes of each session in it.
    async fn adopt_there(self: &Arc<Self>, to: &NodeId, call: Vec<Moving>) {
        let (moving, snapshots): (Vec<_>, Vec<_>) = call
            .into_iter()
            .map(|m| ((m.waiting, m.was_detached, m.nodes, m.held), m.snapshot))
            .unzip();
        let request = pb::SessionSnapshots {
            sessions: snapshots,
        };
        let answer = self
            .call_gateway(to, |mut client| {
                let request = request.clone();
                async move { client.adopt_sessions(request).await }
            })
            .await;
        let mut answers = match answer {
            Ok(adopted) => adopted.adopted.into_iter(),
            Err(error) => {
                for (waiting, was_detached, _, _) in moving {
                    self.move_failed(&waiting.session, was_detached);
                    let _ = waiting.done.send(Err(MoveError::NotAdopted(error.clone())));
                }
                return;
            }
        };
        for (waiting, was_detached, nodes, held) in moving {
            let outcome = match answers.next() {
                Some(adopted) if adopted.refused.is_empty() => {
                    let conn = self.moved_away(&waiting.session, to, was_detached, &nodes);
                    Ok(Handed {
                        adopted,
                        conn,
                        held,
                    })
                }
                refused => {
                    self.move_failed(&waiting.session, was_detached);
                    let why = refused.map_or_else(|| "no answer for it".to_owned(), |a| a.refused);
                    Err(MoveError::NotAdopted(why))
                }
            };
            let _ = waiting.done.send(outcome);
        }
    }

    /// The other gateway holds `session` now: its pushes are forwarded there (those that
    /// waited first), it is removed here, and its nodes are told; returns its connection.
    fn moved_away(
        self: &Arc<Self>,
        session: &Arc<Session>,
        to: &NodeId,
        was_detached: bool,
        nodes: &[NodeId],
    ) -> Option<Arc<Conn>> {
        let user = session.user().as_deref().unwrap_or_default().to_owned();
        self.ensure_forward_queue(to);
        self.forwards.start(&user, to);
        let conn = session.moved_away(|backlog| {
            for (route, payload) in backlog {
                self.forward_push(to, &user, route, payload, None);
            }
        });
        if was_detached {
            self.detached_changed(-1);
        }
        let count = self.sessions.remove(session);
        self.sessions_changed(count);
        let moved = Moved {
            user_id: user.clone(),
            to_gateway: to.to_string(),
        };
        for node in nodes {
            if self.send_moved(node, moved.clone()) {
                self.forwards.unacked.fetch_add(1, Ordering::AcqRel);
            } else {
                // Gone: it sends nothing more; say so at once.
                self.forwards.flushed(&user, node);
            }
        }
        info!(session = session.id, user, to = %to, "session handed over");
        ::metrics::counter!(crate::metrics::MOVES, "outcome" => "moved").increment(1);
        conn
    }

    /// One call to another gateway's service, within the forwarding timeout.
    async fn call_gateway<T, F, Fut>(&self, to: &NodeId, call: F) -> Result<T, String>
    where
        F: Fn(GatewayClient<PeerChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.mesh
            .fan_out(vec![to.clone()], FORWARD_TIMEOUT, |channel| {
                call(GatewayClient::new(channel))
            })
            .await
            .pop()
            .map_or_else(
                || Err("no answer".to_owned()),
                |a| a.result.map_err(|e| e.to_string()),
            )
    }

    fn move_failed(self: &Arc<Self>, session: &Arc<Session>, was_detached: bool) {
        ::metrics::counter!(crate::metrics::MOVES, "outcome" => "failed").increment(1);
        if session.stop_moving() {
            // Held without a connection (its own ended during the move): a new window.
            if !was_detached {
                self.detached_changed(1);
            }
            self.hold_detached(session);
        }
    }

    /// The least-loaded other online gateway (fewest sessions, then id: no ties).
    pub(crate) fn move_target(&self) -> Option<NodeId> {
        let members = self.mesh.cluster().members();
        self.other_gateways()
            .into_iter()
            .filter_map(|id| {
                let node = members.get(&id)?;
                node.is_online().then_some((node.load.sessions, id))
            })
            .min()
            .map(|(_, id)| id)
    }

    /// Moves the session `conn` carries to another gateway and tells the client where
    /// (`MIGRATE_TO`, then the close). Requests already received are answered first.
    pub(crate) async fn migrate(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        session: &Arc<Session>,
    ) -> Result<(), MoveError> {
        let to = self.move_target_for(session).ok_or(MoveError::NoGateway)?;
        self.migrate_to(conn, session, &to).await
    }

    /// Moves the session `conn` carries to gateway `to` (see [`Gateway::migrate`]).
    async fn migrate_to(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        session: &Arc<Session>,
        to: &NodeId,
    ) -> Result<(), MoveError> {
        if session.user().is_none() {
            return Err(MoveError::NotHere);
        }
        let Handed { adopted, held, .. } = self.hand_over(session, to, Requests::Hold).await?;
        let migrate_to = Envelope {
            kind: Kind::MigrateTo as i32,
            migrate_to: Some(MigrateTo {
                addresses: adopted.addresses,
                token: adopted.token,
            }),
            ..Envelope::default()
        };
        conn.end_with(
            Ending::Moved,
            "the session moved to another gateway",
            &migrate_to,
        );
        // Only now may the reader go on (to find the connection ending).
        drop(held);
        Ok(())
    }

    /// A logic server asked that the session move to gateway `to` (affinity: most of the
    /// user's room is there). The client is told (`MOVE_SUGGESTED`) and moves when it answers
    /// `MIGRATE` (at a moment of its choosing: nothing it sends is left unread); the move goes
    /// to `to`. Skipped for this gateway, or one not online or full.
    pub(crate) fn suggest_move(&self, conn: &Arc<Conn>, session: &Arc<Session>, to: NodeId) {
        if to == self.node_id || !self.has_room(&to) || !session.carried_by(conn) {
            debug!(session = session.id, %to, "affinity move not suggested");
            return;
        }
        session.state().move_to = Some(to);
        conn.send(&envelope::move_suggested());
        ::metrics::counter!(crate::metrics::PLACEMENTS, "outcome" => "move_suggested").increment(1);
    }

    /// `to` is an online gateway with room for one more session.
    fn has_room(&self, to: &NodeId) -> bool {
        let members = self.mesh.cluster().members();
        members
            .get(to)
            .filter(|n| n.is_online())
            .is_some_and(|n| n.load.capacity == 0 || n.load.sessions < n.load.capacity)
    }

    /// Where a session moves: the gateway suggested for it, while that one has room; else the
    /// least-loaded other online gateway.
    fn move_target_for(&self, session: &Session) -> Option<NodeId> {
        let suggested = session.state().move_to.clone();
        suggested
            .filter(|to| self.has_room(to))
            .or_else(|| self.move_target())
    }

    /// Answers a client's MIGRATE: the answer, then (once the session's batch has moved)
    /// `MIGRATE_TO` and the close; or `MIGRATION_UNAVAILABLE` (the session stays).
    /// `last_seq` is the last push the client has: the move carries only the held pushes
    /// after it. The reader goes on meanwhile: requests are served until the batch starts,
    /// and those in flight then are answered before `MIGRATE_TO`.
    pub(crate) fn client_migrate(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        session: &Arc<Session>,
        msg_id: u32,
        last_seq: u64,
    ) {
        session.acknowledge(last_seq);
        let refused = match self.move_target_for(session) {
            None => Some(MoveError::NoGateway),
            Some(_) if session.user().is_none() => Some(MoveError::NotHere),
            Some(_) => None,
        };
        if let Some(error) = refused {
            migrate_refused(conn, session, msg_id, &error);
            return;
        }
        conn.send(&envelope::response(
            msg_id,
            0,
            0,
            String::new(),
            Bytes::new(),
        ));
        if !session.begin_migrate() {
            // Asked again while the move is under way: that move answers both (a second
            // hand-over of the session would wait for the first one's hold on its requests).
            return;
        }
        let (gateway, conn, session) = (self.clone(), conn.clone(), session.clone());
        self.tracker.spawn(async move {
            if let Err(error) = gateway.migrate(&conn, &session).await {
                session.end_migrate();
                migrate_refused(&conn, &session, msg_id, &error);
            }
        });
    }

    /// A node answered a `Moved` notice: once the push calls that started before it are done
    /// (one of them may carry that node's last push for the user), the new gateway is told.
    pub(crate) fn moved_acked(self: &Arc<Self>, user: String, node: NodeId) {
        let mark = self.forwards.push_mark();
        if self.forwards.pushes_done_before(mark) {
            self.forwards.flushed(&user, &node);
            self.forwards.unacked_done();
            return;
        }
        let gateway = self.clone();
        self.tracker.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !gateway.forwards.pushes_done_before(mark) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            gateway.forwards.flushed(&user, &node);
            gateway.forwards.unacked_done();
        });
    }

    /// Waits (at most `limit`) until every node answered its `Moved` notices and everything
    /// forwarded was sent, then stops the forwarding queues (what they hold is still sent).
    pub(crate) async fn settle_forwards(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.forwards.settled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.forwards.settled() {
            warn!(
                "moved sessions not settled when the gateway stops: forwarded pushes may be lost"
            );
        }
        self.forwards
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn ensure_forward_queue(self: &Arc<Self>, to: &NodeId) {
        let mut queues = self
            .forwards
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queues.get(to).is_some_and(|q| !q.is_closed()) {
            return;
        }
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        queues.insert(to.clone(), tx);
        self.tracker
            .spawn(self.clone().forward_loop(to.clone(), rx));
    }

    /// Sends what is queued toward `to`, in order, one call at a time.
    async fn forward_loop(self: Arc<Self>, to: NodeId, mut queue: mpsc::Receiver<pb::ForwardItem>) {
        let mut items = Vec::with_capacity(FORWARD_BATCH);
        loop {
            // Ends once the gateway dropped the queue's sender and everything was sent.
            if queue.recv_many(&mut items, FORWARD_BATCH).await == 0 {
                return;
            }
            let batch = pb::ForwardBatch {
                from_gateway: self.node_id.to_string(),
                items: std::mem::take(&mut items),
            };
            let sent = batch.items.len() as u64;
            let answer = self
                .call_gateway(&to, |mut client| {
                    let batch = batch.clone();
                    async move { client.forward(batch).await }
                })
                .await;
            self.forwards
                .unsent
                .fetch_sub(sent as usize, Ordering::AcqRel);
            match answer {
                Ok(_) => {
                    ::metrics::counter!(crate::metrics::FORWARDS, "outcome" => "sent")
                        .increment(sent);
                }
                Err(error) => {
                    warn!(gateway = %to, items = sent, %error, "forwarded pushes were not taken");
                    ::metrics::counter!(crate::metrics::FORWARDS, "outcome" => "lost")
                        .increment(sent);
                }
            }
        }
    }

    /// Queues a push for a user who moved to `to`.
    fn forward_push(
        &self,
        to: &NodeId,
        user: &str,
        route: u32,
        payload: Bytes,
        from: Option<&NodeId>,
    ) {
        let item = Item::Push(pb::Forwarded {
            user_id: user.to_owned(),
            route,
            payload,
            from_node: from.map(ToString::to_string).unwrap_or_default(),
        });
        self.forwards.enqueue(to, item);
    }

    /// A push for `user`, who has no session here: forwarded if they moved away recently
    /// (unless the push was sent to every gateway). True when forwarded.
    pub(crate) fn forward_if_moved(
        &self,
        user: &str,
        route: u32,
        payload: &Bytes,
        from: Option<&NodeId>,
        to_every_gateway: bool,
    ) -> bool {
        if to_every_gateway || !self.forwards.any() {
            return false;
        }
        let Some(to) = self.forwards.target(user) else {
            return false;
        };
        self.forward_push(&to, user, route, payload.clone(), from);
        true
    }

    /// Installs a session handed over by another gateway (held until its client resumes); its
    /// direct pushes wait for the old gateway's forwarding for at most `SETTLE`.
    pub(crate) fn adopt(self: &Arc<Self>, snapshot: pb::SessionSnapshot) -> pb::Adopted {
        let session = Session::adopt(snapshot, self.limits.session);
        let (count, displaced) = self.sessions.adopt(session.clone());
        self.sessions_changed(count);
        if let Some(older) = displaced {
            self.kick_session(
                &older,
                ErrorCode::LoggedInElsewhere as u32,
                "logged in from another connection",
            );
        }
        self.detached_changed(1);
        self.hold_detached(&session);
        let settling = session.clone();
        self.tracker.spawn(async move {
            tokio::time::sleep(SETTLE).await;
            settling.flushed(None);
        });
        let info = self.session_info(&session, session.epoch());
        info!(session = session.id, user = %info.user_id, "session adopted");
        pb::Adopted {
            token: info.resume_token,
            token_expires_at_ms: info.token_expires_at_ms,
            addresses: self.client_addresses(),
            refused: String::new(),
        }
    }

    /// This gateway's client addresses, as announced in its member record.
    pub(crate) fn client_addresses(&self) -> Vec<String> {
        self.mesh
            .cluster()
            .members()
            .get(&self.node_id)
            .and_then(|n| n.client_addr.clone())
            .map(|a| a.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Takes forwarded pushes and markers from the gateway the users came from, in order.
    pub(crate) fn take_forwarded(&self, batch: pb::ForwardBatch) {
        let from = NodeId::new(batch.from_gateway.as_str());
        for item in batch.items {
            match item.item {
                Some(Item::Push(push)) => {
                    let node = (!push.from_node.is_empty()).then(|| NodeId::new(push.from_node));
                    let outcome = self
                        .sessions
                        .by_user(&push.user_id)
                        .map(|s| s.push_forwarded(push.route, push.payload.clone()));
                    match outcome {
                        Some(Pushed::Queued) => self.metrics.pushes.increment(1),
                        // Moved on again: pass it on.
                        _ if self.forward_if_moved(
                            &push.user_id,
                            push.route,
                            &push.payload,
                            node.as_ref(),
                            false,
                        ) => {}
                        _ => {
                            debug!(user = push.user_id, gateway = %from, "a forwarded push for a user not here");
                            ::metrics::counter!(crate::metrics::FORWARDS, "outcome" => "unclaimed")
                                .increment(1);
                        }
                    }
                }
                Some(Item::Flushed(flushed)) => {
                    if let Some(session) = self.sessions.by_user(&flushed.user_id) {
                        session.flushed(Some(&NodeId::new(flushed.node)));
                    }
                }
                None => {}
            }
        }
    }
}

/// The session cannot move now: it stays here, and the client is told.
fn migrate_refused(conn: &Conn, session: &Session, msg_id: u32, error: &MoveError) {
    debug!(session = session.id, %error, "a migrate was refused");
    conn.send(&envelope::error(
        msg_id,
        0,
        ErrorCode::MigrationUnavailable,
        "the session cannot move now; it stays on this gateway",
    ));
}
