//! Every room on this server: one actor task per room, an index by room id and by member, and
//! the room directory (where a room hosted elsewhere lives now).
//!
//! Room ids name no server. A request for a room hosted here goes to its actor; one for a room
//! elsewhere is sent to its host (`MESH_ROOM`), found in a cache or, on a miss, by asking every
//! room server (`MESH_LOCATE`). A room that moved leaves its actor behind for a while as a
//! forwarder: requests routed here by a stale binding or cache reach the new host in the order
//! they came.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use logic_sdk::{LogicError, Sdk};
use mesh::{MeshError, NodeId, NodeKind};
use prost::Message;
use proto::room::v1::{self as pb, errors, routes};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{
    limits::{self, Limits},
    room::{Command, Member, Room},
};

/// Commands waiting for one room before senders wait.
const ROOM_QUEUE: usize = 256;
/// Hops a room request takes at most (a room that moved twice while it travelled).
const MAX_HOPS: u32 = 3;
/// How long a room server waits for another's answer to "where is this room?".
const LOCATE_TIMEOUT: Duration = Duration::from_secs(1);
/// Rooms hosted elsewhere whose host is remembered (the cache starts over when full).
const DIRECTORY_CACHE: usize = 100_000;
/// A moved room's forwarder ends after this long without a request.
const FORWARD_IDLE: Duration = Duration::from_secs(10);
/// A room no server had is not searched for again within this time (short: a server that
/// joined a moment ago may not be known here yet).
const MISSING_FOR: Duration = Duration::from_millis(500);
/// How long ListRooms waits for a room's actor to say who is in it (beyond it, the members are
/// read from the index, without their gateways).
const ROSTER_TIMEOUT: Duration = Duration::from_millis(300);

type ReplyTx = oneshot::Sender<Result<Applied, LogicError>>;

/// What a room request did, and where.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) payload: Bytes,
    /// The room's host, which applied it.
    pub(crate) host: NodeId,
    /// The member is in no other room of that host (after a leave: unbind from it).
    pub(crate) last_room_there: bool,
    /// A join: the gateway the member should move to (affinity).
    pub(crate) move_to: Option<NodeId>,
}

/// What a room's actor is asked.
enum Msg {
    Apply(Command, ReplyTx),
    /// Hold every request from now on and hand over the room's state: a move begins. No
    /// snapshot (the sender dropped) when the room is moving already.
    Freeze(oneshot::Sender<pb::RoomSnapshot>),
    /// The move ended: forward what is held and what comes to the new host (`Some`), or
    /// apply it here (`None`: the room stays).
    Thaw(Option<NodeId>),
    /// Who is in the room and which gateway holds each (for the admin API's ListRooms). Not
    /// a request: answered even while frozen, and the empty-room TTL goes on.
    Roster(oneshot::Sender<Vec<pb::SnapshotMember>>),
}

#[derive(Clone)]
struct RoomHandle {
    tx: mpsc::Sender<Msg>,
    /// Which move brought the room here (0: created here).
    move_id: u64,
}

#[derive(Default)]
struct Index {
    rooms: HashMap<String, RoomHandle>,
    /// Rooms that moved away, whose actors forward to their new host for a while.
    forwarding: HashMap<String, (RoomHandle, NodeId)>,
    /// The members of those rooms, by user: a member whose session ends before the new host
    /// learns of them (they are still bound here) leaves through the forwarder.
    moved_rooms: HashMap<String, BTreeSet<String>>,
    /// The rooms each user is a member of, on this server.
    user_rooms: HashMap<String, BTreeSet<String>>,
    members: u64,
    /// Where rooms hosted elsewhere were last found.
    directory: HashMap<String, NodeId>,
    /// Rooms no server had, and since when.
    missing: HashMap<String, Instant>,
    /// When a room last moved away or a forwarder last passed a request on.
    last_forward: Option<Instant>,
}

/// How this server's rooms are made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// An empty room is removed after this long.
    pub(crate) empty_ttl: Duration,
    /// Member limit of rooms created without one.
    pub(crate) default_max_members: usize,
    /// Rooms hosted at most (0: unlimited).
    pub(crate) max_rooms: u64,
    /// See `Room::affinity`.
    pub(crate) affinity: usize,
    pub(crate) limits: Limits,
}

/// The rooms of this server.
pub(crate) struct Rooms {
    node: NodeId,
    index: Mutex<Index>,
    settings: Settings,
}

/// Load figures of this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) rooms: u64,
    pub(crate) members: u64,
}

impl Rooms {
    pub(crate) fn new(node: NodeId, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            node,
            index: Mutex::default(),
            settings,
        })
    }

    pub(crate) fn node(&self) -> &NodeId {
        &self.node
    }

    pub(crate) fn counts(&self) -> Counts {
        let index = self.lock();
        Counts {
            rooms: index.rooms.len() as u64,
            members: index.members,
        }
    }

    /// Creates a room (empty; add members with `Command::Join`) whose actor runs on the node's
    /// tasks. Refused while the server takes no new work, at its room capacity, or beyond the
    /// room limits. Its id is random and names no server: it stays the room's id wherever the
    /// room moves.
    pub(crate) fn create(
        self: &Arc<Self>,
        sdk: &Sdk,
        max_members: u32,
        properties: BTreeMap<String, String>,
        persistent: bool,
    ) -> Result<String, LogicError> {
        if !sdk.cluster().accepts_new_work() {
            return Err(draining());
        }
        let max = match max_members {
            0 => self.settings.default_max_members,
            max => max as usize,
        };
        limits::check_max_members(max)?;
        limits::check_properties(&properties)?;
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let id = {
            let mut index = self.lock();
            self.check_capacity(&index)?;
            let id = loop {
                let id = format!("{:016x}", rand::random::<u64>());
                if !index.rooms.contains_key(&id) && !index.forwarding.contains_key(&id) {
                    break id;
                }
            };
            let handle = RoomHandle { tx, move_id: 0 };
            index.rooms.insert(id.clone(), handle);
            id
        };
        let mut room = Room::new(
            id.clone(),
            self.node.clone(),
            max,
            properties,
            self.settings.limits,
        );
        room.persistent = persistent;
        room.affinity = self.settings.affinity;
        sdk.spawn(run_room(room, rx, self.clone(), sdk.clone(), None));
        self.publish_load(sdk);
        info!(room = %id, persistent, "room created");
        Ok(id)
    }

    fn check_capacity(&self, index: &Index) -> Result<(), LogicError> {
        let max_rooms = self.settings.max_rooms;
        if max_rooms > 0 && index.rooms.len() as u64 >= max_rooms {
            return Err(LogicError::new(
                errors::AT_CAPACITY,
                "this room server is full",
            ));
        }
        Ok(())
    }

    /// Takes over a room from a server that moves it here: its members, owner, properties and
    /// operation seq as they were. Asked again for the same move (the answer was lost), it
    /// answers as the first time; a room with that id here from anything else is refused.
    pub(crate) fn adopt(
        self: &Arc<Self>,
        sdk: &Sdk,
        snapshot: pb::RoomSnapshot,
    ) -> Result<pb::RoomInfo, LogicError> {
        let move_id = snapshot.move_id;
        let from = snapshot.from_node.clone();
        let mut room = Room::restore(snapshot, self.node.clone(), self.settings.limits)?;
        room.affinity = self.settings.affinity;
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        {
            let mut index = self.lock();
            if let Some(existing) = index.rooms.get(&room.id) {
                return if existing.move_id == move_id && move_id != 0 {
                    Ok(room.info_message())
                } else {
                    Err(LogicError::new(
                        errors::AT_CAPACITY,
                        "a room with that id lives here",
                    ))
                };
            }
            if !sdk.cluster().accepts_new_work() {
                return Err(draining());
            }
            self.check_capacity(&index)?;
            index.forwarding.remove(&room.id);
            index.directory.remove(&room.id);
            index.missing.remove(&room.id);
            index
                .rooms
                .insert(room.id.clone(), RoomHandle { tx, move_id });
        }
        let members = room.member_ids();
        for user in &members {
            self.joined(sdk, &room.id, user);
        }
        let info = room.info_message();
        info!(room = %room.id, %from, members = members.len(), "room adopted");
        // The actor's first push tells the members the move is complete.
        let complete = pb::RoomMigrateComplete {
            room_id: room.id.clone(),
            success: true,
            node_id: self.node.to_string(),
        };
        sdk.spawn(run_room(
            room,
            rx,
            self.clone(),
            sdk.clone(),
            Some(complete),
        ));
        self.publish_load(sdk);
        Ok(info)
    }

    fn handle(&self, room_id: &str) -> Option<RoomHandle> {
        let index = self.lock();
        index
            .rooms
            .get(room_id)
            .or_else(|| index.forwarding.get(room_id).map(|(handle, _)| handle))
            .cloned()
    }

    /// Sends a request to a room's actor here (hosted, or forwarding) and waits for its reply.
    async fn send_to(handle: RoomHandle, command: Command) -> Result<Applied, LogicError> {
        let (reply, answer) = oneshot::channel();
        handle
            .tx
            .send(Msg::Apply(command, reply))
            .await
            .map_err(|_| room_not_found())?;
        // A room removed with commands still queued drops their replies.
        answer.await.map_err(|_| room_not_found())?
    }

    /// Sends a command to a room hosted here and waits for its reply payload.
    pub(crate) async fn send(&self, room_id: &str, command: Command) -> Result<Bytes, LogicError> {
        let handle = self.handle(room_id).ok_or_else(room_not_found)?;
        Self::send_to(handle, command).await.map(|a| a.payload)
    }

    /// A room request, applied by the room's host wherever it lives: here, or the server the
    /// directory names (asked again, fresh, when the one remembered no longer has it).
    pub(crate) async fn route(
        self: &Arc<Self>,
        sdk: &Sdk,
        room_id: &str,
        command: Command,
        hops: u32,
    ) -> Result<Applied, LogicError> {
        // (A forwarder that just ended falls through to the directory.)
        if let Some(handle) = self.handle(room_id).filter(|h| !h.tx.is_closed()) {
            return Self::send_to(handle, command).await;
        }
        if hops >= MAX_HOPS {
            return Err(room_not_found());
        }
        let wire = to_wire(room_id, &command, hops + 1);
        for fresh in [false, true] {
            let Some(host) = self.locate(sdk, room_id, fresh).await else {
                break;
            };
            match forward(sdk, &host, &wire).await {
                Err(Forward::Stale) if !fresh => self.forget(room_id),
                Err(Forward::Stale) => break,
                Err(Forward::Failed(error)) => return Err(error),
                Ok(applied) => return Ok(applied),
            }
        }
        Err(room_not_found())
    }

    /// Where a room lives: here (or the host it moved to, while its forwarder runs), the host
    /// remembered (unless `fresh`), or the one every other room server is asked about.
    async fn locate(&self, sdk: &Sdk, room_id: &str, fresh: bool) -> Option<NodeId> {
        if let Some(host) = self.located_here(room_id) {
            return Some(host);
        }
        {
            let mut index = self.lock();
            if !fresh && let Some(host) = index.directory.get(room_id).cloned() {
                return Some(host);
            }
            // Nobody had it a moment ago: a client repeating a made-up id costs one search.
            match index.missing.get(room_id) {
                Some(since) if since.elapsed() < MISSING_FOR => return None,
                Some(_) => {
                    index.missing.remove(room_id);
                }
                None => {}
            }
        }
        let request = pb::RoomRef {
            room_id: room_id.to_owned(),
        }
        .encode_to_vec();
        let mut asked: FuturesUnordered<_> = sdk
            .cluster()
            .nodes_by_kind(NodeKind::ROOM)
            .into_iter()
            .filter(|node| node.id != self.node)
            .map(|node| {
                let request = request.clone();
                async move {
                    let answer = sdk
                        .mesh()
                        .request_with_timeout(
                            &node.id,
                            routes::MESH_LOCATE,
                            request,
                            LOCATE_TIMEOUT,
                        )
                        .await;
                    answer
                        .ok()
                        .and_then(|bytes| pb::Located::decode(bytes).ok())
                        .map(|located| located.node_id)
                        .filter(|host| !host.is_empty())
                }
            })
            .collect();
        while let Some(answer) = asked.next().await {
            if let Some(host) = answer {
                let host = NodeId::new(host);
                let mut index = self.lock();
                if index.directory.len() >= DIRECTORY_CACHE {
                    index.directory.clear();
                }
                index.directory.insert(room_id.to_owned(), host.clone());
                return Some(host);
            }
        }
        let mut index = self.lock();
        if index.missing.len() >= DIRECTORY_CACHE {
            index.missing.clear();
        }
        index.missing.insert(room_id.to_owned(), Instant::now());
        None
    }

    /// This server's answer to "where is this room?": itself for a room it hosts, the new
    /// host for one it forwards.
    pub(crate) fn located_here(&self, room_id: &str) -> Option<NodeId> {
        let index = self.lock();
        if index.rooms.contains_key(room_id) {
            return Some(self.node.clone());
        }
        index.forwarding.get(room_id).map(|(_, to)| to.clone())
    }

    fn forget(&self, room_id: &str) {
        self.lock().directory.remove(room_id);
    }

    /// The rooms `user` is a member of here.
    pub(crate) fn rooms_of(&self, user: &str) -> Vec<String> {
        self.lock()
            .user_rooms
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `user` is a member of no room here.
    pub(crate) fn in_no_room(&self, user: &str) -> bool {
        !self.lock().user_rooms.contains_key(user)
    }

    /// The ids of the rooms hosted here.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Every room hosted here as the cluster admin API lists it (`runtime::admin::LIST_ROOMS`):
    /// `{"room_id", "host", "members", "gateways"}`, in room id order. Each room's actor is
    /// asked at once (all concurrently, between the requests it applies); one that does not
    /// answer within `ROSTER_TIMEOUT` is listed with its members from the index.
    pub(crate) async fn listing(&self) -> Vec<serde_json::Value> {
        let mut listed: Vec<(String, Vec<pb::SnapshotMember>)> = Vec::new();
        for (id, roster) in self.rosters().await {
            let members = match roster {
                Some(members) => members,
                None => match self.members_in_index(&id) {
                    Some(users) => users
                        .into_iter()
                        .map(|user_id| pb::SnapshotMember {
                            user_id,
                            gateway_node: String::new(),
                        })
                        .collect(),
                    // Removed meanwhile.
                    None => continue,
                },
            };
            listed.push((id, members));
        }
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        listed
            .into_iter()
            .map(|(room_id, members)| {
                let gateways: BTreeSet<&str> = members
                    .iter()
                    .map(|m| m.gateway_node.as_str())
                    .filter(|g| !g.is_empty())
                    .collect();
                serde_json::json!({
                    "room_id": room_id,
                    "host": self.node.as_str(),
                    "members": members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
                    "gateways": gateways,
                })
            })
            .collect()
    }

    /// Every room hosted here with its members and their gateways, each room's actor asked at
    /// once (all concurrently); `None` for a room that did not answer within `ROSTER_TIMEOUT`.
    async fn rosters(&self) -> Vec<(String, Option<Vec<pb::SnapshotMember>>)> {
        let handles: Vec<(String, RoomHandle)> = self
            .lock()
            .rooms
            .iter()
            .map(|(id, handle)| (id.clone(), handle.clone()))
            .collect();
        let asks = handles.into_iter().map(|(id, handle)| async move {
            let (tx, rx) = oneshot::channel();
            let asked = async {
                handle.tx.send(Msg::Roster(tx)).await.ok()?;
                rx.await.ok()
            };
            let roster = tokio::time::timeout(ROSTER_TIMEOUT, asked)
                .await
                .ok()
                .flatten();
            (id, roster)
        });
        futures::future::join_all(asks).await
    }

    /// A gateway was lost for good (see `Sdk::gateways_lost`): the members it still holds
    /// leave their rooms here (`MemberLeft`, reason `gateway lost`), as if their sessions had
    /// ended. Returns how many left. A room too busy to show its roster in time is asked about
    /// every member the index knows (the room itself checks who that gateway holds).
    pub(crate) async fn gateway_lost(&self, gateway: &NodeId) -> usize {
        let mut left = 0;
        for (room, roster) in self.rosters().await {
            let candidates: Vec<String> = match roster {
                Some(members) => members
                    .into_iter()
                    .filter(|m| m.gateway_node == gateway.as_str())
                    .map(|m| m.user_id)
                    .collect(),
                None => self.members_in_index(&room).unwrap_or_default(),
            };
            for user in candidates {
                let forget = Command::Forget {
                    user,
                    held_by: gateway.clone(),
                };
                left += usize::from(self.send(&room, forget).await.is_ok());
            }
        }
        left
    }

    /// The members of a room hosted here as the index knows them; `None` when it is not hosted
    /// here (any more).
    fn members_in_index(&self, room_id: &str) -> Option<Vec<String>> {
        let index = self.lock();
        index.rooms.contains_key(room_id).then(|| {
            let mut users: Vec<String> = index
                .user_rooms
                .iter()
                .filter(|(_, rooms)| rooms.contains(room_id))
                .map(|(user, _)| user.clone())
                .collect();
            users.sort();
            users
        })
    }

    /// Every member of every room, once each room has applied the commands queued before
    /// this call (joins included).
    pub(crate) async fn members(&self) -> Vec<String> {
        let mut users = Vec::new();
        for id in self.ids() {
            if let Ok(info) = self.send(&id, Command::Info).await {
                users.extend(pb::RoomInfo::decode(info).unwrap_or_default().members);
            }
        }
        users.sort();
        users.dedup();
        users
    }

    /// Closes every room (members are told why); returns the users that were members.
    pub(crate) async fn close_all(&self, reason: &'static str) -> Vec<String> {
        let mut users = Vec::new();
        for id in self.ids() {
            if let Ok(last) = self.send(&id, Command::Close { reason }).await {
                let members = pb::RoomInfo::decode(last)
                    .map(|info| info.members)
                    .unwrap_or_default();
                info!(room = %id, members = members.len(), reason, "room closed");
                metrics::counter!("switchyard_room_rooms_closed_total", "reason" => reason)
                    .increment(1);
                users.extend(members);
            }
        }
        users.sort();
        users.dedup();
        users
    }

    /// Asks a room to stop applying requests and hand over its state (a move begins); `None`
    /// when the room is gone or moving already.
    pub(crate) async fn freeze(&self, room_id: &str) -> Option<pb::RoomSnapshot> {
        let handle = self.lock().rooms.get(room_id).cloned()?;
        let (tx, rx) = oneshot::channel();
        handle.tx.send(Msg::Freeze(tx)).await.ok()?;
        rx.await.ok()
    }

    /// A move failed: the room applies what it held and goes on here.
    pub(crate) async fn stay(&self, room_id: &str) {
        let handle = self.lock().rooms.get(room_id).cloned();
        if let Some(handle) = handle {
            // A frozen actor keeps taking messages (it holds requests), so this is not stuck.
            let _ = handle.tx.send(Msg::Thaw(None)).await;
        }
    }

    /// A room moved to `host`: it is no longer hosted here (its members leave this server's
    /// index), and its actor forwards what it held and what comes. Returns the members that
    /// are in no other room here.
    pub(crate) async fn handed_over(
        &self,
        sdk: &Sdk,
        room_id: &str,
        host: &NodeId,
        members: &[String],
    ) -> Vec<String> {
        let handle = {
            let mut index = self.lock();
            let Some(handle) = index.rooms.remove(room_id) else {
                return Vec::new();
            };
            index
                .forwarding
                .insert(room_id.to_owned(), (handle.clone(), host.clone()));
            index.last_forward = Some(Instant::now());
            handle
        };
        let mut last = Vec::new();
        for user in members {
            self.left(sdk, room_id, user);
            if self.in_no_room(user) {
                last.push(user.clone());
            }
        }
        {
            let mut index = self.lock();
            for user in members {
                let rooms = index.moved_rooms.entry(user.clone()).or_default();
                rooms.insert(room_id.to_owned());
            }
        }
        self.publish_load(sdk);
        let _ = handle.tx.send(Msg::Thaw(Some(host.clone()))).await;
        last
    }

    /// Rooms whose actor still runs.
    #[cfg(test)]
    pub(crate) fn running_actors(&self) -> usize {
        let index = self.lock();
        index.rooms.values().filter(|r| !r.tx.is_closed()).count()
    }

    /// A load report for match servers.
    pub(crate) fn load_report(&self) -> pb::LoadReport {
        let counts = self.counts();
        pb::LoadReport {
            node_id: self.node.to_string(),
            rooms: counts.rooms,
            members: counts.members,
            capacity: self.settings.max_rooms,
        }
    }

    fn joined(&self, sdk: &Sdk, room: &str, user: &str) {
        let mut index = self.lock();
        index
            .user_rooms
            .entry(user.to_owned())
            .or_default()
            .insert(room.to_owned());
        index.members += 1;
        drop(index);
        self.publish_load(sdk);
    }

    fn left(&self, sdk: &Sdk, room: &str, user: &str) {
        let mut index = self.lock();
        if let Some(rooms) = index.user_rooms.get_mut(user) {
            rooms.remove(room);
            if rooms.is_empty() {
                index.user_rooms.remove(user);
            }
        }
        index.members = index.members.saturating_sub(1);
        drop(index);
        self.publish_load(sdk);
    }

    /// Removes a room (empty for its TTL, or closed).
    fn remove(&self, sdk: &Sdk, room: &str) {
        self.lock().rooms.remove(room);
        self.publish_load(sdk);
    }

    /// A forwarder ended.
    fn forwarder_done(&self, room: &str) {
        let mut index = self.lock();
        index.forwarding.remove(room);
        index.moved_rooms.retain(|_, rooms| {
            rooms.remove(room);
            !rooms.is_empty()
        });
    }

    /// The rooms `user` was a member of when they moved away (while their forwarders run).
    pub(crate) fn moved_rooms_of(&self, user: &str) -> Vec<String> {
        self.lock()
            .moved_rooms
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn forwarded(&self) {
        self.lock().last_forward = Some(Instant::now());
    }

    /// Waits until no forwarder has passed a request on (nor a room moved) for `quiet`, at
    /// most `linger`: requests a gateway sent before it moved a room's members still arrive.
    pub(crate) async fn forwarders_quiet(&self, quiet: Duration, linger: Duration) {
        let deadline = Instant::now() + linger;
        loop {
            let busy = {
                let index = self.lock();
                !index.forwarding.is_empty()
                    && index.last_forward.is_some_and(|at| at.elapsed() < quiet)
            };
            if !busy || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn publish_load(&self, sdk: &Sdk) {
        let counts = self.counts();
        sdk.cluster().update_load(|load| {
            load.rooms = counts.rooms;
            load.sessions = counts.members;
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) fn room_not_found() -> LogicError {
    LogicError::new(errors::ROOM_NOT_FOUND, "no such room")
}

pub(crate) fn draining() -> LogicError {
    LogicError::new(errors::NODE_DRAINING, "this room server is draining")
}

/// Why a request sent to a room's host did not apply there.
enum Forward {
    /// The host no longer has the room (or is gone): ask the directory again.
    Stale,
    /// The host's own answer (`NOT_A_MEMBER`, say), or it did not answer.
    Failed(LogicError),
}

/// Sends a room request to `host`.
async fn forward(sdk: &Sdk, host: &NodeId, wire: &pb::RoomCommand) -> Result<Applied, Forward> {
    match sdk
        .call(host, routes::MESH_ROOM, wire.encode_to_vec())
        .await
    {
        Ok(bytes) => {
            let routed = pb::Routed::decode(bytes).map_err(|_| {
                Forward::Failed(LogicError::internal("the room's server answered nonsense"))
            })?;
            Ok(Applied {
                payload: routed.payload,
                host: NodeId::new(routed.host),
                last_room_there: routed.last_room_there,
                move_to: (!routed.move_to_gateway.is_empty())
                    .then(|| NodeId::new(routed.move_to_gateway)),
            })
        }
        Err(MeshError::Handler { code, .. }) if code == errors::ROOM_NOT_FOUND => {
            Err(Forward::Stale)
        }
        Err(MeshError::Handler { code, message, .. }) => {
            Err(Forward::Failed(LogicError::new(code, message)))
        }
        Err(MeshError::NodeUnknown(_)) => Err(Forward::Stale),
        Err(other) => {
            warn!(%host, error = %other, "room request to the room's server failed");
            Err(Forward::Failed(LogicError::internal(
                "the room's server did not answer",
            )))
        }
    }
}

/// A room request as it travels between room servers.
fn to_wire(room_id: &str, command: &Command, hops: u32) -> pb::RoomCommand {
    let room_id = room_id.to_owned();
    let (route, payload, member, reason) = match command {
        Command::Join(member) => (
            routes::JOIN,
            pb::JoinRoom { room_id }.encode_to_vec(),
            Some(member.clone()),
            "",
        ),
        Command::Leave { user, reason } => (
            routes::LEAVE,
            pb::LeaveRoom { room_id }.encode_to_vec(),
            Some(Member::new(user.clone(), None)),
            *reason,
        ),
        Command::Op { member, payload } => (
            routes::OP,
            pb::RoomOp {
                room_id,
                payload: payload.clone(),
            }
            .encode_to_vec(),
            Some(member.clone()),
            "",
        ),
        Command::SetProperties { member, properties } => (
            routes::SET_PROPERTIES,
            pb::SetProperties {
                room_id,
                properties: properties.clone(),
            }
            .encode_to_vec(),
            Some(member.clone()),
            "",
        ),
        Command::Migrate { user } => (
            routes::MIGRATE,
            pb::RoomRef { room_id }.encode_to_vec(),
            Some(Member::new(user.clone(), None)),
            "",
        ),
        // Info (and Close and Forget, which never travel: a server closes only its own rooms,
        // and forgets only its own rooms' members).
        Command::Info | Command::Close { .. } | Command::Forget { .. } => (
            routes::MEMBERS,
            pb::RoomRef { room_id }.encode_to_vec(),
            None,
            "",
        ),
    };
    pb::RoomCommand {
        route,
        payload: payload.into(),
        member: member.map(|m| pb::Member {
            user_id: m.user,
            gateway_node: m.gateway.map(|g| g.to_string()).unwrap_or_default(),
        }),
        hops,
        reason: reason.to_owned(),
    }
}

/// A room request from another room server: the room's id and the command.
pub(crate) fn from_wire(wire: pb::RoomCommand) -> Result<(String, Command), LogicError> {
    let member = wire
        .member
        .map(|m| member(&m.user_id, &NodeId::new(m.gateway_node)));
    let need_member = || {
        member
            .clone()
            .ok_or_else(|| LogicError::bad_request("no member"))
    };
    let bad = |_| LogicError::bad_request("the request does not decode");
    let payload = wire.payload;
    Ok(match wire.route {
        routes::JOIN => {
            let request = pb::JoinRoom::decode(payload).map_err(bad)?;
            (request.room_id, Command::Join(need_member()?))
        }
        routes::LEAVE => {
            let request = pb::LeaveRoom::decode(payload).map_err(bad)?;
            let reason = if wire.reason == "disconnected" {
                "disconnected"
            } else {
                "left"
            };
            let user = need_member()?.user;
            (request.room_id, Command::Leave { user, reason })
        }
        routes::OP => {
            let request = pb::RoomOp::decode(payload).map_err(bad)?;
            let member = need_member()?;
            let payload = request.payload;
            (request.room_id, Command::Op { member, payload })
        }
        routes::SET_PROPERTIES => {
            let request = pb::SetProperties::decode(payload).map_err(bad)?;
            let member = need_member()?;
            let properties = request.properties;
            (
                request.room_id,
                Command::SetProperties { member, properties },
            )
        }
        routes::MIGRATE => {
            let request = pb::RoomRef::decode(payload).map_err(bad)?;
            let user = need_member()?.user;
            (request.room_id, Command::Migrate { user })
        }
        routes::MEMBERS | routes::GET_PROPERTIES => {
            let request = pb::RoomRef::decode(payload).map_err(bad)?;
            (request.room_id, Command::Info)
        }
        _ => return Err(LogicError::bad_request("not a room request")),
    })
}

/// What the actor does after a request.
enum Next {
    Serve,
    /// A move began (the owner asked): hold requests.
    Hold,
    /// The room closed.
    Stop,
}

/// The room's actor: applies requests in arrival order, queues broadcasts in that order, and
/// removes the room once it has stayed empty for the TTL. Joins are refused once the server
/// takes no new work, so the members a drain unbinds are all the members there are.
///
/// A move freezes it: requests are held (in order) until the move ends; then it applies them
/// here (the move failed) or forwards them and everything after to the new host, for as long
/// as requests keep coming (`FORWARD_IDLE`).
async fn run_room(
    mut room: Room,
    mut inbox: mpsc::Receiver<Msg>,
    rooms: Arc<Rooms>,
    sdk: Sdk,
    announce: Option<pb::RoomMigrateComplete>,
) {
    if let Some(complete) = announce
        && let Some(push) = room.to_all(routes::PUSH_ROOM_MIGRATE_COMPLETE, &complete)
    {
        sdk.push_ordered(push.to, push.route, push.payload);
    }
    let mut held: VecDeque<(Command, ReplyTx)> = VecDeque::new();
    let mut frozen = false;
    // When an empty room goes; every message but a roster starts the TTL over.
    let mut expires: Option<tokio::time::Instant> = None;
    loop {
        let next = if !frozen && room.is_empty() && !room.persistent {
            let at = *expires
                .get_or_insert_with(|| tokio::time::Instant::now() + rooms.settings.empty_ttl);
            tokio::select! {
                next = inbox.recv() => next,
                _ = tokio::time::sleep_until(at) => {
                    rooms.remove(&sdk, &room.id);
                    info!(room = %room.id, "empty room removed");
                    return;
                }
            }
        } else {
            inbox.recv().await
        };
        let Some(msg) = next else { return };
        // Listing a room is not activity: its empty-room TTL goes on.
        if !matches!(msg, Msg::Roster(_)) {
            expires = None;
        }
        match msg {
            Msg::Roster(reply) => {
                let _ = reply.send(snapshot_now(&room, &sdk, 0).members);
            }
            Msg::Apply(command, reply) if frozen => held.push_back((command, reply)),
            Msg::Apply(command, reply) => match serve(&mut room, command, reply, &rooms, &sdk) {
                Next::Serve => {}
                Next::Hold => frozen = true,
                Next::Stop => return,
            },
            Msg::Freeze(_) if frozen => {}
            Msg::Freeze(state) => {
                let _ = state.send(begin_move(&room, &sdk));
                frozen = true;
            }
            Msg::Thaw(_) if !frozen => {}
            Msg::Thaw(Some(host)) => {
                return forward_room(room.id, host, held, inbox, rooms, sdk).await;
            }
            Msg::Thaw(None) => {
                frozen = false;
                let failed = pb::RoomMigrateComplete {
                    room_id: room.id.clone(),
                    success: false,
                    node_id: rooms.node.to_string(),
                };
                if let Some(push) = room.to_all(routes::PUSH_ROOM_MIGRATE_COMPLETE, &failed) {
                    sdk.push_ordered(push.to, push.route, push.payload);
                }
                while let Some((command, reply)) = held.pop_front() {
                    match serve(&mut room, command, reply, &rooms, &sdk) {
                        Next::Serve => {}
                        Next::Hold => {
                            frozen = true;
                            break;
                        }
                        Next::Stop => return,
                    }
                }
            }
        }
    }
}

/// Tells the members a move begins and takes the room's state.
fn begin_move(room: &Room, sdk: &Sdk) -> pb::RoomSnapshot {
    let start = pb::RoomMigrateStart {
        room_id: room.id.clone(),
        from_node: sdk.node_id().to_string(),
    };
    if let Some(push) = room.to_all(routes::PUSH_ROOM_MIGRATE_START, &start) {
        sdk.push_ordered(push.to, push.route, push.payload);
    }
    snapshot_now(room, sdk, rand::random::<u64>().max(1))
}

/// The room's state with each member's gateway as it is now: one who moved to another gateway
/// is there (the new host of a moved room pushes there at once).
fn snapshot_now(room: &Room, sdk: &Sdk, move_id: u64) -> pb::RoomSnapshot {
    let mut snapshot = room.snapshot(move_id);
    for member in &mut snapshot.members {
        if let Some(gateway) = sdk.moved_to(&member.user_id) {
            member.gateway_node = gateway.to_string();
        }
    }
    snapshot
}

/// Applies one request here.
fn serve(room: &mut Room, command: Command, reply: ReplyTx, rooms: &Arc<Rooms>, sdk: &Sdk) -> Next {
    if let Command::Migrate { user } = &command {
        if let Err(refused) = room.may_migrate(user) {
            let _ = reply.send(Err(refused));
            return Next::Serve;
        }
        if crate::migrate::targets(sdk, &rooms.node).is_empty() {
            let _ = reply.send(Err(crate::migrate::no_target()));
            return Next::Serve;
        }
        let snapshot = begin_move(room, sdk);
        let (rooms, handle) = (rooms.clone(), sdk.clone());
        sdk.spawn(async move {
            let outcome = crate::migrate::move_room(&rooms, &handle, snapshot).await;
            let _ = reply.send(outcome);
        });
        return Next::Hold;
    }
    let (result, outcome) = match command {
        Command::Join(_) if !sdk.cluster().accepts_new_work() => {
            (Err(draining()), Default::default())
        }
        command => room.apply(command),
    };
    if let Some(user) = &outcome.joined {
        rooms.joined(sdk, &room.id, user);
    }
    let mut last_room_there = false;
    if let Some(user) = &outcome.left {
        rooms.left(sdk, &room.id, user);
        last_room_there = rooms.in_no_room(user);
    }
    for broadcast in outcome.broadcasts {
        // A full gateway queue drops the push; the SDK logs and counts it.
        sdk.push_ordered(broadcast.to, broadcast.route, broadcast.payload);
    }
    let move_to = outcome.move_to;
    let _ = reply.send(result.map(|payload| Applied {
        payload,
        host: rooms.node.clone(),
        last_room_there,
        move_to,
    }));
    if let Some(members) = outcome.closed {
        for user in &members {
            rooms.left(sdk, &room.id, user);
        }
        rooms.remove(sdk, &room.id);
        return Next::Stop;
    }
    Next::Serve
}

/// A moved room's actor: forwards what it held, then what comes, to the room's new host, one
/// request at a time (so they apply there in the order they came here).
async fn forward_room(
    room_id: String,
    host: NodeId,
    held: VecDeque<(Command, ReplyTx)>,
    mut inbox: mpsc::Receiver<Msg>,
    rooms: Arc<Rooms>,
    sdk: Sdk,
) {
    let send = |command: Command, reply: ReplyTx| {
        let wire = to_wire(&room_id, &command, 1);
        let (host, sdk, rooms, room_id) =
            (host.clone(), sdk.clone(), rooms.clone(), room_id.clone());
        async move {
            rooms.forwarded();
            let result = match forward(&sdk, &host, &wire).await {
                Ok(applied) => Ok(applied),
                // The new host lost it (or is gone): wherever it is now, if anywhere.
                Err(Forward::Stale) => rooms.route(&sdk, &room_id, command, 1).await,
                Err(Forward::Failed(error)) => Err(error),
            };
            let _ = reply.send(result);
        }
    };
    for (command, reply) in held {
        send(command, reply).await;
    }
    loop {
        let next = tokio::time::timeout(FORWARD_IDLE, inbox.recv()).await;
        match next {
            Ok(Some(Msg::Apply(command, reply))) => send(command, reply).await,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    rooms.forwarder_done(&room_id);
}

/// Builds a member from what a handler knows.
pub(crate) fn member(user: &str, gateway: &NodeId) -> Member {
    let gateway = (!gateway.as_str().is_empty()).then(|| gateway.clone());
    Member::new(user, gateway)
}
