//! `client-sim` binary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    client_sim::run(client_sim::Cli::parse()).await
}
