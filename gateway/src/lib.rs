//! The gateway (the "external server"): holds every client connection (WebSocket or TCP),
//! keeps each user's session and bindings, and routes every client command over gRPC to the
//! right logic server.
//!
//! # Layout
//! - [`Config`], [`Listeners`], [`start`] / [`RunningGateway`], [`run`]: configuration and the
//!   gateway's life.
//! - `transport`: accept loops for WebSocket (`/ws`) and TCP; client socket options.
//! - `connection`: one connection: reader (frames, heartbeats, idle timeout, bounded requests in
//!   flight) and writer (bounded queue, batching, slow-client cut-off, last words, linger).
//! - `session`: a session's state, pushes, kicks; `outbox`: its outbound queue (bounded in bytes
//!   and age). `sessions`: the table, the user index and the login order.
//! - `gateway`: the shared state. `request`: the request path (route, call the logic node, map
//!   what happened to a code). `link`: one long-lived stream to each logic node, carrying calls
//!   up and answers and pushes down. `effects`: what a logic response asks (login, "me" bindings,
//!   attributes, watch). `drain`: going offline.
//! - `router`: where a request goes (pure decision over route table, bindings and load).
//! - `binding`: bind modes (pure). `refusal`: every answer the gateway gives by itself.
//! - `service`: the gRPC Gateway service (bind, push, kick, presence, forwarded across
//!   gateways). [`metrics`]: metric names.

mod binding;
mod conn;
mod connection;
mod drain;
mod effects;
mod gateway;
mod hold;
mod link;
mod majority;
pub mod metrics;
mod moving;
mod outbox;
mod placement;
mod refusal;
mod request;
mod router;
mod service;
mod session;
mod sessions;
mod socket;
mod token;
mod transport;

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use mesh::NodeKind;
use proto::gateway::v1::gateway_server::GatewayServer;
use runtime::{BoundAddrs, ListenDefaults, Node, NodeArgs};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    conn::ConnLimits,
    gateway::{Gateway, Limits},
    hold::ResumeSettings,
    outbox::OutboxLimits,
    service::GatewayService,
    session::SessionLimits,
    token::Tokens,
};

/// Where the gateway's cluster listeners go unless configured otherwise.
pub const LISTEN_DEFAULTS: ListenDefaults = ListenDefaults {
    grpc: loopback(7100),
    gossip: loopback(7946),
    admin: loopback(9100),
};

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Configuration of the gateway.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Config {
    /// Cluster, listener and telemetry settings.
    #[command(flatten)]
    pub node: NodeArgs,

    /// WebSocket listener for clients (upgrade path `/ws`).
    #[arg(long, env = "SWITCHYARD_WS_LISTEN", default_value = "127.0.0.1:7000")]
    pub ws_listen: SocketAddr,

    /// TCP listener for clients (4-byte big-endian length prefix per frame).
    #[arg(long, env = "SWITCHYARD_TCP_LISTEN", default_value = "127.0.0.1:7001")]
    pub tcp_listen: SocketAddr,

    /// Host clients are told to connect to (in this gateway's announced client addresses);
    /// default: the advertised host.
    #[arg(long, env = "SWITCHYARD_PUBLIC_HOST")]
    pub public_host: Option<String>,

    /// Largest frame a client may send, in bytes; larger frames close the connection.
    #[arg(long, env = "SWITCHYARD_MAX_FRAME_BYTES", default_value_t = wire::DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: usize,

    /// A connection with no traffic (requests or heartbeats) for this long is closed, in ms.
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub idle_timeout_ms: u64,

    /// Bytes queued for one client (frames not yet taken by its socket) before it counts as
    /// not reading and is dropped with SLOW_CONSUMER.
    #[arg(long, env = "SWITCHYARD_OUTBOUND_QUEUE_BYTES", default_value_t = 4 << 20)]
    pub outbound_queue_bytes: usize,

    /// A client whose oldest queued frame has waited this long (its socket takes nothing) is
    /// dropped with SLOW_CONSUMER, in ms.
    #[arg(long, env = "SWITCHYARD_SLOW_CONSUMER_MS", default_value_t = 3_000)]
    pub slow_consumer_ms: u64,

    /// Kernel send buffer of each client socket, in bytes (0 = the system's autotuning, which
    /// lets megabytes pile up behind a client that does not read).
    #[arg(long, env = "SWITCHYARD_SOCKET_SEND_BUFFER_BYTES", default_value_t = 64 << 10)]
    pub socket_send_buffer_bytes: usize,

    /// Requests of one connection handled at once; more wait (and the connection is not read).
    #[arg(long, env = "SWITCHYARD_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,

    /// Requests per second one connection may send (0 = unlimited).
    #[arg(long, env = "SWITCHYARD_RATE_LIMIT", default_value_t = 200)]
    pub rate_limit: u32,

    /// Burst above the rate limit.
    #[arg(long, env = "SWITCHYARD_RATE_BURST", default_value_t = 400)]
    pub rate_burst: u32,

    /// Time a logic server has to answer a routed request, in ms.
    #[arg(long, env = "SWITCHYARD_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,

    /// Routes (`cmd:sub` or a number) that fall back to normal node selection when the user's
    /// bound node is gone, instead of failing with BOUND_NODE_UNAVAILABLE.
    #[arg(long, env = "SWITCHYARD_FALLBACK_ROUTES", value_delimiter = ',', value_parser = parse_route)]
    pub fallback_routes: Vec<u32>,

    /// Sessions this gateway accepts (0 = unlimited); published as its capacity. A new client
    /// beyond it is redirected to a gateway with room (or refused with GATEWAY_FULL).
    #[arg(long, env = "SWITCHYARD_MAX_SESSIONS", default_value_t = 0)]
    pub max_sessions: u64,

    /// A new client is redirected to another gateway whose load ratio (sessions / capacity)
    /// is lower than this gateway's by more than this (0 = only when full).
    #[arg(long, env = "SWITCHYARD_REDIRECT_MARGIN", default_value_t = 0.25)]
    pub redirect_margin: f64,

    /// How long a session whose connection dropped without a goodbye is held for a resume,
    /// in ms (its bindings and rooms kept; rooms and queues are told when it passes).
    /// 0: a dropped connection ends its session at once.
    #[arg(long, env = "SWITCHYARD_RESUME_WINDOW_MS", default_value_t = 30_000)]
    pub resume_window_ms: u64,

    /// Most pushes each session keeps for a resume (the newest are kept).
    #[arg(long, env = "SWITCHYARD_REPLAY_MAX_PUSHES", default_value_t = 256)]
    pub replay_max_pushes: usize,

    /// Most payload bytes of pushes each session keeps for a resume (at most 1 MiB).
    #[arg(long, env = "SWITCHYARD_REPLAY_MAX_BYTES", default_value_t = 64 << 10)]
    pub replay_max_bytes: usize,

    /// How long a resume token is good for, in ms (each resume answer brings a new one).
    #[arg(long, env = "SWITCHYARD_RESUME_TOKEN_TTL_MS", default_value_t = 24 * 3_600_000)]
    pub resume_token_ttl_ms: u64,
}

/// The largest `--replay-max-bytes`.
pub const MAX_REPLAY_BYTES: usize = 1 << 20;

/// Parses `cmd:sub` or a plain (decimal or 0x-hex) route id.
pub fn parse_route(text: &str) -> Result<u32, String> {
    let text = text.trim();
    if let Some((cmd, sub)) = text.split_once(':') {
        let cmd: u16 = cmd
            .parse()
            .map_err(|_| format!("bad command in route {text:?}"))?;
        let sub: u16 = sub
            .parse()
            .map_err(|_| format!("bad sub-command in route {text:?}"))?;
        return Ok(proto::route(cmd, sub));
    }
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("bad route {text:?}: use cmd:sub or a number"))
}

/// Every socket the gateway serves on.
#[derive(Debug)]
pub struct Listeners {
    /// Cluster listeners (gRPC, admin, datagram, gossip).
    pub node: runtime::Listeners,
    /// WebSocket clients.
    pub ws: TcpListener,
    /// TCP clients.
    pub tcp: TcpListener,
}

impl Listeners {
    /// Binds everything `config` asks for.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            node: runtime::Listeners::bind(config.node.listen(LISTEN_DEFAULTS)).await?,
            ws: client_listener(config.ws_listen)?,
            tcp: client_listener(config.tcp_listen)?,
        })
    }

    /// Every listener on 127.0.0.1 with a free port: for tests and benchmarks.
    pub async fn loopback() -> anyhow::Result<Self> {
        let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        Ok(Self {
            node: runtime::Listeners::loopback().await?,
            ws: client_listener(any)?,
            tcp: client_listener(any)?,
        })
    }
}

/// Pending connections the kernel may hold for a client listener. The default (128) drops SYNs
/// during connect storms, and each dropped SYN costs that client a one-second retransmit.
const CLIENT_BACKLOG: u32 = 4096;

fn client_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(CLIENT_BACKLOG)
}

/// The addresses a started gateway serves on.
#[derive(Clone, Debug)]
pub struct GatewayAddrs {
    /// WebSocket clients (`ws://ADDR/ws`).
    pub ws: SocketAddr,
    /// TCP clients.
    pub tcp: SocketAddr,
    /// gRPC (mesh, Gateway service), gossip and admin HTTP.
    pub node: BoundAddrs,
}

/// A gateway that has joined the cluster and accepts clients; [`RunningGateway::run`] serves
/// until shutdown, then drains and leaves.
pub struct RunningGateway {
    /// Where it serves.
    pub addrs: GatewayAddrs,
    node: Node,
    gateway: Arc<Gateway>,
    stop_accepting: CancellationToken,
    accept_tasks: TaskTracker,
}

/// Starts the gateway: joins the cluster, serves gRPC and accepts clients; returns once it
/// does, with its bound addresses.
pub async fn start(config: Config, listeners: Listeners) -> anyhow::Result<RunningGateway> {
    // A session's replay ring travels with it when it moves (one AdoptSessions call carries
    // up to 2 MiB of snapshots, a lone larger one alone): keep one ring well inside that.
    anyhow::ensure!(
        config.replay_max_bytes <= MAX_REPLAY_BYTES,
        "--replay-max-bytes must be at most {MAX_REPLAY_BYTES}"
    );
    let mut node_config = config.node.node_config(NodeKind::GATEWAY);
    let ws_addr = listeners.ws.local_addr()?;
    let tcp_addr = listeners.tcp.local_addr()?;
    let limits = limits(&config);
    // The node waits for the whole drain: the grace, the answers to requests in flight at its
    // end, the moves and the closing.
    node_config.drain_overrun = drain::overrun(&limits) + Duration::from_secs(1);
    let mut node = Node::start(node_config, listeners.node, |record| {
        let host = config
            .public_host
            .clone()
            .unwrap_or_else(|| record.grpc_addr.ip().to_string());
        record.client_addr = Some(format!(
            "ws://{host}:{}/ws,tcp://{host}:{}",
            ws_addr.port(),
            tcp_addr.port()
        ));
        record.load.capacity = config.max_sessions;
    })
    .await?;
    let tokens = Tokens::new(&config.node.cluster_id, &config.node.cluster_secret);
    let resume = ResumeSettings {
        window: Duration::from_millis(config.resume_window_ms),
        token_ttl: Duration::from_millis(config.resume_token_ttl_ms.max(1)),
    };
    let gateway = Gateway::new(node.mesh().clone(), limits, tokens, resume);
    gateway.tracker.spawn(gateway.clone().follow_nodes());
    gateway
        .tracker
        .spawn(gateway.clone().follow_quorum(node.quorum().clone()));
    // Other gateways' hand-overs carry snapshots (replay rings, wills): the same bound as the
    // links' messages, not gRPC's default 4 MiB.
    let service = node.authenticated(
        GatewayServer::new(GatewayService(gateway.clone()))
            .max_decoding_message_size(link::MAX_DECODING_BYTES),
    );
    node.serve(|routes| routes.add_service(service)).await?;
    tracing::info!(ws = %ws_addr, tcp = %tcp_addr, "gateway accepting clients");

    let stop_accepting = CancellationToken::new();
    let accept_tasks = TaskTracker::new();
    accept_tasks.spawn(transport::accept_ws(
        gateway.clone(),
        listeners.ws,
        stop_accepting.clone(),
    ));
    accept_tasks.spawn(transport::accept_tcp(
        gateway.clone(),
        listeners.tcp,
        stop_accepting.clone(),
    ));
    accept_tasks.close();
    Ok(RunningGateway {
        addrs: GatewayAddrs {
            ws: ws_addr,
            tcp: tcp_addr,
            node: node.addrs().clone(),
        },
        node,
        gateway,
        stop_accepting,
        accept_tasks,
    })
}

impl RunningGateway {
    /// Serves until `shutdown` is cancelled, then drains (clients are told the gateway is going
    /// offline and given the drain grace to leave), leaves the cluster and stops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let RunningGateway {
            node,
            gateway,
            stop_accepting,
            accept_tasks,
            ..
        } = self;
        node.run(shutdown, |drain| {
            let gateway = gateway.clone();
            async move { gateway.drain(drain.grace, drain.undrain).await }
        })
        .await;
        stop_accepting.cancel();
        accept_tasks.wait().await;
        gateway.stopping.cancel();
        gateway.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), gateway.tracker.wait()).await;
        Ok(())
    }
}

/// Runs the gateway until `shutdown` is cancelled, then drains and leaves the cluster.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, listeners).await?.run(shutdown).await
}

fn limits(config: &Config) -> Limits {
    let rate = NonZeroU32::new(config.rate_limit).map(|rate| {
        (
            rate,
            NonZeroU32::new(config.rate_burst.max(config.rate_limit)).unwrap_or(rate),
        )
    });
    Limits {
        max_frame: config.max_frame_bytes,
        idle_timeout: Duration::from_millis(config.idle_timeout_ms.max(100)),
        request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
        session: SessionLimits {
            max_frame: config.max_frame_bytes,
            held_pushes: config.replay_max_pushes,
            held_bytes: config.replay_max_bytes,
        },
        conn: ConnLimits {
            max_frame: config.max_frame_bytes,
            outbox: OutboxLimits {
                max_bytes: config.outbound_queue_bytes,
                max_age: Duration::from_millis(config.slow_consumer_ms.max(100)),
            },
            max_in_flight: config.max_in_flight,
            rate,
        },
        socket_send_buffer: config.socket_send_buffer_bytes,
        fallback_routes: config
            .fallback_routes
            .iter()
            .copied()
            .collect::<HashSet<u32>>(),
        max_sessions: config.max_sessions,
        redirect_margin: config.redirect_margin.max(0.0),
    }
}
