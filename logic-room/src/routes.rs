//! The room server's client routes and mesh commands: one function each, over the rooms every
//! handler shares (`LogicServer::with_state`).

use std::sync::Arc;

use bytes::Bytes;
use logic_sdk::{BindMode, Context, LogicError, LogicServer, Reply, Sdk, SessionClosed};
use mesh::{HandlerError, MeshContext, MeshError, NodeId, NodeKind};
use prost::Message;
use proto::room::v1::{self as pb, routes};

use crate::{
    limits,
    room::Command,
    rooms::{Rooms, member, room_not_found},
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
        .handle_session_closed(session_closed)
}

/// 10:1: creates a room, joins it, and binds the user to this server.
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

/// 10:2: joins a room wherever it lives, and binds the user to that server.
async fn join(rooms: Arc<Rooms>, ctx: Context, request: pb::JoinRoom) -> Result<Reply, LogicError> {
    let user = ctx.user()?;
    let host = host_of(&request.room_id).ok_or_else(room_not_found)?;
    let info = if host == ctx.sdk().node_id() {
        let join = Command::Join(member(user, &ctx.gateway));
        rooms.send(&request.room_id, join).await?
    } else {
        // The room lives elsewhere: join it there.
        let forward = pb::ForwardJoin {
            room_id: request.room_id.clone(),
            member: Some(pb::Member {
                user_id: user.to_owned(),
                gateway_node: ctx.gateway.to_string(),
            }),
        };
        ctx.sdk()
            .call(&host, routes::MESH_FORWARD_JOIN, forward.encode_to_vec())
            .await
            .map_err(forward_error)?
    };
    Ok(with_will(Reply::new(info), &request.room_id).bind_me(BindMode::Append, vec![host]))
}

/// A member's will for `room_id`: if the room's server is gone (killed, cut off), the gateway
/// tells the member the room closed, instead of the member finding out by `ROOM_NOT_FOUND`.
fn with_will(reply: Reply, room_id: &str) -> Reply {
    let closed = pb::RoomClosed {
        room_id: room_id.to_owned(),
        reason: SERVER_FAILED.to_owned(),
    };
    reply.will(room_id, routes::PUSH_ROOM_CLOSED, closed.encode_to_vec())
}

/// `RoomClosed.reason` when the room's server failed.
pub const SERVER_FAILED: &str = "server failed";

/// 10:3: leaves a room; a user in no room here any more is unbound from this server.
async fn leave(
    rooms: Arc<Rooms>,
    ctx: Context,
    request: pb::LeaveRoom,
) -> Result<Reply, LogicError> {
    let user = ctx.user()?.to_owned();
    let command = Command::Leave {
        user: user.clone(),
        reason: "left",
    };
    let reply =
        Reply::new(rooms.send(&request.room_id, command).await?).revoke_will(&request.room_id);
    if rooms.rooms_of(&user).is_empty() {
        return Ok(reply.bind_me(BindMode::Remove, vec![ctx.sdk().node_id()]));
    }
    Ok(reply)
}

/// 10:4: a room operation, broadcast to every member in the room's order.
async fn op(rooms: Arc<Rooms>, ctx: Context, request: pb::RoomOp) -> Result<Reply, LogicError> {
    let command = Command::Op {
        member: member(ctx.user()?, &ctx.gateway),
        payload: request.payload,
    };
    Ok(Reply::new(rooms.send(&request.room_id, command).await?))
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
    Ok(Reply::new(rooms.send(&request.room_id, command).await?))
}

/// 10:6 and 10:7: the room's info (properties, members, owner).
async fn info(rooms: Arc<Rooms>, _: Context, request: pb::RoomRef) -> Result<Reply, LogicError> {
    Ok(Reply::new(
        rooms.send(&request.room_id, Command::Info).await?,
    ))
}

/// A member's session closed: they leave every room here.
async fn session_closed(rooms: Arc<Rooms>, closed: SessionClosed, _: Sdk) {
    let Some(user) = closed.user_id else { return };
    for room in rooms.rooms_of(&user) {
        let command = Command::Leave {
            user: user.clone(),
            reason: "disconnected",
        };
        // A room removed meanwhile has nothing left to leave.
        let _ = rooms.send(&room, command).await;
    }
}

/// The node hosting a room: room ids are `<n>@<node id>`.
fn host_of(room_id: &str) -> Option<NodeId> {
    room_id
        .split_once('@')
        .map(|(_, node)| NodeId::new(node))
        .filter(|n| !n.as_str().is_empty())
}

/// What a client is told when a forwarded join failed: the room server's own code, or fixed
/// texts (never the transport's).
fn forward_error(error: MeshError) -> LogicError {
    match error {
        MeshError::Handler { code, message, .. } => LogicError::new(code, message),
        MeshError::NodeUnknown(_) => room_not_found(),
        other => {
            tracing::warn!(error = %other, "forwarded join failed");
            LogicError::internal("the room's server did not answer")
        }
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
    mesh.handle_message(routes::MESH_FORWARD_JOIN, move |_, request| {
        forward_join(state.clone(), request)
    });
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

/// 0x1103: a user joins a room hosted here, through the server they asked.
async fn forward_join(
    rooms: Arc<Rooms>,
    request: pb::ForwardJoin,
) -> Result<pb::RoomInfo, HandlerError> {
    let m = request
        .member
        .ok_or_else(|| HandlerError::new(HandlerError::BAD_PAYLOAD, "no member"))?;
    let join = Command::Join(member(&m.user_id, &NodeId::new(m.gateway_node)));
    let info = rooms
        .send(&request.room_id, join)
        .await
        .map_err(handler_error)?;
    Ok(pb::RoomInfo::decode(info).unwrap_or_default())
}
