//! Every room on this server: one actor task per room, an index by room id and by member.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
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
use tracing::info;

use crate::{
    limits::{self, Limits},
    room::{Command, Member, Room},
};

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

/// How this server's rooms are made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// An empty room is removed after this long.
    pub(crate) empty_ttl: Duration,
    /// Member limit of rooms created without one.
    pub(crate) default_max_members: usize,
    /// Rooms hosted at most (0: unlimited).
    pub(crate) max_rooms: u64,
    pub(crate) limits: Limits,
}

/// The rooms of this server.
pub(crate) struct Rooms {
    node: NodeId,
    index: Mutex<Index>,
    next_id: AtomicU64,
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
            next_id: AtomicU64::new(0),
            settings,
        })
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
    /// room limits.
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
        let id = format!(
            "{}@{}",
            self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            self.node
        );
        let mut room = Room::new(
            id.clone(),
            self.node.clone(),
            max,
            properties,
            self.settings.limits,
        );
        room.persistent = persistent;
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        {
            let mut index = self.lock();
            let max_rooms = self.settings.max_rooms;
            if max_rooms > 0 && index.rooms.len() as u64 >= max_rooms {
                return Err(LogicError::new(
                    errors::AT_CAPACITY,
                    "this room server is full",
                ));
            }
            index.rooms.insert(id.clone(), RoomHandle { tx });
        }
        sdk.spawn(run_room(room, rx, self.clone(), sdk.clone()));
        self.publish_load(sdk);
        info!(room = %id, persistent, "room created");
        Ok(id)
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

    /// Every member of every room, once each room has applied the commands queued before
    /// this call (joins included).
    pub(crate) async fn members(&self) -> Vec<String> {
        let ids: Vec<String> = self.lock().rooms.keys().cloned().collect();
        let mut users = Vec::new();
        for id in ids {
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

/// The room's actor: applies commands in arrival order, queues broadcasts in that order, and
/// removes the room once it has stayed empty for the TTL. Joins are refused once the server
/// takes no new work, so the members a drain unbinds are all the members there are.
async fn run_room(
    mut room: Room,
    mut commands: mpsc::Receiver<(Command, Reply)>,
    rooms: Arc<Rooms>,
    sdk: Sdk,
) {
    loop {
        let next = if room.is_empty() && !room.persistent {
            tokio::select! {
                next = commands.recv() => next,
                _ = tokio::time::sleep(rooms.settings.empty_ttl) => {
                    rooms.remove(&sdk, &room.id);
                    info!(room = %room.id, "empty room removed");
                    return;
                }
            }
        } else {
            commands.recv().await
        };
        let Some((command, reply)) = next else { return };
        let (result, outcome) = match command {
            Command::Join(_) if !sdk.cluster().accepts_new_work() => {
                (Err(draining()), Default::default())
            }
            command => room.apply(command),
        };
        if let Some(user) = &outcome.joined {
            rooms.joined(&sdk, &room.id, user);
        }
        if let Some(user) = &outcome.left {
            rooms.left(&sdk, &room.id, user);
        }
        for broadcast in outcome.broadcasts {
            // A full gateway queue drops the push; the SDK logs and counts it.
            sdk.push_ordered(broadcast.to, broadcast.route, broadcast.payload);
        }
        let _ = reply.send(result);
        if let Some(members) = outcome.closed {
            for user in &members {
                rooms.left(&sdk, &room.id, user);
            }
            rooms.remove(&sdk, &room.id);
            return;
        }
    }
}

/// Builds a member from what a handler knows.
pub(crate) fn member(user: &str, gateway: &NodeId) -> Member {
    let gateway = (!gateway.as_str().is_empty()).then(|| gateway.clone());
    Member::new(user, gateway)
}
