//! Room server: rooms with members, owners, properties and ordered broadcast of room
//! operations; answers match servers' load requests and creates rooms for matched players.
//!
//! # Layout
//! - [`Config`], [`start`], [`run`], [`RoomServer`]: configuration, the server's life, drain.
//! - `routes`: the client routes and mesh commands, one function each, over the shared rooms.
//! - `rooms`: the room actors (one task per room), the index by room and by member, and the
//!   room directory (room ids name no server; requests for a room elsewhere go to its host).
//! - `migrate`: moving a room to another server (a drain moves every room; an owner may ask).
//! - `room`: one room's rules (pure: commands in, reply and broadcasts out; table-tested).
//! - [`limits`]: what a room accepts (operation, properties, members, user ids), so every
//!   push and reply of a room fits a client frame.

pub mod limits;
mod migrate;
mod room;
mod rooms;
mod routes;

pub use migrate::SERVER_FAILED;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use clap::Parser;
use logic_sdk::{BindMode, RunningLogic, Sdk};
use mesh::NodeKind;
use runtime::Held;
use runtime::{Listeners, NodeArgs};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    limits::{Limits, MAX_MEMBERS, MAX_OP_BYTES_CEILING},
    rooms::{Rooms, Settings},
};

/// Configuration of `logic-room`.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Config {
    /// Cluster, listener and telemetry settings.
    #[command(flatten)]
    pub node: NodeArgs,

    /// Member limit of rooms created without one (at most 1024).
    #[arg(long, env = "SWITCHYARD_ROOM_MAX_MEMBERS", default_value_t = 16)]
    pub max_members: usize,

    /// The largest room operation payload, in bytes (at most 1 MiB - 4 KiB); larger ones are
    /// refused with PAYLOAD_TOO_LARGE.
    #[arg(long, env = "SWITCHYARD_ROOM_MAX_OP_BYTES", default_value_t = limits::DEFAULT_MAX_OP_BYTES)]
    pub max_op_bytes: usize,

    /// An empty room is removed after this long, in ms.
    #[arg(long, env = "SWITCHYARD_EMPTY_ROOM_TTL_MS", default_value_t = 30_000)]
    pub empty_room_ttl_ms: u64,

    /// Rooms this server hosts at most (0 = unlimited); published as capacity.
    #[arg(long, env = "SWITCHYARD_MAX_ROOMS", default_value_t = 0)]
    pub max_rooms: u64,

    /// Affinity: a member joining a room is moved (through the resume path: no new login,
    /// nothing lost) to the gateway holding most of the room's members, while that gateway
    /// holds fewer than this many of them (0 = off).
    #[arg(long, env = "SWITCHYARD_ROOM_AFFINITY", default_value_t = 64)]
    pub affinity_max_per_gateway: usize,

    /// Persistent empty rooms to create at start (lobbies; also handy in demos and tests).
    #[arg(long, env = "SWITCHYARD_PRELOAD_ROOMS", default_value_t = 0)]
    pub preload_rooms: u32,

    /// Members held by a gateway that died (or was cut off) leave their rooms this long after
    /// it is gone, unless they came back through another gateway and acted meanwhile (ms; the
    /// gateways' resume window).
    #[arg(long, env = "SWITCHYARD_GATEWAY_GRACE_MS", default_value_t = 30_000)]
    pub gateway_grace_ms: u64,
}

impl Config {
    /// The defaults, as if started with no flags.
    pub fn defaults() -> Self {
        Self::parse_from(["logic-room"])
    }

    fn settings(&self) -> anyhow::Result<Settings> {
        anyhow::ensure!(
            (1..=MAX_MEMBERS).contains(&self.max_members),
            "--max-members must be 1 to {MAX_MEMBERS}"
        );
        anyhow::ensure!(
            (1..=MAX_OP_BYTES_CEILING).contains(&self.max_op_bytes),
            "--max-op-bytes must be 1 to {MAX_OP_BYTES_CEILING}"
        );
        Ok(Settings {
            empty_ttl: Duration::from_millis(self.empty_room_ttl_ms),
            default_max_members: self.max_members,
            max_rooms: self.max_rooms,
            affinity: self.affinity_max_per_gateway,
            limits: Limits {
                max_op_bytes: self.max_op_bytes,
            },
        })
    }
}

/// The reason members of a draining server's rooms receive.
const SHUTTING_DOWN: &str = "the room server is shutting down";

/// A started room server.
pub struct RoomServer {
    /// The node and its SDK.
    pub running: RunningLogic,
    rooms: Arc<Rooms>,
}

impl RoomServer {
    /// Runs until `shutdown`, then drains: the server goes offline (no new rooms or members)
    /// and moves every room to the least-loaded other room server (see `migrate`). A room no
    /// server takes stays: a requested drain keeps it while players finish (or until the drain
    /// is cancelled); then, or at once on SIGTERM, its members are unbound from this server
    /// (acknowledged by the gateways) and only then is it closed, its members told why
    /// (`RoomClosed`), so a member who reacts with a new room request reaches another server.
    pub async fn run(self, shutdown: CancellationToken) {
        let RoomServer { running, rooms } = self;
        let sdk = running.sdk.clone();
        running
            .node
            .run(shutdown, |drain| {
                let (rooms, sdk) = (rooms.clone(), sdk.clone());
                async move {
                    migrate::move_all(&rooms, &sdk, &drain.undrain).await;
                    if drain.undrain.is_cancelled() {
                        return;
                    }
                    let busy = || rooms.counts().rooms > 0;
                    if drain.hold_while(busy).await == Held::Undrained {
                        return;
                    }
                    close_the_rest(&rooms, &sdk).await;
                    rooms.forwarders_quiet(FORWARD_QUIET, FORWARD_LINGER).await;
                }
            })
            .await;
    }
}

/// A drained server stays while its forwarders pass on requests gateways sent before they
/// moved the members: until none came for this long ...
const FORWARD_QUIET: Duration = Duration::from_millis(300);
/// ... or this long at most.
const FORWARD_LINGER: Duration = Duration::from_secs(3);

async fn close_the_rest(rooms: &Arc<Rooms>, sdk: &Sdk) {
    // Joins are refused from the moment the node went offline, so this is every member.
    let members = rooms.members().await;
    unbind(sdk, &members).await;
    let closed = rooms.close_all(SHUTTING_DOWN).await;
    // Nobody should be left over; if a member slipped in anyway, unbind them too.
    let late: Vec<String> = closed
        .into_iter()
        .filter(|user| members.binary_search(user).is_err())
        .collect();
    unbind(sdk, &late).await;
    sdk.flush_pushes().await;
}

/// Removes this server from `users`' bindings; returns once the gateways holding them have.
async fn unbind(sdk: &Sdk, users: &[String]) {
    if users.is_empty() {
        return;
    }
    let me = sdk.node_id();
    match sdk
        .bind(BindMode::Remove, users, std::slice::from_ref(&me))
        .await
    {
        Ok(report) => info!(
            users = users.len(),
            failed_gateways = report.failed_gateways.len(),
            "members unbound from this room server"
        ),
        Err(error) => warn!(%error, "could not unbind the members of this room server"),
    }
}

/// Starts the room server; returns once it has joined the cluster and serves.
pub async fn start(config: Config, listeners: Listeners) -> anyhow::Result<RoomServer> {
    let settings = config.settings()?;
    let mut node_config = config.node.node_config(NodeKind::ROOM);
    if node_config.gossip.seeds.is_empty() {
        node_config.gossip.seeds = vec!["127.0.0.1:7946".into()];
    }
    let rooms = Rooms::new(node_config.id.clone(), settings);
    let running = routes::server(rooms.clone())
        .start(node_config, listeners)
        .await?;
    let sdk = &running.sdk;
    sdk.cluster()
        .update_load(|load| load.capacity = config.max_rooms);
    routes::register_mesh_commands(sdk, &rooms);
    let mut lost = sdk.gateways_lost(Duration::from_millis(config.gateway_grace_ms));
    let forgetting = rooms.clone();
    sdk.spawn(async move {
        while let Some(gateway) = lost.recv().await {
            let left = forgetting.gateway_lost(&gateway).await;
            info!(%gateway, left, "members held by a lost gateway left their rooms");
            metrics::counter!("switchyard_room_members_forgotten_total").increment(left as u64);
        }
    });
    for _ in 0..config.preload_rooms {
        let properties = BTreeMap::from([("kind".to_owned(), "preloaded".to_owned())]);
        if let Err(error) = rooms.create(sdk, 0, properties, true) {
            warn!(%error, "room not preloaded");
        }
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

#[cfg(test)]
mod tests {
    use mesh::MeshError;
    use proto::room::v1::{self as pb, routes};
    use runtime::Node;

    use super::*;

    /// Flags of a test node in a cluster of its own (or of `seed`'s).
    fn config(id: &str, seed: &str, extra: &[&str]) -> Config {
        let cluster = format!("room-unit-{}", std::process::id());
        let mut args = vec![
            "logic-room",
            "--node-id",
            id,
            "--cluster-id",
            &cluster,
            "--cluster-secret",
            "room-unit-test-secret",
            "--seeds",
            seed,
            "--gossip-interval-ms",
            "50",
        ];
        args.extend_from_slice(extra);
        Config::parse_from(args)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn room_actors_stop_with_the_node_even_without_a_drain() {
        // Nobody listens on the seed address: this node is a cluster of its own.
        let config = config("alone", "127.0.0.1:9", &["--preload-rooms", "3"]);
        let listeners = Listeners::loopback().await.expect("bind");
        let server = start(config, listeners).await.expect("starts");
        let rooms = server.rooms.clone();
        assert_eq!(rooms.running_actors(), 3);
        // No drain closes the rooms here: only the node's stop ends their actors.
        server.running.node.abort().await;
        assert_eq!(rooms.running_actors(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_room_for_a_match_is_refused_beyond_the_room_limits() {
        // A node asking for rooms as a match server would.
        let caller_config = config("matcher", "127.0.0.1:9", &[])
            .node
            .node_config("match");
        let listeners = Listeners::loopback().await.expect("bind");
        let mut caller = Node::start(caller_config, listeners, |_| {})
            .await
            .expect("caller starts");
        caller.serve(|routes| routes).await.expect("serves");
        let seed = caller.addrs().gossip.to_string();
        let listeners = Listeners::loopback().await.expect("bind");
        let server = start(config("rooms", &seed, &[]), listeners)
            .await
            .expect("starts");
        let room_node = server.running.sdk.node_id();
        let members = caller.cluster().clone();
        testkit::eventually(
            "the caller sees the room server",
            Duration::from_secs(5),
            || members.node(&room_node).is_some(),
        )
        .await;
        let create_for = |users: Vec<String>| {
            let request = pb::CreateRoomFor {
                members: users
                    .into_iter()
                    .map(|user_id| pb::Member {
                        user_id,
                        gateway_node: String::new(),
                    })
                    .collect(),
                ..Default::default()
            };
            let (mesh, node) = (caller.mesh().clone(), room_node.clone());
            async move {
                mesh.request_message::<_, pb::RoomInfo>(&node, routes::MESH_CREATE_FOR, &request)
                    .await
            }
        };
        let code = |result: Result<pb::RoomInfo, MeshError>| match result {
            Err(MeshError::Handler { code, .. }) => Some(code),
            _ => None,
        };

        let long_id = "u".repeat(limits::MAX_USER_ID_BYTES + 1);
        let refused = create_for(vec!["ann".into(), long_id]).await;
        let bad_request = proto::client::v1::ErrorCode::BadRequest as u32;
        assert_eq!(code(refused), Some(bad_request));
        let crowd = (0..=limits::MAX_MEMBERS).map(|i| format!("p{i}")).collect();
        let refused = create_for(crowd).await;
        assert_eq!(code(refused), Some(mesh::HandlerError::BAD_PAYLOAD));
        assert_eq!(server.rooms.counts().rooms, 0, "no room was created");

        let info = create_for(vec!["ann".into(), "bob".into()])
            .await
            .expect("a room for two");
        assert_eq!(info.members, vec!["ann".to_owned(), "bob".to_owned()]);
    }
}
