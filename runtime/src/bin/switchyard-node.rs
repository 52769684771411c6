//! A plain cluster node with no services of its own: a stable gossip seed, a mesh ping target,
//! and the process the cluster tests start and kill.

use clap::Parser;
use runtime::{ListenDefaults, Listeners, Node, NodeArgs, signal, telemetry};

/// A Switchyard cluster node without application services.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {
    /// The node's kind, as other nodes see it.
    #[arg(long, env = "SWITCHYARD_NODE_KIND", default_value = "node")]
    kind: String,

    #[command(flatten)]
    node: NodeArgs,
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.node.runtime_flavor.block_on(serve(config))?
}

async fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init_logs(config.node.log_format);
    let listeners = Listeners::bind(config.node.listen(ListenDefaults::LOOPBACK)).await?;
    let mut node = Node::start(
        config.node.node_config(config.kind.as_str()),
        listeners,
        |_| {},
    )
    .await?;
    node.serve(|routes| routes).await?;
    let shutdown = signal::shutdown_token();
    node.run(shutdown, |_| async {}).await;
    Ok(())
}
