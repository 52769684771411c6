//! `gateway` binary: parse the configuration, start telemetry, bind, run until SIGTERM.

use clap::Parser;
use runtime::{signal, telemetry};

fn main() -> anyhow::Result<()> {
    let config = gateway::Config::parse();
    config.node.runtime_flavor.block_on(serve(config))?
}

async fn serve(config: gateway::Config) -> anyhow::Result<()> {
    telemetry::init_logs(config.node.log_format);
    let listeners = gateway::Listeners::bind(&config).await?;
    let shutdown = signal::shutdown_token();
    gateway::run(config, listeners, shutdown).await
}
