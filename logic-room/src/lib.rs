//! Room server: rooms with members, owners, properties and ordered broadcast of room
//! operations; answers match servers' load requests and creates rooms for matched players.
//!
//! # Layout
//! - [`Config`], [`run`], [`server`]: configuration, the routes and mesh commands, the life.
//! - `room`: one room's rules (pure: commands in, reply and broadcasts out; table-tested).
//! - `rooms`: the room actors (one task per room) and the index by room and by member.

mod room;
mod rooms;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use clap::Parser;
use logic_sdk::{BindMode, Context, LogicError, LogicServer, Reply, RunningLogic};
use mesh::{HandlerError, NodeId, NodeKind};
use prost::Message;
use proto::room::v1::{self as pb, errors, routes};
use runtime::{Listeners, NodeArgs};
use tokio_util::sync::CancellationToken;

use crate::{
    room::Command,
    rooms::{Rooms, member},
};

/// Configuration of `logic-room`.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Config {
    /// Cluster, listener and telemetry settings.
    #[command(flatten)]
    pub node: NodeArgs,

    /// Member limit of rooms created without one.
    #[arg(long, env = "SWITCHYARD_ROOM_MAX_MEMBERS", default_value_t = 16)]
    pub max_members: usize,

    /// An empty room is removed after this long, in ms.
    #[arg(long, env = "SWITCHYARD_EMPTY_ROOM_TTL_MS", default_value_t = 30_000)]
    pub empty_room_ttl_ms: u64,

    /// Rooms this server hosts at most (0 = unlimited); published as capacity.
    #[arg(long, env = "SWITCHYARD_MAX_ROOMS", default_value_t = 0)]
    pub max_rooms: u64,

    /// Persistent empty rooms to create at start (lobbies; also handy in demos and tests).
    #[arg(long, env = "SWITCHYARD_PRELOAD_ROOMS", default_value_t = 0)]
    pub preload_rooms: u32,
}

impl Config {
    /// The defaults, as if started with no flags.
    pub fn defaults() -> Self {
        Self::parse_from(["logic-room"])
    }
}

/// A started room server.
pub struct RoomServer {
    /// The node and its SDK.
    pub running: RunningLogic,
    rooms: Arc<Rooms>,
}

impl RoomServer {
    /// Runs until `shutdown`, then drains: the server goes offline (no new rooms), every room
    /// is closed with a reason its members receive, they are unbound from this server, and the
    /// server leaves the cluster.
    pub async fn run(self, shutdown: CancellationToken) {
        let RoomServer { running, rooms } = self;
        let sdk = running.sdk.clone();
        running
            .node
            .run(shutdown, || async move {
                let users = rooms.close_all("the room server is shutting down").await;
                let me = sdk.node_id();
                if !users.is_empty() {
                    match sdk
                        .bind(BindMode::Remove, &users, std::slice::from_ref(&me))
                        .await
                    {
                        Ok(report) => tracing::info!(
                            users = users.len(),
                            failed_gateways = report.failed_gateways.len(),
                            "members unbound from this room server"
                        ),
                        Err(error) => {
                            tracing::warn!(%error, "could not unbind the members of closed rooms")
                        }
                    }
                }
            })
            .await;
    }
}

/// Starts the room server; returns once it has joined the cluster and serves.
pub async fn start(config: Config, listeners: Listeners) -> anyhow::Result<RoomServer> {
    let mut node_config = config.node.node_config(NodeKind::ROOM);
    if node_config.gossip.seeds.is_empty() {
        node_config.gossip.seeds = vec!["127.0.0.1:7946".into()];
    }
    let rooms = Rooms::new(
        node_config.id.clone(),
        Duration::from_millis(config.empty_room_ttl_ms),
        config.max_members,
    );
    let running = server(rooms.clone(), config.max_rooms)
        .start(node_config, listeners)
        .await?;
    rooms.attach(running.sdk.clone());
    running
        .sdk
        .cluster()
        .update_load(|load| load.capacity = config.max_rooms);
    register_mesh_commands(&running, rooms.clone(), config.max_rooms);
    for _ in 0..config.preload_rooms {
        rooms.create(
            0,
            BTreeMap::from([("kind".to_owned(), "preloaded".to_owned())]),
            true,
        );
    }
    Ok(RoomServer { running, rooms })
}

/// Runs the room server until `shutdown`, then drains (see [`RoomServer::run`]) and leaves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, listeners).await?.run(shutdown).await;
    Ok(())
}

fn decode<M: Message + Default>(payload: Bytes) -> Result<M, LogicError> {
    M::decode(payload).map_err(|e| LogicError::bad_request(format!("undecodable request: {e}")))
}

fn info(payload: &Bytes) -> Option<pb::RoomInfo> {
    pb::RoomInfo::decode(payload.clone()).ok()
}

/// The routes of a room server.
fn server(rooms: Arc<Rooms>, max_rooms: u64) -> LogicServer {
    let (create, join, leave, op, set, get, members) = (
        rooms.clone(),
        rooms.clone(),
        rooms.clone(),
        rooms.clone(),
        rooms.clone(),
        rooms.clone(),
        rooms.clone(),
    );
    LogicServer::new(NodeKind::ROOM)
        .route(routes::CREATE, move |ctx, payload| {
            let rooms = create.clone();
            async move {
                let request: pb::CreateRoom = decode(payload)?;
                let user = ctx.user()?.to_owned();
                check_accepting(&ctx, &rooms, max_rooms)?;
                let id = rooms.create(
                    request.max_members,
                    request.properties.into_iter().collect(),
                    false,
                );
                let reply = rooms
                    .send(&id, Command::Join(member(&user, &ctx.gateway)))
                    .await?;
                Ok(Reply::new(reply).bind_me(BindMode::Append, vec![ctx.sdk().node_id()]))
            }
        })
        .route(routes::JOIN, move |ctx, payload| {
            let rooms = join.clone();
            async move {
                let request: pb::JoinRoom = decode(payload)?;
                let user = ctx.user()?.to_owned();
                let host = host_of(&request.room_id).ok_or_else(rooms::room_not_found)?;
                let me = ctx.sdk().node_id();
                let reply = if host == me {
                    rooms
                        .send(&request.room_id, Command::Join(member(&user, &ctx.gateway)))
                        .await?
                } else {
                    // The room lives elsewhere: join it there, and bind the user to that node.
                    let forward = pb::ForwardJoin {
                        room_id: request.room_id.clone(),
                        member: Some(pb::Member {
                            user_id: user,
                            gateway_node: ctx.gateway.to_string(),
                        }),
                    };
                    ctx.sdk()
                        .call(&host, routes::MESH_FORWARD_JOIN, forward.encode_to_vec())
                        .await
                        .map_err(forward_error)?
                };
                Ok(Reply::new(reply).bind_me(BindMode::Append, vec![host]))
            }
        })
        .route(routes::LEAVE, move |ctx, payload| {
            let rooms = leave.clone();
            async move {
                let request: pb::LeaveRoom = decode(payload)?;
                let user = ctx.user()?.to_owned();
                let reply = rooms
                    .send(
                        &request.room_id,
                        Command::Leave {
                            user: user.clone(),
                            reason: "left",
                        },
                    )
                    .await?;
                let mut reply = Reply::new(reply);
                if rooms.rooms_of(&user).is_empty() {
                    reply = reply.bind_me(BindMode::Remove, vec![ctx.sdk().node_id()]);
                }
                Ok(reply)
            }
        })
        .route(routes::OP, move |ctx, payload| {
            let rooms = op.clone();
            async move {
                let request: pb::RoomOp = decode(payload)?;
                let member = member(ctx.user()?, &ctx.gateway);
                Ok(Reply::new(
                    rooms
                        .send(
                            &request.room_id,
                            Command::Op {
                                member,
                                payload: request.payload,
                            },
                        )
                        .await?,
                ))
            }
        })
        .route(routes::SET_PROPERTIES, move |ctx, payload| {
            let rooms = set.clone();
            async move {
                let request: pb::SetProperties = decode(payload)?;
                let member = member(ctx.user()?, &ctx.gateway);
                let command = Command::SetProperties {
                    member,
                    properties: request.properties,
                };
                Ok(Reply::new(rooms.send(&request.room_id, command).await?))
            }
        })
        .route(routes::GET_PROPERTIES, move |_ctx, payload| {
            let rooms = get.clone();
            async move {
                let request: pb::RoomRef = decode(payload)?;
                Ok(Reply::new(
                    rooms.send(&request.room_id, Command::Info).await?,
                ))
            }
        })
        .route(routes::MEMBERS, move |_ctx, payload| {
            let rooms = members.clone();
            async move {
                let request: pb::RoomRef = decode(payload)?;
                Ok(Reply::new(
                    rooms.send(&request.room_id, Command::Info).await?,
                ))
            }
        })
        .on_session_closed(move |closed, _sdk| {
            let rooms = rooms.clone();
            async move {
                let Some(user) = closed.user_id else { return };
                for room in rooms.rooms_of(&user) {
                    let _ = rooms
                        .send(
                            &room,
                            Command::Leave {
                                user: user.clone(),
                                reason: "disconnected",
                            },
                        )
                        .await;
                }
            }
        })
}

/// New rooms only on an online server below its capacity.
fn check_accepting(ctx: &Context, rooms: &Rooms, max_rooms: u64) -> Result<(), LogicError> {
    if !ctx.sdk().cluster().is_self_online() {
        return Err(LogicError::new(
            errors::NODE_DRAINING,
            "this room server is draining",
        ));
    }
    if max_rooms > 0 && rooms.counts().rooms >= max_rooms {
        return Err(LogicError::new(
            errors::AT_CAPACITY,
            "this room server is full",
        ));
    }
    Ok(())
}

/// The node hosting a room: room ids are `<n>@<node id>`.
fn host_of(room_id: &str) -> Option<NodeId> {
    room_id
        .split_once('@')
        .map(|(_, node)| NodeId::new(node))
        .filter(|n| !n.as_str().is_empty())
}

fn forward_error(error: mesh::MeshError) -> LogicError {
    match error {
        mesh::MeshError::Handler { code, message, .. } => LogicError::new(code, message),
        mesh::MeshError::NodeUnknown(_) => rooms::room_not_found(),
        other => LogicError::internal(format!("the room's server did not answer: {other}")),
    }
}

fn handler_error(error: LogicError) -> HandlerError {
    HandlerError::new(error.code, error.message)
}

/// Mesh commands from match servers and other room servers.
fn register_mesh_commands(running: &RunningLogic, rooms: Arc<Rooms>, max_rooms: u64) {
    let mesh = running.sdk.mesh();
    let load = rooms.clone();
    mesh.handle_message(routes::MESH_LOAD, move |_, _: pb::RoomRef| {
        let report = load.load_report(max_rooms);
        async move { Ok(report) }
    });
    let create = rooms.clone();
    let sdk = running.sdk.clone();
    mesh.handle_message(
        routes::MESH_CREATE_FOR,
        move |ctx, request: pb::CreateRoomFor| {
            let (rooms, sdk) = (create.clone(), sdk.clone());
            async move {
                if !sdk.cluster().is_self_online() {
                    return Err(HandlerError::new(
                        errors::NODE_DRAINING,
                        "this room server is draining",
                    ));
                }
                if max_rooms > 0 && rooms.counts().rooms >= max_rooms {
                    return Err(HandlerError::new(
                        errors::AT_CAPACITY,
                        "this room server is full",
                    ));
                }
                let max = request.max_members.max(request.members.len() as u32);
                let id = rooms.create(max, request.properties.into_iter().collect(), false);
                let mut last = Bytes::new();
                for m in request.members {
                    last = rooms
                        .send(
                            &id,
                            Command::Join(member(&m.user_id, &NodeId::new(m.gateway_node))),
                        )
                        .await
                        .map_err(handler_error)?;
                }
                tracing::info!(room = %id, from = %ctx.from, "room created for a match");
                Ok(info(&last).unwrap_or_default())
            }
        },
    );
    mesh.handle_message(
        routes::MESH_FORWARD_JOIN,
        move |_, request: pb::ForwardJoin| {
            let rooms = rooms.clone();
            async move {
                let m = request
                    .member
                    .ok_or_else(|| HandlerError::new(HandlerError::BAD_PAYLOAD, "no member"))?;
                let reply = rooms
                    .send(
                        &request.room_id,
                        Command::Join(member(&m.user_id, &NodeId::new(m.gateway_node))),
                    )
                    .await
                    .map_err(handler_error)?;
                Ok(info(&reply).unwrap_or_default())
            }
        },
    );
}
