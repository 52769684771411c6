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
//! - `procfs`: CPU time and RSS of server processes from `/proc`.
//! - `child`: server processes the harness starts (this binary, hidden subcommands).
//! - `stats`: histograms and spreads.

mod child;
mod fanout;
mod gateway_rr;
mod idle_memory;
mod mesh_rr;
mod procfs;
mod stats;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Switchyard benchmarks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Tokio flavor of this (client) process.
    #[arg(long, value_enum, default_value_t = Flavor::MultiThread, global = true)]
    flavor: Flavor,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Mesh request/response between two nodes vs a bare tonic unary call.
    Mesh(mesh_rr::MeshArgs),
    /// Client → gateway → echo logic server vs a bare WebSocket echo and a bare tonic call.
    Gateway(gateway_rr::GatewayArgs),
    /// Room broadcast: rooms of 10, 50, 200 members at 10 and 30 Hz, Switchyard vs Go.
    Fanout(fanout::FanoutArgs),
    /// (internal) a room server.
    #[command(hide = true)]
    ServeRoom(fanout::RoomArgs),
    /// Gateway memory per idle, logged-in session (WebSocket and TCP) vs a bare WebSocket echo.
    IdleMemory(idle_memory::IdleArgs),
    /// (internal) a gateway.
    #[command(hide = true)]
    ServeGateway,
    /// (internal) the echo logic server.
    #[command(hide = true)]
    ServeEchoLogic(gateway_rr::EchoArgs),
    /// (internal) a bare WebSocket echo server.
    #[command(hide = true)]
    ServeBareWs,
    /// (internal) a node answering mesh pings.
    #[command(hide = true)]
    ServeMeshNode,
    /// (internal) a bare tonic echo server.
    #[command(hide = true)]
    ServeBareGrpc,
}

/// Tokio runtime flavor.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Flavor {
    /// One thread runs everything.
    CurrentThread,
    /// A worker per core.
    MultiThread,
}

impl Flavor {
    pub(crate) fn as_arg(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current-thread",
            Flavor::MultiThread => "multi-thread",
        }
    }

    fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
        }
    }
}

/// What the report says about the machine.
#[derive(Serialize, Debug)]
pub(crate) struct Machine {
    cores: usize,
    cpu: String,
    kernel: String,
    version: &'static str,
}

impl Machine {
    pub(crate) fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cores, {}, Linux {}, switchyard {}",
            self.cores, self.cpu, self.kernel, self.version
        )
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    runtime::telemetry::init_logs(runtime::LogFormat::Text);
    cli.flavor.runtime()?.block_on(async move {
        match cli.scenario {
            Scenario::Mesh(args) => mesh_rr::run(args).await,
            Scenario::ServeMeshNode => mesh_rr::serve_node().await,
            Scenario::Gateway(args) => gateway_rr::run(args).await,
            Scenario::IdleMemory(args) => idle_memory::run(args).await,
            Scenario::Fanout(args) => fanout::run(args).await,
            Scenario::ServeRoom(args) => fanout::serve_room(args).await,
            Scenario::ServeGateway => gateway_rr::serve_gateway().await,
            Scenario::ServeEchoLogic(args) => gateway_rr::serve_echo_logic(args).await,
            Scenario::ServeBareWs => gateway_rr::serve_bare_ws().await,
            Scenario::ServeBareGrpc => mesh_rr::serve_bare().await,
        }
    })
}
