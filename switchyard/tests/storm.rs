//! A login storm through one gateway as real `switchyard` processes (gateway and match server
//! on the default multi-thread runtime): thousands of logins reach the match server while it is
//! starved of CPU (paused with SIGSTOP, so they pile up unread in its connection from the
//! gateway), and every one of them succeeds once it runs again.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use client::{Address, Client, ClientConfig};
use futures::future::join_all;
use prost::Message;
use proto::matchmaking::v1::{self as mm, routes};
use testkit::eventually;
use tokio::sync::Semaphore;

/// Logins in the storm: more than the ~2,300 unread small request frames h2's default budget
/// took before it cut the gateway off with GOAWAY ENHANCE_YOUR_CALM, and more than the 4,096
/// calls a gateway may now have open at the match server (it queues the rest). The test
/// process holds this many client sockets.
const LOGINS: usize = 5_000;

/// Bytes one login puts on the gateway's connection to the match server at least (HEADERS,
/// the message frame, the empty END_STREAM frame).
const MIN_LOGIN_BYTES: u64 = 75;

/// Logins that must wait at the paused match server before it runs again.
const PILED_UP: u64 = 3_000;

/// One `switchyard` service process, killed when dropped.
struct Service {
    child: Child,
    ready: HashMap<String, String>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    async fn start(dir: &std::path::Path, command: &str, args: &[&str]) -> Self {
        let ready = dir.join(format!("{command}.ready"));
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg(command)
            .args(["--cluster-id", &format!("storm-{}", std::process::id())])
            .args(["--cluster-secret", "storm-test-secret"])
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--gossip-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--gossip-interval-ms",
                "50",
            ])
            // Paused for seconds, the match server must not be declared gone meanwhile.
            .args(["--failure-detection-ms", "30000"])
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchyard");
        let ready = testkit::read_ready_file(&ready, Duration::from_secs(20)).await;
        Service { child, ready }
    }

    fn addr(&self, key: &str) -> SocketAddr {
        self.ready[key].parse().expect("address in the ready file")
    }

    fn signal(&self, signal: testkit::Signal) {
        testkit::signal(self.child.id(), signal);
    }
}

/// The gateway's TCP client address, from its record in `/cluster/nodes`.
fn tcp_address(gateway: &Service) -> Address {
    let (_, body) = testkit::http_get(gateway.addr("admin"), "/cluster/nodes");
    let nodes: serde_json::Value = serde_json::from_str(&body).expect("cluster nodes");
    let record = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == nodes["self"])
        .expect("own record")
        .clone();
    let tcp = record["client"]
        .as_str()
        .expect("client addresses")
        .split(',')
        .find_map(|a| a.strip_prefix("tcp://"))
        .expect("a TCP address")
        .parse()
        .expect("TCP address");
    Address::Tcp(tcp)
}

fn login(user: &str) -> Vec<u8> {
    mm::Login {
        user_id: user.to_owned(),
        token: String::new(),
    }
    .encode_to_vec()
}

/// A gateway and a match server, the gateway already connected to it.
struct Stack {
    gateway: Service,
    matcher: Service,
    address: Address,
    config: ClientConfig,
    _dir: TempDir,
}

impl Stack {
    async fn start() -> Self {
        let dir = TempDir::new();
        let gateway = Service::start(
            &dir.0,
            "gateway",
            &[
                "--node-id",
                "gateway",
                "--ws-listen",
                "127.0.0.1:0",
                "--tcp-listen",
                "127.0.0.1:0",
                "--rate-limit",
                "0",
                "--request-timeout-ms",
                "60000",
            ],
        )
        .await;
        let seed = gateway.addr("gossip").to_string();
        let matcher = Service::start(
            &dir.0,
            "logic-match",
            &["--node-id", "match", "--seeds", &seed],
        )
        .await;
        let stack = Stack {
            address: tcp_address(&gateway),
            config: ClientConfig {
                request_timeout: Duration::from_secs(60),
                heartbeat: None,
                ..ClientConfig::default()
            },
            gateway,
            matcher,
            _dir: dir,
        };
        eventually(
            "the gateway sees the match server online",
            Duration::from_secs(20),
            || stack.match_server_online(),
        )
        .await;
        // One login first, so the gateway's connection to the match server is in place.
        let (probe, _events) = stack.connect().await;
        let answer = probe.request(routes::LOGIN, login("probe")).await;
        assert!(
            answer.as_ref().is_ok_and(|r| r.is_ok()),
            "probe login: {answer:?}"
        );
        stack
    }

    fn match_server_online(&self) -> bool {
        let (_, body) = testkit::http_get(self.gateway.addr("admin"), "/cluster/nodes");
        let nodes: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        nodes["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["id"] == "match" && n["state"] == "online")
        })
    }

    async fn connect(&self) -> (Client, client::Events) {
        Client::connect_with(self.address.clone(), self.config.clone())
            .await
            .expect("connect")
    }

    /// `count` connected clients, not logged in.
    async fn players(&self, count: usize) -> Vec<(Client, client::Events)> {
        let connecting = Semaphore::new(256);
        join_all((0..count).map(|_| async {
            let _permit = connecting.acquire().await.expect("semaphore");
            self.connect().await
        }))
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_at_a_starved_match_server_loses_no_login() {
    let stack = Stack::start().await;
    let players = stack.players(LOGINS).await;

    testkit::stop(stack.matcher.child.id());
    let logins = players.iter().enumerate().map(|(i, (client, _))| {
        let client = client.clone();
        async move {
            client
                .request(routes::LOGIN, login(&format!("player-{i}")))
                .await
        }
    });
    let storm = tokio::spawn(join_all(logins));
    eventually(
        "the logins pile up at the match server",
        Duration::from_secs(60),
        || testkit::queued_bytes(stack.matcher.addr("grpc")) >= PILED_UP * MIN_LOGIN_BYTES,
    )
    .await;
    stack.matcher.signal(testkit::Signal::SIGCONT);

    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in storm.await.expect("storm") {
        match outcome {
            Ok(response) if response.is_ok() => {}
            Ok(response) => *failed.entry(format!("{:?}", response.code())).or_default() += 1,
            Err(error) => *failed.entry(error.to_string()).or_default() += 1,
        }
    }
    assert!(
        failed.is_empty(),
        "of {LOGINS} logins these failed: {failed:?}"
    );
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("switchyard-storm-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
