//! Helpers shared by the runtime's integration tests: in-process nodes on loopback port 0,
//! real `switchyard-node` processes, bounded waiting, and a tiny HTTP GET.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part of this module

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mesh::NodeId;
use runtime::{Listeners, Node, NodeConfig};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-cluster-secret";

#[allow(unused_imports)] // each test file uses a different part of this module
pub use testkit::{eventually, http_get};

/// A configuration for fast tests: 50 ms gossip, 1 s failure detection, the test secret.
pub fn fast_config(id: &str, kind: &str, seeds: &[SocketAddr]) -> NodeConfig {
    let mut config = NodeConfig::new(kind);
    config.id = NodeId::new(id);
    config.secret = SECRET.into();
    config.gossip.cluster_id = "test".into();
    config.gossip.seeds = seeds.iter().map(ToString::to_string).collect();
    config.gossip.gossip_interval = Duration::from_millis(50);
    config.gossip.failure_detection = Duration::from_secs(1);
    config.load_interval = Duration::from_millis(100);
    config.drain_grace = Duration::from_secs(2);
    config
}

/// A node running in this process, serving on loopback.
pub struct TestNode {
    pub node: Option<Node>,
    pub id: NodeId,
    pub gossip: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub mesh: mesh::Mesh,
    pub cluster: mesh::Cluster,
}

impl TestNode {
    pub async fn start(config: NodeConfig) -> Self {
        let listeners = Listeners::loopback().await.expect("bind loopback");
        let mut node = Node::start(config, listeners, |_| {})
            .await
            .expect("node starts");
        node.serve(|routes| routes).await.expect("node serves");
        let addrs = node.addrs().clone();
        TestNode {
            id: node.cluster().self_id(),
            gossip: addrs.gossip,
            grpc: addrs.grpc,
            admin: addrs.admin,
            mesh: node.mesh().clone(),
            cluster: node.cluster().clone(),
            node: Some(node),
        }
    }

    /// Runs the shutdown sequence (offline, drain, leave).
    pub async fn shutdown(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown(|| async {}).await;
        }
    }

    /// The shutdown sequence run by a token, as `main` would.
    pub fn run_until(&mut self, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        let node = self.node.take().expect("not yet shut down");
        tokio::spawn(node.run(token, || async {}))
    }
}

/// A `switchyard-node` process.
pub struct NodeProcess {
    pub child: Child,
    pub id: NodeId,
    pub addrs: HashMap<String, String>,
    _dir: TempDir,
}

impl NodeProcess {
    /// Starts a process joining through `seed`, with default detection settings unless
    /// `args` override them; waits for its ready file.
    pub async fn start(id: &str, seed: SocketAddr, args: &[&str]) -> Self {
        let dir = TempDir::new(id);
        let ready = dir.0.join("ready");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard-node"))
            .args([
                "--node-id",
                id,
                "--cluster-id",
                "test",
                "--cluster-secret",
                SECRET,
            ])
            .args(["--seeds", &seed.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchyard-node");
        let addrs = testkit::read_ready_file(&ready, Duration::from_secs(20)).await;
        NodeProcess {
            child,
            id: NodeId::new(id),
            addrs,
            _dir: dir,
        }
    }

    pub fn admin(&self) -> SocketAddr {
        self.addrs["admin"].parse().expect("admin address")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        signal(self.child.id(), "TERM");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "kill -s {name} {pid} failed"
    );
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "switchyard-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// The value of a Prometheus sample line starting with `prefix`, if present.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
