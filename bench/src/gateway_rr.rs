//! Scenario `gateway`: a client request through the gateway to an echo logic server and back
//! (WebSocket and TCP), at 1 and 100 connections, next to a bare WebSocket echo server and a
//! bare tonic unary call measured in the same run. Every server is its own process.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser};
use client::{Address, Client, ClientConfig};
use futures::{SinkExt, StreamExt};
use logic_sdk::{LogicServer, Reply};
use prost::Message;
use proto::mesh::v1::{MeshRequest, mesh_client::MeshClient};
use serde::Serialize;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

use crate::{
    child::ChildProcess,
    stats::{RunFigures, Spread, histogram},
};

const LOGIN: u32 = proto::route(1, 1);
const ECHO: u32 = proto::route(2, 1);

/// Options of the `gateway` scenario.
#[derive(Args, Debug, Clone)]
pub(crate) struct GatewayArgs {
    /// Interleaved rounds per target and connection count.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Length of each run, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    duration_ms: u64,
    /// Connection counts to measure (closed loop, one request in flight per connection).
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    connections: Vec<usize>,
    /// Payload bytes per request.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Tokio flavor of the server processes.
    #[arg(long, value_enum, default_value_t = crate::Flavor::CurrentThread)]
    server_flavor: crate::Flavor,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the Go baseline's binaries are (`bench/go-baseline/build.sh` builds them); its
    /// targets are measured when they exist.
    #[arg(long, default_value = "target/go-baseline/bin")]
    go_baseline: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Target {
    /// Client library over WebSocket → gateway → echo logic server.
    SwitchyardWs,
    /// Client library over TCP → gateway → echo logic server.
    SwitchyardTcp,
    /// Raw WebSocket client → bare tokio-tungstenite echo server.
    BareWs,
    /// tonic client → bare tonic echo server.
    BareTonic,
    /// Client library over WebSocket → Go gateway → Go logic server (same protocol).
    GoWs,
    /// Client library over TCP → Go gateway → Go logic server.
    GoTcp,
}

const SWITCHYARD_AND_FLOORS: [Target; 4] = [
    Target::SwitchyardWs,
    Target::SwitchyardTcp,
    Target::BareWs,
    Target::BareTonic,
];
const WITH_GO: [Target; 6] = [
    Target::SwitchyardWs,
    Target::SwitchyardTcp,
    Target::GoWs,
    Target::GoTcp,
    Target::BareWs,
    Target::BareTonic,
];

/// The Go baseline's two processes.
pub(crate) struct GoBaseline {
    pub(crate) room: ChildProcess,
    pub(crate) gateway: ChildProcess,
    ws: String,
    pub(crate) tcp: std::net::SocketAddr,
}

impl GoBaseline {
    pub(crate) fn start(dir: &std::path::Path) -> anyhow::Result<Option<Self>> {
        let (room_bin, gateway_bin) = (dir.join("go-room"), dir.join("go-gateway"));
        if !room_bin.exists() || !gateway_bin.exists() {
            eprintln!(
                "no Go baseline in {} (bench/go-baseline/build.sh builds it): Go targets skipped",
                dir.display()
            );
            return Ok(None);
        }
        let room = ChildProcess::spawn_program(&room_bin, &["-grpc", "127.0.0.1:0"])?;
        let room_addr = room.get("grpc")?.to_owned();
        let gateway = ChildProcess::spawn_program(
            &gateway_bin,
            &[
                "-ws",
                "127.0.0.1:0",
                "-tcp",
                "127.0.0.1:0",
                "-grpc",
                "127.0.0.1:0",
                "-room",
                &room_addr,
            ],
        )?;
        Ok(Some(GoBaseline {
            ws: gateway.get("ws")?.to_owned(),
            tcp: gateway.get("tcp")?.parse()?,
            gateway,
            room,
        }))
    }
}

struct Servers {
    gateway: ChildProcess,
    logic: ChildProcess,
    bare_ws_server: ChildProcess,
    bare_grpc_server: ChildProcess,
    ws: String,
    tcp: std::net::SocketAddr,
    bare_ws: String,
    bare_grpc: String,
    go: Option<GoBaseline>,
}

#[derive(Serialize)]
struct Row {
    target: Target,
    connections: usize,
    p50_us: Spread,
    p99_us: Spread,
    throughput_per_s: Spread,
    server_cpu_us_per_op: Spread,
}

impl Servers {
    /// The server processes a target's CPU is charged to.
    fn pids(&self, target: Target) -> Vec<u32> {
        match target {
            Target::SwitchyardWs | Target::SwitchyardTcp => {
                vec![self.gateway.pid(), self.logic.pid()]
            }
            Target::BareWs => vec![self.bare_ws_server.pid()],
            Target::BareTonic => vec![self.bare_grpc_server.pid()],
            Target::GoWs | Target::GoTcp => self
                .go
                .iter()
                .flat_map(|go| [go.gateway.pid(), go.room.pid()])
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    machine: crate::Machine,
    args: String,
    rows: Vec<Row>,
}

pub(crate) async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let flavor = args.server_flavor.as_arg();
    let gateway = ChildProcess::spawn(&["serve-gateway", "--flavor", flavor])?;
    let gossip = gateway.get("gossip")?.to_owned();
    let logic = ChildProcess::spawn(&["serve-echo-logic", "--flavor", flavor, "--seed", &gossip])?;
    let bare_ws = ChildProcess::spawn(&["serve-bare-ws", "--flavor", flavor])?;
    let bare_grpc = ChildProcess::spawn(&["serve-bare-grpc", "--flavor", flavor])?;
    let servers = Servers {
        ws: gateway.get("ws")?.to_owned(),
        tcp: gateway.get("tcp")?.parse()?,
        bare_ws: bare_ws.get("ws")?.to_owned(),
        bare_grpc: bare_grpc.get("grpc")?.to_owned(),
        go: GoBaseline::start(&args.go_baseline)?,
        gateway,
        logic,
        bare_ws_server: bare_ws,
        bare_grpc_server: bare_grpc,
    };
    wait_until_routed(&servers).await?;
    if let Some(go) = &servers.go {
        wait_for_login(&Address::Tcp(go.tcp)).await?;
    }
    let targets: &[Target] = if servers.go.is_some() {
        &WITH_GO
    } else {
        &SWITCHYARD_AND_FLOORS
    };
    let payload = Bytes::from(vec![7u8; args.payload]);

    let mut runs: Vec<(Target, usize, RunFigures)> = Vec::new();
    for &connections in &args.connections {
        let warmup = Duration::from_millis(300);
        for &target in targets {
            measure(&servers, target, connections, &payload, warmup).await?;
        }
        for round in 0..args.rounds {
            // Rotate the order every round so no target always runs first.
            for i in 0..targets.len() {
                let target = targets[(i + round) % targets.len()];
                let figures = measure(
                    &servers,
                    target,
                    connections,
                    &payload,
                    Duration::from_millis(args.duration_ms),
                )
                .await?;
                runs.push((target, connections, figures));
            }
            eprintln!(
                "{connections} connections: round {}/{} done",
                round + 1,
                args.rounds
            );
        }
    }
    let mut rows = Vec::new();
    for &connections in &args.connections {
        for &target in targets {
            let mine: Vec<&RunFigures> = runs
                .iter()
                .filter(|r| r.0 == target && r.1 == connections)
                .map(|r| &r.2)
                .collect();
            rows.push(Row {
                target,
                connections,
                p50_us: Spread::of(mine.iter().map(|f| f.p50_us)),
                p99_us: Spread::of(mine.iter().map(|f| f.p99_us)),
                throughput_per_s: Spread::of(mine.iter().map(|f| f.throughput_per_s)),
                server_cpu_us_per_op: Spread::of(mine.iter().map(|f| f.server_cpu_us_per_op)),
            });
        }
    }
    let report = Report {
        scenario: "client → gateway → echo logic server",
        machine: crate::Machine::read(),
        args: format!("{args:?}"),
        rows,
    };
    print_report(&report, &args);
    crate::stats::write_json(args.json.as_deref(), &report)?;
    Ok(())
}

#[allow(clippy::print_stdout)] // the report is this command's output
fn print_report(report: &Report, args: &GatewayArgs) {
    println!(
        "# client → gateway → echo logic server ({} rounds × {} ms, payload {} B)",
        args.rounds, args.duration_ms, args.payload
    );
    println!("machine: {}", report.machine);
    println!(
        "figures: median (min–max); ratios against the bare WebSocket echo, the bare tonic unary and the Go baseline (same transport) of the same run"
    );
    println!();
    println!(
        "| target | conns | p50 µs | p99 µs | req/s | server CPU µs/req | p50 / bare WS | p50 / bare tonic | req/s / bare WS | p50 / Go | req/s / Go | CPU / Go |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &report.rows {
        let find = |t: Target| {
            report
                .rows
                .iter()
                .find(|r| r.target == t && r.connections == row.connections)
        };
        let (ws, tonic) = (find(Target::BareWs), find(Target::BareTonic));
        let go_pair = match row.target {
            Target::SwitchyardWs => find(Target::GoWs),
            Target::SwitchyardTcp => find(Target::GoTcp),
            _ => None,
        };
        let ratio =
            |a: f64, b: Option<f64>| b.map_or(String::from("-"), |b| format!("{:.2}", a / b));
        println!(
            "| {:?} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.target,
            row.connections,
            row.p50_us,
            row.p99_us,
            row.throughput_per_s,
            row.server_cpu_us_per_op,
            ratio(row.p50_us.median, ws.map(|r| r.p50_us.median)),
            ratio(row.p50_us.median, tonic.map(|r| r.p50_us.median)),
            ratio(
                row.throughput_per_s.median,
                ws.map(|r| r.throughput_per_s.median)
            ),
            ratio(row.p50_us.median, go_pair.map(|r| r.p50_us.median)),
            ratio(
                row.throughput_per_s.median,
                go_pair.map(|r| r.throughput_per_s.median)
            ),
            ratio(
                row.server_cpu_us_per_op.median,
                go_pair.map(|r| r.server_cpu_us_per_op.median)
            ),
        );
    }
}

async fn wait_until_routed(servers: &Servers) -> anyhow::Result<()> {
    wait_for_login(&Address::Tcp(servers.tcp)).await
}

/// Waits until the gateway at `address` routes logins and echoes to the echo server.
pub(crate) async fn wait_for_login(address: &Address) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (client, _events) = Client::connect(address.clone()).await?;
        let login = client.request(LOGIN, login_payload("probe")).await?;
        if login.is_ok() && client.request(ECHO, "x").await?.is_ok() {
            client.close().await;
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway never routed to the echo server: {login:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One closed-loop run: `connections` connections, one request in flight each.
async fn measure(
    servers: &Servers,
    target: Target,
    connections: usize,
    payload: &Bytes,
    duration: Duration,
) -> anyhow::Result<RunFigures> {
    let mut tasks = Vec::with_capacity(connections);
    let start_line = std::sync::Arc::new(tokio::sync::Barrier::new(connections + 1));
    for i in 0..connections {
        let conn = Conn::open(servers, target, i).await?;
        let (payload, start_line) = (payload.clone(), start_line.clone());
        tasks.push(tokio::spawn(async move {
            start_line.wait().await;
            let stop_at = Instant::now() + duration;
            let mut conn = conn;
            let mut h = histogram();
            let mut n = 0u64;
            while Instant::now() < stop_at {
                let t = Instant::now();
                conn.call(&payload).await?;
                h.saturating_record(t.elapsed().as_nanos() as u64);
                n += 1;
            }
            anyhow::Ok((h, n))
        }));
    }
    start_line.wait().await;
    let cpu = crate::procfs::CpuMeter::start(&servers.pids(target));
    let started = Instant::now();
    let mut all = histogram();
    let mut completed = 0;
    for task in tasks {
        let (h, n) = task.await??;
        all.add(&h)?;
        completed += n;
    }
    Ok(RunFigures::new(&all, completed, started.elapsed())
        .with_server_cpu(cpu.elapsed_micros(), completed))
}

enum Conn {
    /// The event stream is held so the connection's reader can deliver events.
    Switchyard(Client, #[allow(dead_code)] client::Events),
    BareWs(
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        u32,
    ),
    BareTonic(MeshClient<Channel>),
}

impl Conn {
    async fn open(servers: &Servers, target: Target, i: usize) -> anyhow::Result<Self> {
        let config = ClientConfig {
            heartbeat: None,
            ..ClientConfig::default()
        };
        Ok(match target {
            Target::SwitchyardWs | Target::SwitchyardTcp | Target::GoWs | Target::GoTcp => {
                let address = match (target, &servers.go) {
                    (Target::SwitchyardWs, _) => Address::WebSocket(servers.ws.clone()),
                    (Target::SwitchyardTcp, _) => Address::Tcp(servers.tcp),
                    (Target::GoWs, Some(go)) => Address::WebSocket(go.ws.clone()),
                    (_, Some(go)) => Address::Tcp(go.tcp),
                    (_, None) => anyhow::bail!("no Go baseline"),
                };
                let (client, events) = Client::connect_with(address, config).await?;
                let login = client
                    .request(LOGIN, login_payload(&format!("user-{i}")))
                    .await?;
                anyhow::ensure!(login.is_ok(), "login failed: {login:?}");
                Conn::Switchyard(client, events)
            }
            Target::BareWs => {
                let (ws, _) = tokio_tungstenite::connect_async_with_config(
                    servers.bare_ws.as_str(),
                    Some(wire::ws::config(1 << 20)),
                    true,
                )
                .await?;
                Conn::BareWs(ws, 0)
            }
            Target::BareTonic => {
                let channel = Endpoint::from_shared(format!("http://{}", servers.bare_grpc))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                Conn::BareTonic(MeshClient::new(channel))
            }
        })
    }

    async fn call(&mut self, payload: &Bytes) -> anyhow::Result<()> {
        match self {
            Conn::Switchyard(client, _) => {
                let response = client.request(ECHO, payload.clone()).await?;
                anyhow::ensure!(response.is_ok(), "echo failed: {response:?}");
            }
            Conn::BareWs(ws, next_id) => {
                // The same envelope a Switchyard client sends, echoed back as is.
                *next_id += 1;
                let frame = wire::envelope::encode(&wire::envelope::request(
                    *next_id,
                    ECHO,
                    payload.clone(),
                ));
                ws.send(wire::ws::message(frame)).await?;
                loop {
                    match ws.next().await.context("bare echo closed")?? {
                        tokio_tungstenite::tungstenite::Message::Binary(_) => break,
                        _ => continue,
                    }
                }
            }
            Conn::BareTonic(client) => {
                let request = MeshRequest {
                    command: mesh::command::PING,
                    from_node: String::new(),
                    payload: payload.clone(),
                };
                client.call(request).await?;
            }
        }
        Ok(())
    }
}

/// A login request both echo servers (ours and the Go baseline's) accept.
pub(crate) fn login_payload(user: &str) -> Vec<u8> {
    proto::matchmaking::v1::Login {
        user_id: user.to_owned(),
        token: String::new(),
    }
    .encode_to_vec()
}

/// `serve-gateway`: a gateway on loopback ports.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_gateway() -> anyhow::Result<()> {
    let ready =
        std::env::temp_dir().join(format!("switchyard-bench-gw-{}.ready", std::process::id()));
    let config = gateway::Config::parse_from([
        "gateway",
        "--node-id",
        "bench-gateway",
        "--rate-limit",
        "0",
        "--max-in-flight",
        "256",
        "--ready-file",
        &ready.display().to_string(),
    ]);
    let listeners = gateway::Listeners::loopback().await?;
    let (ws, tcp) = (listeners.ws.local_addr()?, listeners.tcp.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(gateway::run(config, listeners, shutdown));
    let deadline = Instant::now() + Duration::from_secs(10);
    let gossip = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let _ = std::fs::remove_file(&ready);
            break text
                .lines()
                .find_map(|l| l.strip_prefix("gossip="))
                .map(str::to_owned)
                .context("gossip in ready file")?;
        }
        anyhow::ensure!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("READY ws=ws://{ws}/ws tcp={tcp} gossip={gossip}");
    task.await??;
    Ok(())
}

/// Options of `serve-echo-logic`.
#[derive(Args, Debug)]
pub(crate) struct EchoArgs {
    /// Gossip address of the gateway.
    #[arg(long)]
    seed: String,
}

/// `serve-echo-logic`: the echo logic server.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_echo_logic(args: EchoArgs) -> anyhow::Result<()> {
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

/// `serve-bare-ws`: a WebSocket server that echoes every binary message, with the gateway's
/// WebSocket settings.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_bare_ws() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("READY ws=ws://{}/ws", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(
                stream,
                Some(wire::ws::config(1 << 20)),
            )
            .await
            else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_binary() && ws.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
}
