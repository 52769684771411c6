//! A login storm through one gateway as real `switchyard` processes (gateway and match server
//! on the default multi-thread runtime): thousands of logins reach the match server while it is
//! starved of CPU (paused with SIGSTOP, so they pile up unread in its connection from the
//! gateway), and every one of them succeeds once it runs again.

mod support;

use std::{collections::BTreeMap, time::Duration};

use client::{Address, Client, ClientConfig};
use futures::future::join_all;
use prost::Message;
use proto::matchmaking::v1::{self as mm, routes};
use support::*;
use tokio::sync::Semaphore;

/// Logins in the storm: far more than h2's small-frame flood guard once took on a connection
/// (about 2,300 unread request frames, before calls shared one link), and more than 4,096 at a
/// time. The test process holds this many client sockets.
const LOGINS: usize = 5_000;

/// Bytes one login puts on the gateway's link to the match server at least (its call: id,
/// route, session, user payload, gateway id).
const MIN_LOGIN_BYTES: u64 = 30;

/// Logins that must wait at the paused match server before it runs again.
const PILED_UP: u64 = 3_000;

fn login(user: &str) -> Vec<u8> {
    mm::Login {
        user_id: user.to_owned(),
        token: String::new(),
    }
    .encode_to_vec()
}

/// A gateway and a match server, the gateway already connected to it.
struct Stack {
    _sandbox: Sandbox,
    _gateway: Service,
    matcher: Service,
    address: Address,
    config: ClientConfig,
}

impl Stack {
    async fn start() -> Self {
        let mut sandbox = Sandbox::new();
        // Paused for seconds, the match server must not be declared gone meanwhile.
        let patient = ["--failure-detection-ms", "30000"];
        let gateway = sandbox.gateway_with(
            "gateway",
            &["--request-timeout-ms", "60000", patient[0], patient[1]],
        );
        let matcher = sandbox.start("logic-match", "match", &patient);
        wait_for_members(&gateway, &["gateway", "match"]).await;
        let stack = Stack {
            address: client_address(&gateway, false),
            config: ClientConfig {
                request_timeout: Duration::from_secs(60),
                heartbeat: None,
                ..ClientConfig::default()
            },
            _sandbox: sandbox,
            _gateway: gateway,
            matcher,
        };
        // One login first, so the gateway's connection to the match server is in place.
        let (probe, _events) = stack.connect().await;
        let answer = probe.request(routes::LOGIN, login("probe")).await;
        assert!(
            answer.as_ref().is_ok_and(|r| r.is_ok()),
            "probe login: {answer:?}"
        );
        stack
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

    stack.matcher.stop();
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
        || testkit::queued_bytes(stack.matcher.grpc) >= PILED_UP * MIN_LOGIN_BYTES,
    )
    .await;
    stack.matcher.signal(Signal::SIGCONT);

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
