//! Sessions that move between gateways: a resume on another gateway, and a draining gateway
//! that moves every client to another (`MIGRATE` on `OFFLINE`, or `MIGRATE_TO` when the grace
//! ends). Each client checks it got every push once, in order, with gap-free seq numbers,
//! while a logic node pushes to it throughout with its old gateway as the address.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use client::{Address, Client, ClientConfig, Event, Events};
use logic_sdk::{BindMode, LogicServer, Recipient, Reply, RunningLogic};
use mesh::NodeId;
use support::*;

/// Binds the caller to this node.
const JOIN: u32 = proto::route(4, 1);
/// The route of the numbered pushes.
const TICK: u32 = proto::route(4, 2);
/// The route of pushes that fill replay rings.
const FILL: u32 = proto::route(4, 3);

fn routes() -> LogicServer {
    test_routes("room").route(JOIN, |ctx, _| async move {
        let me = ctx.sdk().node_id();
        Ok(Reply::new("joined").bind_me(BindMode::Append, vec![me]))
    })
}

/// Two gateways and a logic node.
struct Pair {
    a: TestGateway,
    b: TestGateway,
    logic: RunningLogic,
}

impl Pair {
    async fn start(a_extra: &[&str]) -> Self {
        let a = TestGateway::start("gw-a", &[], a_extra).await;
        let b = TestGateway::start("gw-b", &[a.gossip], &[]).await;
        let logic = start_logic(routes(), "r1", &[a.gossip]).await;
        a.wait_for_nodes("room", 1).await;
        b.wait_for_nodes("room", 1).await;
        a.wait_for_nodes(gateway_kind(), 2).await;
        Pair { a, b, logic }
    }
}

/// Logs in on `address` and binds to the logic node.
async fn joined(address: Address, user: &str) -> (Client, Events) {
    let (client, events) = login(address, user).await;
    let joined = client.request(JOIN, Bytes::new()).await.expect("answered");
    assert!(joined.is_ok(), "{joined:?}");
    (client, events)
}

/// How the logic node pushes: awaiting each push (`Sdk::push`), or through its ordered
/// pipelines as a room's broadcasts go (`Sdk::push_ordered`).
#[derive(Clone, Copy)]
enum Pushing {
    Awaited,
    Ordered,
}

/// Pushes ticks 1, 2, … to `users` (addressed to gateway `at`, as a node that saw their
/// requests there would) every `every` until `stop`; returns the last tick.
fn tick(
    logic: &RunningLogic,
    users: Vec<String>,
    at: NodeId,
    every: Duration,
    stop: Arc<AtomicBool>,
    pushing: Pushing,
) -> tokio::task::JoinHandle<u64> {
    let sdk = logic.sdk.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let recipients = users.iter().map(|u| Recipient::at(u.clone(), at.clone()));
            match pushing {
                Pushing::Awaited => {
                    sdk.push(recipients, TICK, n.to_string())
                        .await
                        .expect("push sent");
                }
                Pushing::Ordered => {
                    assert_eq!(sdk.push_ordered(recipients, TICK, n.to_string()), 0);
                }
            }
            tokio::time::sleep(every).await;
        }
        sdk.flush_pushes().await;
        n
    })
}

/// What one client saw: (seq, tick) of every tick push, across its connections.
#[derive(Default, Debug)]
struct Seen {
    pushes: Vec<(u64, u64)>,
    moves: usize,
}

impl Seen {
    fn record(&mut self, push: &client::Push) {
        if push.route == TICK {
            let tick = String::from_utf8_lossy(&push.payload)
                .parse()
                .expect("a tick");
            self.pushes.push((push.seq, tick));
        }
    }

    /// Every tick from the first seen to `last`, once each, in order; seq without gaps.
    fn check(&self, who: &str, last: u64) {
        let ticks: Vec<u64> = self.pushes.iter().map(|p| p.1).collect();
        let first = ticks.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..=last).collect();
        assert_eq!(
            ticks, expected,
            "{who}: ticks lost, doubled or reordered: {:?}",
            self.pushes
        );
        for pair in self.pushes.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1, "{who}: a gap in seq");
        }
    }
}

/// Follows a client through moves: on `Offline` it asks to move at once (when `eager`), on
/// `MigrateTo` it resumes at the new gateway. Returns what it saw and the client it ends on,
/// once `done` is set and the events are quiet.
async fn follow(
    name: String,
    mut client: Client,
    mut events: Events,
    eager: bool,
    done: Arc<AtomicBool>,
) -> (Seen, Client) {
    let mut seen = Seen::default();
    loop {
        let event = match tokio::time::timeout(Duration::from_millis(300), events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("{name}: events ended"),
            Err(_) if done.load(Ordering::Relaxed) => return (seen, client),
            Err(_) => continue,
        };
        match event {
            Event::Push(push) => seen.record(&push),
            Event::Offline { .. } if eager => {
                let answer = client.migrate().await.expect("migrate answered");
                assert!(answer.is_ok(), "{name}: migrate refused: {answer:?}");
            }
            Event::MigrateTo { addresses, ticket } => {
                // Drain what the old connection still delivers, then move.
                while let Some(event) = events.next().await {
                    match event {
                        Event::Push(push) => seen.record(&push),
                        Event::Disconnected { .. } => break,
                        Event::Kicked { code, reason } => panic!("{name}: kicked {code} {reason}"),
                        _ => {}
                    }
                }
                let tcp = addresses
                    .iter()
                    .find_map(|a| Address::parse(a).filter(|a| matches!(a, Address::Tcp(_))))
                    .expect("a tcp address");
                let mut ticket = ticket;
                ticket.last_seq = seen.pushes.last().map_or(ticket.last_seq, |p| p.0);
                let (moved, moved_events, answer) =
                    Client::resume(tcp, ClientConfig::default(), &ticket)
                        .await
                        .expect("connect");
                assert!(answer.is_ok(), "{name}: resume refused: {answer:?}");
                let resumed = answer.resumed.expect("a resume answer");
                assert!(resumed.resumed, "{name}: pushes lost in the move");
                (client, events) = (moved, moved_events);
                seen.moves += 1;
            }
            Event::Kicked { code, reason } => panic!("{name}: kicked {code} {reason}"),
            Event::Disconnected { reason } => panic!("{name}: disconnected: {reason}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_gateway_with_every_push_once_and_in_order() {
    let pair = Pair::start(&[]).await;
    let (client, mut events) = joined(pair.a.tcp_address(), "ann").await;
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tick(
        &pair.logic,
        vec!["ann".into()],
        pair.a.id.clone(),
        Duration::from_millis(5),
        stop.clone(),
        Pushing::Awaited,
    );
    let mut seen = Seen::default();
    while seen.pushes.len() < 20 {
        let push = events.next_push().await.expect("connected");
        seen.record(&push);
    }
    // The network goes; the client comes back through the other gateway.
    let mut ticket = client.resume_ticket().expect("ticket");
    ticket.last_seq = seen.pushes.last().expect("pushes").0;
    client.drop_connection().await;
    drop(events);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (moved, mut events, answer) =
        Client::resume(pair.b.tcp_address(), ClientConfig::default(), &ticket)
            .await
            .expect("connect");
    assert!(answer.is_ok(), "resume refused: {answer:?}");
    assert!(answer.resumed.expect("answer").resumed);
    // Ticks keep coming, addressed to the old gateway: they follow the user.
    let resumed_at = seen.pushes.len();
    while seen.pushes.len() < resumed_at + 100 {
        let push = tokio::time::timeout(Duration::from_secs(5), events.next_push())
            .await
            .expect("ticks keep coming")
            .expect("connected");
        seen.record(&push);
    }
    stop.store(true, Ordering::Relaxed);
    let last = ticker.await.expect("ticker");
    while seen.pushes.last().expect("pushes").1 < last {
        let push = tokio::time::timeout(Duration::from_secs(5), events.next_push())
            .await
            .expect("the last ticks")
            .expect("connected");
        seen.record(&push);
    }
    seen.check("ann", last);
    // Same session, same binding, on the other gateway; the old one holds nothing.
    assert_eq!(text(&where_am_i(&moved).await), "r1");
    let presence = pair
        .logic
        .sdk
        .presence(&["ann".into()])
        .await
        .expect("presence");
    assert_eq!(presence.get("ann").map(|p| &p.0), Some(&pair.b.id));
}

/// Drains gateway A with `clients` logged in and ticking at 50 Hz; each client moves to B
/// (eagerly on `Offline`, or when the grace ends) and checks it lost and doubled nothing.
async fn drain_with_clients(
    clients: usize,
    eager: bool,
    grace_ms: &str,
    pushing: Pushing,
    fill: usize,
) -> Duration {
    // Replay rings that hold `fill` (and the ticks after it).
    let ring = (fill + 16 * 1024).to_string();
    let pair = Pair::start(&["--drain-grace-ms", grace_ms, "--replay-max-bytes", &ring]).await;
    let names: Vec<String> = (0..clients).map(|n| format!("p{n}")).collect();
    let done = Arc::new(AtomicBool::new(false));
    let mut followers = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let address = if n % 2 == 0 {
            pair.a.tcp_address()
        } else {
            pair.a.ws_address()
        };
        let (client, events) = joined(address, name).await;
        followers.push(tokio::spawn(follow(
            name.clone(),
            client,
            events,
            eager,
            done.clone(),
        )));
    }
    // `fill` bytes of pushes held in each session's replay ring, in four pushes.
    if fill > 0 {
        for _ in 0..4 {
            let recipients = names
                .iter()
                .map(|u| Recipient::at(u.clone(), pair.a.id.clone()));
            let payload = vec![b'x'; fill / 4];
            pair.logic
                .sdk
                .push(recipients, FILL, payload)
                .await
                .expect("pushed");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tick(
        &pair.logic,
        names.clone(),
        pair.a.id.clone(),
        Duration::from_millis(20),
        stop.clone(),
        pushing,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drain_started = Instant::now();
    pair.a.shutdown.cancel();
    let a_task = pair.a.task;
    let a_exited = tokio::spawn(async move {
        a_task.await.expect("gateway A").expect("gateway A runs");
        drain_started.elapsed()
    });
    let a_took = tokio::time::timeout(Duration::from_secs(30), a_exited)
        .await
        .expect("gateway A exits")
        .expect("join");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let last = ticker.await.expect("ticker");
    done.store(true, Ordering::Relaxed);
    for (name, follower) in names.iter().zip(followers) {
        let (seen, client) = follower.await.expect("follower");
        assert_eq!(seen.moves, 1, "{name} moved once");
        seen.check(name, last);
        // Still bound to the logic node, through gateway B, without a new login.
        assert_eq!(text(&where_am_i(&client).await), "r1", "{name}");
    }
    let presence = pair.logic.sdk.presence(&names).await.expect("presence");
    for name in &names {
        assert_eq!(
            presence.get(name).map(|p| &p.0),
            Some(&pair.b.id),
            "{name} is on gateway B"
        );
    }
    a_took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_moves_clients_that_ask_and_exits_before_its_grace_ends() {
    let took = drain_with_clients(20, true, "10000", Pushing::Ordered, 0).await;
    assert!(
        took < Duration::from_secs(10),
        "gateway A took {took:?}, its whole grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_ignore_offline_are_moved_when_the_grace_ends() {
    drain_with_clients(10, false, "1000", Pushing::Awaited, 0).await;
}

/// Sessions move in batches, split into calls of at most 2 MiB of snapshots (each carries its
/// replay ring): a hundred sessions each holding 128 KB of pushes for a resume (12.8 MB in all)
/// move together, every push once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_full_replay_rings_move_in_calls_a_gateway_takes() {
    drain_with_clients(100, false, "1000", Pushing::Ordered, 128_000).await;
}

/// `method path` on gateway A's admin endpoint with `token`: (status, body).
fn admin(gateway: &TestGateway, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    testkit::http_request(gateway.admin, method, path, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_started_by_the_admin_api_can_be_cancelled() {
    let pair = Pair::start(&["--admin-token", "sesame"]).await;
    let (stays, mut stays_events) = joined(pair.a.tcp_address(), "stays").await;

    // The drain operations want the token.
    assert_eq!(admin(&pair.a, "POST", "/admin/drain", None).0, 401);
    assert_eq!(admin(&pair.a, "POST", "/admin/drain", Some("wrong")).0, 401);
    assert_eq!(
        admin(&pair.b, "POST", "/admin/drain", Some("sesame")).0,
        403,
        "B has no token"
    );
    assert_eq!(
        admin(
            &pair.a,
            "POST",
            "/admin/drain?grace_ms=soon",
            Some("sesame")
        )
        .0,
        400
    );

    let (status, body) = admin(
        &pair.a,
        "POST",
        "/admin/drain?grace_ms=20000",
        Some("sesame"),
    );
    assert_eq!(status, 200, "{body}");
    let drain: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(drain["state"], "draining");
    assert_eq!(drain["node_id"], "gw-a");
    // The client is told; a new client is turned away while A drains.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stays_events.next()).await {
            Ok(Some(Event::Offline { grace })) => {
                assert!(grace > Duration::from_secs(15), "{grace:?}");
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no offline notice: {other:?}"),
        }
    }
    eventually("A turns new clients away", Duration::from_secs(5), || {
        let (_, body) = admin(&pair.a, "GET", "/admin/drain", Some("sesame"));
        body.contains("\"draining\"")
    })
    .await;
    let (turned, mut turned_events) = Client::connect(pair.a.tcp_address()).await.expect("tcp");
    match tokio::time::timeout(Duration::from_secs(5), turned_events.next()).await {
        Ok(Some(Event::Kicked { code, .. })) => {
            assert_eq!(code, client::ErrorCode::ServerDraining as u32);
        }
        other => panic!(
            "a new client was not turned away: {other:?} {:?}",
            turned.resume_ticket()
        ),
    }

    // Cancelled: A is back online, keeps the client that stayed, and takes new ones.
    let (status, body) = admin(&pair.a, "POST", "/admin/undrain", Some("sesame"));
    assert_eq!(status, 200, "{body}");
    eventually("A is online again", Duration::from_secs(5), || {
        admin(&pair.a, "GET", "/admin/drain", Some("sesame"))
            .1
            .contains("\"online\"")
    })
    .await;
    assert_eq!(text(&where_am_i(&stays).await), "r1");
    pair.b.wait_for_nodes(gateway_kind(), 2).await;
    let (fresh, _events) = joined(pair.a.tcp_address(), "fresh").await;
    assert_eq!(text(&where_am_i(&fresh).await), "r1");
    // Nothing to cancel now.
    assert_eq!(
        admin(&pair.a, "POST", "/admin/undrain", Some("sesame")).0,
        409
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_grpc_service_drains_with_the_cluster_credential() {
    use proto::admin::v1::{self as admin_pb, admin_client::AdminClient};
    let pair = Pair::start(&[]).await;
    let (_client, _events) = joined(pair.a.tcp_address(), "ann").await;
    let mut admin = AdminClient::new(pair.a.grpc_channel().await);
    // What it holds is its published load (republished every 100 ms in these tests).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = admin
            .status(admin_pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(status.state, "online");
        if status.holding == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "holding {}", status.holding);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = admin
        .drain(admin_pb::DrainRequest { grace_ms: 30_000 })
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(status.state, "draining");
    assert!(status.grace_left_ms > 25_000);
    let status = admin
        .undrain(admin_pb::UndrainRequest {})
        .await
        .expect("undrain")
        .into_inner();
    assert_eq!(status.node_id, "gw-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrate_with_nowhere_to_go_is_refused_and_the_session_stays() {
    let gateway = TestGateway::start("gw-alone", &[], &[]).await;
    let _logic = start_logic(routes(), "r1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    // Before login there is no session to move.
    let (anonymous, _events) = Client::connect(gateway.tcp_address()).await.expect("tcp");
    let answer = anonymous.migrate().await.expect("answered");
    assert_eq!(answer.code(), Some(client::ErrorCode::MigrationUnavailable));
    // No other gateway: refused, and the session goes on here.
    let (client, _events) = joined(gateway.tcp_address(), "solo").await;
    let answer = client.migrate().await.expect("answered");
    assert_eq!(answer.code(), Some(client::ErrorCode::MigrationUnavailable));
    assert_eq!(text(&where_am_i(&client).await), "r1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrate_asked_twice_moves_the_session_once() {
    let pair = Pair::start(&[]).await;
    let (client, mut events) = joined(pair.a.tcp_address(), "twice").await;
    let (first, second) = tokio::join!(client.migrate(), client.migrate());
    assert!(first.expect("answered").is_ok());
    // The second ask joins the move (answered OK), unless the move was so quick that the
    // connection closed before the gateway read it.
    if let Ok(second) = second {
        assert!(second.is_ok(), "{second:?}");
    }
    let ticket = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("MIGRATE_TO within 5 s")
            .expect("events")
        {
            Event::MigrateTo { ticket, .. } => break ticket,
            Event::Unsolicited(answer) => panic!("a second answer: {answer:?}"),
            Event::Kicked { code, reason } => panic!("kicked {code} {reason}"),
            _ => {}
        }
    };
    let (moved, _events, answer) =
        Client::resume(pair.b.tcp_address(), ClientConfig::default(), &ticket)
            .await
            .expect("connect");
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(text(&where_am_i(&moved).await), "r1");
}
