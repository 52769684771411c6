//! The logic server as the gateway sees it: typed, stateful handlers called over a real gRPC
//! connection from another node of the cluster.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use logic_sdk::{Context, LogicError, LogicServer, Reply, RunningLogic, Sdk, SessionClosed};
use mesh::NodeId;
use prost::Message;
use proto::{
    client::v1::ErrorCode,
    logic::v1::{self as pb, logic_client::LogicClient},
    room::v1::{OpAccepted, RoomRef},
};
use runtime::{Listeners, Node, NodeConfig};
use testkit::eventually;

const LOGIN: u32 = proto::route(1, 1);
const COUNT: u32 = proto::route(2, 1);

/// The state every handler of the test server shares.
#[derive(Default)]
struct Counter {
    count: AtomicU64,
    closed: Mutex<Vec<String>>,
}

/// Logs in as the room id it is given (any name will do for a test).
async fn login(_: Arc<Counter>, _: Context, request: RoomRef) -> Result<Reply, LogicError> {
    Ok(Reply::default().login(request.room_id))
}

/// Counts calls; answers with the count so far.
async fn count(counter: Arc<Counter>, _: Context, _: RoomRef) -> Result<OpAccepted, LogicError> {
    let seq = counter.count.fetch_add(1, Ordering::Relaxed) + 1;
    Ok(OpAccepted { seq })
}

async fn closed(counter: Arc<Counter>, closed: SessionClosed, _: Sdk) {
    let user = closed.user_id.unwrap_or_default();
    counter
        .closed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(user);
}

fn config(id: &str, kind: &str, seeds: &[SocketAddr]) -> NodeConfig {
    let mut config = NodeConfig::new(kind);
    config.id = NodeId::new(id);
    config.secret = "logic-sdk-test-secret".into();
    config.gossip.cluster_id = format!("logic-sdk-{}", std::process::id());
    config.gossip.seeds = seeds.iter().map(ToString::to_string).collect();
    config.gossip.gossip_interval = Duration::from_millis(50);
    config.gossip.failure_detection = Duration::from_secs(1);
    config.drain_grace = Duration::from_secs(1);
    config
}

/// The counting server, and a node in its cluster calling it as a gateway would.
struct Setup {
    counter: Arc<Counter>,
    logic: RunningLogic,
    caller: Node,
}

impl Setup {
    async fn start(name: &str) -> Self {
        let mut caller = Node::start(
            config(&format!("{name}-caller"), "caller", &[]),
            Listeners::loopback().await.expect("bind"),
            |_| {},
        )
        .await
        .expect("caller starts");
        caller.serve(|routes| routes).await.expect("caller serves");
        let counter = Arc::new(Counter::default());
        let logic = LogicServer::with_state("counter", counter.clone())
            .handle_public(LOGIN, login)
            .handle(COUNT, count)
            .handle_session_closed(closed)
            .start(
                config(
                    &format!("{name}-logic"),
                    "counter",
                    &[caller.addrs().gossip],
                ),
                Listeners::loopback().await.expect("bind"),
            )
            .await
            .expect("logic server starts");
        let cluster = caller.cluster().clone();
        let logic_id = logic.sdk.node_id();
        eventually(
            "the caller sees the logic server",
            Duration::from_secs(5),
            || cluster.node(&logic_id).is_some(),
        )
        .await;
        Setup {
            counter,
            logic,
            caller,
        }
    }

    fn client(&self) -> LogicClient<mesh::PeerChannel> {
        let channel = self
            .caller
            .mesh()
            .peer_channel(&self.logic.sdk.node_id())
            .expect("a member");
        LogicClient::new(channel)
    }

    async fn call(&self, route: u32, user: &str, payload: Vec<u8>) -> pb::LogicResponse {
        let request = pb::LogicRequest {
            route,
            payload: payload.into(),
            session_id: 7,
            user_id: user.to_owned(),
            gateway_node: "gw".to_owned(),
            attributes: HashMap::new(),
        };
        self.client()
            .handle(request)
            .await
            .expect("answered")
            .into_inner()
    }

    fn count(&self) -> u64 {
        self.counter.count.load(Ordering::Relaxed)
    }
}

fn room_ref(id: &str) -> Vec<u8> {
    RoomRef {
        room_id: id.to_owned(),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handlers_share_the_state_and_answer_with_protobuf_messages() {
    let setup = Setup::start("typed").await;
    for expected in [1, 2, 3] {
        let response = setup.call(COUNT, "ann", room_ref("any")).await;
        assert_eq!(response.status, 0, "{response:?}");
        let reply = OpAccepted::decode(response.payload).expect("an OpAccepted");
        assert_eq!(reply.seq, expected, "one counter behind every call");
    }
    // A handler answering a `Reply` carries its effects to the gateway.
    let response = setup.call(LOGIN, "", room_ref("bob")).await;
    assert_eq!(
        (response.status, response.login_user_id.as_str()),
        (0, "bob")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_request_is_refused_and_its_handler_does_not_run() {
    let setup = Setup::start("undecodable").await;
    let response = setup.call(COUNT, "ann", vec![0xff, 0xff, 0xff]).await;
    assert_eq!(response.status, ErrorCode::BadRequest as u32);
    assert_eq!(response.error, "undecodable request payload");
    assert_eq!(setup.count(), 0, "the handler did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_route_needs_a_login_unless_it_is_public() {
    let setup = Setup::start("login").await;
    let response = setup.call(COUNT, "", room_ref("any")).await;
    assert_eq!(response.status, ErrorCode::LoginRequired as u32);
    assert_eq!(setup.count(), 0);
    let response = setup.call(LOGIN, "", room_ref("cy")).await;
    assert_eq!(response.status, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_closed_hook_receives_the_state() {
    let setup = Setup::start("closed").await;
    setup
        .client()
        .session_closed(pb::SessionEnded {
            session_id: 7,
            user_id: "dee".into(),
            gateway_node: "gw".into(),
            reason: "disconnected".into(),
        })
        .await
        .expect("answered");
    let closed = setup
        .counter
        .closed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(closed, vec!["dee".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logic_server_cut_off_from_the_majority_serves_nobody() {
    // Two regular nodes (the caller and `other`); the logic server is temporary.
    let regular = |id: &str, seeds: &[SocketAddr]| {
        let mut config = config(id, "caller", seeds);
        config.quorum.regular = true;
        config
    };
    let mut first = regular("fenced-caller", &[]);
    first.quorum.init = vec!["fenced-caller".into(), "fenced-other".into()];
    let mut caller = Node::start(first, Listeners::loopback().await.expect("bind"), |_| {})
        .await
        .expect("caller starts");
    caller.serve(|routes| routes).await.expect("caller serves");
    let seed = [caller.addrs().gossip];
    let mut other = Node::start(
        regular("fenced-other", &seed),
        Listeners::loopback().await.expect("bind"),
        |_| {},
    )
    .await
    .expect("other starts");
    other.serve(|routes| routes).await.expect("other serves");
    let counter = Arc::new(Counter::default());
    let logic = LogicServer::with_state("counter", counter.clone())
        .handle(COUNT, count)
        .start(
            config("fenced-logic", "counter", &seed),
            Listeners::loopback().await.expect("bind"),
        )
        .await
        .expect("logic server starts");
    let serving = mesh::QuorumState::Serving;
    eventually("everyone serves", Duration::from_secs(10), || {
        caller.quorum().status().state == serving
            && logic.sdk.cluster().self_info().quorum == serving
    })
    .await;
    let channel = caller
        .mesh()
        .peer_channel(&logic.sdk.node_id())
        .expect("a member");
    let call = || {
        let mut client = LogicClient::new(channel.clone());
        async move {
            let request = pb::LogicRequest {
                route: COUNT,
                payload: room_ref("any").into(),
                session_id: 7,
                user_id: "ann".into(),
                gateway_node: "gw".into(),
                attributes: HashMap::new(),
            };
            client.handle(request).await.expect("answered").into_inner()
        }
    };
    assert_eq!(call().await.status, 0);

    // `other` dies: one regular node of two is no majority.
    other.abort().await;
    eventually("the logic server is fenced", Duration::from_secs(6), || {
        logic.sdk.cluster().is_fenced()
    })
    .await;
    let refused = call().await;
    assert_eq!(refused.status, ErrorCode::Partitioned as u32, "{refused:?}");
    assert_eq!(
        counter.count.load(Ordering::Relaxed),
        1,
        "the handler did not run"
    );
}
