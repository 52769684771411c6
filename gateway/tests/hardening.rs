//! What outside clients hit, each as the scenario that found it: slow nodes are not gone nodes,
//! one code per failure, simultaneous logins, frames the server builds over the client frame
//! limit, slow consumers, drain order, and the small things a client developer trips over.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{ClientError, ErrorCode, Event, Events};
use logic_sdk::{LogicError, Recipient, Reply};
use prost::Message;
use proto::{client::v1::Envelope, gateway::v1 as pb, logic::v1::BindMode};
use support::*;
use tokio::io::AsyncReadExt;

/// Answers a payload of the size given in the request.
const BIG: u32 = proto::route(4, 1);
/// Pushes, to the caller, a payload of the size given: through the Push API ("push") and the
/// ordered PushBatch pipeline ("ordered"); answers what the Push API reported.
const PUSH_BIG: u32 = proto::route(4, 2);
/// "user,size,interval_ms,duration_ms": pushes `size` bytes to `user` every interval.
const FLOOD: u32 = proto::route(4, 3);
/// Fails with a gateway code and an internal detail, or with an application code.
const LEAK: u32 = proto::route(4, 4);

fn routes() -> logic_sdk::LogicServer {
    test_routes("room")
        .route(BIG, |_, size| async move {
            let size: usize = String::from_utf8_lossy(&size).parse().unwrap_or(0);
            Ok(Reply::new(vec![b'x'; size]))
        })
        .route(PUSH_BIG, |ctx, request| async move {
            let request = String::from_utf8_lossy(&request).into_owned();
            let (how, size) = request.split_once(',').unwrap_or(("push", "0"));
            let size: usize = size.parse().unwrap_or(0);
            let me = Recipient::at(ctx.user()?, ctx.gateway.clone());
            let payload = Bytes::from(vec![b'p'; size]);
            if how == "ordered" {
                ctx.sdk().push_ordered([me], PUSH_BIG, payload);
                return Ok(Reply::new("queued"));
            }
            let report = ctx
                .sdk()
                .push([me], PUSH_BIG, payload)
                .await
                .map_err(|e| LogicError::internal(e.to_string()))?;
            let failures: Vec<String> = report
                .failed_gateways
                .iter()
                .map(|(_, why)| why.clone())
                .collect();
            Ok(Reply::new(failures.join(";")))
        })
        .route(FLOOD, |ctx, request| async move {
            let request = String::from_utf8_lossy(&request).into_owned();
            let parts: Vec<&str> = request.split(',').collect();
            let (user, size, every, total) = (
                parts[0].to_owned(),
                parts[1].parse::<usize>().unwrap_or(1),
                parts[2].parse::<u64>().unwrap_or(10),
                parts[3].parse::<u64>().unwrap_or(1000),
            );
            let sdk = ctx.sdk().clone();
            tokio::spawn(async move {
                let payload = Bytes::from(vec![b'f'; size]);
                let until = Instant::now() + Duration::from_millis(total);
                while Instant::now() < until {
                    sdk.push_ordered([Recipient::from(user.as_str())], FLOOD, payload.clone());
                    tokio::time::sleep(Duration::from_millis(every)).await;
                }
            });
            Ok(Reply::default())
        })
        .route(LEAK, |_, which| async move {
            Err(match &which[..] {
                b"gateway" => LogicError::bad_request("prost: invalid wire type at 10.1.2.3:7100"),
                _ => LogicError::new(1500, "no such item in your inventory"),
            })
        })
}

async fn cluster(extra: &[&str]) -> (TestGateway, logic_sdk::RunningLogic) {
    let gateway = TestGateway::start("gw", &[], extra).await;
    let logic = start_logic(routes(), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    (gateway, logic)
}

/// The first kick within `limit`, or `None` (other events are skipped).
async fn kicked_within(events: &mut Events, limit: Duration) -> Option<u32> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) | Ok(None) => return None,
            Ok(Some(Event::Kicked { code, .. })) => return Some(code),
            Ok(Some(_)) => {}
        }
    }
}

async fn bind(gateway: &TestGateway, user: &str, node: &str) {
    let mut client = pb::gateway_client::GatewayClient::new(gateway.grpc_channel().await);
    client
        .bind(pb::BindRequest {
            mode: BindMode::Cover as i32,
            user_ids: vec![user.into()],
            node_ids: vec![node.into()],
            local_only: false,
            ..Default::default()
        })
        .await
        .expect("bind");
}

// --- A slow node is not a gone node; one failure, one code -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_node_slower_than_the_timeout_is_a_timeout_and_the_binding_stays() {
    let gateway = TestGateway::start("gw", &[], &["--request-timeout-ms", "300"]).await;
    let _l1 = start_logic(routes(), "l1", &[gateway.gossip]).await;
    let _l2 = start_logic(routes(), "l2", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 2).await;
    let (client, _events) = login(gateway.tcp_address(), "patient").await;
    bind(&gateway, "patient", "l2").await;
    // The handler takes 900 ms against a 300 ms timeout, again and again: the gateway's own
    // deadline and the transport's race, and must give one answer.
    for attempt in 0..5 {
        let response = client.request(SLOW, "900").await.expect("answered");
        assert_eq!(
            response.code(),
            Some(ErrorCode::UpstreamTimeout),
            "attempt {attempt}: {response:?}"
        );
        // The node handles one session's requests one at a time, in order: the next one is
        // handled once the slow one is done.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            text(&where_am_i(&client).await),
            "l2",
            "attempt {attempt}: the binding stays"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_request_gets_the_same_codes_for_the_same_failures() {
    let gateway = TestGateway::start("gw", &[], &["--request-timeout-ms", "300"]).await;
    let only = start_logic(routes(), "only", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    let (client, _events) = login(gateway.ws_address(), "free").await;
    // No answer in time: a timeout, bound or not.
    let response = client.request(SLOW, "900").await.expect("answered");
    assert_eq!(
        response.code(),
        Some(ErrorCode::UpstreamTimeout),
        "{response:?}"
    );
    // Dead but still a member: unreachable, bound or not.
    only.node.abort().await;
    let response = where_am_i(&client).await;
    assert_eq!(
        response.code(),
        Some(ErrorCode::UpstreamFailed),
        "{response:?}"
    );
    // Gone: nothing serves the route any more.
    gateway.wait_for_nodes("room", 0).await;
    let response = where_am_i(&client).await;
    assert_eq!(
        response.code(),
        Some(ErrorCode::RouteNotFound),
        "{response:?}"
    );
}

// --- Logins -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_logins_on_two_gateways_leave_exactly_one_session_and_presence_agrees() {
    let g1 = TestGateway::start("g1", &[], &[]).await;
    let g2 = TestGateway::start("g2", &[g1.gossip], &[]).await;
    let logic = start_logic(routes(), "l1", &[g1.gossip]).await;
    for g in [&g1, &g2] {
        g.wait_for_nodes("room", 1).await;
        g.wait_for_nodes("gateway", 2).await;
    }
    for attempt in 0..20 {
        let user = format!("twin-{attempt}");
        let (a, mut a_events) = client::Client::connect(g1.tcp_address())
            .await
            .expect("connect");
        let (b, mut b_events) = client::Client::connect(g2.ws_address())
            .await
            .expect("connect");
        // Both at the same instant.
        let (ra, rb) = tokio::join!(
            a.request(LOGIN, user.clone()),
            b.request(LOGIN, user.clone())
        );
        // The loser's login may be answered LOGGED_IN_ELSEWHERE, or OK and then kicked, or
        // not at all when the other gateway's kick closes it first; the survivor's is OK.
        // The first kick, on either side; then the other side must stay.
        let (ka, kb) = tokio::select! {
            kick = kicked_within(&mut a_events, Duration::from_secs(3)) => {
                (kick, kicked_within(&mut b_events, Duration::from_millis(300)).await)
            }
            kick = kicked_within(&mut b_events, Duration::from_secs(3)) => {
                (kicked_within(&mut a_events, Duration::from_millis(300)).await, kick)
            }
        };
        let survivor = match (ka, kb) {
            (Some(code), None) => {
                assert_eq!(code, ErrorCode::LoggedInElsewhere as u32);
                assert!(
                    rb.as_ref().is_ok_and(|r| r.is_ok()),
                    "attempt {attempt}: {rb:?}"
                );
                "g2"
            }
            (None, Some(code)) => {
                assert_eq!(code, ErrorCode::LoggedInElsewhere as u32);
                assert!(
                    ra.as_ref().is_ok_and(|r| r.is_ok()),
                    "attempt {attempt}: {ra:?}"
                );
                "g1"
            }
            other => panic!(
                "attempt {attempt}: exactly one session must survive, kicks were {other:?} \
                 (logins answered {ra:?} and {rb:?})"
            ),
        };
        let alive = if survivor == "g1" { &a } else { &b };
        assert_eq!(text(&where_am_i(alive).await), "l1", "attempt {attempt}");
        let presence = logic
            .sdk
            .presence(std::slice::from_ref(&user))
            .await
            .expect("presence");
        assert_eq!(
            presence.get(&user).map(|(gateway, _)| gateway.as_str()),
            Some(survivor),
            "attempt {attempt}: presence names the survivor"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_as_another_user_on_one_connection_is_refused() {
    let (gateway, _logic) = cluster(&[]).await;
    let (client, _events) = login(gateway.tcp_address(), "first").await;
    let again = client.request(LOGIN, "first").await.expect("answered");
    assert!(again.is_ok(), "the same user again is harmless: {again:?}");
    let other = client.request(LOGIN, "second").await.expect("answered");
    assert_eq!(other.code(), Some(ErrorCode::AlreadyLoggedIn), "{other:?}");
    // Still "first".
    let (_watch, _) = login(gateway.ws_address(), "second").await;
    assert!(
        where_am_i(&client).await.is_ok(),
        "first is still connected"
    );
}

// --- Frames the server builds -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_over_the_frame_limit_is_refused_and_disconnects_nobody_on_either_transport() {
    let (gateway, _logic) = cluster(&["--max-frame-bytes", "4096"]).await;
    for address in [gateway.tcp_address(), gateway.ws_address()] {
        let (client, mut events) = login(address.clone(), &format!("big-{address}")).await;
        // The Push API refuses it, naming the limit.
        let answer = client
            .request(PUSH_BIG, "push,5000")
            .await
            .expect("answered");
        let failure = text(&answer);
        assert!(
            failure.contains("4096") && failure.contains("frame limit"),
            "{address}: {failure:?}"
        );
        // The ordered pipeline drops it too (counted), instead of sending it.
        let queued = client
            .request(PUSH_BIG, "ordered,5000")
            .await
            .expect("answered");
        assert!(queued.is_ok());
        // Pushes that fit still arrive, the first with seq 1: nothing was sent, nothing lost.
        let fits = client
            .request(PUSH_BIG, "push,3000")
            .await
            .expect("answered");
        assert_eq!(text(&fits), "", "{address}");
        let push = tokio::time::timeout(Duration::from_secs(3), events.next_push())
            .await
            .expect("a push")
            .expect("still connected");
        assert_eq!((push.seq, push.payload.len()), (1, 3000), "{address}");
        assert!(
            where_am_i(&client).await.is_ok(),
            "{address}: still connected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_frame_limit_is_refused_and_the_connection_stays() {
    let (gateway, _logic) = cluster(&["--max-frame-bytes", "4096"]).await;
    for address in [gateway.tcp_address(), gateway.ws_address()] {
        let (client, _events) = login(address.clone(), "asker").await;
        let response = client.request(BIG, "5000").await.expect("answered");
        assert_eq!(
            response.code(),
            Some(ErrorCode::ResponseTooLarge),
            "{address}: {:?}",
            response.status
        );
        let fits = client.request(BIG, "3000").await.expect("answered");
        assert_eq!(fits.payload.len(), 3000, "{address}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_text_from_a_logic_server_never_reaches_players() {
    let (gateway, _logic) = cluster(&[]).await;
    let (client, _events) = login(gateway.tcp_address(), "curious").await;
    let response = client.request(LEAK, "gateway").await.expect("answered");
    assert_eq!(response.code(), Some(ErrorCode::BadRequest));
    assert_eq!(
        response.error, "bad request",
        "a fixed text, not the server's"
    );
    // An application code's text is the application's, meant for its players.
    let response = client.request(LEAK, "app").await.expect("answered");
    assert_eq!(
        (response.status, response.error.as_str()),
        (1500, "no such item in your inventory")
    );
}

// --- Slow consumers ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_batch_of_1500_pushes_reaches_a_client_that_reads() {
    let (gateway, _logic) = cluster(&[]).await;
    let (_client, mut events) = login(gateway.tcp_address(), "reader").await;
    let mut service = pb::gateway_client::GatewayClient::new(gateway.grpc_channel().await);
    let pushes = (0..1500)
        .map(|i| pb::PushRequest {
            user_ids: vec!["reader".into()],
            route: FLOOD,
            payload: Bytes::from(format!("push {i}")),
            local_only: true,
            to_every_gateway: false,
        })
        .collect();
    let reply = service
        .push_batch(pb::PushBatchRequest { pushes })
        .await
        .expect("push batch")
        .into_inner();
    assert_eq!(reply.delivered, 1500, "{reply:?}");
    for expected in 1..=1500u64 {
        let push = tokio::time::timeout(Duration::from_secs(5), events.next_push())
            .await
            .expect("a push")
            .expect("not dropped");
        assert_eq!(push.seq, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_within_seconds_told_why_and_not_reset() {
    let (gateway, logic) = cluster(&["--slow-consumer-ms", "1000"]).await;
    // The stuck client: a raw socket with a small receive buffer that logs in, then stops
    // reading while it is flooded (4 KiB pushes, 250 a second).
    let (mut stuck, mut received) = raw_logged_in(gateway.tcp, "stuck").await;
    let mut chunk = vec![0u8; 64 * 1024];
    let (busy, _busy_events) = login(gateway.ws_address(), "busy").await;
    let flooding = Instant::now();
    busy.request(FLOOD, "stuck,4096,4,6000")
        .await
        .expect("answered");
    loop {
        let presence = logic
            .sdk
            .presence(&["stuck".into()])
            .await
            .expect("presence");
        if !presence.contains_key("stuck") {
            break;
        }
        assert!(
            flooding.elapsed() < Duration::from_secs(5),
            "a client that does not read must be dropped within a few seconds"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now it reads: what the kernel buffers held (a bounded amount), then the kick, then a
    // clean end of stream (no reset).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stuck.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .expect("the connection ends");
    assert!(ended.is_ok(), "closed with a reset: {ended:?}");
    assert!(
        received.len() < 512 * 1024,
        "{} bytes were buffered for a client that did not read",
        received.len()
    );
    let mut last = None;
    let mut rest = &received[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        last = Some(Envelope::decode(&rest[4..4 + len]).expect("valid frame"));
        rest = &rest[4 + len..];
    }
    let last = last.expect("frames");
    assert_eq!(
        last.kick.map(|k| k.code),
        Some(ErrorCode::SlowConsumer as u32),
        "the last frame is the kick"
    );
    assert!(
        where_am_i(&busy).await.is_ok(),
        "the other client is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_in_fits_and_starts_gets_every_push_intact_and_in_order() {
    // Pushes are written straight into the socket while it takes them and queued when it does
    // not: the client's pauses fill its small receive buffer and the capped send buffer, so
    // frames are cut between a write in place and the writer, again and again.
    let (gateway, _logic) = cluster(&["--slow-consumer-ms", "5000"]).await;
    let (mut reader, mut received) = raw_logged_in(gateway.tcp, "reader").await;
    let (flooder, _events) = login(gateway.ws_address(), "flooder").await;
    flooder
        .request(FLOOD, "reader,3000,1,1500")
        .await
        .expect("answered");
    let mut chunk = vec![0u8; 7000];
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let reading = Instant::now() + Duration::from_millis(40);
        while let Ok(Ok(n)) = tokio::time::timeout_at(reading.into(), reader.read(&mut chunk)).await
        {
            assert!(n > 0, "the connection ended");
            received.extend_from_slice(&chunk[..n]);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // Whatever is still on its way.
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), reader.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    let mut seqs = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        assert!(rest.len() >= 4 + len, "a frame cut short at the end");
        let envelope = Envelope::decode(&rest[4..4 + len]).expect("every frame intact");
        if envelope.route == FLOOD {
            assert!(
                envelope.payload.len() == 3000 && envelope.payload.iter().all(|&b| b == b'f'),
                "a push's payload came through changed"
            );
            seqs.push(envelope.seq);
        }
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "{} stray bytes at the end", rest.len());
    assert!(seqs.len() > 500, "only {} pushes arrived", seqs.len());
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "pushes out of order or missing: {:?}",
        seqs.windows(2).find(|w| w[1] != w[0] + 1)
    );
}

// --- Drain ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_kicks_when_it_announced_and_answers_every_request_it_received() {
    // The test gateways drain with a 1 s grace.
    let (gateway, _logic) = cluster(&[]).await;
    let (_client, mut events) = login(gateway.tcp_address(), "leaving").await;
    let mut others = Vec::new();
    for i in 0..8 {
        others.push(login(gateway.ws_address(), &format!("busy-{i}")).await);
    }
    gateway.shutdown.cancel();
    let grace = match tokio::time::timeout(Duration::from_secs(3), events.next())
        .await
        .expect("event")
    {
        Some(Event::Offline { grace }) => grace,
        other => panic!("expected the offline notice, got {other:?}"),
    };
    let announced = Instant::now();
    // Requests still in flight when the grace ends (each takes 700 ms), from eight sessions.
    tokio::time::sleep(grace.saturating_sub(Duration::from_millis(400))).await;
    let requests: Vec<_> = others
        .iter()
        .map(|(client, _)| {
            let client = client.clone();
            tokio::spawn(async move { client.request(SLOW, "700").await })
        })
        .collect();
    let code = kicked_within(&mut events, Duration::from_secs(5))
        .await
        .expect("kicked");
    let kicked_after = announced.elapsed();
    assert_eq!(code, ErrorCode::ServerDraining as u32);
    assert!(
        kicked_after + Duration::from_millis(50) >= grace,
        "kicked after {kicked_after:?}, before the announced {grace:?}"
    );
    for request in requests {
        let answered: Result<_, ClientError> = request.await.expect("task");
        let response = answered.expect("every request received before the kick is answered");
        assert!(response.is_ok(), "{response:?}");
    }
}
