//! The cluster admin API between real nodes on loopback, over HTTP (bearer token) and gRPC
//! (cluster credential): who may call it, InitCluster and RegisterNode and their refusals,
//! ListNodes with roles, the leader and gone regular nodes, PurgeNode on the leader only and
//! never for a live node, and calls that run elsewhere answered with that node's URL.

mod support;

use std::{net::SocketAddr, time::Duration};

use mesh::{NodeId, QuorumState};
use proto::admin::v1::{self as admin_pb, admin_client::AdminClient};
use runtime::NodeConfig;
use serde_json::Value;
use support::{SECRET, TestNode, eventually, fast_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "sesame";

fn temporary(id: &str, seeds: &[SocketAddr]) -> NodeConfig {
    let mut config = fast_config(id, "room", seeds);
    config.admin_token = Some(TOKEN.into());
    config
}

fn regular(id: &str, seeds: &[SocketAddr], init: &[&str]) -> NodeConfig {
    let mut config = fast_config(id, "gateway", seeds);
    config.admin_token = Some(TOKEN.into());
    config.quorum.regular = true;
    config.quorum.init = init.iter().map(|s| (*s).to_owned()).collect();
    config
}

/// Three regular nodes `a`, `b`, `c` (`a` forms the configuration when `init`) and a
/// temporary node `t`, each seeing the other three.
async fn cluster(init: bool) -> Vec<TestNode> {
    let ids: &[&str] = if init { &["a", "b", "c"] } else { &[] };
    let a = TestNode::start(regular("a", &[], ids)).await;
    let b = TestNode::start(regular("b", &[a.gossip], &[])).await;
    let c = TestNode::start(regular("c", &[a.gossip], &[])).await;
    let t = TestNode::start(temporary("t", &[a.gossip])).await;
    let nodes = vec![a, b, c, t];
    eventually(
        "every node sees the others",
        Duration::from_secs(10),
        || nodes.iter().all(|n| n.cluster.members().len() == 4),
    )
    .await;
    if init {
        wait_serving(&nodes).await;
    }
    nodes
}

async fn wait_serving(nodes: &[TestNode]) {
    eventually("every node serves", Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| n.quorum.status().state == QuorumState::Serving)
    })
    .await;
}

/// The leader and the two other regular nodes.
fn leader_and_followers(nodes: &[TestNode]) -> (&TestNode, &TestNode, &TestNode) {
    let leader = nodes[0].quorum.status().leader.expect("a leader");
    let regular = &nodes[..3];
    let l = regular
        .iter()
        .find(|n| n.id.as_str() == leader)
        .expect("ours");
    let mut followers = regular.iter().filter(|n| n.id.as_str() != leader);
    let f1 = followers.next().expect("two followers");
    let f2 = followers.next().expect("two followers");
    (l, f1, f2)
}

/// What an HTTP call answered.
#[derive(Debug)]
struct Reply {
    status: u16,
    location: Option<String>,
    body: Value,
}

/// One HTTP/1.1 request with a JSON body on a fresh connection.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("answered in time")
    .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    });
    Reply {
        status,
        location,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

async fn post(node: &TestNode, path: &str, body: &str) -> Reply {
    http(node.admin, "POST", path, Some(TOKEN), body).await
}

async fn get(node: &TestNode, path: &str) -> Reply {
    http(node.admin, "GET", path, Some(TOKEN), "").await
}

/// Sends the call again where a 307 points, as `curl -L` would.
async fn follow(reply: &Reply, body: &str) -> Reply {
    let location = reply.location.as_deref().expect("a Location header");
    let rest = location.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    let addr = host.parse().expect("host:port");
    http(addr, "POST", path, Some(TOKEN), body).await
}

fn url(node: &TestNode, path: &str) -> String {
    format!("http://{}{path}", node.admin)
}

fn assert_refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.body["error"], code, "{reply:?}");
    assert!(
        reply.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

fn node<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("{id} listed: {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_operations_need_the_admin_token() {
    let mut open = fast_config("open", "room", &[]);
    open.admin_token = None;
    let open = TestNode::start(open).await;
    let guarded = TestNode::start(temporary("guarded", &[open.gossip])).await;

    let none = http(open.admin, "GET", "/admin/cluster/nodes", Some(TOKEN), "").await;
    assert_refused(&none, 403, "forbidden");
    assert!(
        none.body["message"]
            .as_str()
            .expect("a message")
            .contains("--admin-token")
    );
    let body = r#"{"node": "guarded"}"#;
    let missing = http(guarded.admin, "POST", "/admin/cluster/drain", None, body).await;
    assert_refused(&missing, 401, "unauthorized");
    let wrong = http(
        guarded.admin,
        "GET",
        "/admin/cluster/rooms",
        Some("sesame!"),
        "",
    )
    .await;
    assert_refused(&wrong, 401, "unauthorized");
    let right = get(&guarded, "/admin/cluster/nodes").await;
    assert_eq!(right.status, 200, "{right:?}");
    assert_eq!(right.body["self"], "guarded");
    assert_eq!(right.body["quorum"], "unmanaged");
    // Nothing ran for the refused drain.
    assert_eq!(node(&right.body, "guarded")["state"], "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_cluster_forms_the_configuration_once_from_regular_members() {
    let nodes = cluster(false).await;
    let (a, b, t) = (&nodes[0], &nodes[1], &nodes[3]);
    let init = r#"{"nodes": ["a", "b", "c"]}"#;

    // A temporary node sends the caller to a regular one.
    let redirected = post(t, "/admin/cluster/init", init).await;
    assert_refused(&redirected, 307, "elsewhere");
    let location = redirected.location.clone().expect("Location");
    assert!(
        nodes[..3]
            .iter()
            .any(|n| location == url(n, "/admin/cluster/init")),
        "{location}"
    );
    assert_eq!(redirected.body["location"], location.as_str());

    for (body, code) in [
        (r#"{"nodes": []}"#, "bad_request"),
        (r#"{"nodes": ["a", "nobody"]}"#, "unknown_node"),
        (r#"{"nodes": ["a", "t"]}"#, "not_regular"),
        (r#"{"nodes": "a"}"#, "bad_request"),
        ("{", "bad_request"),
    ] {
        assert_refused(&post(a, "/admin/cluster/init", body).await, 400, code);
    }

    let formed = follow(&redirected, init).await;
    assert_eq!(formed.status, 200, "{formed:?}");
    assert_eq!(formed.body, serde_json::json!({ "ok": true }));
    wait_serving(&nodes).await;
    assert_refused(
        &post(b, "/admin/cluster/init", init).await,
        409,
        "already_initialized",
    );

    // RegisterNode: through a regular contact, for a regular node.
    let register = |contact: &str| format!(r#"{{"contact": "{contact}"}}"#);
    for (asked, contact, status, code) in [
        (a, "nobody", 404, "unknown_node"),
        (a, "t", 400, "not_regular"),
        (t, "a", 400, "temporary"),
    ] {
        let refused = post(asked, "/admin/cluster/register", &register(contact)).await;
        assert_refused(&refused, status, code);
    }
    // A node of the configuration registers again harmlessly.
    let again = post(b, "/admin/cluster/register", &register("a")).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(a.quorum.status().regular.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_nodes_shows_roles_the_leader_and_a_regular_node_that_is_gone() {
    let mut nodes = cluster(true).await;
    let (_, _, gone) = leader_and_followers(&nodes);
    let gone = nodes.iter().position(|n| n.id == gone.id).expect("ours");
    let gone_id = nodes[gone].id.to_string();
    nodes[gone].abort().await;
    let t = &nodes[3];
    eventually(
        "t sees the aborted node gone",
        Duration::from_secs(10),
        || t.cluster.node(&nodes[gone].id).is_none(),
    )
    .await;

    let list = get(t, "/admin/cluster/nodes").await;
    assert_eq!(list.status, 200, "{list:?}");
    let body = &list.body;
    assert_eq!(body["self"], "t");
    assert_eq!(body["quorum"], "serving");
    let rows = body["nodes"].as_array().expect("nodes");
    let ids: Vec<&str> = rows.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "t"]);
    let leaders: Vec<&str> = rows
        .iter()
        .filter(|n| n["leader"] == true)
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(leaders, [body["leader"].as_str().expect("a leader")]);
    for row in rows {
        let id = row["id"].as_str().expect("id");
        let role = if id == "t" { "temporary" } else { "regular" };
        assert_eq!(row["role"], role, "{row}");
        assert!(row["member_since_ms"].as_u64().is_some_and(|ms| ms > 0));
        if id == gone_id {
            assert_eq!(row["state"], "gone", "{row}");
            assert_eq!(row["load"], Value::Null);
            assert!(row["addresses"]["grpc"].as_str().is_some());
        } else {
            assert_eq!(row["state"], "online", "{row}");
            assert_eq!(row["version"], env!("CARGO_PKG_VERSION"));
            assert!(row["load"]["in_flight"].as_u64().is_some(), "{row}");
            let admin = nodes
                .iter()
                .find(|n| n.id.as_str() == id)
                .expect("ours")
                .admin;
            assert_eq!(row["addresses"]["admin"], admin.to_string());
        }
        // Sessions connected are a gateway's figure.
        assert_eq!(
            row["connected"].is_null(),
            row["kind"] != "gateway" || id == gone_id
        );
        // Only the answering node knows a gossip address.
        assert_eq!(row["addresses"]["gossip"].is_null(), id != "t", "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_runs_on_the_leader_and_only_for_a_regular_node_that_is_gone() {
    let mut nodes = cluster(true).await;
    let (l, f1, f2) = leader_and_followers(&nodes);
    let purge = |id: &str| format!(r#"{{"node": "{id}"}}"#);
    let target = f2.id.to_string();

    for (id, status, code) in [
        (target.as_str(), 409, "live"),
        ("t", 409, "live"),
        ("nobody", 404, "not_configured"),
    ] {
        assert_refused(
            &post(l, "/admin/cluster/purge", &purge(id)).await,
            status,
            code,
        );
    }
    // Off the leader (a follower, a temporary node): to the leader.
    for asked in [f1, &nodes[3]] {
        let redirected = post(asked, "/admin/cluster/purge", &purge(&target)).await;
        assert_refused(&redirected, 307, "elsewhere");
        let leader_url = url(l, "/admin/cluster/purge");
        assert_eq!(redirected.location.as_deref(), Some(leader_url.as_str()));
        assert_eq!(redirected.body["location"], leader_url.as_str());
        assert_eq!(redirected.body["node"], l.id.as_str());
    }

    let (f1_index, f2_index, l_index) = {
        let at = |id: &mesh::NodeId| nodes.iter().position(|n| &n.id == id).expect("ours");
        (at(&f1.id), at(&f2.id), at(&l.id))
    };
    nodes[f2_index].abort().await;
    let (l, f1) = (&nodes[l_index], &nodes[f1_index]);
    eventually("the aborted node is gone", Duration::from_secs(10), || {
        [l, f1].iter().all(|n| {
            n.cluster
                .node(&mesh::NodeId::new(target.as_str()))
                .is_none()
        })
    })
    .await;
    let redirected = post(f1, "/admin/cluster/purge", &purge(&target)).await;
    assert_refused(&redirected, 307, "elsewhere");
    let purged = follow(&redirected, &purge(&target)).await;
    assert_eq!(purged.status, 200, "{purged:?}");
    assert_eq!(purged.body["ok"], true);

    eventually(
        "the purged node is not listed",
        Duration::from_secs(5),
        || l.quorum.status().member(&target).is_none(),
    )
    .await;
    let list = get(l, "/admin/cluster/nodes").await;
    let ids: Vec<&str> = list.body["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(!ids.contains(&target.as_str()), "{ids:?}");
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_refused(
        &post(l, "/admin/cluster/purge", &purge(&target)).await,
        404,
        "not_configured",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_asked_of_a_third_node_is_redirected_to_the_node_named() {
    let a = TestNode::start(temporary("a", &[])).await;
    let b = TestNode::start(temporary("b", &[a.gossip])).await;
    let t = TestNode::start(temporary("t", &[a.gossip])).await;
    // Every node must know every other's admin address: the drain is asked of t and the
    // undrain of a, and each answers with b's address.
    eventually(
        "every node knows every admin address",
        Duration::from_secs(10),
        || {
            [&a, &b, &t].iter().all(|asked| {
                ["a", "b", "t"].iter().all(|id| {
                    asked
                        .cluster
                        .node(&NodeId::new(*id))
                        .is_some_and(|info| info.admin_addr.is_some())
                })
            })
        },
    )
    .await;

    let drain = r#"{"node": "b", "grace_ms": 30000}"#;
    let redirected = post(&t, "/admin/cluster/drain", drain).await;
    assert_refused(&redirected, 307, "elsewhere");
    assert_eq!(
        redirected.location.as_deref(),
        Some(url(&b, "/admin/cluster/drain").as_str())
    );
    assert_refused(
        &post(&t, "/admin/cluster/drain", r#"{"node": "nobody"}"#).await,
        404,
        "unknown_node",
    );
    assert_refused(
        &post(&t, "/admin/cluster/drain", r#"{"grace_ms": 5}"#).await,
        400,
        "bad_request",
    );

    let drained = follow(&redirected, drain).await;
    assert_eq!(drained.status, 200, "{drained:?}");
    assert_eq!(drained.body["node_id"], "b");
    assert_eq!(drained.body["state"], "draining");
    assert!(
        drained.body["grace_left_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 25_000)
    );

    let undrain = r#"{"node": "b"}"#;
    let redirected = post(&a, "/admin/cluster/undrain", undrain).await;
    assert_eq!(
        redirected.location.as_deref(),
        Some(url(&b, "/admin/cluster/undrain").as_str())
    );
    let undrained = follow(&redirected, undrain).await;
    assert_eq!(undrained.status, 200, "{undrained:?}");
    // Undraining a node that is not draining is refused.
    assert_refused(
        &post(&t, "/admin/cluster/undrain", r#"{"node": "t"}"#).await,
        409,
        "not_draining",
    );
}

/// An `Admin` client of `node`, with the cluster credential unless `credential` is false.
async fn admin_client(
    node: &TestNode,
    credential: bool,
) -> AdminClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor + Clone,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let key: tonic::metadata::AsciiMetadataValue = SECRET.parse().expect("ascii");
    AdminClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        if credential {
            request
                .metadata_mut()
                .insert(mesh::CREDENTIAL_HEADER, key.clone());
        }
        Ok(request)
    })
}

fn metadata<'a>(status: &'a tonic::Status, key: &str) -> Option<&'a str> {
    status.metadata().get(key).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_admin_service_lists_nodes_and_says_where_a_call_runs() {
    let nodes = cluster(true).await;
    let (l, f1, f2) = leader_and_followers(&nodes);
    let t = &nodes[3];

    let refused = admin_client(t, false)
        .await
        .list_nodes(admin_pb::ListNodesRequest {})
        .await
        .expect_err("no credential");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let mut at_t = admin_client(t, true).await;
    let list = at_t
        .list_nodes(admin_pb::ListNodesRequest {})
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(list.self_id, "t");
    assert_eq!(list.leader, l.id.as_str());
    assert_eq!(list.quorum, "serving");
    let roles: Vec<(&str, &str, bool)> = list
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.role.as_str(), n.leader))
        .collect();
    let expected: Vec<(&str, &str, bool)> = ["a", "b", "c", "t"]
        .into_iter()
        .map(|id| {
            let role = if id == "t" { "temporary" } else { "regular" };
            (id, role, id == l.id.as_str())
        })
        .collect();
    assert_eq!(roles, expected);
    let a = &list.nodes[0];
    assert_eq!(a.connected, Some(0), "a gateway's sessions");
    assert_eq!(
        a.addresses.as_ref().expect("addresses").admin,
        nodes[0].admin.to_string()
    );

    let mut follower = admin_client(f1, true).await;
    let refused = follower
        .purge_node(admin_pb::PurgeNodeRequest {
            node: f2.id.to_string(),
        })
        .await
        .expect_err("off the leader");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        metadata(&refused, "x-switchyard-location"),
        Some(url(l, "/admin/cluster/purge").as_str())
    );
    assert_eq!(
        metadata(&refused, "x-switchyard-grpc"),
        Some(l.grpc.to_string().as_str())
    );
    assert_eq!(metadata(&refused, "x-switchyard-error"), Some("elsewhere"));

    let refused = follower
        .drain_node(admin_pb::DrainNodeRequest {
            node: "t".into(),
            grace_ms: 0,
        })
        .await
        .expect_err("not here");
    assert_eq!(
        metadata(&refused, "x-switchyard-location"),
        Some(url(t, "/admin/cluster/drain").as_str())
    );
    let refused = admin_client(l, true)
        .await
        .purge_node(admin_pb::PurgeNodeRequest {
            node: f2.id.to_string(),
        })
        .await
        .expect_err("live");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(metadata(&refused, "x-switchyard-error"), Some("live"));
    assert_eq!(metadata(&refused, "x-switchyard-location"), None);

    let rooms = at_t
        .list_rooms(admin_pb::ListRoomsRequest {})
        .await
        .expect("listed")
        .into_inner();
    assert!(
        rooms.rooms.is_empty() && rooms.unanswered.is_empty(),
        "{rooms:?}"
    );
}
