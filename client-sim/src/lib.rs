//! Simulated Switchyard clients.
//!
//! # Layout
//! - [`Cli`]: the commands: `demo` and `load`.
//! - `demo`: the matchmaking story, told line by line.
//! - `load`: many clients in one process; throughput, latency percentiles, errors by code.
//! - [`generator`]: the engine: closed- and open-loop drives of connected clients.
//! - `player`: what one simulated player does (connect, log in, queue, room operations).

// This crate's output is its report: printing is its job.
#![allow(clippy::print_stdout)]

mod demo;
pub mod generator;
mod load;
mod player;

use clap::{Parser, Subcommand};

pub use demo::DemoArgs;
pub use load::{LoadArgs, Percentiles, Report, Scenario, measure};

/// Simulated Switchyard clients.
#[derive(Parser, Debug, Clone)]
#[command(name = "client-sim", version, about)]
pub struct Cli {
    /// What to simulate.
    #[command(subcommand)]
    pub command: Command,
}

/// A client-sim command.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Players log in, queue, get matched into a room and exchange room operations.
    Demo(DemoArgs),
    /// Many clients at once: connect storms, room operations, matchmaking; prints figures.
    Load(LoadArgs),
}

/// Runs a command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Load(args) => load::run(args).await,
    }
}
