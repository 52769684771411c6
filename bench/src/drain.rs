//! Scenario `s8-drain`: a gateway drained while its clients play. Two gateways, a login server
//! and a room server; every client logs in on gateway A and sits in a room of 10 whose first
//! member sends an operation at 20 Hz. Then A is drained through its admin API: each client,
//! told `OFFLINE`, asks to move (`MIGRATE`), follows `MIGRATE_TO` to gateway B and resumes.
//!
//! Reports the time from the drain request until A holds no session, each client's blackout
//! (its last room push before the move to its first after), and room broadcasts lost (a gap in
//! a room's `seq` at a member) and doubled (a `seq` seen twice). There is no Go counterpart:
//! the baseline cannot move a session.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use client::{Address, Client, ClientConfig, Event, Events};
use hdrhistogram::Histogram;
use prost::Message;
use proto::room::v1::{self as room, routes};
use runtime::RuntimeFlavor;

use crate::{
    Common,
    child::ChildProcess,
    report::{Report, text},
    stack::login,
    stats::{Spread, histogram},
};

/// Options of `s8-drain`.
#[derive(Args, Debug, Clone)]
pub(crate) struct DrainArgs {
    #[command(flatten)]
    common: Common,
    /// Sessions on the drained gateway (comma-separated: each is measured). One process holds
    /// them all, twice over while they move: keep it under about 9,000.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    sessions: Vec<usize>,
    /// Members per room (one of them sends).
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Operations per second per room (the scenario: 20).
    #[arg(long, default_value_t = 20.0)]
    hz: f64,
}

const TOKEN: &str = "bench-drain";
/// The gateways' resume window here: the default, so a client that takes long to reach the
/// new gateway still finds its session.
const RESUME_WINDOW_MS: &str = "30000";

/// Targets from the issue.
const MOVE_TARGET: Duration = Duration::from_secs(2);
const BLACKOUT_TARGET_MS: f64 = 100.0;

/// One round's figures.
struct Run {
    moved_in: Duration,
    blackout_p50_ms: f64,
    blackout_p99_ms: f64,
    blackout_max_ms: f64,
    lost: u64,
    doubled: u64,
    not_moved: u64,
}

pub(crate) async fn run(args: DrainArgs) -> anyhow::Result<()> {
    let mut report = Report::new(
        "s8-drain",
        format!(
            "drain of a gateway while its clients play in rooms of {} at {} Hz",
            args.room_size, args.hz
        ),
        args.common.rounds,
    );
    let table = report.table(
        "Gateway A drained through its admin API; clients move to gateway B",
        &[
            "server runtime",
            "sessions",
            "A holds nothing after, ms",
            "blackout p50 ms",
            "blackout p99 ms",
            "blackout max ms",
            "lost",
            "doubled",
            "not moved",
        ],
    );
    let mut verdicts = Vec::new();
    for &flavor in &args.common.server_flavor {
        for &sessions in &args.sessions {
            let mut runs = Vec::new();
            for round in 0..args.common.rounds {
                let run = measure(flavor, sessions, &args)
                    .await
                    .with_context(|| format!("{flavor}, {sessions} sessions, round {round}"))?;
                runs.push(run);
            }
            let spread = |f: fn(&Run) -> f64| Spread::of(runs.iter().map(f));
            let total = |f: fn(&Run) -> u64| runs.iter().map(f).sum::<u64>();
            let moved = spread(|r| r.moved_in.as_secs_f64() * 1000.0);
            let p99 = spread(|r| r.blackout_p99_ms);
            let (lost, doubled, not_moved) = (
                total(|r| r.lost),
                total(|r| r.doubled),
                total(|r| r.not_moved),
            );
            table.row(vec![
                text(flavor),
                text(sessions),
                text(moved),
                text(spread(|r| r.blackout_p50_ms)),
                text(p99),
                text(spread(|r| r.blackout_max_ms)),
                text(lost),
                text(doubled),
                text(not_moved),
            ]);
            verdicts.push((flavor, sessions, moved, p99, lost, doubled, not_moved));
            eprintln!("{flavor}: {sessions} sessions done");
        }
    }
    for (flavor, sessions, moved, p99, lost, doubled, not_moved) in verdicts {
        report.target(
            format!("{sessions} sessions moved, none lost or doubled ({flavor})"),
            format!("{not_moved} not moved, {lost} lost, {doubled} doubled"),
            not_moved == 0 && lost == 0 && doubled == 0,
        );
        if sessions >= 10_000 {
            report.target(
                format!("10k sessions moved in under 2 s ({flavor})"),
                format!("{:.0} ms", moved.median),
                moved.median < MOVE_TARGET.as_secs_f64() * 1000.0,
            );
        }
        report.target(
            format!("blackout p99 under 100 ms ({flavor}, {sessions} sessions)"),
            format!("{:.1} ms", p99.median),
            p99.median < BLACKOUT_TARGET_MS,
        );
    }
    report.note("Blackout: for each client, from the last room push it received through gateway A to the first through gateway B (it includes the room's own spacing between pushes: its floor is one period, 1/Hz). Lost and doubled are counted from each room's broadcast seq at every member. One generator process holds every client; server processes: two gateways, a login server, a room server.");
    report.finish(&args.common.out)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Last room seq received.
    last_seq: Option<u64>,
    lost: u64,
    doubled: u64,
    last_push_at: Option<Instant>,
    /// From the last push before the move to the first after it.
    blackout: Option<Duration>,
    moved: bool,
    /// Counted among the clients that moved and got a push since.
    counted: bool,
}

impl Seen {
    fn record(&mut self, payload: Bytes, moving: bool) {
        let Ok(event) = room::RoomOpEvent::decode(payload) else {
            return;
        };
        let now = Instant::now();
        match self.last_seq {
            Some(last) if event.seq <= last => self.doubled += 1,
            Some(last) => self.lost += event.seq - last - 1,
            None => {}
        }
        self.last_seq = Some(self.last_seq.map_or(event.seq, |l| l.max(event.seq)));
        if !moving
            && self.moved
            && self.blackout.is_none()
            && let Some(before) = self.last_push_at
        {
            self.blackout = Some(now - before);
        }
        self.last_push_at = Some(now);
    }
}

/// Follows one client: pushes counted; `OFFLINE` → `MIGRATE`; `MIGRATE_TO` → resume on the
/// new gateway. The client it ends on is published in `current` (senders use it).
async fn follow(
    mut client: Client,
    mut events: Events,
    current: Arc<Mutex<Client>>,
    stop: Arc<AtomicBool>,
    settled: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        if seen.blackout.is_some() && !seen.counted {
            seen.counted = true;
            settled.fetch_add(1, Ordering::Relaxed);
        }
        let event = match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => return seen,
            Err(_) if stop.load(Ordering::Relaxed) => return seen,
            Err(_) => continue,
        };
        match event {
            Event::Push(push) if push.route == routes::PUSH_OP => seen.record(push.payload, false),
            Event::Offline { .. } => {
                let asking = client.clone();
                tokio::spawn(async move { asking.migrate().await });
            }
            Event::MigrateTo { addresses, ticket } => {
                // What the old connection still delivers comes first.
                while let Some(event) = events.next().await {
                    match event {
                        Event::Push(push) if push.route == routes::PUSH_OP => {
                            seen.record(push.payload, true);
                        }
                        Event::Disconnected { .. } => break,
                        _ => {}
                    }
                }
                let Some(address) = addresses
                    .iter()
                    .find_map(|a| Address::parse(a).filter(|a| matches!(a, Address::Tcp(_))))
                else {
                    return seen;
                };
                let config = bench_config();
                let Ok((moved, moved_events, answer)) =
                    Client::resume(address, config, &ticket).await
                else {
                    return seen;
                };
                if !answer.is_ok() {
                    return seen;
                }
                seen.moved = true;
                if let Ok(mut current) = current.lock() {
                    *current = moved.clone();
                }
                (client, events) = (moved, moved_events);
            }
            _ => {}
        }
    }
}

fn bench_config() -> ClientConfig {
    ClientConfig {
        heartbeat: None,
        event_buffer: 4096,
        ..ClientConfig::default()
    }
}

async fn measure(flavor: RuntimeFlavor, sessions: usize, args: &DrainArgs) -> anyhow::Result<Run> {
    let flavor_arg = flavor.as_arg();
    let a = ChildProcess::spawn(&[
        "--flavor",
        flavor_arg,
        "serve-gateway",
        "--node-id",
        "gateway-a",
        "--admin-token",
        TOKEN,
        "--resume-window-ms",
        RESUME_WINDOW_MS,
    ])?;
    let gossip = a.get("gossip")?.to_owned();
    let b = ChildProcess::spawn(&[
        "--flavor",
        flavor_arg,
        "serve-gateway",
        "--node-id",
        "gateway-b",
        "--seed",
        &gossip,
        "--resume-window-ms",
        RESUME_WINDOW_MS,
    ])?;
    let _login = ChildProcess::spawn(&[
        "--flavor",
        flavor_arg,
        "serve-echo-logic",
        "--seed",
        &gossip,
    ])?;
    let _rooms = ChildProcess::spawn(&["--flavor", flavor_arg, "serve-room", "--seed", &gossip])?;
    let a_admin: SocketAddr = a.get("admin")?.parse()?;
    let a_tcp = Address::Tcp(a.get("tcp")?.parse()?);
    wait_for_online(a_admin, &["gateway-b"], 4).await?;

    let size = args.room_size.max(2);
    let rooms = sessions.div_ceil(size);
    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicU64::new(0));
    let mut followers = Vec::new();
    let mut senders = Vec::new();
    let config = bench_config();
    for r in 0..rooms {
        let (creator, creator_events) = login(&a_tcp, &config, &format!("d-{r}-0")).await?;
        let create = room::CreateRoom {
            max_members: size as u32,
            properties: Default::default(),
        };
        let created = creator
            .request(routes::CREATE, create.encode_to_vec())
            .await?;
        anyhow::ensure!(created.is_ok(), "create failed: {created:?}");
        let room_id = room::RoomInfo::decode(created.payload)?.room_id;
        let current = Arc::new(Mutex::new(creator.clone()));
        senders.push((current.clone(), room_id.clone()));
        followers.push(tokio::spawn(follow(
            creator,
            creator_events,
            current,
            stop.clone(),
            settled.clone(),
        )));
        let members = (1..size).filter(|m| r * size + m < sessions);
        let joins = members.map(|m| {
            let (a_tcp, config, room_id) = (a_tcp.clone(), config.clone(), room_id.clone());
            async move {
                let (client, events) = login(&a_tcp, &config, &format!("d-{r}-{m}")).await?;
                let joined = client
                    .request(routes::JOIN, room::JoinRoom { room_id }.encode_to_vec())
                    .await?;
                anyhow::ensure!(joined.is_ok(), "join failed: {joined:?}");
                anyhow::Ok((client, events))
            }
        });
        for joined in futures::future::join_all(joins).await {
            let (client, events) = joined?;
            let current = Arc::new(Mutex::new(client.clone()));
            followers.push(tokio::spawn(follow(
                client,
                events,
                current,
                stop.clone(),
                settled.clone(),
            )));
        }
    }

    // Every room sends, open loop, through whichever gateway its sender is on now.
    let every = Duration::from_secs_f64(1.0 / args.hz.max(0.1));
    let sent = Arc::new(AtomicU64::new(0));
    let mut ticking = Vec::new();
    for (i, (current, room_id)) in senders.into_iter().enumerate() {
        let (stop, sent) = (stop.clone(), sent.clone());
        ticking.push(tokio::spawn(async move {
            let mut next = Instant::now() + every.mul_f64(i as f64 / 97.0 % 1.0);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next.into()).await;
                next += every;
                let client = current.lock().map(|c| c.clone());
                let Ok(client) = client else { return };
                let op = room::RoomOp {
                    room_id: room_id.clone(),
                    payload: Bytes::from_static(b"tick"),
                };
                let sent = sent.clone();
                tokio::spawn(async move {
                    if client
                        .request(routes::OP, op.encode_to_vec())
                        .await
                        .is_ok_and(|r| r.is_ok())
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let drain_at = Instant::now();
    let (status, body) = tokio::task::spawn_blocking(move || {
        testkit::http_request(a_admin, "POST", "/admin/drain?grace_ms=30000", Some(TOKEN))
    })
    .await?;
    anyhow::ensure!(status == 200, "drain refused: {status} {body}");
    let moved_in = wait_until_empty(a_admin, drain_at, Duration::from_secs(60)).await;
    // Until every client got a push on its new gateway (or 20 s), then a little more.
    let deadline = Instant::now() + Duration::from_secs(20);
    while (settled.load(Ordering::Relaxed) as usize) < sessions && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for ticker in ticking {
        let _ = ticker.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut blackouts: Histogram<u64> = histogram();
    let (mut lost, mut doubled, mut not_moved) = (0, 0, 0);
    for follower in followers {
        let seen = follower.await?;
        lost += seen.lost;
        doubled += seen.doubled;
        match seen.blackout {
            Some(blackout) => {
                blackouts.saturating_record(blackout.as_micros() as u64);
            }
            None => not_moved += 1,
        }
    }
    drop((a, b));
    let ms = |q: f64| blackouts.value_at_quantile(q) as f64 / 1000.0;
    Ok(Run {
        moved_in,
        blackout_p50_ms: ms(0.5),
        blackout_p99_ms: ms(0.99),
        blackout_max_ms: blackouts.max() as f64 / 1000.0,
        lost,
        doubled,
        not_moved,
    })
}

/// Waits until `admin`'s node sees the named nodes online and `members` members in all.
async fn wait_for_online(admin: SocketAddr, ids: &[&str], members: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) =
            tokio::task::spawn_blocking(move || testkit::http_get(admin, "/cluster/nodes")).await?;
        let nodes: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let list = nodes["nodes"].as_array().cloned().unwrap_or_default();
        let online = |id: &str| list.iter().any(|n| n["id"] == id && n["state"] == "online");
        if list.len() >= members && ids.iter().all(|id| online(id)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster did not form: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the drained gateway's session gauge until it is 0 (or it exits): the time since
/// `since`.
async fn wait_until_empty(admin: SocketAddr, since: Instant, limit: Duration) -> Duration {
    loop {
        let (status, body) =
            tokio::task::spawn_blocking(move || testkit::http_get(admin, "/metrics"))
                .await
                .unwrap_or_default();
        let sessions = body.lines().find_map(|l| {
            l.strip_prefix(gateway::metrics::SESSIONS)?
                .trim()
                .parse::<f64>()
                .ok()
        });
        if status == 0 || sessions == Some(0.0) || since.elapsed() > limit {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
