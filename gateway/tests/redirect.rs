//! Placement across gateways: a full gateway, or one much busier than another, redirects a new
//! client on its first request to a gateway with room; the client library follows once and
//! logs in there; a redirected client is never sent on (two full gateways refuse with
//! GATEWAY_FULL instead of bouncing it).

mod support;

use std::time::Duration;

use client::{Address, Client, ClientConfig, ErrorCode, Session, SessionConfig, SessionEvent};
use support::*;

/// Two gateways (flags for each) and a logic node with the login route.
async fn pair(
    a_flags: &[&str],
    b_flags: &[&str],
) -> (TestGateway, TestGateway, logic_sdk::RunningLogic) {
    let a = TestGateway::start("gw-a", &[], a_flags).await;
    let b = TestGateway::start("gw-b", &[a.gossip], b_flags).await;
    let logic = start_logic(test_routes("room"), "r1", &[a.gossip]).await;
    for gateway in [&a, &b] {
        gateway.wait_for_nodes("room", 1).await;
        gateway.wait_for_nodes(gateway_kind(), 2).await;
    }
    (a, b, logic)
}

/// Waits until `gateway` sees `other` holding `sessions` sessions (its gossiped load).
async fn sees_load(gateway: &TestGateway, other: &TestGateway, sessions: u64) {
    let id = other.id.to_string();
    eventually(
        &format!("{} sees {id} with {sessions} sessions", gateway.id),
        Duration::from_secs(5),
        || {
            let nodes: serde_json::Value =
                serde_json::from_str(&http_get(gateway.admin, "/cluster/nodes"))
                    .unwrap_or_default();
            nodes["nodes"].as_array().is_some_and(|nodes| {
                nodes.iter().any(|n| {
                    n["id"] == id.as_str() && n["load"]["sessions"].as_u64() == Some(sessions)
                })
            })
        },
    )
    .await;
}

/// A login's answer on a fresh connection with `config`.
async fn try_login(address: Address, config: ClientConfig, user: &str) -> client::Response {
    let (client, _events) = Client::connect_with(address, config)
        .await
        .expect("connect");
    client
        .request(LOGIN, user.to_owned())
        .await
        .expect("answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_redirects_a_new_client_and_the_library_logs_in_there() {
    // Margin 0: only a full gateway redirects.
    let (a, b, logic) = pair(&["--max-sessions", "2", "--redirect-margin", "0"], &[]).await;
    let _first = login(a.tcp_address(), "first").await;
    let _second = login(a.tcp_address(), "second").await;

    // The plain client sees the redirect: nothing was applied, go to B.
    let answer = try_login(a.tcp_address(), ClientConfig::default(), "third").await;
    assert_eq!(answer.code(), Some(ErrorCode::Redirected), "{answer:?}");
    assert!(
        answer
            .redirect
            .iter()
            .any(|r| r == &format!("tcp://{}", b.tcp)),
        "{answer:?}"
    );
    let presence = logic
        .sdk
        .presence(&["third".to_owned()])
        .await
        .expect("presence");
    assert!(presence.is_empty(), "no login happened on the full gateway");

    // The library follows it: one hop, and the login happens on B.
    let (session, mut events, answer) =
        Session::login([a.tcp_address()], SessionConfig::default(), LOGIN, "third")
            .await
            .expect("logs in");
    assert!(answer.is_ok(), "{answer:?}");
    match events.next().await {
        Some(SessionEvent::Connected {
            address,
            reconnect: false,
            ..
        }) => {
            assert_eq!(address, b.tcp_address(), "connected to B");
        }
        other => panic!("{other:?}"),
    }
    let presence = logic
        .sdk
        .presence(&["third".to_owned()])
        .await
        .expect("presence");
    assert_eq!(presence.get("third").map(|p| &p.0), Some(&b.id));
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_full_gateways_refuse_a_new_client_instead_of_bouncing_it() {
    let (a, b, _logic) = pair(&["--max-sessions", "1"], &["--max-sessions", "1"]).await;
    let _on_a = login(a.tcp_address(), "on-a").await;
    let _on_b = login(b.tcp_address(), "on-b").await;
    sees_load(&a, &b, 1).await;

    // Nobody has room: refused, not redirected.
    let answer = try_login(a.tcp_address(), ClientConfig::default(), "late").await;
    assert_eq!(answer.code(), Some(ErrorCode::GatewayFull), "{answer:?}");
    // A client redirected here (by a gateway whose view was stale) is refused, never sent on.
    let redirected = ClientConfig {
        redirected: true,
        ..ClientConfig::default()
    };
    let answer = try_login(b.tcp_address(), redirected, "late").await;
    assert_eq!(answer.code(), Some(ErrorCode::GatewayFull), "{answer:?}");
    // The library gives up with the same code: one attempt per address, no loop.
    let (_session, _events, answer) = Session::login(
        [a.tcp_address(), b.tcp_address()],
        SessionConfig::default(),
        LOGIN,
        "late",
    )
    .await
    .expect("answered");
    assert_eq!(answer.code(), Some(ErrorCode::GatewayFull), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_much_busier_gateway_sends_new_clients_to_the_emptier_one() {
    // Capacity 4 each, margin 0.25: at 2 of 4 here (0.5) against 0 of 4 there, a new client
    // goes there; at 2 against 1 (0.5 against 0.25) it stays.
    let flags = ["--max-sessions", "4", "--redirect-margin", "0.25"];
    let (a, b, _logic) = pair(&flags, &flags).await;
    let _one = login(a.tcp_address(), "one").await;
    let _two = login(a.tcp_address(), "two").await;
    sees_load(&a, &b, 0).await;
    let answer = try_login(a.tcp_address(), ClientConfig::default(), "three").await;
    assert_eq!(answer.code(), Some(ErrorCode::Redirected), "{answer:?}");
    let _three = login(b.tcp_address(), "three").await;
    sees_load(&a, &b, 1).await;
    let stays = try_login(a.tcp_address(), ClientConfig::default(), "four").await;
    assert!(stays.is_ok(), "within the margin: served here: {stays:?}");
}
