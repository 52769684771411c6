//! The systems under test, each a set of real processes on loopback: Switchyard (gateway, a
//! login server, a room server, optionally a match server), the Go baseline (go-gateway,
//! go-room, optionally go-match) and the floors (bare TCP echo, bare WebSocket echo, bare tonic
//! unary). The `serve-*` functions are the hidden subcommands those processes run.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser};
use client::{Address, Client, ClientConfig};
use futures::{SinkExt, StreamExt};
use logic_sdk::{LogicServer, Reply};
use prost::Message;
use runtime::RuntimeFlavor;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

use crate::{child::ChildProcess, report::Who};

pub(crate) const LOGIN: u32 = proto::route(1, 1);
pub(crate) const ECHO: u32 = proto::route(2, 1);

/// Client transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub(crate) enum Transport {
    Tcp,
    Ws,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Ws => "WebSocket",
        })
    }
}

/// Which services a stack runs besides its gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Services {
    /// A login server and a room server.
    Rooms,
    /// A match server (which also logs users in) and a room server.
    Matchmaking,
}

/// A running system under test.
pub(crate) struct Stack {
    /// Switchyard or Go.
    pub(crate) system: Who,
    pub(crate) tcp: SocketAddr,
    pub(crate) ws: String,
    /// The gateway's admin endpoint (`/metrics`), Switchyard only.
    pub(crate) admin: Option<String>,
    /// Server processes, charged with CPU and memory.
    pub(crate) pids: Vec<u32>,
    /// The gateway process (memory is read from it).
    pub(crate) gateway_pid: u32,
    /// The room server process.
    pub(crate) room_pid: u32,
    _processes: Vec<ChildProcess>,
}

impl Stack {
    pub(crate) fn address(&self, transport: Transport) -> Address {
        match transport {
            Transport::Tcp => Address::Tcp(self.tcp),
            Transport::Ws => Address::WebSocket(self.ws.clone()),
        }
    }

    /// The floor of room fan-out (`serve-bare-rooms`), one process on a `flavor` runtime.
    pub(crate) fn bare_rooms(flavor: RuntimeFlavor) -> anyhow::Result<Self> {
        let floor = Floor::start(FloorKind::Rooms, flavor)?;
        let pid = floor.pid();
        Ok(Stack {
            system: Who::Floor,
            tcp: floor.addr.parse()?,
            ws: String::new(),
            admin: None,
            pids: vec![pid],
            gateway_pid: pid,
            room_pid: pid,
            _processes: vec![floor.process],
        })
    }

    /// Switchyard's processes, on `flavor` runtimes, once they route logins and room requests.
    pub(crate) async fn switchyard(
        flavor: RuntimeFlavor,
        services: Services,
    ) -> anyhow::Result<Self> {
        let flavor = flavor.as_arg();
        let gateway = ChildProcess::spawn(&["--flavor", flavor, "serve-gateway"])?;
        let gossip = gateway.get("gossip")?.to_owned();
        let login_server = match services {
            Services::Rooms => "serve-echo-logic",
            Services::Matchmaking => "serve-match",
        };
        let login = ChildProcess::spawn(&["--flavor", flavor, login_server, "--seed", &gossip])?;
        let rooms = ChildProcess::spawn(&["--flavor", flavor, "serve-room", "--seed", &gossip])?;
        let stack = Stack {
            system: Who::Switchyard,
            tcp: gateway.get("tcp")?.parse()?,
            ws: gateway.get("ws")?.to_owned(),
            admin: Some(gateway.get("admin")?.to_owned()),
            pids: vec![gateway.pid(), login.pid(), rooms.pid()],
            gateway_pid: gateway.pid(),
            room_pid: rooms.pid(),
            _processes: vec![gateway, login, rooms],
        };
        stack.wait_until_serving(services).await?;
        Ok(stack)
    }

    /// The Go baseline's processes, when `dir` holds them (`bench/go-baseline/build.sh`).
    pub(crate) async fn go(dir: &Path, services: Services) -> anyhow::Result<Option<Self>> {
        let (room_bin, gateway_bin, match_bin) = (
            dir.join("go-room"),
            dir.join("go-gateway"),
            dir.join("go-match"),
        );
        let needs_match = services == Services::Matchmaking;
        if !room_bin.exists() || !gateway_bin.exists() || (needs_match && !match_bin.exists()) {
            eprintln!(
                "no Go baseline in {} (bench/go-baseline/build.sh builds it): Go figures skipped",
                dir.display()
            );
            return Ok(None);
        }
        let room = ChildProcess::spawn_program(&room_bin, &["-grpc", "127.0.0.1:0"])?;
        let room_addr = room.get("grpc")?.to_owned();
        let room_pid = room.pid();
        let mut processes = vec![room];
        let mut gateway_args = vec![
            "-ws",
            "127.0.0.1:0",
            "-tcp",
            "127.0.0.1:0",
            "-grpc",
            "127.0.0.1:0",
            "-room",
        ];
        gateway_args.push(&room_addr);
        let match_addr;
        if needs_match {
            let matcher = ChildProcess::spawn_program(
                &match_bin,
                &["-grpc", "127.0.0.1:0", "-room", &room_addr],
            )?;
            match_addr = matcher.get("grpc")?.to_owned();
            gateway_args.extend(["-match", &match_addr]);
            processes.push(matcher);
        }
        let gateway = ChildProcess::spawn_program(&gateway_bin, &gateway_args)?;
        let mut pids: Vec<u32> = processes.iter().map(ChildProcess::pid).collect();
        pids.push(gateway.pid());
        let stack = Stack {
            system: Who::Go,
            tcp: gateway.get("tcp")?.parse()?,
            ws: gateway.get("ws")?.to_owned(),
            admin: None,
            gateway_pid: gateway.pid(),
            room_pid,
            pids,
            _processes: {
                processes.push(gateway);
                processes
            },
        };
        stack.wait_until_serving(services).await?;
        Ok(Some(stack))
    }

    /// Waits until a client can log in and the stack's services answer.
    async fn wait_until_serving(&self, services: Services) -> anyhow::Result<()> {
        let probe = match services {
            Services::Rooms => (
                proto::room::v1::routes::CREATE,
                proto::room::v1::CreateRoom {
                    max_members: 2,
                    properties: Default::default(),
                }
                .encode_to_vec(),
            ),
            Services::Matchmaking => (
                proto::matchmaking::v1::routes::CANCEL,
                proto::matchmaking::v1::Cancel {}.encode_to_vec(),
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (client, _events) = Client::connect(Address::Tcp(self.tcp)).await?;
            let login = client
                .request(LOGIN, login_payload(&format!("probe-{attempt}")))
                .await?;
            let answered = if login.is_ok() {
                Some(client.request(probe.0, probe.1.clone()).await?)
            } else {
                None
            };
            client.close().await;
            if answered.as_ref().is_some_and(client::Response::is_ok) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{:?} never served {services:?}: login {login:?}, probe {answered:?}",
                self.system
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Which floor server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum FloorKind {
    /// Length-prefixed frames over TCP, each request envelope answered as a response.
    Tcp,
    /// WebSocket binary messages (tokio-tungstenite, the gateway's settings), the same way.
    Ws,
    /// A tonic unary call.
    Tonic,
    /// Rooms in one process over TCP, each push written straight into the members' sockets.
    Rooms,
}

/// A floor server: the cheapest possible server of one kind of round trip.
pub(crate) struct Floor {
    pub(crate) kind: FloorKind,
    /// `host:port` (TCP, tonic) or a `ws://` URL.
    pub(crate) addr: String,
    process: ChildProcess,
}

impl Floor {
    pub(crate) fn start(kind: FloorKind, flavor: RuntimeFlavor) -> anyhow::Result<Self> {
        let (command, key) = match kind {
            FloorKind::Tcp => ("serve-bare-tcp", "tcp"),
            FloorKind::Ws => ("serve-bare-ws", "ws"),
            FloorKind::Tonic => ("serve-bare-grpc", "grpc"),
            FloorKind::Rooms => ("serve-bare-rooms", "tcp"),
        };
        let process = ChildProcess::spawn(&["--flavor", flavor.as_arg(), command])?;
        Ok(Floor {
            kind,
            addr: process.get(key)?.to_owned(),
            process,
        })
    }

    /// The floor for a client transport (bare TCP echo or bare WebSocket echo).
    pub(crate) fn for_transport(
        transport: Transport,
        flavor: RuntimeFlavor,
    ) -> anyhow::Result<Self> {
        Self::start(
            match transport {
                Transport::Tcp => FloorKind::Tcp,
                Transport::Ws => FloorKind::Ws,
            },
            flavor,
        )
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The client address (bare TCP and WebSocket echo only).
    pub(crate) fn address(&self) -> anyhow::Result<Address> {
        Ok(match self.kind {
            FloorKind::Tcp | FloorKind::Rooms => Address::Tcp(self.addr.parse()?),
            FloorKind::Ws => Address::WebSocket(self.addr.clone()),
            FloorKind::Tonic => anyhow::bail!("a tonic floor has no client address"),
        })
    }
}

/// The client settings of every load connection: no heartbeats, a deep event buffer.
pub(crate) fn client_config() -> ClientConfig {
    ClientConfig {
        heartbeat: None,
        event_buffer: 4096,
        request_timeout: Duration::from_secs(15),
        ..ClientConfig::default()
    }
}

/// Connects and logs in as `user` (a floor answers the login like any request).
pub(crate) async fn login(
    address: &Address,
    config: &ClientConfig,
    user: &str,
) -> anyhow::Result<(Client, client::Events)> {
    let (client, events) = Client::connect_with(address.clone(), config.clone()).await?;
    let login = client.request(LOGIN, login_payload(user)).await?;
    anyhow::ensure!(login.is_ok(), "login of {user} failed: {login:?}");
    Ok((client, events))
}

/// A login request every login server here (ours, go-room, logic-match) accepts.
pub(crate) fn login_payload(user: &str) -> Vec<u8> {
    proto::matchmaking::v1::Login {
        user_id: user.to_owned(),
        token: String::new(),
    }
    .encode_to_vec()
}

/// The benchmark gateway's resume window, in ms.
pub(crate) const RESUME_WINDOW_MS: &str = "2000";

/// Options of `serve-gateway`.
#[derive(Args, Debug, Default)]
pub(crate) struct GatewayArgs {
    /// Node id.
    #[arg(long, default_value = "bench-gateway")]
    node_id: String,
    /// Gossip address of a gateway to join (the first gateway needs none).
    #[arg(long)]
    seed: Option<String>,
    /// Bearer token of the admin drain operations.
    #[arg(long)]
    admin_token: Option<String>,
    /// How long a session without a connection is held (the benchmarks' default is short, so
    /// S7's dropped clients end before its leak check).
    #[arg(long, default_value = RESUME_WINDOW_MS)]
    resume_window_ms: String,
}

/// `serve-gateway`: a gateway on loopback ports.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let ready =
        std::env::temp_dir().join(format!("switchyard-bench-gw-{}.ready", std::process::id()));
    let mut extra = Vec::new();
    if let Some(seed) = &args.seed {
        extra.extend(["--seeds".to_owned(), seed.clone()]);
    }
    if let Some(token) = &args.admin_token {
        extra.extend(["--admin-token".to_owned(), token.clone()]);
    }
    let base = [
        "gateway",
        "--node-id",
        &args.node_id,
        "--rate-limit",
        "0",
        "--max-in-flight",
        "256",
        // Clients that drop without a goodbye (half of S7's churn) are held this long for a
        // resume, then ended: the leak check after S7 sees them go.
        "--resume-window-ms",
        &args.resume_window_ms,
        "--ready-file",
        &ready.display().to_string(),
    ]
    .map(str::to_owned);
    let config = gateway::Config::parse_from(base.into_iter().chain(extra));
    let listeners = gateway::Listeners::loopback().await?;
    let (ws, tcp) = (listeners.ws.local_addr()?, listeners.tcp.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(gateway::run(config, listeners, shutdown));
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let _ = std::fs::remove_file(&ready);
            break text;
        }
        anyhow::ensure!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
            .with_context(|| format!("{name} in the ready file"))
    };
    println!(
        "READY ws=ws://{ws}/ws tcp={tcp} gossip={} admin={}",
        field("gossip")?,
        field("admin")?
    );
    task.await??;
    Ok(())
}

/// Options of the server subcommands that join a gateway's cluster.
#[derive(Args, Debug)]
pub(crate) struct SeedArgs {
    /// Gossip address of the gateway.
    #[arg(long)]
    seed: String,
}

/// Options of `serve-room`.
#[derive(Args, Debug)]
pub(crate) struct RoomArgs {
    #[command(flatten)]
    seed: SeedArgs,
    /// The room server's `--affinity-max-per-gateway` (its default when absent).
    #[arg(long)]
    affinity: Option<usize>,
}

/// `serve-echo-logic`: a login server that also echoes route 2:1.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_echo_logic(args: SeedArgs) -> anyhow::Result<()> {
    let mut config = runtime::NodeConfig::new("echo");
    config.gossip.seeds = vec![args.seed];
    let running = LogicServer::new("echo")
        .public_route(LOGIN, |_, payload| async move {
            let login = proto::matchmaking::v1::Login::decode(payload)
                .map_err(|e| logic_sdk::LogicError::bad_request(e.to_string()))?;
            Ok(Reply::default().login(login.user_id))
        })
        .route(ECHO, |_, payload| async move { Ok(Reply::new(payload)) })
        .start(config, runtime::Listeners::loopback().await?)
        .await?;
    println!("READY node_id={}", running.sdk.node_id());
    std::future::pending::<()>().await;
    Ok(())
}

/// `serve-room`: a room server (logic-room) joining through `seed`.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_room(args: RoomArgs) -> anyhow::Result<()> {
    let mut config = logic_room::Config::defaults();
    config.node.seeds = vec![args.seed.seed];
    config.max_members = 1000;
    if let Some(affinity) = args.affinity {
        config.affinity_max_per_gateway = affinity;
    }
    let server = logic_room::start(config, runtime::Listeners::loopback().await?).await?;
    println!("READY node_id={}", server.running.sdk.node_id());
    server.run(tokio_util::sync::CancellationToken::new()).await;
    Ok(())
}

/// `serve-match`: a match server (logic-match, mode `duel` of 2) joining through `seed`.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_match(args: SeedArgs) -> anyhow::Result<()> {
    let mut config = logic_match::Config::parse_from(["logic-match", "--modes", "duel=2"]);
    config.node.seeds = vec![args.seed];
    let server = logic_match::start(config, runtime::Listeners::loopback().await?).await?;
    println!("READY node_id={}", server.running.sdk.node_id());
    server.run(tokio_util::sync::CancellationToken::new()).await;
    Ok(())
}

/// Answers a request envelope the cheapest way that still speaks the protocol: decoded, and
/// sent back as a successful response carrying the request's payload.
fn answer(frame: &[u8]) -> Option<Bytes> {
    let request = wire::Envelope::decode(frame).ok()?;
    Some(wire::envelope::encode(&wire::envelope::response(
        request.msg_id,
        request.route,
        0,
        String::new(),
        request.payload,
    )))
}

/// `serve-bare-tcp`: length-prefixed frames over TCP, every request answered (the floor of a
/// TCP client round trip).
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_bare_tcp() -> anyhow::Result<()> {
    let listener = bind_loopback().await?;
    println!("READY tcp={}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut framed = Framed::new(stream, wire::FrameCodec::new(wire::DEFAULT_MAX_FRAME));
            while let Some(Ok(frame)) = framed.next().await {
                let Some(response) = answer(&frame) else {
                    return;
                };
                if framed.send(response).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// `serve-bare-ws`: WebSocket binary messages with the gateway's WebSocket settings, every
/// request answered (the floor of a WebSocket client round trip).
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_bare_ws() -> anyhow::Result<()> {
    let listener = bind_loopback().await?;
    println!("READY ws=ws://{}/ws", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(
                stream,
                Some(wire::ws::config(wire::DEFAULT_MAX_FRAME)),
            )
            .await
            else {
                return;
            };
            while let Some(message) = ws.next().await {
                let frame = match wire::ws::frame(message) {
                    None => continue,
                    Some(Ok(frame)) => frame,
                    Some(Err(_)) => return,
                };
                let Some(response) = answer(&frame) else {
                    return;
                };
                if ws.send(wire::ws::message(response)).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A loopback listener with the gateway's accept backlog, so connect storms meet the same
/// queue on every server.
pub(crate) async fn bind_loopback() -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind("127.0.0.1:0".parse().expect("a socket address"))?;
    socket.listen(4096)
}

impl std::fmt::Display for FloorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FloorKind::Tcp => "bare TCP echo",
            FloorKind::Ws => "bare WebSocket echo",
            FloorKind::Tonic => "bare tonic unary",
            FloorKind::Rooms => "bare rooms (pushes written in place)",
        })
    }
}

/// The systems that take turns in one round, in an order rotated every round so no system
/// always goes first; Go only when its binaries are in `go_dir`.
pub(crate) fn turn_order(go_dir: &Path, round: usize) -> Vec<Who> {
    let mut order = vec![Who::Switchyard, Who::Floor];
    if go_dir.join("go-gateway").exists() {
        order.insert(1, Who::Go);
    }
    let n = order.len();
    order.rotate_left(round % n);
    order
}

/// One system started fresh for a single measurement (so it meets an empty gateway), stopped
/// when dropped.
pub(crate) struct Fresh {
    pub(crate) address: Address,
    /// Every server process (CPU is charged to them).
    pub(crate) pids: Vec<u32>,
    /// The process clients connect to (memory is read from it).
    pub(crate) gateway_pid: u32,
    _stack: Option<Stack>,
    _floor: Option<Floor>,
}

impl Fresh {
    pub(crate) async fn start(
        who: Who,
        flavor: RuntimeFlavor,
        transport: Transport,
        services: Services,
        go_dir: &Path,
    ) -> anyhow::Result<Self> {
        let stack = match who {
            Who::Switchyard => Stack::switchyard(flavor, services).await?,
            Who::Go => Stack::go(go_dir, services)
                .await?
                .context("no Go baseline")?,
            Who::Floor => {
                let floor = Floor::for_transport(transport, flavor)?;
                return Ok(Fresh {
                    address: floor.address()?,
                    pids: vec![floor.pid()],
                    gateway_pid: floor.pid(),
                    _stack: None,
                    _floor: Some(floor),
                });
            }
        };
        Ok(Fresh {
            address: stack.address(transport),
            pids: stack.pids.clone(),
            gateway_pid: stack.gateway_pid,
            _stack: Some(stack),
            _floor: None,
        })
    }
}
