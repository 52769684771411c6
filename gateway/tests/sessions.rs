//! Sessions: duplicate logins across gateways, slow clients, rate limits, heartbeats and idle
//! timeouts, drain, and the gateway service (push, kick, presence) used through the SDK.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{ClientConfig, ErrorCode, Event};
use logic_sdk::{LogicServer, Recipient, Reply, UserOutcome};
use mesh::{HandlerError, NodeId};
use support::*;

const PUSH_TO: u32 = proto::route(3, 1);
const FLOOD: u32 = proto::route(3, 2);
const KICK: u32 = proto::route(3, 3);

/// Test routes plus: push to the users named in the payload; flood a user with pushes; kick.
fn pushing_routes() -> LogicServer {
    test_routes("room")
        .route(PUSH_TO, |ctx, users| async move {
            let users: Vec<Recipient> = String::from_utf8_lossy(&users)
                .split(',')
                .map(Recipient::from)
                .collect();
            let report = ctx
                .sdk()
                .push(users, PUSH_TO, "hello")
                .await
                .map_err(|e| logic_sdk::LogicError::internal(e.to_string()))?;
            let reached = report
                .users
                .values()
                .filter(|o| matches!(o, UserOutcome::Applied(_)))
                .count();
            Ok(Reply::new(reached.to_string()))
        })
        .route(FLOOD, |ctx, user| async move {
            let user = String::from_utf8_lossy(&user).into_owned();
            // 25 MB: more than loopback socket buffers hold, so a client that does not read
            // backs the gateway's queue up.
            let chunk = Bytes::from(vec![0u8; 64 * 1024]);
            for _ in 0..400 {
                let _ = ctx
                    .sdk()
                    .push([Recipient::from(user.as_str())], FLOOD, chunk.clone())
                    .await;
            }
            Ok(Reply::default())
        })
        .route(KICK, |ctx, user| async move {
            let user = String::from_utf8_lossy(&user).into_owned();
            let report = ctx
                .sdk()
                .kick(&[user], "banned for testing")
                .await
                .map_err(|e| logic_sdk::LogicError::internal(e.to_string()))?;
            Ok(Reply::new(format!("{}", report.all_applied())))
        })
}

async fn next_kick(events: &mut client::Events) -> (u32, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event")
        {
            Some(Event::Kicked { code, reason }) => return (code, reason),
            Some(Event::Disconnected { reason }) => panic!("disconnected without a kick: {reason}"),
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_kicks_the_older_session_on_any_gateway() {
    let g1 = TestGateway::start("g1", &[], &[]).await;
    let g2 = TestGateway::start("g2", &[g1.gossip], &[]).await;
    let _logic = start_logic(test_routes("room"), "l1", &[g1.gossip]).await;
    g1.wait_for_nodes("room", 1).await;
    g2.wait_for_nodes("room", 1).await;
    g1.wait_for_nodes("gateway", 2).await;
    g2.wait_for_nodes("gateway", 2).await;

    let (_first, mut first_events) = login(g1.tcp_address(), "alice").await;
    let (second, mut second_events) = login(g1.ws_address(), "alice").await;
    let (code, _) = next_kick(&mut first_events).await;
    assert_eq!(code, ErrorCode::LoggedInElsewhere as u32, "same gateway");
    assert!(where_am_i(&second).await.is_ok(), "the new session works");

    let (third, _third_events) = login(g2.ws_address(), "alice").await;
    let (code, reason) = next_kick(&mut second_events).await;
    assert_eq!(
        code,
        ErrorCode::LoggedInElsewhere as u32,
        "other gateway: {reason}"
    );
    assert!(where_am_i(&third).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_while_others_keep_flowing() {
    let gateway = TestGateway::start(
        "gw",
        &[],
        &[
            "--outbound-queue-bytes",
            "65536",
            "--slow-consumer-ms",
            "1000",
        ],
    )
    .await;
    let logic = start_logic(pushing_routes(), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    // The stuck client: a raw socket with a small receive buffer that logs in, then never reads.
    let (_stuck, _) = raw_logged_in(gateway.tcp, "stuck").await;
    let (busy, _busy_events) = login(gateway.ws_address(), "busy").await;

    let flood = {
        let busy = busy.clone();
        tokio::spawn(async move { busy.request(FLOOD, "stuck").await })
    };
    // Meanwhile, the other client's requests keep being answered.
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(800) {
        let response = busy.request(ECHO, "ping").await.expect("answered");
        assert!(response.is_ok());
        answered += 1;
    }
    assert!(
        answered >= 5,
        "only {answered} requests answered while another client was stuck"
    );
    assert!(flood.await.expect("task").expect("answered").is_ok());
    let presence = logic
        .sdk
        .presence(&["stuck".into(), "busy".into()])
        .await
        .expect("presence");
    assert!(
        !presence.contains_key("stuck"),
        "the stuck client was dropped"
    );
    assert!(presence.contains_key("busy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_limit_are_refused_and_the_connection_stays() {
    let gateway = TestGateway::start("gw", &[], &["--rate-limit", "5", "--rate-burst", "5"]).await;
    let _logic = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    let (client, _events) = login(gateway.tcp_address(), "spammer").await;
    let mut limited = 0;
    for _ in 0..20 {
        let response = client.request(ECHO, "x").await.expect("answered");
        if response.code() == Some(ErrorCode::RateLimited) {
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited} of 20 limited");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        client.request(ECHO, "x").await.expect("answered").is_ok(),
        "tokens come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_connection_and_silence_ends_it() {
    let gateway = TestGateway::start("gw", &[], &["--idle-timeout-ms", "400"]).await;
    let _logic = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    let beating = ClientConfig {
        heartbeat: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let silent = ClientConfig {
        heartbeat: None,
        ..Default::default()
    };
    let (alive, _alive_events) = connect_with(gateway.ws_address(), beating).await;
    let (_quiet, mut quiet_events) = connect_with(gateway.tcp_address(), silent).await;
    let (code, _) = next_kick(&mut quiet_events).await;
    assert_eq!(code, ErrorCode::IdleTimeout as u32);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        alive
            .request(LOGIN, "still")
            .await
            .expect("answered")
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_tells_clients_then_closes_them_and_refuses_new_ones() {
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let _logic = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    let (client, mut events) = login(gateway.tcp_address(), "stayer").await;
    gateway.shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(3), events.next())
        .await
        .expect("event")
    {
        Some(Event::Offline { grace }) => assert!(grace > Duration::ZERO),
        other => panic!("expected the offline notice, got {other:?}"),
    }
    // Still served while draining.
    assert!(client.request(ECHO, "x").await.expect("answered").is_ok());
    // A new connection is refused with SERVER_DRAINING.
    let (_late, mut late_events) = client::Client::connect(gateway.tcp_address())
        .await
        .expect("connect");
    let (code, _) = next_kick(&mut late_events).await;
    assert_eq!(code, ErrorCode::ServerDraining as u32);
    // At the end of the grace period the remaining session is closed with a reason.
    let (code, _) = next_kick(&mut events).await;
    assert_eq!(code, ErrorCode::ServerDraining as u32);
    tokio::time::timeout(Duration::from_secs(10), gateway.task)
        .await
        .expect("gateway stops")
        .expect("task")
        .expect("clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logic_servers_push_kick_and_find_users_on_every_gateway() {
    let g1 = TestGateway::start("g1", &[], &[]).await;
    let g2 = TestGateway::start("g2", &[g1.gossip], &[]).await;
    let logic = start_logic(pushing_routes(), "l1", &[g1.gossip]).await;
    for g in [&g1, &g2] {
        g.wait_for_nodes("room", 1).await;
        g.wait_for_nodes("gateway", 2).await;
    }
    let (a, mut a_events) = login(g1.tcp_address(), "a").await;
    let (_b, mut b_events) = login(g2.ws_address(), "b").await;
    let (_c, mut c_events) = login(g2.tcp_address(), "c").await;

    let reached = a.request(PUSH_TO, "a,b,c,nobody").await.expect("answered");
    assert_eq!(text(&reached), "3");
    for events in [&mut a_events, &mut b_events, &mut c_events] {
        let push = tokio::time::timeout(Duration::from_secs(3), events.next_push())
            .await
            .expect("push")
            .expect("open");
        assert_eq!(
            (push.route, push.seq, &push.payload[..]),
            (PUSH_TO, 1, &b"hello"[..])
        );
    }
    // Second push: sequence numbers go on without gaps.
    a.request(PUSH_TO, "b").await.expect("answered");
    let push = tokio::time::timeout(Duration::from_secs(3), b_events.next_push())
        .await
        .expect("push")
        .expect("open");
    assert_eq!(push.seq, 2);

    let presence = logic
        .sdk
        .presence(&["a".into(), "b".into(), "nobody".into()])
        .await
        .expect("presence");
    assert_eq!(
        presence.get("a").map(|p| p.0.clone()),
        Some(NodeId::new("g1"))
    );
    assert_eq!(
        presence.get("b").map(|p| p.0.clone()),
        Some(NodeId::new("g2"))
    );
    assert!(!presence.contains_key("nobody"));

    let kicked = a.request(KICK, "c").await.expect("answered");
    assert_eq!(text(&kicked), "true");
    let (code, reason) = next_kick(&mut c_events).await;
    assert_eq!(
        (code, reason.as_str()),
        (ErrorCode::Kicked as u32, "banned for testing")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_multiple_response_names_the_nodes_that_failed() {
    const LOAD: u32 = 0x2001;
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let asker = start_logic(LogicServer::new("match"), "asker", &[gateway.gossip]).await;
    let mut rooms = Vec::new();
    for (i, behaviour) in ["fast", "fails", "slow", "fast"].iter().enumerate() {
        let room = start_logic(
            LogicServer::new("room"),
            &format!("room-{i}"),
            &[gateway.gossip],
        )
        .await;
        let behaviour = *behaviour;
        room.sdk.mesh().handle(LOAD, move |_, _| async move {
            match behaviour {
                "fails" => Err(HandlerError::new(500, "disk on fire")),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Ok(Bytes::from_static(b"late"))
                }
                _ => Ok(Bytes::from_static(b"7")),
            }
        });
        rooms.push(room);
    }
    let cluster = asker.sdk.cluster().clone();
    eventually(
        "the asker sees four room servers",
        Duration::from_secs(5),
        || {
            cluster
                .nodes_by_kind("room")
                .iter()
                .filter(|n| n.is_online())
                .count()
                == 4
        },
    )
    .await;
    let answer = asker
        .sdk
        .call_kind("room", LOAD, Bytes::new(), Duration::from_millis(300))
        .await;
    let answered: Vec<&str> = answer.replies.iter().map(|(n, _)| n.id.as_str()).collect();
    let failed: Vec<&str> = answer.failed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(answered, vec!["room-0", "room-3"]);
    assert_eq!(failed, vec!["room-1", "room-2"]);
    assert!(matches!(
        answer.failed[0].1,
        mesh::MeshError::Handler { code: 500, .. }
    ));
    assert!(matches!(
        answer.failed[1].1,
        mesh::MeshError::Timeout { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_service_is_discoverable_by_reflection() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let gateway = TestGateway::start("gw", &[], &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reply")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "switchyard.gateway.v1.Gateway",
        "switchyard.mesh.v1.Mesh",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_without_closing_ends_its_session_when_the_resume_window_passes() {
    let gateway = TestGateway::start("gw", &[], &["--resume-window-ms", "300"]).await;
    let logic = start_logic(pushing_routes(), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    let (client, events) = login(gateway.tcp_address(), "leaver").await;
    let online = logic
        .sdk
        .presence(&["leaver".into()])
        .await
        .expect("presence");
    assert!(online.contains_key("leaver"));

    // No goodbye: the application just lets go of its handles.
    drop((client, events));

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let presence = logic
            .sdk
            .presence(&["leaver".into()])
            .await
            .expect("presence");
        if !presence.contains_key("leaver") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway still holds the session of a dropped client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
