//! Helpers shared by the runtime's integration tests: in-process nodes on loopback port 0,
//! real `switchyard-node` processes, bounded waiting, and a tiny HTTP GET.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part of this module

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
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
    pub quorum: runtime::Quorum,
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
            quorum: node.quorum().clone(),
            node: Some(node),
        }
    }

    /// Stops as a crash would (no leave): peers find out through failure detection.
    pub async fn abort(&mut self) {
        if let Some(node) = self.node.take() {
            node.abort().await;
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
        tokio::spawn(node.run(token, |_| async {}))
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
        testkit::signal(self.child.id(), testkit::Signal::SIGTERM);
    }

    /// Stops the process (SIGSTOP) for `pause`, then lets it go on (SIGCONT).
    pub async fn pause_for(&self, pause: Duration) {
        testkit::pause_for(self.child.id(), pause).await;
    }

    /// Starves the process of CPU for `total`: it is stopped for `stopped`, then runs for
    /// `running`, over and over (SIGSTOP/SIGCONT). Ends with the process running.
    pub async fn starve(&self, stopped: Duration, running: Duration, total: Duration) {
        testkit::starve(self.child.id(), stopped, running, total).await;
    }

    /// How many members this process dropped for `reason` (`silent`, `left`), by its metrics.
    pub fn nodes_gone(&self, reason: &str) -> f64 {
        let (_, body) = http_get(self.admin(), "/metrics");
        metric(
            &body,
            &format!("switchyard_mesh_nodes_gone_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    }
}

/// Watches a process's member list (`/cluster/nodes`) every 20 ms on a thread of its own, and
/// remembers every look at it that missed one of the expected members.
pub struct MemberWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<MemberWatchReport>>,
}

/// What a [`MemberWatch`] saw.
#[derive(Debug)]
pub struct MemberWatchReport {
    /// How many member lists it read.
    pub looks: usize,
    /// The lists that missed an expected member: the time since the watch started, and who
    /// was missing.
    pub misses: Vec<(Duration, Vec<String>)>,
}

impl MemberWatch {
    pub fn start(admin: SocketAddr, expected: &[&NodeId]) -> Self {
        let expected: Vec<String> = expected.iter().map(|id| id.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut report = MemberWatchReport {
                looks: 0,
                misses: Vec::new(),
            };
            while !stopped.load(Ordering::Relaxed) {
                let (status, body) = http_get(admin, "/cluster/nodes");
                if status == 200 {
                    let members = member_ids(&body);
                    let missing: Vec<String> = expected
                        .iter()
                        .filter(|id| !members.contains(id))
                        .cloned()
                        .collect();
                    report.looks += 1;
                    if !missing.is_empty() {
                        report.misses.push((started.elapsed(), missing));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            report
        });
        MemberWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; what was seen.
    pub fn finish(mut self) -> MemberWatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the watch thread does not panic")
    }
}

impl Drop for MemberWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The member ids in a `/cluster/nodes` answer.
pub fn member_ids(body: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    value["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A packet filter that drops a share of the UDP datagrams sent to some loopback ports: an
/// nftables table of the test's own, removed on drop.
pub struct PacketDrop {
    table: String,
}

impl PacketDrop {
    /// Drops about `percent` % of the UDP datagrams to `ports`; `None` (and a note on stderr)
    /// when this machine cannot: `nft` missing or not running as root.
    pub fn start(ports: &[u16], percent: u8) -> Option<Self> {
        let table = format!(
            "switchyard_test_{}_{}",
            std::process::id(),
            rand_suffix() % 100_000
        );
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority -10; policy accept; }}\n\
             add rule inet {table} input iif lo udp dport {{ {} }} numgen random mod 100 < {percent} drop\n",
            ports.join(", ")
        );
        let applied = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(script.as_bytes())?;
                child.wait_with_output()
            });
        match applied {
            Ok(output) if output.status.success() => Some(PacketDrop { table }),
            Ok(output) => {
                eprintln!(
                    "note: skipping the packet drop check, nft refused (not root?): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                eprintln!("note: skipping the packet drop check, no nft: {error}");
                None
            }
        }
    }
}

impl Drop for PacketDrop {
    fn drop(&mut self) {
        let removed = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
        if !removed.is_ok_and(|s| s.success()) {
            eprintln!(
                "warning: could not remove nftables table inet {}",
                self.table
            );
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
