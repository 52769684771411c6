//! `client-sim`: simulated clients. The client protocol and its scenarios (demo, load) arrive
//! with the gateway; until then this binary only says so.

use clap::Parser;

/// Simulated Switchyard clients.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _ = Args::parse();
    anyhow::bail!("no client scenarios yet: they need the gateway's client protocol")
}
