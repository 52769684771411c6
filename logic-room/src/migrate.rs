//! Moving rooms to other room servers, on a drain (every room) or when a room's owner asks.
//!
//! One move, for one room (its actor frozen, holding every request, members told
//! `RoomMigrateStart`):
//! 1. the pushes queued so far leave for the gateways (so `RoomMigrateStart` and every earlier
//!    broadcast arrive before anything from the new host);
//! 2. the least-loaded online room server adopts the room's state (`MESH_ADOPT`: members,
//!    owner, properties, operation seq) and tells the members `RoomMigrateComplete`. A target
//!    that refuses is skipped; one that does not answer is asked again, the same move, until it
//!    answers or is gone from the membership: so the room ends up on exactly one server (a
//!    target that adopted it and then died took its copy with it);
//! 3. the old actor forwards the requests it held, then every request that still comes, to the
//!    new host, one at a time and in order;
//! 4. the members are bound to the new host with the room's will, and unbound from this server
//!    if no other room of theirs is here (acknowledged by their gateways). A gateway makes a
//!    member's next request wait for the earlier ones after such a change, so no request
//!    overtakes one that is still being forwarded.
//!
//! No target: the room applies what it held and stays (`RoomMigrateComplete {success: false}`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use logic_sdk::{BindMode, LogicError, Sdk, Will};
use mesh::{MeshError, NodeId, NodeKind};
use prost::Message;
use proto::room::v1::{self as pb, errors, routes};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::rooms::{Applied, Rooms};

/// Rooms moved at once during a drain.
const MOVES_AT_ONCE: usize = 32;
/// How long one adopt call may take.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a target that neither answers nor leaves the membership is asked again.
const ADOPT_PATIENCE: Duration = Duration::from_secs(20);

/// `RoomClosed.reason` when the room's server failed.
pub const SERVER_FAILED: &str = "server failed";

/// The will a member leaves for a room: if the room's server is gone (killed, cut off), the
/// gateway tells the member the room closed, instead of the member finding out by
/// `ROOM_NOT_FOUND`.
pub(crate) fn room_will(room_id: &str) -> Will {
    let closed = pb::RoomClosed {
        room_id: room_id.to_owned(),
        reason: SERVER_FAILED.to_owned(),
    };
    Will {
        key: room_id.to_owned(),
        route: routes::PUSH_ROOM_CLOSED,
        payload: closed.encode_to_vec().into(),
    }
}

/// What became of the rooms of a drain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moves {
    pub(crate) moved: usize,
    /// No server took them: they stay here.
    pub(crate) stayed: usize,
}

/// Moves every room hosted here to other room servers (until `undrain`).
pub(crate) async fn move_all(rooms: &Arc<Rooms>, sdk: &Sdk, undrain: &CancellationToken) -> Moves {
    let ids = rooms.ids();
    if targets(sdk, rooms.node()).is_empty() {
        // Nowhere to go: the rooms are not even frozen (members see no move begin).
        info!(
            rooms = ids.len(),
            "no other room server online; the rooms stay"
        );
        return Moves {
            moved: 0,
            stayed: ids.len(),
        };
    }
    let started = Instant::now();
    let outcomes: Vec<Option<bool>> = stream::iter(ids)
        .map(|id| async move {
            if undrain.is_cancelled() {
                return None;
            }
            // Gone meanwhile, or moving already (its owner asked).
            let snapshot = rooms.freeze(&id).await?;
            Some(move_room(rooms, sdk, snapshot).await.is_ok())
        })
        .buffer_unordered(MOVES_AT_ONCE)
        .collect()
        .await;
    let moves = Moves {
        moved: outcomes.iter().filter(|o| **o == Some(true)).count(),
        stayed: outcomes.iter().filter(|o| **o == Some(false)).count(),
    };
    info!(
        moved = moves.moved,
        stayed = moves.stayed,
        took_ms = started.elapsed().as_millis() as u64,
        "rooms moved off this server"
    );
    moves
}

/// The answer to an owner whose room has nowhere to go.
pub(crate) fn no_target() -> LogicError {
    LogicError::new(
        errors::NO_MIGRATION_TARGET,
        "no other room server can take the room; it stays",
    )
}

/// Moves one frozen room (see the module docs); answers with the room's info at its new host.
pub(crate) async fn move_room(
    rooms: &Arc<Rooms>,
    sdk: &Sdk,
    snapshot: pb::RoomSnapshot,
) -> Result<Applied, LogicError> {
    let started = Instant::now();
    let room_id = snapshot.room_id.clone();
    let members: Vec<String> = snapshot.members.iter().map(|m| m.user_id.clone()).collect();
    sdk.flush_pushes().await;
    let mut adopted = None;
    for target in targets(sdk, rooms.node()) {
        if let Some(info) = adopt_at(sdk, &target, &snapshot).await {
            adopted = Some((target, info));
            break;
        }
    }
    let Some((host, info)) = adopted else {
        rooms.stay(&room_id).await;
        warn!(room = %room_id, "room not moved: no other room server took it; it stays");
        metrics::counter!("switchyard_room_migrations_total", "outcome" => "stayed").increment(1);
        return Err(no_target());
    };
    let last_here = rooms.handed_over(sdk, &room_id, &host, &members).await;
    let will = room_will(&room_id);
    if let Err(error) = sdk
        .bind_with_wills(
            BindMode::Append,
            &members,
            std::slice::from_ref(&host),
            &[will],
        )
        .await
    {
        // They stay bound here: this server forwards their requests while it runs.
        warn!(room = %room_id, %host, %error, "members not bound to the room's new server");
    }
    if !last_here.is_empty()
        && let Err(error) = sdk
            .bind(BindMode::Remove, &last_here, &[rooms.node().clone()])
            .await
    {
        warn!(room = %room_id, %error, "members not unbound from this server");
    }
    info!(
        room = %room_id,
        to = %host,
        members = members.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "room moved"
    );
    metrics::counter!("switchyard_room_migrations_total", "outcome" => "moved").increment(1);
    metrics::histogram!("switchyard_room_migration_seconds")
        .record(started.elapsed().as_secs_f64());
    Ok(Applied {
        payload: info.encode_to_vec().into(),
        host,
        last_room_there: false,
        move_to: None,
    })
}

/// Online room servers other than `me`, least loaded (members, then rooms) first; the node id
/// breaks ties, so every server ranks them alike.
pub(crate) fn targets(sdk: &Sdk, me: &NodeId) -> Vec<NodeId> {
    let mut nodes: Vec<_> = sdk
        .cluster()
        .nodes_by_kind(NodeKind::ROOM)
        .into_iter()
        .filter(|node| node.is_online() && &node.id != me)
        .collect();
    nodes.sort_by(|a, b| {
        (a.load.sessions, a.load.rooms, &a.id).cmp(&(b.load.sessions, b.load.rooms, &b.id))
    });
    nodes.into_iter().map(|node| node.id).collect()
}

/// Asks `target` to adopt the room: its info there, or `None` when it refused or is gone.
async fn adopt_at(sdk: &Sdk, target: &NodeId, snapshot: &pb::RoomSnapshot) -> Option<pb::RoomInfo> {
    let request = snapshot.encode_to_vec();
    let room = &snapshot.room_id;
    let deadline = Instant::now() + ADOPT_PATIENCE;
    loop {
        let answer = sdk
            .mesh()
            .request_with_timeout(target, routes::MESH_ADOPT, request.clone(), ADOPT_TIMEOUT)
            .await;
        match answer {
            Ok(bytes) => return pb::RoomInfo::decode(bytes).ok(),
            Err(MeshError::Handler { code, message, .. }) => {
                info!(%room, %target, code, %message, "room server refused the room");
                return None;
            }
            Err(MeshError::NodeUnknown(_)) => return None,
            Err(failure) => {
                if sdk.cluster().node(target).is_none() {
                    info!(%room, %target, "room server gone while taking the room; next one");
                    return None;
                }
                if Instant::now() >= deadline {
                    // It may hold a copy it never confirmed: no member is bound to it and
                    // this server does not forward there, so the copy here is the one in use.
                    error!(%room, %target, %failure, "room server neither answered nor left; the room stays");
                    return None;
                }
                warn!(%room, %target, %failure, "room server did not take the room yet; asking again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
