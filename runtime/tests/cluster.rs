//! Membership across real processes: joining, death (SIGKILL), graceful leave (SIGTERM),
//! node events, `is_node_online`, and the health endpoints.

mod support;

use std::time::{Duration, Instant};

use mesh::{NodeEvent, NodeId, NodeState};
use support::{NodeProcess, TestNode, eventually, fast_config, http_get, metric};

/// The default failure detection time of a node (what the processes below run with).
const DETECTION: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_see_each_other_and_a_killed_one_is_gone_within_the_detection_time() {
    let mut observer_config = fast_config("observer", "node", &[]);
    observer_config.gossip.failure_detection = DETECTION;
    observer_config.gossip.gossip_interval = Duration::from_millis(100);
    let observer = TestNode::start(observer_config).await;
    let mut events = observer.cluster.subscribe();

    let mut processes = Vec::new();
    for id in ["p1", "p2", "p3"] {
        processes.push(NodeProcess::start(id, observer.gossip, &[]).await);
    }
    eventually(
        "the observer sees all three processes",
        Duration::from_secs(5),
        || observer.cluster.members().len() == 4,
    )
    .await;
    // Every process sees all four members too, as its own /metrics reports.
    for process in &processes {
        let admin = process.admin();
        eventually(
            "each process counts four online members",
            Duration::from_secs(5),
            || {
                let (_, body) = http_get(admin, "/metrics");
                metric(
                    &body,
                    "switchyard_mesh_members{kind=\"node\",state=\"online\"}",
                ) == Some(4.0)
            },
        )
        .await;
        assert_eq!(http_get(admin, "/readyz").0, 200);
        assert_eq!(http_get(admin, "/healthz").0, 200);
    }
    let p3 = NodeId::new("p3");
    assert!(observer.cluster.is_node_online(&p3));

    let killed_at = Instant::now();
    processes[2].kill();
    let gone = wait_for_event(
        &mut events,
        Duration::from_secs(10),
        |e| matches!(e, NodeEvent::Gone(n) if n.id == p3),
    )
    .await;
    let detection = killed_at.elapsed();
    assert!(
        gone.node().is_online(),
        "a killed node was online when it vanished"
    );
    // The default detection time is 2 s; the bound promised on loopback is 3 s.
    assert!(
        detection <= Duration::from_secs(3),
        "detected after {detection:?}"
    );
    assert!(!observer.cluster.is_node_online(&p3));
    assert!(observer.cluster.node(&p3).is_none());
    // The surviving processes drop it too.
    for process in &processes[..2] {
        let admin = process.admin();
        eventually(
            "survivors count three members",
            Duration::from_secs(5),
            || {
                let (_, body) = http_get(admin, "/metrics");
                metric(
                    &body,
                    "switchyard_mesh_members{kind=\"node\",state=\"online\"}",
                ) == Some(3.0)
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_sent_sigterm_is_offline_at_once_and_gone_after_it_leaves() {
    let observer = TestNode::start(fast_config("observer", "node", &[])).await;
    let mut process =
        NodeProcess::start("leaver", observer.gossip, &["--gossip-interval-ms", "50"]).await;
    let leaver = NodeId::new("leaver");
    eventually(
        "the observer sees the process",
        Duration::from_secs(5),
        || observer.cluster.is_node_online(&leaver),
    )
    .await;
    let mut events = observer.cluster.subscribe();

    process.terminate();
    let offline = wait_for_event(
        &mut events,
        Duration::from_secs(2),
        |e| matches!(e, NodeEvent::WentOffline(n) if n.id == leaver),
    )
    .await;
    assert_eq!(offline.node().state, NodeState::Offline);
    assert!(
        !observer.cluster.is_node_online(&leaver),
        "a draining node is not online"
    );
    assert!(
        observer.cluster.node(&leaver).is_some(),
        "a draining node is still a member"
    );

    wait_for_event(
        &mut events,
        Duration::from_secs(3),
        |e| matches!(e, NodeEvent::Gone(n) if n.id == leaver),
    )
    .await;
    assert!(observer.cluster.node(&leaver).is_none());
    let status = process.child.wait().expect("the process exits");
    assert!(
        status.success(),
        "a SIGTERM'd node exits cleanly, got {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_grpc_health_follow_the_node_state() {
    let mut node = TestNode::start(fast_config("solo", "node", &[])).await;
    assert_eq!(http_get(node.admin, "/readyz"), (200, "ready\n".into()));
    assert_eq!(http_get(node.admin, "/nope").0, 404);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // While draining, readyz reports 503 and gRPC health NOT_SERVING; healthz stays 200.
    node.cluster.go_offline().await;
    assert_eq!(http_get(node.admin, "/readyz").0, 503);
    assert_eq!(http_get(node.admin, "/healthz").0, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_figures_reach_other_nodes_and_raise_an_event() {
    let a = TestNode::start(fast_config("a", "room", &[])).await;
    let b = TestNode::start(fast_config("b", "gateway", &[a.gossip])).await;
    eventually("a sees b", Duration::from_secs(5), || {
        a.cluster.node(&b.id).is_some()
    })
    .await;
    let mut events = a.cluster.subscribe();
    b.cluster.update_load(|load| {
        load.sessions = 42;
        load.capacity = 100;
    });
    let event = wait_for_event(
        &mut events,
        Duration::from_secs(3),
        |e| matches!(e, NodeEvent::LoadChanged(n) if n.id == b.id && n.load.sessions == 42),
    )
    .await;
    assert_eq!(event.node().load.capacity, 100);
    assert_eq!(a.cluster.nodes_by_kind("gateway").len(), 1);
    assert_eq!(a.cluster.nodes_by_kind("room")[0].id, a.id);
    assert!(a.cluster.is_self_online());
}

async fn wait_for_event(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    limit: Duration,
    wanted: impl Fn(&NodeEvent) -> bool,
) -> NodeEvent {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if wanted(&event) => return event,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(error)) => panic!("event stream ended: {error}"),
            Err(_) => panic!("no matching event within {limit:?}"),
        }
    }
}
