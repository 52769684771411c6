//! `logic-match` binary: parse the configuration, start telemetry, bind, run until SIGTERM.

use clap::Parser;
use runtime::{ListenDefaults, Listeners, signal, telemetry};

fn main() -> anyhow::Result<()> {
    let config = logic_match::Config::parse();
    config.node.runtime_flavor.block_on(serve(config))?
}

async fn serve(config: logic_match::Config) -> anyhow::Result<()> {
    telemetry::init_logs(config.node.log_format);
    let listeners = Listeners::bind(config.node.listen(ListenDefaults::LOOPBACK)).await?;
    let shutdown = signal::shutdown_token();
    logic_match::run(config, listeners, shutdown).await
}
