//! `bench`: Switchyard's benchmark harness. Each scenario starts its servers, drives them, and
//! reports every figure as median and min–max over interleaved rounds, next to a baseline
//! measured in the same run.
//!
//! # Layout
//! - `mesh_rr`: scenario `mesh` (mesh request/response vs bare tonic unary).
//! - `gateway_rr`: scenario `gateway` (client → gateway → echo logic server, vs bare WebSocket
//!   echo and bare tonic unary).
//! - `idle_memory`: scenario `idle-memory` (gateway RSS per idle session vs a bare WebSocket
//!   echo server).
//! - `fanout`: scenario `fanout` (room broadcast: deliveries/s, delivery latency, deliveries
//!   per server core-second; Switchyard vs Go).
//! - `soak`: scenario `s9-soak` (churn for a long time: RSS and fd drift of the gateway and
//!   the room server).
//! - `procfs`: CPU time, RSS and open fds of server processes from `/proc`.
//! - `child`: server processes the harness starts (this binary, hidden subcommands).
//! - `stats`: histograms and spreads.

mod affinity;
mod bare_rooms;
mod child;
mod churn;
mod drain;
mod fanout;
mod idle_memory;
mod matchmaking;
mod mesh_rr;
mod procfs;
mod report;
mod round_trip;
mod soak;
mod stack;
mod stats;
mod swarm;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use runtime::RuntimeFlavor;

/// Switchyard benchmarks: each scenario starts its servers, drives them, and writes a Markdown
/// and a JSON report (every figure as Switchyard / Go / ratio / floor).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Tokio flavor of this process (the load generator, or the server a hidden subcommand
    /// runs).
    #[arg(long, value_enum, default_value_t = RuntimeFlavor::MultiThread, global = true)]
    flavor: RuntimeFlavor,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario shares.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Interleaved rounds (every figure is the median and min–max over them).
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
    /// Where the Markdown and JSON reports go.
    #[arg(long, default_value = "target/bench-reports")]
    pub(crate) out: PathBuf,
    /// Where the Go baseline's binaries are (`bench/go-baseline/build.sh` builds them); Go
    /// figures are measured when they exist.
    #[arg(long, default_value = "target/go-baseline/bin")]
    pub(crate) go_baseline: PathBuf,
    /// Tokio runtime flavours of the Switchyard server processes; each is measured.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "current-thread,multi-thread"
    )]
    pub(crate) server_flavor: Vec<RuntimeFlavor>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// S0: floors (bare TCP echo, bare WebSocket echo, bare tonic unary) and the generator's
    /// own ceiling.
    S0Floor(round_trip::FloorArgs),
    /// S1: connect storm (connect + upgrade + login), from several generator processes.
    S1ConnectStorm(swarm::StormArgs),
    /// S2: gateway memory per idle, logged-in session.
    S2IdleMemory(idle_memory::IdleArgs),
    /// S3: command round trip through gateway → room server; closed loop and the open-loop knee.
    S3RoundTrip(round_trip::RoundTripArgs),
    /// S4: room fan-out (rooms of 10, 50, 200 at 10 and 30 Hz).
    S4Fanout(fanout::FanoutArgs),
    /// S5: matchmaking: tickets/s and time from the last ticket to everyone notified.
    S5Match(matchmaking::MatchArgs),
    /// S6: TCP vs WebSocket (the S3 closed loop at 1 and 100 connections).
    S6Transport(round_trip::RoundTripArgs),
    /// S7: churn: S3 at half the knee plus connects/disconnects; leaked sessions and bindings.
    S7Churn(churn::ChurnArgs),
    /// S9: soak: churn for a long time; RSS and file descriptor drift of the gateway and the
    /// room server, and the gateway's session gauges once the load stops.
    S9Soak(soak::SoakArgs),
    /// Mesh request/response between two nodes vs a bare tonic unary call.
    Mesh(mesh_rr::MeshArgs),
    /// S8: a gateway drained while its clients play in rooms: time until it holds nothing,
    /// per-client blackout, pushes lost and doubled.
    S8Drain(drain::DrainArgs),
    /// Room affinity: members spread over two gateways, moved (or not) to the gateway holding
    /// most of their room; deliveries per server core-second, off against on.
    Affinity(affinity::AffinityArgs),
    /// (internal) a gateway.
    #[command(hide = true)]
    ServeGateway(stack::GatewayArgs),
    /// (internal) a login server that also echoes.
    #[command(hide = true)]
    ServeEchoLogic(stack::SeedArgs),
    /// (internal) a room server.
    #[command(hide = true)]
    ServeRoom(stack::RoomArgs),
    /// (internal) a match server.
    #[command(hide = true)]
    ServeMatch(stack::SeedArgs),
    /// (internal) a bare TCP echo server.
    #[command(hide = true)]
    ServeBareTcp,
    /// (internal) a bare WebSocket echo server.
    #[command(hide = true)]
    ServeBareWs,
    /// (internal) the floor of room fan-out: rooms in one process, pushes written in place.
    #[command(hide = true)]
    ServeBareRooms,
    /// (internal) a node answering mesh pings.
    #[command(hide = true)]
    ServeMeshNode,
    /// (internal) a bare tonic echo server.
    #[command(hide = true)]
    ServeBareGrpc,
    /// (internal) a load generator process holding many connections.
    #[command(hide = true)]
    Swarm(swarm::SwarmArgs),
    /// (internal) a generator process holding a share of the drain scenario's players.
    #[command(hide = true)]
    DrainPlayers(drain::PlayersArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    runtime::telemetry::init_logs(runtime::LogFormat::Text);
    cli.flavor.block_on(async move {
        match cli.scenario {
            Scenario::S0Floor(args) => round_trip::run_floor(args).await,
            Scenario::S1ConnectStorm(args) => swarm::run_storm(args).await,
            Scenario::S2IdleMemory(args) => idle_memory::run(args).await,
            Scenario::S3RoundTrip(args) => round_trip::run(args, "s3-round-trip").await,
            Scenario::S4Fanout(args) => fanout::run(args).await,
            Scenario::S5Match(args) => matchmaking::run(args).await,
            Scenario::S6Transport(args) => round_trip::run(args, "s6-transport").await,
            Scenario::S7Churn(args) => churn::run(args).await,
            Scenario::S9Soak(args) => soak::run(args).await,
            Scenario::Mesh(args) => mesh_rr::run(args).await,
            Scenario::S8Drain(args) => drain::run(args).await,
            Scenario::Affinity(args) => affinity::run(args).await,
            Scenario::ServeGateway(args) => stack::serve_gateway(args).await,
            Scenario::ServeEchoLogic(args) => stack::serve_echo_logic(args).await,
            Scenario::ServeRoom(args) => stack::serve_room(args).await,
            Scenario::ServeMatch(args) => stack::serve_match(args).await,
            Scenario::ServeBareTcp => stack::serve_bare_tcp().await,
            Scenario::ServeBareWs => stack::serve_bare_ws().await,
            Scenario::ServeBareRooms => bare_rooms::serve().await,
            Scenario::ServeMeshNode => mesh_rr::serve_node().await,
            Scenario::ServeBareGrpc => mesh_rr::serve_bare().await,
            Scenario::Swarm(args) => swarm::serve(args).await,
            Scenario::DrainPlayers(args) => drain::serve_players(args).await,
        }
    })?
}
