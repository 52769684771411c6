//! `switchyard`: every Switchyard service in one binary (the Docker image holds only this),
//! and `switchyard up`, which starts the whole system as separate processes on loopback.
//!
//! # Layout
//! - `main.rs`: the commands; each service command is that service's own `Config` and `run`.
//! - `up.rs`: the launcher.

// The launcher's output is its job.
#![allow(clippy::print_stdout)]

mod up;

use clap::{Parser, Subcommand};
use runtime::{ListenDefaults, Listeners, signal, telemetry};

/// Switchyard: a game and realtime server cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the whole system on loopback: two gateways, two room servers, a match server; with
    /// `--demo`, also the client-sim demo story.
    Up(up::UpArgs),
    /// The gateway.
    Gateway(gateway::Config),
    /// A room server.
    LogicRoom(logic_room::Config),
    /// A match server.
    LogicMatch(logic_match::Config),
    /// Simulated clients.
    ClientSim(client_sim::Cli),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Services run on the runtime their configuration names; the launcher and client-sim on
    // the default one.
    let flavor = match &cli.command {
        Command::Gateway(config) => config.node.runtime_flavor,
        Command::LogicRoom(config) => config.node.runtime_flavor,
        Command::LogicMatch(config) => config.node.runtime_flavor,
        Command::Up(_) | Command::ClientSim(_) => runtime::RuntimeFlavor::MultiThread,
    };
    flavor.block_on(run(cli))?
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Gateway(config) => {
            telemetry::init_logs(config.node.log_format);
            let listeners = gateway::Listeners::bind(&config).await?;
            gateway::run(config, listeners, signal::shutdown_token()).await
        }
        Command::LogicRoom(config) => {
            telemetry::init_logs(config.node.log_format);
            let listeners = Listeners::bind(config.node.listen(ListenDefaults::LOOPBACK)).await?;
            logic_room::run(config, listeners, signal::shutdown_token()).await
        }
        Command::LogicMatch(config) => {
            telemetry::init_logs(config.node.log_format);
            let listeners = Listeners::bind(config.node.listen(ListenDefaults::LOOPBACK)).await?;
            logic_match::run(config, listeners, signal::shutdown_token()).await
        }
        Command::ClientSim(cli) => client_sim::run(cli).await,
    }
}
