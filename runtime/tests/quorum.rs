//! The cluster configuration kept by Raft between real nodes on loopback: three regular nodes
//! form it and keep serving without one of them; a node cut off from the majority is fenced
//! within 5 s; temporary nodes never count; a regular node that starts later joins it.

mod support;

use std::time::{Duration, Instant};

use mesh::QuorumState;
use runtime::NodeConfig;
use support::{TestNode, eventually, fast_config};

fn regular(id: &str, seeds: &[std::net::SocketAddr], init: &[&str]) -> NodeConfig {
    let mut config = fast_config(id, "gateway", seeds);
    config.quorum.regular = true;
    config.quorum.init = init.iter().map(|s| (*s).to_owned()).collect();
    config
}

fn state(node: &TestNode) -> QuorumState {
    node.quorum.status().state
}

/// Three regular nodes (the first forms the configuration) and one temporary node.
async fn cluster() -> Vec<TestNode> {
    let a = TestNode::start(regular("a", &[], &["a", "b", "c"])).await;
    let b = TestNode::start(regular("b", &[a.gossip], &[])).await;
    let c = TestNode::start(regular("c", &[a.gossip], &[])).await;
    let t = TestNode::start(fast_config("t", "room", &[a.gossip])).await;
    let nodes = vec![a, b, c, t];
    eventually("every node serves", Duration::from_secs(10), || {
        nodes.iter().all(|n| state(n) == QuorumState::Serving)
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_a_configuration_serves_unmanaged() {
    let a = TestNode::start(regular("a", &[], &[])).await;
    let t = TestNode::start(fast_config("t", "room", &[a.gossip])).await;
    eventually("t sees a", Duration::from_secs(5), || {
        t.cluster.node(&a.id).is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&a), QuorumState::Unmanaged);
    assert_eq!(state(&t), QuorumState::Unmanaged);
    assert!(t.cluster.accepts_new_work());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regular_nodes_keep_serving_without_their_leader() {
    let mut nodes = cluster().await;
    let status = nodes[0].quorum.status();
    assert_eq!(status.regular.len(), 3, "{status:?}");
    let leader = status.leader.clone().expect("a leader");
    let index = nodes
        .iter()
        .position(|n| n.id.as_str() == leader)
        .expect("the leader is one of ours");
    nodes[index].abort().await;
    let rest: Vec<&TestNode> = nodes.iter().filter(|n| n.node.is_some()).collect();

    // Never fenced while a new leader is elected, and a new one is.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        for node in &rest {
            assert_eq!(
                state(node),
                QuorumState::Serving,
                "{} fenced {:?} after the leader died",
                node.id,
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_leader = rest[0].quorum.status().leader.expect("a new leader");
    assert_ne!(new_leader, leader);
    assert_eq!(
        rest[0].quorum.status().regular.len(),
        3,
        "a dead regular node stays in the configuration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_majority_is_fenced_within_five_seconds() {
    let mut nodes = cluster().await;
    // Keep the leader: the survivor is a follower, or the leader, whichever c is.
    let cut = Instant::now();
    nodes[0].abort().await;
    nodes[1].abort().await;
    let (c, t) = (&nodes[2], &nodes[3]);
    eventually("c and t are fenced", Duration::from_secs(5), || {
        state(c) == QuorumState::Fenced && state(t) == QuorumState::Fenced
    })
    .await;
    let took = cut.elapsed();
    assert!(!c.cluster.accepts_new_work() && !t.cluster.accepts_new_work());
    assert!(
        took >= Duration::from_secs(2),
        "fenced only once the lease ran out ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_node_that_starts_later_joins_the_configuration() {
    let nodes = cluster().await;
    let d = TestNode::start(regular("d", &[nodes[0].gossip], &[])).await;
    eventually("d is a regular node", Duration::from_secs(10), || {
        nodes[0].quorum.status().regular.len() == 4 && state(&d) == QuorumState::Serving
    })
    .await;
    // The temporary node is not part of the configuration.
    assert!(nodes[0].quorum.status().member("t").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_nodes_with_a_data_dir_keep_the_configuration_across_a_restart_of_them_all() {
    let dir = std::env::temp_dir().join(format!("quorum-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let durable = |id: &str, seeds: &[std::net::SocketAddr], init: &[&str]| {
        let mut config = regular(id, seeds, init);
        config.quorum.data_dir = Some(dir.clone());
        config
    };
    let a = TestNode::start(durable("a", &[], &["a", "b", "c"])).await;
    let b = TestNode::start(durable("b", &[a.gossip], &[])).await;
    let c = TestNode::start(durable("c", &[a.gossip], &[])).await;
    let mut nodes = vec![a, b, c];
    eventually("the three serve", Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| state(n) == QuorumState::Serving && n.quorum.status().regular.len() == 3)
    })
    .await;
    for node in &mut nodes {
        node.abort().await;
    }
    drop(nodes);

    // All three again, on new ports, nobody told to form anything: they still are the cluster.
    let a = TestNode::start(durable("a", &[], &[])).await;
    let b = TestNode::start(durable("b", &[a.gossip], &[])).await;
    let c = TestNode::start(durable("c", &[a.gossip], &[])).await;
    let nodes = [a, b, c];
    eventually("the three serve again", Duration::from_secs(15), || {
        nodes
            .iter()
            .all(|n| state(n) == QuorumState::Serving && n.quorum.status().leader.is_some())
    })
    .await;
    assert_eq!(nodes[0].quorum.status().regular.len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}
