//! The room server's client routes and mesh commands: one function each, over the rooms every
//! handler shares (`LogicServer::with_state`).

use std::sync::Arc;

use bytes::Bytes;
use logic_sdk::{BindMode, Context, LogicError, LogicServer, Reply, Sdk, SessionClosed};
use mesh::{HandlerError, MeshContext, NodeId, NodeKind};
use prost::Message;
use proto::room::v1::{self as pb, routes};

use crate::{
    limits, migrate,
    room::Command,
    rooms::{self, Rooms, member},
};

/// The routes of a room server.
pub(crate) fn server(rooms: Arc<Rooms>) -> LogicServer<Arc<Rooms>> {
    LogicServer::with_state(NodeKind::ROOM, rooms)
        .handle(routes::CREATE, create)
        .handle(routes::JOIN, join)
        .handle(routes::LEAVE, leave)
        .handle(routes::OP, op)
        .handle(routes::SET_PROPERTIES, set_properties)
        .handle(routes::GET_PROPERTIES, info)
        .handle(routes::MEMBERS, info)
        .handle(routes::MIGRATE, migrate)
        .handle_session_closed(session_closed)
}

/// 10:1: creates a room here, joins it, and binds the user to this server.
async fn create(
    rooms: Arc<Rooms>,
    ctx: Context,
    request: pb::CreateRoom,
) -> Result<Reply, LogicError> {
    let user = ctx.user()?;
    let properties = request.properties.into_iter().collect();
    let id = rooms.create(ctx.sdk(), request.max_members, properties, false)?;
    let info = rooms
        .send(&id, Command::Join(member(user, &ctx.gateway)))
        .await?;
    Ok(with_will(Reply::new(info), &id).bind_me(BindMode::Append, vec![ctx.sdk().node_id()]))
}

/// 10:2: joins a room wherever it lives, and binds the user to its server.
async fn join(rooms: Arc<Rooms>, ctx: Context, request: pb::JoinRoom) -> Result<Reply, LogicError> {
    let join = Command::Join(member(ctx.user()?, &ctx.gateway));
    let applied = rooms.route(ctx.sdk(), &request.room_id, join, 0).await?;
    let reply = with_will(Reply::new(applied.payload), &request.room_id)
        .bind_me(BindMode::Append, vec![applied.host]);
    // Most of the room is on another gateway: the member moves there (fewer gateways per
    // broadcast).
    Ok(match applied.move_to {
        Some(gateway) => reply.move_to_gateway(gateway),
        None => reply,
    })
}

/// A member's will for `room_id` (see [`migrate::room_will`]).
fn with_will(reply: Reply, room_id: &str) -> Reply {
    let will = migrate::room_will(room_id);
    reply.will(will.key, will.route, will.payload)
}

/// 10:3: leaves a room; a user in no room of that server any more is unbound from it.
async fn leave(
    rooms: Arc<Rooms>,
    ctx: Context,
    request: pb::LeaveRoom,
) -> Result<Reply, LogicError> {
    let command = Command::Leave {
        user: ctx.user()?.to_owned(),
        reason: "left",
    };
    let applied = rooms.route(ctx.sdk(), &request.room_id, command, 0).await?;
    let reply = Reply::new(applied.payload).revoke_will(&request.room_id);
    if applied.last_room_there {
        return Ok(reply.bind_me(BindMode::Remove, vec![applied.host]));
    }
    Ok(reply)
}

/// 10:4: a room operation, broadcast to every member in the room's order.
async fn op(rooms: Arc<Rooms>, ctx: Context, request: pb::RoomOp) -> Result<Reply, LogicError> {
    let command = Command::Op {
        member: member(ctx.user()?, &ctx.gateway),
        payload: request.payload,
    };
    routed(&rooms, &ctx, &request.room_id, command).await
}

/// 10:5: sets room properties (an empty value removes a key).
async fn set_properties(
    rooms: Arc<Rooms>,
    ctx: Context,
    request: pb::SetProperties,
) -> Result<Reply, LogicError> {
    let command = Command::SetProperties {
        member: member(ctx.user()?, &ctx.gateway),
        properties: request.properties,
    };
    routed(&rooms, &ctx, &request.room_id, command).await
}

/// 10:6 and 10:7: the room's info (properties, members, owner).
async fn info(rooms: Arc<Rooms>, ctx: Context, request: pb::RoomRef) -> Result<Reply, LogicError> {
    routed(&rooms, &ctx, &request.room_id, Command::Info).await
}

/// 10:8: the owner moves the room to the least-loaded other room server; the answer is the
/// room's info there, once its members are bound to it.
async fn migrate(
    rooms: Arc<Rooms>,
    ctx: Context,
    request: pb::RoomRef,
) -> Result<Reply, LogicError> {
    let command = Command::Migrate {
        user: ctx.user()?.to_owned(),
    };
    routed(&rooms, &ctx, &request.room_id, command).await
}

/// A request applied by the room's host, wherever it lives.
async fn routed(
    rooms: &Arc<Rooms>,
    ctx: &Context,
    room_id: &str,
    command: Command,
) -> Result<Reply, LogicError> {
    let applied = rooms.route(ctx.sdk(), room_id, command, 0).await?;
    Ok(Reply::new(applied.payload))
}

/// A member's session closed: they leave every room here, and every room that moved away
/// from here while they were bound here (its new host may not be told otherwise).
async fn session_closed(rooms: Arc<Rooms>, closed: SessionClosed, sdk: Sdk) {
    let Some(user) = closed.user_id else { return };
    let leave = || Command::Leave {
        user: user.clone(),
        reason: "disconnected",
    };
    for room in rooms.rooms_of(&user) {
        // A room removed meanwhile has nothing left to leave.
        let _ = rooms.send(&room, leave()).await;
    }
    for room in rooms.moved_rooms_of(&user) {
        // NOT_A_MEMBER when the new host heard of it first.
        let _ = rooms.route(&sdk, &room, leave(), 0).await;
    }
}

fn handler_error(error: LogicError) -> HandlerError {
    HandlerError::new(error.code, error.message)
}

/// Mesh commands from match servers and other room servers.
pub(crate) fn register_mesh_commands(sdk: &Sdk, rooms: &Arc<Rooms>) {
    let mesh = sdk.mesh();
    let state = rooms.clone();
    mesh.handle_message(routes::MESH_LOAD, move |_, _: pb::RoomRef| {
        let report = state.load_report();
        async move { Ok(report) }
    });
    let (state, handle) = (rooms.clone(), sdk.clone());
    mesh.handle_message(routes::MESH_CREATE_FOR, move |ctx, request| {
        create_for(state.clone(), handle.clone(), ctx, request)
    });
    let state = rooms.clone();
    mesh.handle_message(routes::MESH_LOCATE, move |_, request: pb::RoomRef| {
        let node_id = state
            .located_here(&request.room_id)
            .map(|node| node.to_string())
            .unwrap_or_default();
        async move { Ok(pb::Located { node_id }) }
    });
    let (state, handle) = (rooms.clone(), sdk.clone());
    mesh.handle_message(routes::MESH_ROOM, move |_, request| {
        room_command(state.clone(), handle.clone(), request)
    });
    let (state, handle) = (rooms.clone(), sdk.clone());
    mesh.handle_message(routes::MESH_ADOPT, move |_, snapshot| {
        let adopted = state.adopt(&handle, snapshot).map_err(handler_error);
        async move { adopted }
    });
    let state = rooms.clone();
    mesh.handle(runtime::admin::LIST_ROOMS, move |_, _| {
        let state = state.clone();
        async move { list_rooms(&state).await }
    });
}

/// The cluster admin API's ListRooms (`runtime::admin::LIST_ROOMS`): the rooms hosted here, as
/// a JSON array.
async fn list_rooms(rooms: &Rooms) -> Result<Bytes, HandlerError> {
    serde_json::to_vec(&rooms.listing().await)
        .map(Bytes::from)
        .map_err(|e| HandlerError::new(HandlerError::INTERNAL, e.to_string()))
}

/// 0x1105: a room request another room server took from a client, for a room hosted here.
async fn room_command(
    rooms: Arc<Rooms>,
    sdk: Sdk,
    request: pb::RoomCommand,
) -> Result<pb::Routed, HandlerError> {
    let hops = request.hops;
    let (room_id, command) = rooms::from_wire(request).map_err(handler_error)?;
    let applied = rooms
        .route(&sdk, &room_id, command, hops)
        .await
        .map_err(handler_error)?;
    Ok(pb::Routed {
        payload: applied.payload,
        host: applied.host.to_string(),
        last_room_there: applied.last_room_there,
        move_to_gateway: applied.move_to.map(|g| g.to_string()).unwrap_or_default(),
    })
}

/// 0x1102: a room for matched players, who become its members at once.
async fn create_for(
    rooms: Arc<Rooms>,
    sdk: Sdk,
    ctx: MeshContext,
    request: pb::CreateRoomFor,
) -> Result<pb::RoomInfo, HandlerError> {
    if request.members.len() > limits::MAX_MEMBERS {
        return Err(HandlerError::new(
            HandlerError::BAD_PAYLOAD,
            "more members than a room takes",
        ));
    }
    for m in &request.members {
        limits::check_user_id(&m.user_id).map_err(handler_error)?;
    }
    let max = request.max_members.max(request.members.len() as u32);
    let properties = request.properties.into_iter().collect();
    let id = rooms
        .create(&sdk, max, properties, false)
        .map_err(handler_error)?;
    let mut last = Bytes::new();
    for m in request.members {
        let join = Command::Join(member(&m.user_id, &NodeId::new(m.gateway_node)));
        last = rooms.send(&id, join).await.map_err(handler_error)?;
    }
    tracing::info!(room = %id, from = %ctx.from, "room created for a match");
    Ok(pb::RoomInfo::decode(last).unwrap_or_default())
}
