//! Match server: queues players and places matches on the least-loaded room server.
//!
//! # Layout
//! - [`Config`]: command line and environment.
//! - [`run`]: joins the cluster as a `match` node and serves until shutdown.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use clap::Parser;
use mesh::NodeKind;
use runtime::{ListenDefaults, Listeners, Node, NodeArgs};
use tokio_util::sync::CancellationToken;

/// Where `logic-match` listens unless configured otherwise.
pub const LISTEN_DEFAULTS: ListenDefaults = ListenDefaults {
    grpc: loopback(0),
    gossip: loopback(0),
    admin: loopback(0),
};

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Configuration of `logic-match`.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Config {
    /// Cluster, listener and telemetry settings.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Joins the cluster and serves until `shutdown` is cancelled, then drains and leaves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut node_config = config.node.node_config(NodeKind::MATCH);
    let default_seeds: &[&str] = &["127.0.0.1:7946"];
    if node_config.gossip.seeds.is_empty() {
        node_config.gossip.seeds = default_seeds.iter().map(|s| s.to_string()).collect();
    }
    let mut node = Node::start(node_config, listeners, |_| {}).await?;
    node.serve(|routes| routes).await?;
    node.run(shutdown, || async {}).await;
    Ok(())
}
