//! Every room on this server: one actor task per room, an index by room id and by member.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use logic_sdk::{LogicError, Sdk};
use mesh::NodeId;
use prost::Message;
use proto::room::v1::{self as pb, errors};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::room::{Command, Member, Room};

/// Commands waiting for one room before senders wait.
const ROOM_QUEUE: usize = 256;

type Reply = oneshot::Sender<Result<Bytes, LogicError>>;

#[derive(Clone)]
struct RoomHandle {
    tx: mpsc::Sender<(Command, Reply)>,
}

#[derive(Default)]
struct Index {
    rooms: HashMap<String, RoomHandle>,
    /// The rooms each user is a member of, on this server.
    user_rooms: HashMap<String, BTreeSet<String>>,
    members: u64,
}

/// The rooms of this server.
pub(crate) struct Rooms {
    node: NodeId,
    index: Mutex<Index>,
    next_id: AtomicU64,
    empty_ttl: Duration,
    default_max_members: usize,
    /// Set once the server has joined the cluster (rooms push through it).
    sdk: OnceLock<Sdk>,
}

/// Load figures of this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) rooms: u64,
    pub(crate) members: u64,
}

impl Rooms {
    pub(crate) fn new(node: NodeId, empty_ttl: Duration, default_max_members: usize) -> Arc<Self> {
        Arc::new(Self {
            node,
            index: Mutex::default(),
            next_id: AtomicU64::new(0),
            empty_ttl,
            default_max_members,
            sdk: OnceLock::new(),
        })
    }

    pub(crate) fn attach(&self, sdk: Sdk) {
        let _ = self.sdk.set(sdk);
    }

    pub(crate) fn counts(&self) -> Counts {
        let index = self.lock();
        Counts {
            rooms: index.rooms.len() as u64,
            members: index.members,
        }
    }

    /// Creates a room (empty; add members with `Command::Join`).
    pub(crate) fn create(
        self: &Arc<Self>,
        max_members: u32,
        properties: BTreeMap<String, String>,
        persistent: bool,
    ) -> String {
        let id = format!(
            "{}@{}",
            self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            self.node
        );
        let max = if max_members == 0 {
            self.default_max_members
        } else {
            max_members as usize
        };
        let mut room = Room::new(id.clone(), self.node.clone(), max, properties);
        room.persistent = persistent;
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        self.lock().rooms.insert(id.clone(), RoomHandle { tx });
        tokio::spawn(run_room(room, rx, self.clone()));
        self.publish_load();
        info!(room = %id, persistent, "room created");
        id
    }

    /// Sends a command to a room and waits for its reply.
    pub(crate) async fn send(&self, room_id: &str, command: Command) -> Result<Bytes, LogicError> {
        let handle = self
            .lock()
            .rooms
            .get(room_id)
            .cloned()
            .ok_or_else(room_not_found)?;
        let (reply, answer) = oneshot::channel();
        handle
            .tx
            .send((command, reply))
            .await
            .map_err(|_| room_not_found())?;
        // A room removed with commands still queued drops their replies.
        answer.await.map_err(|_| room_not_found())?
    }

    /// The rooms `user` is a member of here.
    pub(crate) fn rooms_of(&self, user: &str) -> Vec<String> {
        self.lock()
            .user_rooms
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Closes every room (members are told why); returns the users that were members.
    pub(crate) async fn close_all(&self, reason: &'static str) -> Vec<String> {
        let ids: Vec<String> = self.lock().rooms.keys().cloned().collect();
        let mut users = Vec::new();
        for id in ids {
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

    /// A load report for match servers.
    pub(crate) fn load_report(&self, capacity: u64) -> pb::LoadReport {
        let counts = self.counts();
        pb::LoadReport {
            node_id: self.node.to_string(),
            rooms: counts.rooms,
            members: counts.members,
            capacity,
        }
    }

    fn joined(&self, room: &str, user: &str) {
        let mut index = self.lock();
        index
            .user_rooms
            .entry(user.to_owned())
            .or_default()
            .insert(room.to_owned());
        index.members += 1;
        drop(index);
        self.publish_load();
    }

    fn left(&self, room: &str, user: &str) {
        let mut index = self.lock();
        if let Some(rooms) = index.user_rooms.get_mut(user) {
            rooms.remove(room);
            if rooms.is_empty() {
                index.user_rooms.remove(user);
            }
        }
        index.members = index.members.saturating_sub(1);
        drop(index);
        self.publish_load();
    }

    /// Removes an empty room whose time is up.
    fn remove(&self, room: &str) {
        self.lock().rooms.remove(room);
        self.publish_load();
        info!(room, "empty room removed");
    }

    fn publish_load(&self) {
        if let Some(sdk) = self.sdk.get() {
            let counts = self.counts();
            sdk.cluster().update_load(|load| {
                load.rooms = counts.rooms;
                load.sessions = counts.members;
            });
        }
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

/// The room's actor: applies commands in arrival order, queues broadcasts in that order, and
/// removes the room once it has stayed empty for the TTL.
async fn run_room(
    mut room: Room,
    mut commands: mpsc::Receiver<(Command, Reply)>,
    rooms: Arc<Rooms>,
) {
    loop {
        let next = if room.is_empty() && !room.persistent {
            tokio::select! {
                next = commands.recv() => next,
                _ = tokio::time::sleep(rooms.empty_ttl) => {
                    rooms.remove(&room.id);
                    return;
                }
            }
        } else {
            commands.recv().await
        };
        let Some((command, reply)) = next else { return };
        let (result, outcome) = room.apply(command);
        let closed = outcome.closed.clone();
        if let Some(user) = &outcome.joined {
            rooms.joined(&room.id, user);
        }
        if let Some(user) = &outcome.left {
            rooms.left(&room.id, user);
        }
        if let Some(sdk) = rooms.sdk.get() {
            for broadcast in outcome.broadcasts {
                sdk.push_ordered(broadcast.to, broadcast.route, broadcast.payload);
            }
        } else {
            debug!(room = %room.id, "no SDK yet; broadcasts dropped");
        }
        let _ = reply.send(result);
        if let Some(members) = closed {
            for user in &members {
                rooms.left(&room.id, user);
            }
            rooms.remove(&room.id);
            return;
        }
    }
}

/// Builds a member from what a handler knows.
pub(crate) fn member(user: &str, gateway: &NodeId) -> Member {
    let gateway = (!gateway.as_str().is_empty()).then(|| gateway.clone());
    Member::new(user, gateway)
}
