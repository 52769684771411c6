//! Routing and bindings through a real gateway: login required, unknown routes, bind modes
//! changing where requests land, "me" bindings, dead and draining nodes, disconnects.

mod support;

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use client::{Address, ErrorCode};
use mesh::NodeId;
use proto::{gateway::v1 as pb, logic::v1::BindMode};
use support::*;

async fn bind(
    gateway: &TestGateway,
    mode: BindMode,
    users: &[&str],
    nodes: &[&str],
) -> Result<pb::UserResults, tonic::Status> {
    let mut client = pb::gateway_client::GatewayClient::new(gateway.grpc_channel().await);
    let request = pb::BindRequest {
        mode: mode as i32,
        user_ids: users.iter().map(ToString::to_string).collect(),
        node_ids: nodes.iter().map(ToString::to_string).collect(),
        local_only: false,
        ..Default::default()
    };
    client.bind(request).await.map(tonic::Response::into_inner)
}

/// Where 20 requests in a row land.
async fn landings(client: &client::Client) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let response = where_am_i(client).await;
        assert!(response.is_ok(), "{response:?}");
        seen.insert(text(&response));
    }
    seen
}

fn set(nodes: &[&str]) -> HashSet<String> {
    nodes.iter().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_login_and_to_unknown_routes_are_answered_by_the_gateway() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _logic = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    for address in [gateway.ws_address(), gateway.tcp_address()] {
        let (client, _events) = client::Client::connect(address.clone())
            .await
            .expect("connect");
        let response = where_am_i(&client).await;
        assert_eq!(
            response.code(),
            Some(ErrorCode::LoginRequired),
            "{address}: {response:?}"
        );
        // An unknown route before login is LOGIN_REQUIRED too: anonymous clients cannot list
        // the routes that exist by probing.
        let response = client
            .request(proto::route(77, 7), Bytes::new())
            .await
            .expect("answered");
        assert_eq!(response.code(), Some(ErrorCode::LoginRequired), "{address}");
        // The connection stays open: log in and the same request goes through.
        assert!(
            client
                .request(LOGIN, "ann")
                .await
                .expect("answered")
                .is_ok()
        );
        assert_eq!(text(&where_am_i(&client).await), "l1");
        let response = client
            .request(proto::route(77, 7), Bytes::new())
            .await
            .expect("answered");
        assert_eq!(
            response.code(),
            Some(ErrorCode::RouteNotFound),
            "{address} after login"
        );
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_cover_remove_and_clear_change_where_requests_land() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _l1 = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    let _l2 = start_logic(test_routes("room"), "l2", &[gateway.gossip]).await;
    let _l3 = start_logic(test_routes("room"), "l3", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 3).await;
    for (address, user) in [
        (gateway.ws_address(), "ws-user"),
        (gateway.tcp_address(), "tcp-user"),
    ] {
        let (client, _events) = login(address, user).await;

        let results = bind(&gateway, BindMode::Cover, &[user], &["l2"])
            .await
            .expect("bind");
        assert_eq!(results.results[0].outcome, pb::Outcome::Applied as i32);
        assert_eq!(results.results[0].gateway_node, "gw");
        assert_eq!(landings(&client).await, set(&["l2"]), "COVER [l2]");

        bind(&gateway, BindMode::Append, &[user], &["l3"])
            .await
            .expect("bind");
        assert_eq!(
            landings(&client).await,
            set(&["l2"]),
            "APPEND [l3]: l2 is still first in bind order"
        );

        bind(&gateway, BindMode::Remove, &[user], &["l2"])
            .await
            .expect("bind");
        assert_eq!(landings(&client).await, set(&["l3"]), "REMOVE [l2]");

        bind(&gateway, BindMode::Cover, &[user], &["l1", "l3"])
            .await
            .expect("bind");
        assert_eq!(landings(&client).await, set(&["l1"]), "COVER [l1, l3]");

        bind(&gateway, BindMode::Clear, &[user], &[])
            .await
            .expect("bind");
        let mut spread = HashSet::new();
        for _ in 0..5 {
            spread.extend(landings(&client).await);
        }
        assert!(
            spread.len() > 1,
            "CLEAR: unbound requests are balanced, landed on {spread:?}"
        );
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_binds_me_routes_the_very_next_request_1000_times_in_a_row() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _l1 = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    let _l2 = start_logic(test_routes("room"), "l2", &[gateway.gossip]).await;
    let _l3 = start_logic(test_routes("room"), "l3", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 3).await;
    let (client, _events) = login(gateway.tcp_address(), "hopper").await;
    let ring = ["l1", "l2", "l3"];
    let mut target = "l2";
    for i in 0..1000 {
        // The node handling SWITCH binds us to `target` in its response...
        let response = client.request(SWITCH, target).await.expect("answered");
        assert!(response.is_ok(), "switch {i}: {response:?}");
        // ...so the very next request must land there.
        let landed = text(&where_am_i(&client).await);
        assert_eq!(landed, target, "request {i} missed the new binding");
        target = ring[(i + 2) % 3];
    }
}

/// One failure, one code: a bound node that died answers `UPSTREAM_FAILED` (unreachable) while
/// it is still a member, and the binding stays; once membership confirms it gone, the request
/// is answered `BOUND_NODE_UNAVAILABLE` and the binding is dropped; then requests go elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_node_that_dies_is_unreachable_then_gone_and_only_then_unbound() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _l1 = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    let l2 = start_logic(test_routes("room"), "l2", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 2).await;
    let (client, _events) = login(gateway.ws_address(), "una").await;
    bind(&gateway, BindMode::Cover, &["una"], &["l2"])
        .await
        .expect("bind");
    assert_eq!(text(&where_am_i(&client).await), "l2");

    // Dead, but not yet declared dead (failure detection is 1 s in these tests).
    l2.node.abort().await;
    for _ in 0..2 {
        let response = where_am_i(&client).await;
        assert_eq!(
            response.code(),
            Some(ErrorCode::UpstreamFailed),
            "unreachable, binding kept: {response:?}"
        );
    }
    gateway.wait_for_nodes("room", 1).await;
    let response = where_am_i(&client).await;
    assert_eq!(
        response.code(),
        Some(ErrorCode::BoundNodeUnavailable),
        "gone: {response:?}"
    );
    // The binding is gone: the next request is routed normally, to the surviving node.
    assert_eq!(text(&where_am_i(&client).await), "l1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_route_goes_to_another_node_once_the_bound_one_is_gone() {
    let gateway = TestGateway::start("gw", &[], &["--fallback-routes", "2:1"]).await;
    let _l1 = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    let l2 = start_logic(test_routes("room"), "l2", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 2).await;
    let (client, _events) = login(gateway.tcp_address(), "wes").await;
    bind(&gateway, BindMode::Cover, &["wes"], &["l2"])
        .await
        .expect("bind");
    assert_eq!(text(&where_am_i(&client).await), "l2");
    l2.node.abort().await;
    gateway.wait_for_nodes("room", 1).await;
    let response = where_am_i(&client).await;
    assert!(response.is_ok(), "{response:?}");
    assert_eq!(text(&response), "l1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_gets_no_new_unbound_requests_but_keeps_its_bound_users() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _l1 = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    let l2 = start_logic(test_routes("room"), "l2", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 2).await;
    let (bound_client, _e1) = login(gateway.ws_address(), "bound").await;
    let (free_client, _e2) = login(gateway.ws_address(), "free").await;
    bind(&gateway, BindMode::Cover, &["bound"], &["l2"])
        .await
        .expect("bind");

    l2.sdk.cluster().go_offline().await;
    gateway.wait_for_nodes("room", 1).await;
    for _ in 0..5 {
        assert_eq!(
            landings(&free_client).await,
            set(&["l1"]),
            "unbound requests avoid the draining node"
        );
    }
    assert_eq!(
        landings(&bound_client).await,
        set(&["l2"]),
        "a bound user stays on its draining node"
    );
    // New bindings to a draining node are refused.
    let refused = bind(&gateway, BindMode::Cover, &["free"], &["l2"])
        .await
        .expect_err("draining");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_clears_the_bindings_and_tells_the_bound_node() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _l1 = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = test_routes("room").on_session_closed(move |closed, _| {
        let closed_tx = closed_tx.clone();
        async move {
            let _ = closed_tx.send(closed);
        }
    });
    let l2 = start_logic(watcher, "l2", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 2).await;

    let (client, _events) = login(gateway.tcp_address(), "dora").await;
    bind(&gateway, BindMode::Cover, &["dora"], &["l2"])
        .await
        .expect("bind");
    assert_eq!(text(&where_am_i(&client).await), "l2");
    client.close().await;
    let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("notice")
        .expect("open");
    assert_eq!(closed.user_id.as_deref(), Some("dora"));
    assert_eq!(closed.gateway, NodeId::new("gw"));

    // Reconnected, the user has no binding: with l2 draining, a bound user would still land
    // there; an unbound one cannot.
    l2.sdk.cluster().go_offline().await;
    gateway.wait_for_nodes("room", 1).await;
    let (client, _events) = login(gateway.tcp_address(), "dora").await;
    assert_eq!(landings(&client).await, set(&["l1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_to_unknown_nodes_is_refused_with_a_clear_error() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _l1 = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    let (_client, _events) = login(gateway.tcp_address(), "zed").await;
    let error = bind(&gateway, BindMode::Cover, &["zed"], &["l1", "nope", "nada"])
        .await
        .expect_err("refused");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert_eq!(error.message(), "unknown node ids: nope, nada");
    // The SDK refuses before sending anything.
    let sdk_error = _l1
        .sdk
        .bind(
            logic_sdk::BindMode::Append,
            &["zed".into()],
            &[NodeId::new("ghost")],
        )
        .await;
    assert_eq!(
        sdk_error,
        Err(logic_sdk::SdkError::UnknownNodes(vec![NodeId::new(
            "ghost"
        )]))
    );
    // A user who is not connected is reported as such.
    let results = bind(&gateway, BindMode::Cover, &["nobody"], &["l1"])
        .await
        .expect("bind");
    assert_eq!(results.results[0].outcome, pb::Outcome::NotOnline as i32);
    let _ = Address::Tcp(gateway.tcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_set_by_a_logic_server_reach_the_next_requests_on_any_node() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _l1 = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    let _l2 = start_logic(test_routes("room"), "l2", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 2).await;
    let (client, _events) = login(gateway.ws_address(), "attr").await;
    assert_eq!(
        text(&client.request(ATTR, "5").await.expect("answered")),
        ""
    );
    for _ in 0..10 {
        // Whichever node answers sees what the previous one set.
        assert_eq!(
            text(&client.request(ATTR, "5").await.expect("answered")),
            "5"
        );
    }
    client.request(ATTR, "").await.expect("answered"); // an empty value removes it
    assert_eq!(
        text(&client.request(ATTR, "6").await.expect("answered")),
        ""
    );
}

/// One session's requests to one node are applied in the order they were sent, even when
/// the client pipelines them (all written at once, none awaited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_of_one_session_are_applied_in_the_order_sent() {
    use std::sync::{Arc, Mutex};
    const SEEN: u32 = proto::route(2, 9);
    let gateway = TestGateway::start("gw", &[], &["--max-in-flight", "64"]).await;
    // The handler sleeps a random while before it records the request, as a handler that
    // awaits something would: without per-session order, later requests overtake.
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let recorder = seen.clone();
    let server = test_routes("room").route(SEEN, move |_, payload| {
        let seen = recorder.clone();
        async move {
            let n: u32 = String::from_utf8_lossy(&payload).parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_micros(u64::from((n * 7919) % 3000))).await;
            seen.lock().expect("seen").push(n);
            Ok(logic_sdk::Reply::default())
        }
    });
    let _logic = start_logic(server, "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    // All 45 written back to back in one write, none awaited.
    let (mut raw, _) = raw_logged_in(gateway.tcp, "piper").await;
    let mut frames = Vec::new();
    for n in 1..=45u32 {
        let request = wire::envelope::encode(&wire::envelope::request(
            n + 1,
            SEEN,
            Bytes::from(n.to_string()),
        ));
        frames.extend_from_slice(&(request.len() as u32).to_be_bytes());
        frames.extend_from_slice(&request);
    }
    tokio::io::AsyncWriteExt::write_all(&mut raw, &frames)
        .await
        .expect("write");
    let recorded = seen.clone();
    testkit::eventually("every request handled", Duration::from_secs(10), || {
        recorded.lock().expect("seen").len() == 45
    })
    .await;
    let seen = seen.lock().expect("seen").clone();
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=45).collect::<Vec<_>>(),
        "every request handled once"
    );
    let inversions = seen.windows(2).filter(|w| w[0] > w[1]).count();
    assert_eq!(inversions, 0, "handled out of order: {seen:?}");
}
