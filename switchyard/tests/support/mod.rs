//! Helpers the real-process tests share: a [`Sandbox`] that starts `switchyard` processes on
//! loopback ports with their own cluster id, the [`Service`] processes, and [`Player`], a
//! logged-in client.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part of this module

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use client::{Address, Client, Event, Events};
use prost::Message;
use proto::{
    matchmaking::v1::{self as mm, routes as match_routes},
    room::v1::{self as room, routes as room_routes},
};

pub use testkit::Signal;
pub use testkit::eventually;

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One service process.
pub struct Service {
    pub child: Child,
    pub admin: SocketAddr,
    pub gossip: SocketAddr,
    pub grpc: SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    pub fn signal(&self, signal: Signal) {
        testkit::signal(self.child.id(), signal);
    }

    /// Pauses the process (SIGSTOP) and returns once all its threads have stopped.
    pub fn stop(&self) {
        testkit::stop(self.child.id());
    }

    /// The member list this service sees (its `/cluster/nodes`).
    pub fn nodes(&self) -> serde_json::Value {
        serde_json::from_str(&testkit::http_get(self.admin, "/cluster/nodes").1).unwrap_or_default()
    }
}

/// A cluster of real processes with its own cluster id.
pub struct Sandbox {
    cluster: String,
    dir: PathBuf,
    seed: Option<SocketAddr>,
    /// Network namespaces the services run in (`start_in`), if any.
    pub net: Option<testkit::Net>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cluster = format!("e2e-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&cluster);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Sandbox {
            cluster,
            dir,
            seed: None,
            net: None,
        }
    }

    /// A sandbox whose services run in the namespaces of `net` (see [`Sandbox::start_in`]).
    pub fn in_net(net: testkit::Net) -> Self {
        let mut sandbox = Sandbox::new();
        sandbox.net = Some(net);
        sandbox
    }

    pub fn start(&mut self, command: &str, id: &str, args: &[&str]) -> Service {
        self.spawn(None, command, id, args)
    }

    /// Starts a service in namespace `ns` of the sandbox's net, listening on its address.
    pub fn start_in(&mut self, ns: usize, command: &str, id: &str, args: &[&str]) -> Service {
        self.spawn(Some(ns), command, id, args)
    }

    /// A gateway in namespace `ns`, clients on its address, with `extra` flags.
    pub fn gateway_in(&mut self, ns: usize, id: &str, extra: &[&str]) -> Service {
        let ip = self.net.as_ref().expect("a sandbox in a net").addr(ns);
        let (ws, tcp) = (format!("{ip}:0"), format!("{ip}:0"));
        let mut args = vec![
            "--ws-listen",
            &ws,
            "--tcp-listen",
            &tcp,
            "--rate-limit",
            "0",
        ];
        args.extend_from_slice(extra);
        self.start_in(ns, "gateway", id, &args)
    }

    fn spawn(&mut self, ns: Option<usize>, command: &str, id: &str, args: &[&str]) -> Service {
        let ready = self.dir.join(format!("{id}.ready"));
        let program = env!("CARGO_BIN_EXE_switchyard");
        let (mut cmd, ip) = match (ns, &self.net) {
            (Some(ns), Some(net)) => (net.command(ns, program), net.addr(ns).to_string()),
            _ => (Command::new(program), "127.0.0.1".to_owned()),
        };
        let any_port = format!("{ip}:0");
        cmd.arg(command)
            .args([
                "--node-id",
                id,
                "--cluster-id",
                &self.cluster,
                "--cluster-secret",
                "e2e-test-secret",
            ])
            .args([
                "--grpc-listen",
                &any_port,
                "--gossip-listen",
                &any_port,
                "--admin-listen",
                &any_port,
            ])
            .args(["--gossip-interval-ms", "50", "--load-interval-ms", "100"])
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(seed) = self.seed {
            cmd.args(["--seeds", &seed.to_string()]);
        } else if command != "gateway" {
            panic!("start a gateway first: it is the seed");
        }
        let child = cmd.spawn().expect("spawn switchyard");
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break text;
            }
            assert!(Instant::now() < deadline, "{id} never became ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        let kv: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let service = Service {
            child,
            admin: kv["admin"].parse().expect("admin"),
            gossip: kv["gossip"].parse().expect("gossip"),
            grpc: kv["grpc"].parse().expect("grpc"),
        };
        if self.seed.is_none() {
            self.seed = Some(service.gossip);
        }
        service
    }

    pub fn gateway(&mut self, id: &str) -> Service {
        self.gateway_with(id, &[])
    }

    /// A gateway on free client ports, without a rate limit, with `extra` flags.
    pub fn gateway_with(&mut self, id: &str, extra: &[&str]) -> Service {
        let mut args = vec![
            "--ws-listen",
            "127.0.0.1:0",
            "--tcp-listen",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
        ];
        args.extend_from_slice(extra);
        self.start("gateway", id, &args)
    }
}

/// Waits until `service` sees member `id` in `state` (`online`, `offline`).
pub async fn wait_for_state(service: &Service, id: &str, state: &str) {
    eventually(&format!("{id} {state}"), Duration::from_secs(10), || {
        service.nodes()["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().any(|n| n["id"] == id && n["state"] == state))
    })
    .await;
}

/// Waits until `service` sees the given online members by id.
pub async fn wait_for_members(service: &Service, ids: &[&str]) {
    eventually(&format!("members {ids:?}"), Duration::from_secs(10), || {
        let nodes = service.nodes();
        let online: Vec<String> = nodes["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter(|n| n["state"] == "online")
                    .filter_map(|n| n["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        ids.iter().all(|id| online.iter().any(|o| o == id))
    })
    .await;
}

/// The gateway's client addresses, as it announces them.
pub fn client_address(gateway: &Service, ws: bool) -> Address {
    let nodes = gateway.nodes();
    let me = nodes["self"].as_str().expect("self").to_owned();
    let record = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == me.as_str())
        .expect("own record")
        .clone();
    let addresses = record["client"]
        .as_str()
        .expect("client addresses")
        .to_owned();
    let pick = addresses
        .split(',')
        .find(|a| a.starts_with(if ws { "ws://" } else { "tcp://" }))
        .expect("address")
        .to_owned();
    if ws {
        Address::WebSocket(pick)
    } else {
        Address::Tcp(pick.trim_start_matches("tcp://").parse().expect("tcp"))
    }
}

pub struct Player {
    pub name: String,
    pub client: Client,
    pub events: Events,
}

impl Player {
    pub async fn login(address: Address, name: &str) -> Player {
        let (client, events) = Client::connect(address).await.expect("connect");
        let login = mm::Login {
            user_id: name.to_owned(),
            token: String::new(),
        };
        let response = client
            .request(match_routes::LOGIN, login.encode_to_vec())
            .await
            .expect("answered");
        assert!(response.is_ok(), "login {name}: {response:?}");
        Player {
            name: name.to_owned(),
            client,
            events,
        }
    }

    pub async fn enqueue(&self, mode: &str) {
        let response = self
            .client
            .request(
                match_routes::ENQUEUE,
                mm::Enqueue { mode: mode.into() }.encode_to_vec(),
            )
            .await
            .expect("answered");
        assert!(response.is_ok(), "{} enqueue: {response:?}", self.name);
    }

    pub async fn push(&mut self, route: u32) -> Bytes {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), self.events.next()).await;
            match event.unwrap_or_else(|_| panic!("{}: no push {route:#x} within 10 s", self.name))
            {
                Some(Event::Push(push)) if push.route == route => return push.payload,
                Some(Event::Disconnected { reason }) | Some(Event::Kicked { reason, .. }) => {
                    panic!("{} disconnected: {reason}", self.name)
                }
                Some(_) => {}
                None => panic!("{}: events ended", self.name),
            }
        }
    }

    pub async fn matched(&mut self) -> mm::MatchFound {
        mm::MatchFound::decode(self.push(match_routes::PUSH_MATCH_FOUND).await).expect("decodes")
    }

    pub async fn op(&self, room_id: &str, text: &str) -> u64 {
        let response = self.try_op(room_id, text).await;
        assert!(response.is_ok(), "{} op: {response:?}", self.name);
        room::OpAccepted::decode(response.payload)
            .expect("decodes")
            .seq
    }

    /// Creates a room and joins it; the room's info.
    pub async fn create_room(&self) -> room::RoomInfo {
        let response = self.try_create_room().await;
        assert!(response.is_ok(), "{} create: {response:?}", self.name);
        room::RoomInfo::decode(response.payload).expect("decodes")
    }

    /// Asks for a new room; the whole response (for tests of refusals).
    pub async fn try_create_room(&self) -> client::Response {
        self.client
            .request(
                room_routes::CREATE,
                room::CreateRoom::default().encode_to_vec(),
            )
            .await
            .expect("answered")
    }

    pub async fn join_room(&self, room_id: &str) {
        let join = room::JoinRoom {
            room_id: room_id.to_owned(),
        };
        let response = self
            .client
            .request(room_routes::JOIN, join.encode_to_vec())
            .await
            .expect("answered");
        assert!(response.is_ok(), "{} join: {response:?}", self.name);
    }

    /// Sends a room operation; the whole response (for tests of failures).
    pub async fn try_op(&self, room_id: &str, text: &str) -> client::Response {
        let op = room::RoomOp {
            room_id: room_id.into(),
            payload: Bytes::from(text.to_owned()),
        };
        self.client
            .request(room_routes::OP, op.encode_to_vec())
            .await
            .expect("answered")
    }

    pub async fn ops_seen(&mut self, count: usize) -> Vec<(u64, String)> {
        let mut seen = Vec::new();
        while seen.len() < count {
            let event =
                room::RoomOpEvent::decode(self.push(room_routes::PUSH_OP).await).expect("decodes");
            seen.push((
                event.seq,
                String::from_utf8_lossy(&event.payload).into_owned(),
            ));
        }
        seen
    }
}
