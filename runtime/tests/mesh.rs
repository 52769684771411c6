//! Mesh messaging between nodes over real gRPC and UDP on loopback: request/response, handler
//! errors, timeouts, handler order, reliable and unreliable send-many, credentials, bad payloads.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use mesh::{HandlerError, MeshError, NodeId, command};
use proto::mesh::v1::{MeshRequest, mesh_client::MeshClient};
use support::{NodeProcess, TestNode, eventually, fast_config};

const ECHO: u32 = 0x1001;
const FAIL: u32 = 0x1002;
const SLOW: u32 = 0x1003;
const ORDERED: u32 = 0x1004;
const COUNT: u32 = 0x1005;

/// Two nodes of one cluster, each seeing the other.
async fn pair() -> (TestNode, TestNode) {
    let a = TestNode::start(fast_config("a", "room", &[])).await;
    let b = TestNode::start(fast_config("b", "room", &[a.gossip])).await;
    eventually("a and b see each other", Duration::from_secs(5), || {
        a.cluster.node(&b.id).is_some() && b.cluster.node(&a.id).is_some()
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_the_handlers_reply() {
    let (a, b) = pair().await;
    b.mesh
        .handle_message(ECHO, |ctx, request: MeshRequest| async move {
            Ok(MeshRequest {
                command: request.command + 1,
                from_node: ctx.from.to_string(),
                payload: request.payload,
            })
        });
    let reply: MeshRequest = a
        .mesh
        .request_message(
            &b.id,
            ECHO,
            &MeshRequest {
                command: 41,
                from_node: String::new(),
                payload: Bytes::from_static(b"hi"),
            },
        )
        .await
        .expect("reply");
    assert_eq!(reply.command, 42);
    assert_eq!(reply.from_node, "a", "the handler knows who asked");
    assert_eq!(reply.payload, Bytes::from_static(b"hi"));
    // The built-in ping answers on every node, and a node can call itself.
    assert_eq!(
        a.mesh.request(&b.id, command::PING, "x").await,
        Ok(Bytes::from_static(b"x"))
    );
    assert_eq!(
        a.mesh.request(&a.id, command::PING, "y").await,
        Ok(Bytes::from_static(b"y"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_reaches_the_caller_with_its_code() {
    let (a, b) = pair().await;
    b.mesh.handle(FAIL, |_, _| async {
        Err(HandlerError::new(77, "room is full"))
    });
    let error = a
        .mesh
        .request(&b.id, FAIL, "")
        .await
        .expect_err("handler fails");
    assert_eq!(
        error,
        MeshError::Handler {
            node: b.id.clone(),
            code: 77,
            message: "room is full".into()
        }
    );
    let error = a
        .mesh
        .request(&b.id, 0x1fff, "")
        .await
        .expect_err("no handler");
    assert_eq!(
        error,
        MeshError::NoHandler {
            node: b.id.clone(),
            command: 0x1fff
        }
    );
    let stranger = NodeId::new("nobody");
    assert_eq!(
        a.mesh.request(&stranger, ECHO, "").await,
        Err(MeshError::NodeUnknown(stranger))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_times_the_request_out() {
    let (a, b) = pair().await;
    b.mesh.handle(SLOW, |_, _| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(Bytes::new())
    });
    let error = a
        .mesh
        .request_with_timeout(&b.id, SLOW, "", Duration::from_millis(200))
        .await
        .expect_err("times out");
    assert!(
        matches!(error, MeshError::Timeout { ref node, .. } if *node == b.id),
        "{error:?}"
    );
    // The channel stays usable after a timeout.
    assert!(a.mesh.request(&b.id, command::PING, "").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_handlers_for_one_command_all_run_in_registration_order() {
    let (a, b) = pair().await;
    let order = Arc::new(Mutex::new(Vec::new()));
    for step in 1..=3u8 {
        let order = order.clone();
        b.mesh.handle(ORDERED, move |_, _| {
            let order = order.clone();
            async move {
                // Later handlers finish sooner, so only sequential running keeps the order.
                tokio::time::sleep(Duration::from_millis(30 / u64::from(step))).await;
                order.lock().expect("lock").push(step);
                Ok(Bytes::from(vec![step]))
            }
        });
    }
    let reply = a.mesh.request(&b.id, ORDERED, "").await.expect("reply");
    assert_eq!(*order.lock().expect("lock"), vec![1, 2, 3]);
    assert_eq!(
        reply,
        Bytes::from(vec![3]),
        "the reply is the last handler's"
    );

    // The first error stops the chain.
    b.mesh
        .handle(FAIL, |_, _| async { Err(HandlerError::new(9, "first")) });
    let ran_after = Arc::new(AtomicUsize::new(0));
    let counter = ran_after.clone();
    b.mesh.handle(FAIL, move |_, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok(Bytes::new()) }
    });
    assert!(a.mesh.request(&b.id, FAIL, "").await.is_err());
    assert_eq!(ran_after.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_send_many_reaches_every_live_target_within_the_delivery_limit_and_reports_a_dead_one()
 {
    let mut sender_config = fast_config("sender", "match", &[]);
    sender_config.mesh.send_many_timeout = Duration::from_millis(1500);
    let sender = TestNode::start(sender_config).await;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let mut targets = Vec::new();
    for i in 0..4 {
        let node = TestNode::start(fast_config(&format!("t{i}"), "room", &[sender.gossip])).await;
        let (in_flight, most, delivered) =
            (in_flight.clone(), most_in_flight.clone(), delivered.clone());
        node.mesh.handle(COUNT, move |ctx, payload| {
            let (in_flight, most, delivered) = (in_flight.clone(), most.clone(), delivered.clone());
            let me = ctx.from.clone();
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                delivered.lock().expect("lock").push((me, payload));
                Ok(Bytes::new())
            }
        });
        targets.push(node);
    }
    // The fifth target is a real process that dies but is still a member when we send.
    let mut dead = NodeProcess::start("dead", sender.gossip, &[]).await;
    eventually(
        "the sender sees all five targets",
        Duration::from_secs(5),
        || sender.cluster.members().len() == 6,
    )
    .await;
    dead.kill();

    let mut ids: Vec<NodeId> = targets.iter().map(|t| t.id.clone()).collect();
    ids.insert(2, dead.id.clone());
    let results = sender.mesh.send_many(COUNT, &ids, "hello", 2).await;

    assert_eq!(
        results.iter().map(|d| d.node.clone()).collect::<Vec<_>>(),
        ids,
        "one result per target, in order"
    );
    for delivery in &results {
        if delivery.node == dead.id {
            assert!(
                matches!(
                    delivery.result,
                    Err(MeshError::Timeout { .. } | MeshError::NodeUnknown(_))
                ),
                "the dead target is reported failed: {:?}",
                delivery.result
            );
        } else {
            assert_eq!(delivery.result, Ok(()), "{} acknowledged", delivery.node);
        }
    }
    assert_eq!(
        delivered.lock().expect("lock").len(),
        4,
        "each live target got the message once"
    );
    assert_eq!(
        most_in_flight.load(Ordering::SeqCst),
        2,
        "never more than the delivery limit in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_send_many_returns_at_once_even_with_a_dead_target() {
    let sender = TestNode::start(fast_config("sender", "match", &[])).await;
    let received = Arc::new(AtomicUsize::new(0));
    let mut live = Vec::new();
    for i in 0..2 {
        let node = TestNode::start(fast_config(&format!("u{i}"), "room", &[sender.gossip])).await;
        let received = received.clone();
        node.mesh.handle(COUNT, move |_, payload| {
            assert_eq!(payload, Bytes::from_static(b"tick"));
            received.fetch_add(1, Ordering::SeqCst);
            async { Ok(Bytes::new()) }
        });
        live.push(node);
    }
    let mut dead = NodeProcess::start("dead", sender.gossip, &[]).await;
    eventually(
        "the sender sees every target",
        Duration::from_secs(5),
        || sender.cluster.members().len() == 4,
    )
    .await;
    dead.kill();

    let targets = [
        live[0].id.clone(),
        dead.id.clone(),
        live[1].id.clone(),
        NodeId::new("ghost"),
    ];
    let started = Instant::now();
    let report = sender
        .mesh
        .usend_many(COUNT, &targets, b"tick")
        .expect("fits a datagram");
    // "At once": far below any retry or request timeout; nothing waits on the dead node.
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(report.sent, 3);
    assert_eq!(report.unknown, vec![NodeId::new("ghost")]);
    eventually(
        "both live targets handle the message",
        Duration::from_secs(2),
        || received.load(Ordering::SeqCst) == 2,
    )
    .await;

    let too_big = vec![0u8; mesh::MAX_DATAGRAM_PAYLOAD + 1];
    assert!(matches!(
        sender.mesh.usend_many(COUNT, &targets, &too_big),
        Err(MeshError::TooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_cluster_credential_are_rejected() {
    let (a, b) = pair().await;
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    b.mesh.handle(ECHO, move |_, p| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok(p) }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", b.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let request = || MeshRequest {
        command: ECHO,
        from_node: "intruder".into(),
        payload: Bytes::new(),
    };

    let missing = MeshClient::new(channel.clone())
        .call(request())
        .await
        .expect_err("rejected");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);

    let mut wrong = tonic::Request::new(request());
    wrong.metadata_mut().insert(
        mesh::CREDENTIAL_HEADER,
        "not-the-secret".parse().expect("ascii"),
    );
    let wrong = MeshClient::new(channel)
        .call(wrong)
        .await
        .expect_err("rejected");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "no handler ran for a rejected call"
    );

    // A node configured with another secret cannot call in either, even if it gossips along.
    let mut config = fast_config("impostor", "room", &[a.gossip]);
    config.secret = "another-secret".into();
    let impostor = TestNode::start(config).await;
    eventually(
        "the impostor learns about b",
        Duration::from_secs(5),
        || impostor.cluster.node(&b.id).is_some(),
    )
    .await;
    assert_eq!(
        impostor.mesh.request(&b.id, ECHO, "").await,
        Err(MeshError::Unauthenticated(b.id.clone()))
    );
    // Its unreliable messages fail the datagram tag check and are dropped.
    impostor
        .mesh
        .usend_many(ECHO, std::slice::from_ref(&b.id), b"x")
        .expect("sent");
    a.mesh
        .request(&b.id, command::PING, "")
        .await
        .expect("b still serves");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_give_the_caller_an_error_not_a_panic() {
    let (a, b) = pair().await;
    b.mesh
        .handle_message(ECHO, |_, request: MeshRequest| async move { Ok(request) });
    // Garbage that is not a protobuf message: the typed handler answers BAD_PAYLOAD.
    let error = a
        .mesh
        .request(&b.id, ECHO, Bytes::from_static(&[0xff, 0xff, 0xff]))
        .await
        .expect_err("bad payload");
    assert!(
        matches!(
            error,
            MeshError::Handler {
                code: HandlerError::BAD_PAYLOAD,
                ..
            }
        ),
        "{error:?}"
    );
    // A reply that does not decode as the expected type: the caller gets a decode error.
    b.mesh.handle(FAIL, |_, _| async {
        Ok(Bytes::from_static(&[0xff, 0xff, 0xff]))
    });
    let error = a
        .mesh
        .request_message::<MeshRequest, MeshRequest>(&b.id, FAIL, &MeshRequest::default())
        .await
        .expect_err("undecodable reply");
    assert!(matches!(error, MeshError::Decode { .. }), "{error:?}");
    // Random bytes to the datagram port are dropped; the node keeps serving.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let info = a.cluster.node(&b.id).expect("b is a member");
    for len in [0usize, 3, 16, 200] {
        socket
            .send_to(&vec![0xabu8; len], info.datagram_addr)
            .expect("send");
    }
    assert!(a.mesh.request(&b.id, command::PING, "").await.is_ok());
}
