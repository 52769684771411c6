//! The client library's [`Session`] reconnecting by itself, against real gateways over real
//! sockets: a dropped connection is resumed with every push once and in order; a draining
//! gateway's move is followed to the other gateway without a new login; a resume that comes
//! too late for the gateway's replay buffer says so; and a session with nowhere to go ends
//! with a reason.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use client::{
    Address, ClientError, ErrorCode, Session, SessionConfig, SessionEvent, SessionEvents,
};
use logic_sdk::{BindMode, LogicServer, Recipient, Reply, RunningLogic};
use mesh::NodeId;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Binds the caller to this node.
const JOIN: u32 = proto::route(4, 1);
/// The route of the numbered pushes.
const TICK: u32 = proto::route(4, 2);

/// Login (counted: a resumed session logs in once), where, and join.
fn routes(logins: Arc<AtomicUsize>) -> LogicServer {
    LogicServer::new("room")
        .public_route(LOGIN, move |_, name| {
            logins.fetch_add(1, Ordering::Relaxed);
            async move { Ok(Reply::default().login(String::from_utf8_lossy(&name))) }
        })
        .route(WHERE, |ctx, _| async move {
            Ok(Reply::new(ctx.sdk().node_id().to_string()))
        })
        .route(JOIN, |ctx, _| async move {
            let me = ctx.sdk().node_id();
            Ok(Reply::new("joined").bind_me(BindMode::Append, vec![me]))
        })
}

/// Gateways and a logic node that counts logins.
struct Cluster {
    gateways: Vec<TestGateway>,
    logic: RunningLogic,
    logins: Arc<AtomicUsize>,
}

impl Cluster {
    /// One gateway per entry of `extras` (its extra flags); the first is the seed.
    async fn start(extras: &[&[&str]]) -> Self {
        let mut gateways: Vec<TestGateway> = Vec::new();
        for (n, extra) in extras.iter().enumerate() {
            let seeds: Vec<SocketAddr> = gateways.first().map(|g| g.gossip).into_iter().collect();
            gateways.push(TestGateway::start(&format!("gw-{n}"), &seeds, extra).await);
        }
        let logins = Arc::new(AtomicUsize::new(0));
        let logic = start_logic(routes(logins.clone()), "r1", &[gateways[0].gossip]).await;
        for gateway in &gateways {
            gateway.wait_for_nodes("room", 1).await;
            gateway.wait_for_nodes(gateway_kind(), extras.len()).await;
        }
        Cluster {
            gateways,
            logic,
            logins,
        }
    }

    fn logins(&self) -> usize {
        self.logins.load(Ordering::Relaxed)
    }

    /// The gateway the cluster sees `user` on.
    async fn gateway_of(&self, user: &str) -> Option<NodeId> {
        let presence = self
            .logic
            .sdk
            .presence(&[user.into()])
            .await
            .expect("presence");
        presence.get(user).map(|p| p.0.clone())
    }

    /// Pushes ticks 1, 2, … to `user` every 5 ms until the returned flag is set (addressed to
    /// gateway `at` when given, as a node that saw the user's requests there would); the
    /// task returns the last tick.
    fn tick(
        &self,
        user: &str,
        at: Option<NodeId>,
    ) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
        let (sdk, user) = (self.logic.sdk.clone(), user.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            while !stopped.load(Ordering::Relaxed) {
                n += 1;
                let to = match &at {
                    Some(gateway) => Recipient::at(user.clone(), gateway.clone()),
                    None => Recipient::from(user.clone()),
                };
                sdk.push([to], TICK, n.to_string())
                    .await
                    .expect("push sent");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        });
        (stop, task)
    }
}

/// A session's events as the application sees them: ticks recorded, the rest in order.
struct Watcher {
    events: SessionEvents,
    /// (seq, tick) of every tick push.
    ticks: Vec<(u64, u64)>,
}

impl Watcher {
    /// The next event: `None` for a tick (recorded).
    async fn step(&mut self) -> Option<SessionEvent> {
        let event = tokio::time::timeout(Duration::from_secs(15), self.events.next())
            .await
            .expect("an event in time")
            .expect("events go on");
        match event {
            SessionEvent::Push(push) if push.route == TICK => {
                self.record(&push);
                None
            }
            other => Some(other),
        }
    }

    /// The next event that is not a tick (recording ticks on the way).
    async fn next_other(&mut self) -> SessionEvent {
        loop {
            if let Some(event) = self.step().await {
                return event;
            }
        }
    }

    /// Waits for `count` more ticks; any other event is a failure.
    async fn more_ticks(&mut self, count: usize) {
        let wanted = self.ticks.len() + count;
        while self.ticks.len() < wanted {
            if let Some(event) = self.step().await {
                panic!("unexpected {event:?}");
            }
        }
    }

    /// Records ticks until tick `last` arrived; any other event is a failure.
    async fn until_tick(&mut self, last: u64) {
        while self.ticks.last().map_or(0, |t| t.1) < last {
            if let Some(event) = self.step().await {
                panic!("unexpected {event:?} before tick {last}");
            }
        }
    }

    fn record(&mut self, push: &client::Push) {
        let tick = String::from_utf8_lossy(&push.payload)
            .parse()
            .expect("a tick");
        self.ticks.push((push.seq, tick));
    }

    /// Every tick from the first seen to `last`, once each, in order; seq without gaps.
    fn check(&self, last: u64) {
        let ticks: Vec<u64> = self.ticks.iter().map(|t| t.1).collect();
        let first = ticks.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..=last).collect();
        assert_eq!(
            ticks, expected,
            "ticks lost, doubled or reordered: {:?}",
            self.ticks
        );
        for pair in self.ticks.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1, "a gap in seq: {:?}", self.ticks);
        }
    }
}

/// Connects a session to `addresses`, checks its first event, logs in as `user` and joins the
/// logic node.
async fn joined(addresses: Vec<Address>, config: SessionConfig, user: &str) -> (Session, Watcher) {
    let first = addresses[0].clone();
    let (session, events) = Session::connect(addresses, config).await.expect("connect");
    let mut watcher = Watcher {
        events,
        ticks: Vec::new(),
    };
    assert_eq!(
        watcher.next_other().await,
        SessionEvent::Connected {
            address: first,
            reconnect: false,
            resumed: false
        }
    );
    let login = session
        .request(LOGIN, user.to_owned())
        .await
        .expect("login");
    assert!(login.is_ok(), "{login:?}");
    let join = session.request(JOIN, Bytes::new()).await.expect("join");
    assert!(join.is_ok(), "{join:?}");
    (session, watcher)
}

/// A TCP proxy to a gateway whose connections the test can cut, as a network failure would
/// (both sides see the connection close, no goodbye), and which can refuse new ones (they
/// are accepted and closed at once).
struct Proxy {
    address: Address,
    open: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = Address::Tcp(listener.local_addr().expect("bound"));
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let (accepting, cuts) = (open.clone(), cut.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                if !accepting.load(Ordering::Relaxed) {
                    continue;
                }
                let cut = cuts.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Proxy {
            address,
            open,
            cut,
            task,
        }
    }

    /// Cuts every connection through the proxy and refuses new ones until [`Proxy::reopen`].
    fn fail(&self) {
        self.open.store(false, Ordering::Relaxed);
        let old = std::mem::take(&mut *self.cut.lock().expect("lock"));
        old.cancel();
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn quick(resume_window: Duration) -> SessionConfig {
    SessionConfig {
        resume_window,
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..SessionConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_resumed_by_the_session_with_every_push_once_and_in_order() {
    let cluster = Cluster::start(&[&[]]).await;
    let gateway = &cluster.gateways[0];
    let (session, mut watcher) =
        joined(vec![gateway.tcp_address()], SessionConfig::default(), "ann").await;
    let (stop, ticker) = cluster.tick("ann", None);
    watcher.more_ticks(20).await;

    // The network goes; a request made meanwhile waits for the session to come back.
    session.drop_connection().await;
    let asking = session.clone();
    let meanwhile = tokio::spawn(async move { asking.request(WHERE, Bytes::new()).await });
    match watcher.next_other().await {
        SessionEvent::Disconnected {
            reconnect: true, ..
        } => {}
        other => panic!("expected a disconnection with reconnect, got {other:?}"),
    }
    assert_eq!(
        watcher.next_other().await,
        SessionEvent::Connected {
            address: gateway.tcp_address(),
            reconnect: true,
            resumed: true
        }
    );
    let answer = meanwhile
        .await
        .expect("join")
        .expect("answered after the reconnection");
    assert_eq!(text(&answer), "r1", "still bound to the logic node");

    watcher.more_ticks(50).await;
    stop.store(true, Ordering::Relaxed);
    let last = ticker.await.expect("ticker");
    watcher.until_tick(last).await;
    watcher.check(last);
    assert_eq!(cluster.logins(), 1, "resumed, not logged in again");

    // A goodbye ends it: the last event says so.
    session.close().await;
    match watcher.next_other().await {
        SessionEvent::Disconnected {
            reconnect: false,
            reason,
        } => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("expected the final disconnection, got {other:?}"),
    }
    assert!(watcher.events.next().await.is_none());
    assert_eq!(
        session.request(WHERE, Bytes::new()).await,
        Err(ClientError::Closed)
    );
}

/// Drains gateway 0 through its admin API while the session (logged in there, with both
/// gateways' WebSocket addresses) receives ticks addressed to it; the session follows the
/// move to gateway 1 by itself. `move_on_offline` off: it waits for the grace's end.
async fn drain_is_followed(move_on_offline: bool) {
    let token = "sesame";
    let cluster = Cluster::start(&[&["--admin-token", token], &[]]).await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let config = SessionConfig {
        move_on_offline,
        ..quick(Duration::from_secs(30))
    };
    let (session, mut watcher) = joined(vec![a.ws_address(), b.ws_address()], config, "bea").await;
    let (stop, ticker) = cluster.tick("bea", Some(a.id.clone()));
    watcher.more_ticks(20).await;

    let (status, body) =
        testkit::http_request(a.admin, "POST", "/admin/drain?grace_ms=1500", Some(token));
    assert_eq!(status, 200, "{body}");
    match watcher.next_other().await {
        SessionEvent::Offline { moving, .. } => assert_eq!(moving, move_on_offline),
        other => panic!("expected the offline notice, got {other:?}"),
    }
    match watcher.next_other().await {
        SessionEvent::Disconnected {
            reconnect: true,
            reason,
        } => assert!(reason.contains("moved"), "{reason}"),
        other => panic!("expected a disconnection with reconnect, got {other:?}"),
    }
    match watcher.next_other().await {
        SessionEvent::Connected {
            address,
            reconnect: true,
            resumed: true,
        } => assert_eq!(address, b.ws_address(), "resumed where the gateway sent it"),
        other => panic!("expected the reconnection, got {other:?}"),
    }
    watcher.more_ticks(50).await;
    stop.store(true, Ordering::Relaxed);
    let last = ticker.await.expect("ticker");
    watcher.until_tick(last).await;
    watcher.check(last);

    // Same user and binding, on gateway B, without a new login.
    assert_eq!(
        text(&session.request(WHERE, Bytes::new()).await.expect("where")),
        "r1"
    );
    assert_eq!(cluster.gateway_of("bea").await, Some(b.id.clone()));
    assert_eq!(cluster.logins(), 1, "moved, not logged in again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_follows_its_draining_gateway_to_the_other_one_without_a_new_login() {
    drain_is_followed(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_waits_for_the_grace_to_end_is_moved_and_follows() {
    drain_is_followed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_the_replay_buffer_moved_on_says_pushes_were_lost() {
    let cluster = Cluster::start(&[&["--replay-max-pushes", "3"]]).await;
    let proxy = Proxy::start(cluster.gateways[0].tcp).await;
    let (_session, mut watcher) = joined(
        vec![proxy.address.clone()],
        quick(Duration::from_secs(30)),
        "cy",
    )
    .await;
    let push = |n: u64| {
        let sdk = cluster.logic.sdk.clone();
        async move {
            sdk.push([Recipient::from("cy")], TICK, n.to_string())
                .await
                .expect("push sent");
        }
    };
    push(1).await;
    watcher.more_ticks(1).await;

    // The network fails and stays down while ten pushes come: more than the gateway holds.
    proxy.fail();
    match watcher.next_other().await {
        SessionEvent::Disconnected {
            reconnect: true, ..
        } => {}
        other => panic!("expected a disconnection with reconnect, got {other:?}"),
    }
    for n in 2..=11 {
        push(n).await;
    }
    proxy.reopen();
    assert_eq!(
        watcher.next_other().await,
        SessionEvent::Connected {
            address: proxy.address.clone(),
            reconnect: true,
            resumed: false
        },
        "the loss is reported"
    );
    // What follows is what the gateway still held, in order, then live pushes.
    watcher.until_tick(11).await;
    push(12).await;
    watcher.until_tick(12).await;
    let after: Vec<u64> = watcher.ticks.iter().map(|t| t.1).skip(1).collect();
    assert_eq!(after, vec![9, 10, 11, 12], "{:?}", watcher.ticks);
    assert_eq!(
        watcher.ticks[1].0, 9,
        "seq goes on from the oldest push held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_no_gateway_resumes_within_its_window_ends_with_a_reason() {
    let cluster = Cluster::start(&[&[]]).await;
    let proxy = Proxy::start(cluster.gateways[0].tcp).await;
    let window = Duration::from_millis(1500);
    let (session, mut watcher) = joined(vec![proxy.address.clone()], quick(window), "dan").await;

    proxy.fail();
    let lost = tokio::time::Instant::now();
    match watcher.next_other().await {
        SessionEvent::Disconnected {
            reconnect: true, ..
        } => {}
        other => panic!("expected a disconnection with reconnect, got {other:?}"),
    }
    match watcher.next_other().await {
        SessionEvent::Disconnected {
            reconnect: false,
            reason,
        } => assert!(
            reason.contains("no gateway resumed the session"),
            "{reason}"
        ),
        other => panic!("expected the final disconnection, got {other:?}"),
    }
    assert!(
        lost.elapsed() >= window,
        "gave up after {:?}",
        lost.elapsed()
    );
    assert!(watcher.events.next().await.is_none(), "the last event");
    assert_eq!(
        session.request(WHERE, Bytes::new()).await,
        Err(ClientError::Closed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_only_gateway_shuts_down_ends_with_a_reason() {
    let cluster = Cluster::start(&[&[]]).await;
    let gateway = &cluster.gateways[0];
    let (_session, mut watcher) = joined(
        vec![gateway.tcp_address()],
        quick(Duration::from_secs(30)),
        "eve",
    )
    .await;

    gateway.shutdown.cancel();
    match watcher.next_other().await {
        SessionEvent::Offline { moving: true, .. } => {}
        other => panic!("expected the offline notice, got {other:?}"),
    }
    // Nowhere to move: the move is refused, and the grace's end ends the session.
    match watcher.next_other().await {
        SessionEvent::Kicked { code, .. } => assert_eq!(code, ErrorCode::ServerDraining as u32),
        other => panic!("expected the kick, got {other:?}"),
    }
    match watcher.next_other().await {
        SessionEvent::Disconnected {
            reconnect: false,
            reason,
        } => assert!(reason.contains("kicked"), "{reason}"),
        other => panic!("expected the final disconnection, got {other:?}"),
    }
}
