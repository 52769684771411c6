//! `gateway` binary: parse the configuration, start telemetry, bind, run until SIGTERM.

use clap::Parser;
use runtime::{signal, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = gateway::Config::parse();
    telemetry::init_logs(config.node.log_format);
    let listeners = gateway::Listeners::bind(&config).await?;
    let shutdown = signal::shutdown_token();
    gateway::run(config, listeners, shutdown).await
}
