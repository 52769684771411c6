//! The gateway (external server): holds client connections and routes their commands to logic servers.
//!
//! # Layout
//! - [`Config`]: command line and environment.
//! - [`run`]: joins the cluster as a `gateway` node and serves until shutdown.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use clap::Parser;
use mesh::NodeKind;
use runtime::{ListenDefaults, Listeners, Node, NodeArgs};
use tokio_util::sync::CancellationToken;

/// Where `gateway` listens unless configured otherwise.
pub const LISTEN_DEFAULTS: ListenDefaults = ListenDefaults {
    grpc: loopback(7100),
    gossip: loopback(7946),
    admin: loopback(9100),
};

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Configuration of `gateway`.
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
    let mut node_config = config.node.node_config(NodeKind::GATEWAY);
    let default_seeds: &[&str] = &[];
    if node_config.gossip.seeds.is_empty() {
        node_config.gossip.seeds = default_seeds.iter().map(|s| s.to_string()).collect();
    }
    let mut node = Node::start(node_config, listeners, |_| {}).await?;
    node.serve(|routes| routes).await?;
    node.run(shutdown, || async {}).await;
    Ok(())
}
