//! Helpers shared by the runtime's integration tests: in-process nodes on loopback port 0,
//! real `switchyard-node` processes, bounded waiting, and a tiny HTTP GET.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part of this module

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mesh::NodeId;
use runtime::{Listeners, Node, NodeConfig};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-cluster-secret";

/// Waits until `check` holds, polling, for at most `limit`; panics with `what` otherwise.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break text;
            }
            assert!(Instant::now() < deadline, "node {id} never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addrs = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
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

/// `GET path` over a fresh connection; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect admin");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a Prometheus sample line starting with `prefix`, if present.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
