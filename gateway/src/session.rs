//! One client session: who it is (user, login stamp), its bindings, attributes, watchers and
//! wills, and its pushes: numbered without gaps, held for a resume (bounded in count and in
//! bytes), and queued on its connection when it has one.
//!
//! A session outlives a connection that drops without a goodbye: it is held, detached, for the
//! resume window, its pushes still numbered and held. A connection can resume it here, or it
//! can move to another gateway as a snapshot. Its `epoch` counts the attaches; a resume token
//! names the epoch it was issued for, so each token resumes once.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use mesh::NodeId;
use proto::{gateway::v1 as gw, logic::v1::BindMode};
use tokio::time::Instant;
use tracing::debug;
use wire::{Envelope, ErrorCode};

use crate::{
    binding::{self, Binding},
    conn::Conn,
    outbox::PushFrame,
    sessions::LoginStamp,
};

/// Most attributes a session holds, and the largest key and value.
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_BYTES: usize = 1024;
/// How far past the pushes numbered here an adopted session's resume may name pushes the old
/// gateway delivered while it moved (their copies still on their way).
const MAX_AHEAD: u64 = 65_536;
/// Most wills a session holds (a will per room joined, say).
const MAX_WILLS: usize = 256;

/// What a session keeps for a resume.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionLimits {
    /// Largest frame the client accepts: a push over it is refused, never held or queued.
    pub(crate) max_frame: usize,
    /// Most pushes held for a resume.
    pub(crate) held_pushes: usize,
    /// Most bytes of pushes held for a resume.
    pub(crate) held_bytes: usize,
}

/// A will a logic node left: pushed to the session if that node is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Will {
    pub(crate) node: NodeId,
    pub(crate) key: String,
    pub(crate) route: u32,
    pub(crate) payload: Bytes,
}

/// State that routing reads and logic servers change.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub(crate) user: Option<Arc<str>>,
    /// When the user logged in on this session (the order that decides between two logins).
    pub(crate) login: Option<LoginStamp>,
    /// The login is registered here but not answered yet: the other gateways are being asked
    /// to kick older sessions of the user (or one that did not answer to be fenced). Presence
    /// does not count the user here until it is answered.
    pub(crate) login_pending: bool,
    pub(crate) bindings: Vec<Binding>,
    pub(crate) attributes: HashMap<String, String>,
    /// Nodes to tell when the session closes (besides bound nodes).
    pub(crate) watchers: BTreeSet<NodeId>,
    pub(crate) wills: Vec<Will>,
    /// The gateway a logic server suggested this session move to (affinity): a MIGRATE goes
    /// there.
    pub(crate) move_to: Option<NodeId>,
}

/// What a logic response asks of the session besides login, applied under one lock.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) bind: Option<(BindMode, Vec<Binding>)>,
    pub(crate) attributes: HashMap<String, String>,
    pub(crate) watch: Option<NodeId>,
    /// Wills left by `will_node`, and keys of its wills to forget.
    pub(crate) wills: Vec<Will>,
    pub(crate) revoke_wills: Vec<String>,
    pub(crate) will_node: Option<NodeId>,
}

/// What became of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Numbered and held (and queued on the connection when the session has one).
    Queued,
    /// Its frame would exceed the client frame limit: refused, never held or queued.
    TooLarge,
    /// The session ended or moved away.
    Closed,
}

/// A push held for a resume.
#[derive(Clone, Debug)]
struct HeldPush {
    seq: u64,
    route: u32,
    payload: Bytes,
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    /// A connection carries it.
    Attached,
    /// Its connection dropped at `since`; held for the resume window.
    Detached { since: Instant },
    /// Being handed to another gateway: pushes are still numbered and delivered here, and
    /// copied to follow the session there (the other gateway numbers them alike).
    Moving,
    /// Over (or moved away): nothing more is taken.
    Ended,
}

struct Pushes {
    /// The seq the next push takes (from 1).
    next_seq: u64,
    held: VecDeque<HeldPush>,
    held_bytes: usize,
    conn: Option<Arc<Conn>>,
    life: Life,
    /// Pushes taken while `Moving`, numbered and delivered here all the same (the last
    /// `backlog.len()` seqs): they follow the session, and the gateway adopting it numbers
    /// them alike, so the client's seq means the same on both. Dropped if the move fails.
    backlog: Vec<(u32, Bytes)>,
    /// An adopted session whose client resumed with pushes the old gateway delivered before
    /// forwarding them here: those (up to this seq) are numbered and held, not sent again.
    delivered_through: u64,
    /// Adopted, and not resumed since (a resume may name pushes not forwarded here yet).
    adopted: bool,
    /// A session adopted from another gateway: the nodes whose earlier pushes that gateway
    /// still forwards. Pushes straight from anyone wait in `held_back` until every one of them
    /// is flushed, so forwarded pushes come first.
    awaiting: Vec<NodeId>,
    held_back: Vec<(u32, Bytes)>,
}

impl Pushes {
    /// Forgets the oldest push held for a resume.
    fn drop_oldest(&mut self) {
        if let Some(old) = self.held.pop_front() {
            self.held_bytes -= old.payload.len();
        }
    }
}

/// What ending a session found.
pub(crate) struct Ended {
    /// The connection that carried it, if any.
    pub(crate) conn: Option<Arc<Conn>>,
    /// It was held without a connection.
    pub(crate) was_detached: bool,
}

/// What a resume found.
pub(crate) struct Resumption {
    /// It was held without a connection.
    pub(crate) was_detached: bool,
    /// Every push after the client's last one is replayed.
    pub(crate) resumed: bool,
    /// The seq of the first push that follows the answer.
    pub(crate) first_seq: u64,
    /// The connection that carried the session before, if it still did.
    pub(crate) replaced: Option<Arc<Conn>>,
}

/// One client session.
pub(crate) struct Session {
    pub(crate) id: u64,
    state: Mutex<SessionState>,
    pushes: Mutex<Pushes>,
    limits: SessionLimits,
    /// Which attach this is (a token resumes the session once: at the epoch it names).
    epoch: AtomicU64,
    /// A node removed or replaced a binding: the next request waits for the earlier ones.
    rebound: AtomicBool,
    /// The client asked to move and the move is under way (a second ask joins it).
    migrating: AtomicBool,
}

impl Session {
    /// A new session, carried by `conn`.
    pub(crate) fn new(id: u64, limits: SessionLimits, conn: Arc<Conn>) -> Arc<Session> {
        live_objects_changed(1);
        Arc::new(Session {
            id,
            state: Mutex::default(),
            pushes: Mutex::new(Pushes {
                next_seq: 1,
                held: VecDeque::new(),
                held_bytes: 0,
                conn: Some(conn),
                life: Life::Attached,
                backlog: Vec::new(),
                delivered_through: 0,
                adopted: false,
                awaiting: Vec::new(),
                held_back: Vec::new(),
            }),
            limits,
            epoch: AtomicU64::new(1),
            rebound: AtomicBool::new(false),
            migrating: AtomicBool::new(false),
        })
    }

    /// A session handed over by another gateway: detached until its client resumes here.
    /// Pushes straight from the nodes it was bound to or watched by wait until the old gateway
    /// says it forwarded everything of theirs (`flushed`).
    pub(crate) fn adopt(snapshot: gw::SessionSnapshot, limits: SessionLimits) -> Arc<Session> {
        live_objects_changed(1);
        let awaiting = snapshot_nodes(&snapshot);
        let bindings: Vec<Binding> = snapshot
            .bindings
            .into_iter()
            .map(|b| {
                let mut routes = b.routes;
                routes.sort_unstable();
                Binding {
                    node: NodeId::new(b.node_id),
                    routes: Arc::from(routes),
                }
            })
            .collect();
        bindings_changed(bindings.len() as i64);
        let state = SessionState {
            user: (!snapshot.user_id.is_empty()).then(|| Arc::from(snapshot.user_id.as_str())),
            login: snapshot.login.as_ref().map(LoginStamp::from_proto),
            login_pending: false,
            bindings,
            attributes: snapshot.attributes.into_iter().collect(),
            watchers: snapshot.watchers.into_iter().map(NodeId::from).collect(),
            wills: snapshot
                .wills
                .into_iter()
                .map(|w| Will {
                    node: NodeId::new(w.node_id),
                    key: w.key,
                    route: w.route,
                    payload: w.payload,
                })
                .collect(),
            // A suggestion was this gateway's to act on; here it would be stale.
            move_to: None,
        };
        let held: VecDeque<HeldPush> = snapshot
            .held
            .into_iter()
            .map(|p| HeldPush {
                seq: p.seq,
                route: p.route,
                payload: p.payload,
            })
            .collect();
        let held_bytes = held.iter().map(|p| p.payload.len()).sum();
        Arc::new(Session {
            id: snapshot.session_id,
            state: Mutex::new(state),
            pushes: Mutex::new(Pushes {
                next_seq: snapshot.next_seq.max(1),
                held,
                held_bytes,
                conn: None,
                life: Life::Detached {
                    since: Instant::now(),
                },
                backlog: Vec::new(),
                delivered_through: 0,
                adopted: true,
                awaiting,
                held_back: Vec::new(),
            }),
            limits,
            epoch: AtomicU64::new(snapshot.epoch + 1),
            rebound: AtomicBool::new(false),
            migrating: AtomicBool::new(false),
        })
    }

    /// The session as it moves to another gateway. Call once it is `Moving`: the snapshot is
    /// the session when the move started (later pushes follow it from the backlog).
    pub(crate) fn snapshot(&self, from_gateway: &NodeId) -> gw::SessionSnapshot {
        let state = self.state();
        let pushes = self.lock_pushes();
        // The session as the move began: the backlog's pushes follow it.
        let next_seq = pushes.next_seq - pushes.backlog.len() as u64;
        gw::SessionSnapshot {
            session_id: self.id,
            user_id: state.user.as_deref().unwrap_or_default().to_owned(),
            login: state.login.as_ref().map(LoginStamp::to_proto),
            bindings: state
                .bindings
                .iter()
                .map(|b| gw::SnapshotBinding {
                    node_id: b.node.to_string(),
                    routes: b.routes.to_vec(),
                })
                .collect(),
            attributes: state.attributes.clone(),
            watchers: state.watchers.iter().map(ToString::to_string).collect(),
            next_seq,
            held: pushes
                .held
                .iter()
                .filter(|p| p.seq < next_seq)
                .map(|p| gw::HeldPush {
                    seq: p.seq,
                    route: p.route,
                    payload: p.payload.clone(),
                })
                .collect(),
            wills: state
                .wills
                .iter()
                .map(|w| gw::HeldWill {
                    node_id: w.node.to_string(),
                    key: w.key.clone(),
                    route: w.route,
                    payload: w.payload.clone(),
                })
                .collect(),
            epoch: self.epoch(),
            from_gateway: from_gateway.to_string(),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SessionState> {
        lock(&self.state)
    }

    fn lock_pushes(&self) -> MutexGuard<'_, Pushes> {
        lock(&self.pushes)
    }

    /// The client has every push up to `seq` (it said so when it asked to move): they are
    /// not held for a resume any more, so the move carries less.
    pub(crate) fn acknowledge(&self, seq: u64) {
        let mut pushes = self.lock_pushes();
        while pushes.held.front().is_some_and(|p| p.seq <= seq) {
            pushes.drop_oldest();
        }
    }

    /// Marks the client's move as under way; false when it was already.
    pub(crate) fn begin_migrate(&self) -> bool {
        !self.migrating.swap(true, Ordering::AcqRel)
    }

    /// The client's move is over (it failed: the session stays here).
    pub(crate) fn end_migrate(&self) {
        self.migrating.store(false, Ordering::Release);
    }

    /// The logged-in user, if any.
    pub(crate) fn user(&self) -> Option<Arc<str>> {
        self.state().user.clone()
    }

    /// The current epoch (what a token issued now names).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The connection carrying the session, if any.
    pub(crate) fn conn(&self) -> Option<Arc<Conn>> {
        self.lock_pushes().conn.clone()
    }

    pub(crate) fn life(&self) -> Life {
        self.lock_pushes().life
    }

    /// True when `conn` carries this session.
    pub(crate) fn carried_by(&self, conn: &Arc<Conn>) -> bool {
        self.lock_pushes()
            .conn
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, conn))
    }

    /// `conn` dropped without a goodbye: the session is held, detached. False when `conn` no
    /// longer carried it (it was resumed elsewhere or moved) or it ended.
    pub(crate) fn detach(&self, conn: &Arc<Conn>) -> bool {
        let mut pushes = self.lock_pushes();
        let carried = pushes.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn));
        if !carried || pushes.life != Life::Attached {
            return false;
        }
        pushes.conn = None;
        pushes.life = Life::Detached {
            since: Instant::now(),
        };
        true
    }

    /// Ends the session: it takes nothing more. `None` when it had ended already.
    pub(crate) fn end(&self) -> Option<Ended> {
        let mut pushes = self.lock_pushes();
        if pushes.life == Life::Ended {
            return None;
        }
        let was_detached = matches!(pushes.life, Life::Detached { .. });
        pushes.life = Life::Ended;
        pushes.held = VecDeque::new();
        pushes.held_bytes = 0;
        Some(Ended {
            conn: pushes.conn.take(),
            was_detached,
        })
    }

    /// Starts a move to another gateway: pushes are copied to the backlog from now on. `None`
    /// when the session is not there to move (ended, or moving already); else whether it was
    /// held without a connection.
    pub(crate) fn start_moving(&self) -> Option<bool> {
        let mut pushes = self.lock_pushes();
        let was_detached = match pushes.life {
            Life::Ended | Life::Moving => return None,
            Life::Detached { .. } => true,
            Life::Attached => false,
        };
        pushes.life = Life::Moving;
        Some(was_detached)
    }

    /// The move succeeded: the session is over here. `follow` gets the pushes that came
    /// meanwhile, in order, under the pushes lock (so a push after them, refused here as
    /// `Closed`, is passed on after them). Returns the connection that carried it, if any.
    pub(crate) fn moved_away(&self, follow: impl FnOnce(Vec<(u32, Bytes)>)) -> Option<Arc<Conn>> {
        let mut pushes = self.lock_pushes();
        pushes.life = Life::Ended;
        pushes.held = VecDeque::new();
        pushes.held_bytes = 0;
        follow(std::mem::take(&mut pushes.backlog));
        pushes.conn.take()
    }

    /// The move failed: the session stays here (the pushes that came meanwhile were numbered
    /// and delivered here already). True when it is now held without a connection (its
    /// connection ended during the move, or it had none): the caller starts its resume window.
    pub(crate) fn stop_moving(&self) -> bool {
        let mut pushes = self.lock_pushes();
        if pushes.life != Life::Moving {
            return false;
        }
        if pushes.conn.as_ref().is_some_and(|c| c.is_ending()) {
            pushes.conn = None;
        }
        let detached = pushes.conn.is_none();
        pushes.life = if detached {
            Life::Detached {
                since: Instant::now(),
            }
        } else {
            Life::Attached
        };
        pushes.backlog = Vec::new();
        detached
    }

    /// Numbers a push, holds it for a resume and queues it on the connection (or keeps it
    /// for the move or behind forwarded pushes, see the fields of `Pushes`).
    pub(crate) fn push(&self, route: u32, payload: Bytes) -> Pushed {
        self.take(route, payload, false)
    }

    /// A push forwarded by the gateway this session came from: numbered at once (it comes
    /// before anything held back).
    pub(crate) fn push_forwarded(&self, route: u32, payload: Bytes) -> Pushed {
        self.take(route, payload, true)
    }

    fn take(&self, route: u32, payload: Bytes, forwarded: bool) -> Pushed {
        if wire::envelope::push_len(route, payload.len()) > self.limits.max_frame {
            return Pushed::TooLarge;
        }
        let mut pushes = self.lock_pushes();
        match pushes.life {
            Life::Ended => Pushed::Closed,
            Life::Moving => {
                pushes.backlog.push((route, payload.clone()));
                self.number(&mut pushes, route, payload)
            }
            _ if !forwarded && !pushes.awaiting.is_empty() => {
                pushes.held_back.push((route, payload));
                Pushed::Queued
            }
            _ => self.number(&mut pushes, route, payload),
        }
    }

    /// The gateway this session came from forwards nothing more of `node`'s (or, with `None`,
    /// of anyone's: it waited long enough). Once no node is awaited, the pushes held back are
    /// numbered, in the order they came.
    pub(crate) fn flushed(&self, node: Option<&NodeId>) {
        let mut pushes = self.lock_pushes();
        match node {
            Some(node) => pushes.awaiting.retain(|n| n != node),
            None => pushes.awaiting.clear(),
        }
        if pushes.awaiting.is_empty() && !pushes.held_back.is_empty() {
            for (route, payload) in std::mem::take(&mut pushes.held_back) {
                self.number(&mut pushes, route, payload);
            }
        }
    }

    /// Numbers a push, holds it for a resume and queues it on the connection.
    fn number(&self, pushes: &mut Pushes, route: u32, payload: Bytes) -> Pushed {
        if pushes.life == Life::Ended {
            return Pushed::Closed;
        }
        let seq = pushes.next_seq;
        pushes.next_seq += 1;
        self.hold(pushes, seq, route, payload.clone());
        if seq <= pushes.delivered_through {
            return Pushed::Queued;
        }
        if let Some(conn) = &pushes.conn
            && !conn.queue_push(PushFrame {
                seq,
                route,
                payload,
            })
        {
            // The connection is going (a slow consumer): the push stays held for a resume.
            debug!(
                session = self.id,
                seq, "push held: the connection is closing"
            );
        }
        Pushed::Queued
    }

    fn hold(&self, pushes: &mut Pushes, seq: u64, route: u32, payload: Bytes) {
        if self.limits.held_pushes == 0 {
            return;
        }
        pushes.held_bytes += payload.len();
        pushes.held.push_back(HeldPush {
            seq,
            route,
            payload,
        });
        while pushes.held.len() > self.limits.held_pushes
            || (pushes.held_bytes > self.limits.held_bytes && pushes.held.len() > 1)
        {
            pushes.drop_oldest();
        }
    }

    /// Resumes the session on `conn` with a token issued at `epoch`: under one lock, attaches
    /// it, bumps the epoch (so the token is spent), queues `answer(epoch, resumed, first_seq)`
    /// and then every held push after `last_seq`, so live pushes follow them in order.
    /// Refused when the session ended, or the token's epoch has passed (it was used).
    pub(crate) fn resume(
        &self,
        conn: &Arc<Conn>,
        epoch: u64,
        last_seq: u64,
        answer: impl FnOnce(u64, bool, u64) -> Envelope,
    ) -> Result<Resumption, ErrorCode> {
        let mut pushes = self.lock_pushes();
        if matches!(pushes.life, Life::Ended | Life::Moving) {
            return Err(ErrorCode::SessionGone);
        }
        if self.epoch.load(Ordering::Acquire) != epoch {
            return Err(ErrorCode::TokenReused);
        }
        let wanted = last_seq.saturating_add(1);
        if std::mem::take(&mut pushes.adopted)
            && wanted > pushes.next_seq
            && wanted - pushes.next_seq <= MAX_AHEAD
        {
            // The old gateway delivered these while the session moved; their copies are on
            // their way here: they are numbered and held when they come, not sent again.
            pushes.delivered_through = last_seq;
        }
        let next = pushes.next_seq.max(pushes.delivered_through + 1);
        let first_held = pushes.held.front().map_or(next, |p| p.seq);
        // Every push after last_seq is still held (or there is none).
        let resumed = wanted >= first_held;
        let first_seq = if resumed {
            wanted.min(next)
        } else {
            first_held
        };
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let was_detached = matches!(pushes.life, Life::Detached { .. });
        let replaced = pushes.conn.replace(conn.clone());
        pushes.life = Life::Attached;
        conn.send(&answer(epoch, resumed, first_seq));
        for held in pushes.held.iter().filter(|p| p.seq >= first_seq) {
            conn.queue_push(PushFrame {
                seq: held.seq,
                route: held.route,
                payload: held.payload.clone(),
            });
        }
        Ok(Resumption {
            was_detached,
            resumed,
            first_seq,
            replaced: replaced.filter(|c| !Arc::ptr_eq(c, conn)),
        })
    }

    /// Applies a logic response's binding change, attributes, watch and wills in one critical
    /// section, so a request routed concurrently sees all of them or none.
    pub(crate) fn apply(&self, effects: Effects) {
        let mut state = self.state();
        if let Some((mode, nodes)) = effects.bind {
            let before = state.bindings.len();
            binding::apply(&mut state.bindings, mode, nodes);
            bindings_changed(state.bindings.len() as i64 - before as i64);
            // A node's wills last as long as the session is bound to it (a room server that
            // unbinds its members before closing their rooms tells them itself).
            let SessionState {
                bindings, wills, ..
            } = &mut *state;
            wills.retain(|w| bindings.iter().any(|b| b.node == w.node));
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
        // Will keys are the session's, whichever node left them: a room's will moves with the
        // room (its new host's will replaces the old host's), and any room server the member
        // asked may take it back.
        state
            .wills
            .retain(|w| !effects.revoke_wills.contains(&w.key));
        if let Some(node) = effects.will_node {
            let bound = state.bindings.iter().any(|b| b.node == node);
            if !bound && !effects.wills.is_empty() {
                debug!(session = self.id, %node, "wills refused: the session is not bound to their node");
            }
            for will in effects.wills.into_iter().filter(|_| bound) {
                state.wills.retain(|w| w.key != will.key);
                if state.wills.len() < MAX_WILLS {
                    state.wills.push(will);
                } else {
                    debug!(session = self.id, "will refused: over the session's bound");
                }
            }
        }
    }

    /// Applies a binding change alone (the gateway service's Bind), with wills of the node
    /// bound.
    pub(crate) fn bind(
        &self,
        mode: BindMode,
        nodes: Vec<Binding>,
        wills: Vec<Will>,
        revoke_wills: Vec<String>,
    ) {
        let will_node = nodes.first().map(|b| b.node.clone());
        if matches!(mode, BindMode::Remove | BindMode::Cover | BindMode::Clear) {
            self.rebound.store(true, Ordering::Release);
        }
        self.apply(Effects {
            bind: Some((mode, nodes)),
            wills,
            revoke_wills,
            will_node,
            ..Effects::default()
        });
    }

    /// Whether a node removed or replaced a binding since the last call (the next request
    /// waits for the session's earlier ones; see `connection::dispatch`).
    pub(crate) fn take_rebound(&self) -> bool {
        // Read first: every request asks, almost always to hear no (no write to the line).
        self.rebound.load(Ordering::Acquire) && self.rebound.swap(false, Ordering::AcqRel)
    }

    /// Drops bindings to nodes that are gone, with their wills; returns those wills.
    pub(crate) fn drop_bindings(&self, gone: &[NodeId]) -> Vec<Will> {
        let mut state = self.state();
        let before = state.bindings.len();
        state.bindings.retain(|b| !gone.contains(&b.node));
        bindings_changed(state.bindings.len() as i64 - before as i64);
        let (wills, kept): (Vec<Will>, Vec<Will>) = std::mem::take(&mut state.wills)
            .into_iter()
            .partition(|w| gone.contains(&w.node));
        state.wills = kept;
        wills
    }

    /// `node` is gone: if the session holds wills of it, the binding to it is dropped and its
    /// wills returned (to be pushed after the unbind). A binding without wills stays until the
    /// next request finds the node gone.
    pub(crate) fn wills_due(&self, node: &NodeId) -> Vec<Will> {
        let state = self.state();
        if !state.wills.iter().any(|w| &w.node == node) {
            return Vec::new();
        }
        drop(state);
        self.drop_bindings(std::slice::from_ref(node))
    }
}

/// The nodes a moving session was bound to or watched by (each told that it moved).
pub(crate) fn snapshot_nodes(snapshot: &gw::SessionSnapshot) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = snapshot
        .bindings
        .iter()
        .map(|b| NodeId::new(b.node_id.as_str()))
        .chain(snapshot.watchers.iter().map(|w| NodeId::new(w.as_str())))
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
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
    use std::time::Duration;

    use super::*;
    use crate::{
        conn::ConnLimits,
        outbox::{Outbound, OutboxLimits},
    };

    const ROUTE: u32 = 7;

    fn limits() -> SessionLimits {
        SessionLimits {
            max_frame: 64 << 10,
            held_pushes: 256,
            held_bytes: 64 << 10,
        }
    }

    fn conn() -> Arc<Conn> {
        let limits = ConnLimits {
            max_frame: 64 << 10,
            outbox: OutboxLimits {
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
            },
            max_in_flight: 8,
            rate: None,
        };
        Conn::new(&limits, tracing::Span::none(), None)
    }

    /// The (seq, payload) of every push queued on `conn` so far.
    fn delivered(conn: &Conn) -> Vec<(u64, String)> {
        std::iter::from_fn(|| conn.outbox().try_recv())
            .filter_map(|item| match item {
                Outbound::Push(p) => Some((p.seq, String::from_utf8_lossy(&p.payload).into())),
                _ => None,
            })
            .collect()
    }

    fn push(session: &Session, text: &str) {
        session.push(ROUTE, Bytes::from(text.to_owned()));
    }

    fn logged_in(conn: &Arc<Conn>) -> Arc<Session> {
        let session = Session::new(1, limits(), conn.clone());
        session.state().user = Some(Arc::from("ann"));
        session.state().watchers.insert(NodeId::new("room-1"));
        session
    }

    /// A session moving from here: `before` pushed before the move, `during` while it moves.
    /// Returns the snapshot and the backlog that follows it.
    fn moved(
        conn: &Arc<Conn>,
        before: &[&str],
        during: &[&str],
    ) -> (gw::SessionSnapshot, Vec<(u32, Bytes)>) {
        let session = logged_in(conn);
        before.iter().for_each(|p| push(&session, p));
        assert_eq!(session.start_moving(), Some(false));
        during.iter().for_each(|p| push(&session, p));
        let snapshot = session.snapshot(&NodeId::new("gw-a"));
        let mut backlog = Vec::new();
        session.moved_away(|pushes| backlog = pushes);
        (snapshot, backlog)
    }

    fn resume(session: &Session, conn: &Arc<Conn>, last_seq: u64) -> (bool, u64) {
        let mut answered = (false, 0);
        session
            .resume(conn, session.epoch(), last_seq, |_, resumed, first_seq| {
                answered = (resumed, first_seq);
                Envelope::default()
            })
            .expect("resumed");
        answered
    }

    #[test]
    fn pushes_during_a_move_are_still_delivered_and_follow_it_with_the_same_seq() {
        let old = conn();
        let (snapshot, backlog) = moved(&old, &["a", "b"], &["c", "d"]);
        // Make before break: the client kept getting pushes while its session moved.
        let seqs: Vec<u64> = delivered(&old).iter().map(|p| p.0).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        // The snapshot is the session when the move began; the rest follows it.
        assert_eq!(snapshot.next_seq, 3);
        assert_eq!(
            snapshot.held.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(backlog.len(), 2);

        // The client missed c and d (the old connection broke): they are replayed there,
        // numbered as the old gateway numbered them.
        let adopted = Session::adopt(snapshot, limits());
        for (route, payload) in backlog {
            adopted.push_forwarded(route, payload);
        }
        let new = conn();
        assert_eq!(resume(&adopted, &new, 2), (true, 3));
        assert_eq!(delivered(&new), [(3, "c".to_owned()), (4, "d".to_owned())]);
    }

    #[test]
    fn a_resume_naming_pushes_not_forwarded_yet_gets_each_once() {
        let old = conn();
        let (snapshot, backlog) = moved(&old, &["a"], &["b", "c"]);
        assert_eq!(delivered(&old).len(), 3);
        let adopted = Session::adopt(snapshot, limits());
        let new = conn();
        // The client got b (2) and c (3) from the old gateway; their copies are on their way.
        assert_eq!(resume(&adopted, &new, 3), (true, 4));
        // A direct push waits for the old gateway's forwarding.
        push(&adopted, "e");
        for (route, payload) in backlog {
            adopted.push_forwarded(route, payload);
        }
        adopted.push_forwarded(ROUTE, Bytes::from_static(b"d"));
        adopted.flushed(Some(&NodeId::new("room-1")));
        assert_eq!(delivered(&new), [(4, "d".to_owned()), (5, "e".to_owned())]);
    }

    #[test]
    fn a_failed_move_leaves_the_pushes_numbered_once() {
        let conn = conn();
        let session = logged_in(&conn);
        push(&session, "a");
        session.start_moving();
        push(&session, "b");
        assert!(!session.stop_moving());
        push(&session, "c");
        let seqs: Vec<u64> = delivered(&conn).iter().map(|p| p.0).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn a_migrate_acknowledges_what_the_client_has() {
        let conn = conn();
        let session = logged_in(&conn);
        ["a", "b", "c"].iter().for_each(|p| push(&session, p));
        session.acknowledge(2);
        session.start_moving();
        let snapshot = session.snapshot(&NodeId::new("gw-a"));
        assert_eq!(snapshot.held.iter().map(|p| p.seq).collect::<Vec<_>>(), [3]);
    }
}
