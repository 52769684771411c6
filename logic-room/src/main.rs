//! `logic-room` binary: parse the configuration, start telemetry, bind, run until SIGTERM.

use clap::Parser;
use runtime::{ListenDefaults, Listeners, signal, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = logic_room::Config::parse();
    telemetry::init_logs(config.node.log_format);
    let listeners = Listeners::bind(config.node.listen(ListenDefaults::LOOPBACK)).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            signal::shutdown().await;
            shutdown.cancel();
        }
    });
    logic_room::run(config, listeners, shutdown).await
}
