//! A small cluster in one test process, on loopback: gateways (the real `gateway::run`),
//! logic servers written with the SDK, and clients from the client library.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Parser;
use client::{Address, Client, ClientConfig, Events, Response};
use logic_sdk::{LogicServer, Reply, RunningLogic};
use mesh::{NodeId, NodeKind};
use runtime::{Listeners, NodeConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "gateway-test-secret";
pub const LOGIN: u32 = proto::route(1, 1);
pub const WHERE: u32 = proto::route(2, 1);
pub const SLOW: u32 = proto::route(2, 2);
pub const SWITCH: u32 = proto::route(2, 3);
pub const ECHO: u32 = proto::route(2, 4);
pub const ATTR: u32 = proto::route(2, 5);

#[allow(unused_imports)] // each test file uses a different part of this module
pub use testkit::eventually;

/// A gateway running in this process.
pub struct TestGateway {
    pub id: NodeId,
    pub ws: String,
    pub tcp: SocketAddr,
    pub gossip: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestGateway {
    /// Starts a gateway; `extra` are more command-line flags (`--idle-timeout-ms`, ...).
    pub async fn start(id: &str, seeds: &[SocketAddr], extra: &[&str]) -> Self {
        let mut args: Vec<String> = ["gateway", "--node-id", id, "--cluster-secret", SECRET]
            .iter()
            .map(ToString::to_string)
            .collect();
        if !extra.contains(&"--cluster-id") {
            args.extend(["--cluster-id", "gw-test"].map(String::from));
        }
        args.extend(
            [
                "--gossip-interval-ms",
                "50",
                "--failure-detection-ms",
                "1000",
                "--load-interval-ms",
                "100",
            ]
            .map(String::from),
        );
        if !extra.contains(&"--drain-grace-ms") {
            args.extend(["--drain-grace-ms", "1000"].map(String::from));
        }
        if !extra.contains(&"--rate-limit") {
            args.extend(["--rate-limit", "0"].map(String::from));
        }
        if !seeds.is_empty() {
            args.push("--seeds".into());
            args.push(
                seeds
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        args.extend(extra.iter().map(ToString::to_string));
        let config = gateway::Config::parse_from(args);
        let listeners = gateway::Listeners::loopback().await.expect("bind");
        let running = gateway::start(config, listeners)
            .await
            .expect("gateway starts");
        let addrs = running.addrs.clone();
        let ws = format!("ws://{}/ws", addrs.ws);
        let tcp = addrs.tcp;
        let (gossip, grpc, admin) = (addrs.node.gossip, addrs.node.grpc, addrs.node.admin);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(running.run(shutdown.clone()));
        let id = NodeId::new(id);
        TestGateway {
            id,
            ws,
            tcp,
            gossip,
            grpc,
            admin,
            shutdown,
            task,
        }
    }

    /// Waits until this gateway sees exactly `count` online nodes of `kind` (from its
    /// `/cluster/nodes` admin endpoint).
    pub async fn wait_for_nodes(&self, kind: &str, count: usize) {
        let admin = self.admin;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let body = tokio::task::spawn_blocking(move || http_get(admin, "/cluster/nodes"))
                .await
                .expect("admin read");
            let seen = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .map(|v| {
                    v["nodes"]
                        .as_array()
                        .map(|nodes| {
                            nodes
                                .iter()
                                .filter(|n| n["kind"] == kind && n["state"] == "online")
                                .count()
                        })
                        .unwrap_or(0)
                });
            if seen == Some(count) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {} never saw {count} online {kind} nodes (saw {seen:?})",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ws_address(&self) -> Address {
        Address::WebSocket(self.ws.clone())
    }

    pub fn tcp_address(&self) -> Address {
        Address::Tcp(self.tcp)
    }

    /// A gRPC channel to the gateway's services, with the cluster credential.
    pub async fn grpc_channel(
        &self,
    ) -> tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor + Clone,
    > {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect to gateway gRPC");
        let key: tonic::metadata::AsciiMetadataValue = SECRET.parse().expect("ascii");
        tonic::service::interceptor::InterceptedService::new(
            channel,
            move |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert(mesh::CREDENTIAL_HEADER, key.clone());
                Ok(request)
            },
        )
    }
}

/// `GET path` on an admin endpoint: the body ("" on failure).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    testkit::http_get(addr, path).1
}

/// A logic node config for tests.
pub fn logic_config(id: &str, seeds: &[SocketAddr]) -> NodeConfig {
    let mut config = NodeConfig::new("logic");
    config.id = NodeId::new(id);
    config.secret = SECRET.into();
    config.gossip.cluster_id = "gw-test".into();
    config.gossip.seeds = seeds.iter().map(ToString::to_string).collect();
    config.gossip.gossip_interval = Duration::from_millis(50);
    config.gossip.failure_detection = Duration::from_secs(1);
    config.load_interval = Duration::from_millis(100);
    config.drain_grace = Duration::from_secs(1);
    config
}

/// A logic server with the test routes: login (public), where (answers its node id), slow,
/// switch (binds "me" to the node named in the payload and answers its own id), echo.
pub fn test_routes(kind: &str) -> LogicServer {
    LogicServer::new(kind)
        .public_route(LOGIN, |_, name| async move {
            Ok(Reply::default().login(String::from_utf8_lossy(&name)))
        })
        .route(WHERE, |ctx, _| async move {
            Ok(Reply::new(ctx.sdk().node_id().to_string()))
        })
        .route(SLOW, |_, millis| async move {
            let ms: u64 = String::from_utf8_lossy(&millis).parse().unwrap_or(300);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Reply::new("slept"))
        })
        .route(SWITCH, |ctx, target| async move {
            let target = NodeId::new(String::from_utf8_lossy(&target).into_owned());
            Ok(Reply::new(ctx.sdk().node_id().to_string())
                .bind_me(logic_sdk::BindMode::Cover, vec![target]))
        })
        .route(ECHO, |_, payload| async move { Ok(Reply::new(payload)) })
        .route(ATTR, |ctx, value| async move {
            // Answers the attribute as this request saw it, then sets it to the payload.
            let seen = ctx.attributes.get("level").cloned().unwrap_or_default();
            Ok(Reply::new(seen).set_attribute("level", String::from_utf8_lossy(&value)))
        })
}

/// Starts a logic server joining through `seeds`.
pub async fn start_logic(server: LogicServer, id: &str, seeds: &[SocketAddr]) -> RunningLogic {
    let listeners = Listeners::loopback().await.expect("bind");
    let running = server
        .start(logic_config(id, seeds), listeners)
        .await
        .expect("logic server starts");
    // Joined: it sees every seed's node (the gateways, usually) besides itself.
    let cluster = running.sdk.cluster().clone();
    let wanted = seeds.len() + 1;
    eventually(
        "the logic server joins the cluster",
        Duration::from_secs(5),
        || cluster.members().len() >= wanted,
    )
    .await;
    running
}

/// Connects and logs in as `user`.
pub async fn login(address: Address, user: &str) -> (Client, Events) {
    let (client, events) = Client::connect(address).await.expect("connect");
    let response = client
        .request(LOGIN, user.to_owned())
        .await
        .expect("login answered");
    assert!(response.is_ok(), "login failed: {response:?}");
    (client, events)
}

/// Connects with a config.
pub async fn connect_with(address: Address, config: ClientConfig) -> (Client, Events) {
    Client::connect_with(address, config)
        .await
        .expect("connect")
}

/// The node a WHERE request landed on.
pub async fn where_am_i(client: &Client) -> Response {
    client.request(WHERE, Bytes::new()).await.expect("answered")
}

pub fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.payload).into_owned()
}

pub fn gateway_kind() -> &'static str {
    NodeKind::GATEWAY
}

/// A raw TCP client with a small receive buffer, logged in as `user` (its login answer read):
/// the client that stops reading in slow-consumer tests. Returns the socket and what it read.
pub async fn raw_logged_in(addr: SocketAddr, user: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(addr).await.expect("connect");
    let login = wire::envelope::encode(&wire::envelope::request(
        1,
        LOGIN,
        Bytes::from(user.to_owned()),
    ));
    let mut framed = (login.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&login);
    stream.write_all(&framed).await.expect("login");
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.expect("login answer");
    answer.truncate(n);
    (stream, answer)
}
