//! Membership across real processes: joining, death (SIGKILL), graceful leave (SIGTERM),
//! node events, `is_node_online`, the health endpoints, and failure detection that drops the
//! dead and never the paused, the starved or the ones behind a lossy network.

mod support;

use std::time::{Duration, Instant};

use mesh::{NodeEvent, NodeId, NodeState};
use runtime::NodeConfig;
use support::{
    MemberWatch, NodeProcess, PacketDrop, TestNode, eventually, fast_config, http_get, member_ids,
    metric,
};
use tokio::sync::broadcast;

/// The default failure detection time of a node (what the processes below run with).
const DETECTION: Duration = Duration::from_secs(2);
/// The default gossip interval (what the processes below run with).
const GOSSIP: Duration = Duration::from_millis(100);

/// An in-process node with the processes' default detection settings.
fn observer_config(id: &str) -> NodeConfig {
    let mut config = fast_config(id, "node", &[]);
    config.gossip.failure_detection = DETECTION;
    config.gossip.gossip_interval = GOSSIP;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_see_each_other_and_a_killed_one_is_gone_after_the_detection_time() {
    let observer = TestNode::start(observer_config("observer")).await;
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
    eprintln!("a node killed with SIGKILL was dropped after {detection:?}");
    assert!(
        gone.node().is_online(),
        "a killed node was online when it vanished"
    );
    // Never before the detection time; soon after it (generous: a busy machine is slow).
    assert!(detection >= DETECTION, "dropped after only {detection:?}");
    assert!(
        detection < DETECTION + Duration::from_millis(1500),
        "dropped after {detection:?}"
    );
    assert!(!observer.cluster.is_node_online(&p3));
    assert!(observer.cluster.node(&p3).is_none());
    // The surviving processes drop it too, and count it as silent.
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
        assert_eq!(process.nodes_gone("silent"), 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_for_less_than_the_detection_time_is_never_dropped() {
    let observer = TestNode::start(observer_config("observer")).await;
    let paused = NodeProcess::start("paused", observer.gossip, &[]).await;
    let witness = NodeProcess::start("witness", observer.gossip, &[]).await;
    let everyone = [&observer.id, &paused.id, &witness.id];
    all_see_each_other(&observer, &[&paused, &witness]).await;
    let mut events = observer.cluster.subscribe();
    let watches = [
        MemberWatch::start(witness.admin(), &everyone),
        MemberWatch::start(paused.admin(), &everyone),
    ];

    // Paused for 40 % and for 80 % of the detection time, each followed by a few gossip
    // rounds: time enough for a late drop to show.
    for pause in [DETECTION * 2 / 5, DETECTION * 4 / 5] {
        paused.pause_for(pause).await;
        tokio::time::sleep(GOSSIP * 5).await;
    }

    nobody_was_dropped(&mut events, watches, &[&witness, &paused]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starved_of_cpu_neither_is_dropped_nor_drops_anyone() {
    let observer = TestNode::start(observer_config("observer")).await;
    let starved = NodeProcess::start("starved", observer.gossip, &[]).await;
    let witness = NodeProcess::start("witness", observer.gossip, &[]).await;
    let everyone = [&observer.id, &starved.id, &witness.id];
    all_see_each_other(&observer, &[&starved, &witness]).await;
    let mut events = observer.cluster.subscribe();
    // The starved node watches its peers (a starved observer) while they watch it (a starved
    // peer).
    let watches = [
        MemberWatch::start(witness.admin(), &everyone),
        MemberWatch::start(starved.admin(), &everyone),
    ];

    // Fine-grained starvation (it runs 40 % of the time), then coarse (one sixth of the time,
    // in stops of a quarter of the detection time).
    let ms = Duration::from_millis;
    starved.starve(ms(60), ms(40), ms(2500)).await;
    starved.starve(ms(500), ms(100), ms(3000)).await;
    tokio::time::sleep(GOSSIP * 5).await;

    nobody_was_dropped(&mut events, watches, &[&witness, &starved]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_for_longer_than_the_detection_time_is_dropped_and_drops_nobody_itself() {
    let observer = TestNode::start(observer_config("observer")).await;
    let sleeper = NodeProcess::start("sleeper", observer.gossip, &[]).await;
    let witness = NodeProcess::start("witness", observer.gossip, &[]).await;
    let everyone = [&observer.id, &sleeper.id, &witness.id];
    all_see_each_other(&observer, &[&sleeper, &witness]).await;
    let mut events = observer.cluster.subscribe();

    sleeper
        .pause_for(DETECTION + Duration::from_millis(1000))
        .await;
    // On waking, the gossip that waited in its socket shows everyone alive: its own stall
    // is not their silence.
    let watch = MemberWatch::start(sleeper.admin(), &everyone);
    tokio::time::sleep(GOSSIP * 10).await;
    let report = watch.finish();
    assert!(report.looks > 5, "the watch saw {report:?}");
    assert!(
        report.misses.is_empty(),
        "a member went missing: {report:?}"
    );
    assert_eq!(sleeper.nodes_gone("silent"), 0.0);

    // Its peers did drop it, and took it back once it spoke again.
    let gone = wait_for_event(
        &mut events,
        Duration::from_secs(1),
        |e| matches!(e, NodeEvent::Gone(n) if n.id == sleeper.id),
    )
    .await;
    assert!(gone.node().is_online());
    wait_for_event(
        &mut events,
        Duration::from_secs(1),
        |e| matches!(e, NodeEvent::Joined(n) if n.id == sleeper.id),
    )
    .await;
    eventually("the witness takes it back", Duration::from_secs(3), || {
        member_ids(&http_get(witness.admin(), "/cluster/nodes").1).len() == 3
    })
    .await;
    assert_eq!(witness.nodes_gone("silent"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_packet_drop_on_the_gossip_ports_drops_nobody() {
    let observer = TestNode::start(observer_config("observer")).await;
    let a = NodeProcess::start("a", observer.gossip, &[]).await;
    let b = NodeProcess::start("b", observer.gossip, &[]).await;
    let everyone = [&observer.id, &a.id, &b.id];
    all_see_each_other(&observer, &[&a, &b]).await;
    let gossip_ports: Vec<u16> = [&a, &b]
        .iter()
        .map(|p| {
            p.addrs["gossip"]
                .parse::<std::net::SocketAddr>()
                .expect("gossip address")
                .port()
        })
        .chain([observer.gossip.port()])
        .collect();
    let mut events = observer.cluster.subscribe();
    let watches = [
        MemberWatch::start(a.admin(), &everyone),
        MemberWatch::start(b.admin(), &everyone),
    ];

    // 40 % of the gossip datagrams between the three are lost for five seconds.
    let Some(lossy) = PacketDrop::start(&gossip_ports, 40) else {
        return;
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(lossy);

    nobody_was_dropped(&mut events, watches, &[&a, &b]);
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

/// Waits until the observer and every process see all of them.
async fn all_see_each_other(observer: &TestNode, processes: &[&NodeProcess]) {
    let everyone = processes.len() + 1;
    eventually(
        "the observer sees every process",
        Duration::from_secs(10),
        || observer.cluster.members().len() == everyone,
    )
    .await;
    for process in processes {
        eventually(
            "each process sees every node",
            Duration::from_secs(10),
            || member_ids(&http_get(process.admin(), "/cluster/nodes").1).len() == everyone,
        )
        .await;
    }
}

/// The nodes reported gone among the events received so far.
fn gone_events(events: &mut broadcast::Receiver<NodeEvent>) -> Vec<NodeId> {
    let mut gone = Vec::new();
    loop {
        match events.try_recv() {
            Ok(NodeEvent::Gone(node)) => gone.push(node.id),
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return gone,
        }
    }
}

/// No node was dropped: no `Gone` event at the observer, no watched member list ever missed a
/// member, and no process counted a silent peer.
fn nobody_was_dropped(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    watches: impl IntoIterator<Item = MemberWatch>,
    processes: &[&NodeProcess],
) {
    assert_eq!(gone_events(events), Vec::<NodeId>::new());
    for watch in watches {
        let report = watch.finish();
        assert!(report.looks > 10, "the watch saw {report:?}");
        assert!(
            report.misses.is_empty(),
            "a member went missing: {report:?}"
        );
    }
    for process in processes {
        assert_eq!(process.nodes_gone("silent"), 0.0, "{}", process.id);
    }
}
