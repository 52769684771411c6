//! Scenario `s8-drain`: a gateway drained while its clients play. Two gateways, a login server
//! and a room server; every client logs in on gateway A and sits in a room of 10 whose first
//! member sends an operation at 20 Hz. Then A is drained through its admin API: each client,
//! told `OFFLINE`, asks to move (`MIGRATE`), follows `MIGRATE_TO` to gateway B and resumes.
//!
//! Reports the time from the drain request until A holds no session, each client's blackout
//! (its last room push before the move to its first after), and room broadcasts lost (a gap in
//! a room's `seq` at a member) and doubled (a `seq` seen twice). There is no Go counterpart:
//! the baseline cannot move a session.
//!
//! The clients live in generator processes (the hidden `drain-players` subcommand, each with a
//! share of whole rooms, connecting from its own 127.0.0.x), so 10,000 sessions fit: the parent
//! tells them to set up (`SETUP`), asks how many moved and got a push since (`SETTLED`), and to
//! stop and report (`STOP`); each answers with one line.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
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
use serde::{Deserialize, Serialize};

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
    /// Sessions on the drained gateway (comma-separated: each is measured).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    sessions: Vec<usize>,
    /// Sessions per generator process (whole rooms each).
    #[arg(long, default_value_t = 2500)]
    per_process: usize,
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
    /// The blackout's parts, p50 and p99 each: moving at A until told `MIGRATE_TO`, reconnect
    /// and resume at B, then the first push there.
    phases_ms: [[f64; 2]; 3],
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
    let (mut verdicts, mut phase_rows) = (Vec::new(), Vec::new());
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
            let mut phase_row = vec![text(flavor), text(sessions)];
            for part in 0..3 {
                for q in 0..2 {
                    phase_row.push(text(Spread::of(runs.iter().map(|r| r.phases_ms[part][q]))));
                }
            }
            phase_rows.push(phase_row);
            eprintln!("{flavor}: {sessions} sessions done");
        }
    }
    let phases = report.table(
        "Where the blackout goes, ms (per client: last push via A → MIGRATE_TO → resumed at B → first push via B)",
        &[
            "server runtime",
            "sessions",
            "moving at A p50",
            "p99",
            "reconnect + resume p50",
            "p99",
            "first push at B p50",
            "p99",
        ],
    );
    for row in phase_rows {
        phases.row(row);
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
    report.note(format!("Blackout: for each client, from the last room push it received through gateway A to the first through gateway B (it includes the room's own spacing between pushes: its floor is one period, 1/Hz). Lost and doubled are counted from each room's broadcast seq at every member. Clients live in generator processes of at most {} sessions each (multi-thread runtime); server processes: two gateways, a login server, a room server.", args.per_process));
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
    /// The blackout's parts: last push via A → `MIGRATE_TO`, → resumed at B, → first push.
    told_at: Option<Instant>,
    resumed_at: Option<Instant>,
    phases: Option<[Duration; 3]>,
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
            if let (Some(told), Some(resumed)) = (self.told_at, self.resumed_at) {
                let told = told.max(before);
                self.phases = Some([told - before, resumed - told, now - resumed]);
            }
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
    config: ClientConfig,
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
                seen.told_at = Some(Instant::now());
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
                let Ok((moved, moved_events, answer)) =
                    Client::resume(address, config.clone(), &ticket).await
                else {
                    return seen;
                };
                if !answer.is_ok() {
                    return seen;
                }
                seen.resumed_at = Some(Instant::now());
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

/// Options of the hidden `drain-players` subcommand: one generator process's share.
#[derive(Args, Debug)]
pub(crate) struct PlayersArgs {
    /// Gateway A, `tcp://…`.
    #[arg(long)]
    address: String,
    /// Index of this share's first room (user ids are `d-<room>-<member>`).
    #[arg(long)]
    first_room: usize,
    /// Members of each of this share's rooms (comma-separated; one sends).
    #[arg(long, value_delimiter = ',')]
    rooms: Vec<usize>,
    /// Operations per second per room.
    #[arg(long)]
    hz: f64,
    /// Source address of every connection.
    #[arg(long)]
    source: IpAddr,
}

/// What one generator process saw.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Share {
    blackouts_us: Vec<u64>,
    /// Per moved client: its blackout's three parts (see `Seen`), microseconds.
    phases_us: Vec<[u64; 3]>,
    lost: u64,
    doubled: u64,
    not_moved: u64,
}

/// The `drain-players` process: sets up its rooms on `SETUP`, answers `SETTLED` with how many
/// of its clients moved and got a push since, and on `STOP` stops and reports its [`Share`].
#[allow(clippy::print_stdout)] // stdout is the protocol with the parent
pub(crate) async fn serve_players(args: PlayersArgs) -> anyhow::Result<()> {
    let mut config = bench_config();
    config.local_ip = Some(args.source);
    let address = Address::parse(&args.address).context("--address")?;
    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicU64::new(0));
    let (mut followers, mut ticking) = (Vec::new(), Vec::new());
    println!("READY");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "SETUP" => {
                let mut senders = Vec::new();
                for (i, &size) in args.rooms.iter().enumerate() {
                    let room = args.first_room + i;
                    let (room_id, players) = set_up_room(&address, &config, room, size).await?;
                    for (j, (client, events)) in players.into_iter().enumerate() {
                        let current = Arc::new(Mutex::new(client.clone()));
                        // The room's creator sends, through whichever gateway it is on.
                        if j == 0 {
                            senders.push((current.clone(), room_id.clone()));
                        }
                        followers.push(tokio::spawn(follow(
                            client,
                            events,
                            current,
                            config.clone(),
                            stop.clone(),
                            settled.clone(),
                        )));
                    }
                }
                ticking = start_ticking(senders, args.hz, &stop);
                println!("{{\"players\":{}}}", followers.len());
            }
            "SETTLED" => println!("{}", settled.load(Ordering::Relaxed)),
            "STOP" => {
                stop.store(true, Ordering::Relaxed);
                for ticker in ticking.drain(..) {
                    let _ = ticker.await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut share = Share::default();
                for follower in followers.drain(..) {
                    let seen = follower.await?;
                    share.lost += seen.lost;
                    share.doubled += seen.doubled;
                    match seen.blackout {
                        Some(blackout) => share.blackouts_us.push(blackout.as_micros() as u64),
                        None => share.not_moved += 1,
                    }
                    if let Some(phases) = seen.phases {
                        share.phases_us.push(phases.map(|p| p.as_micros() as u64));
                    }
                }
                println!("{}", serde_json::to_string(&share)?);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Logs in `size` players and puts them in one new room (the first creates it); the room's
/// id and the players, its creator first.
async fn set_up_room(
    address: &Address,
    config: &ClientConfig,
    room: usize,
    size: usize,
) -> anyhow::Result<(String, Vec<(Client, Events)>)> {
    let (creator, creator_events) = login(address, config, &format!("d-{room}-0")).await?;
    let create = room::CreateRoom {
        max_members: size as u32,
        properties: Default::default(),
    };
    let created = creator
        .request(routes::CREATE, create.encode_to_vec())
        .await?;
    anyhow::ensure!(created.is_ok(), "create failed: {created:?}");
    let room_id = room::RoomInfo::decode(created.payload)?.room_id;
    let joins = (1..size).map(|m| {
        let room_id = room_id.clone();
        async move {
            let (client, events) = login(address, config, &format!("d-{room}-{m}")).await?;
            let joined = client
                .request(routes::JOIN, room::JoinRoom { room_id }.encode_to_vec())
                .await?;
            anyhow::ensure!(joined.is_ok(), "join failed: {joined:?}");
            anyhow::Ok((client, events))
        }
    });
    let mut players = vec![(creator, creator_events)];
    for joined in futures::future::join_all(joins).await {
        players.push(joined?);
    }
    Ok((room_id, players))
}

/// Every room sends, open loop, through whichever gateway its sender is on now.
fn start_ticking(
    senders: Vec<(Arc<Mutex<Client>>, String)>,
    hz: f64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (current, rooms): (Vec<_>, Vec<_>) = senders.into_iter().unzip();
    let stop = stop.clone();
    let running = move || !stop.load(Ordering::Relaxed);
    tick_rooms(rooms, hz, running, move |i, op: room::RoomOp| {
        let Ok(client) = current[i].lock().map(|c| c.clone()) else {
            return;
        };
        tokio::spawn(async move {
            let _ = client.request(routes::OP, op.encode_to_vec()).await;
        });
    })
}

fn bench_config() -> ClientConfig {
    ClientConfig {
        heartbeat: None,
        event_buffer: 4096,
        ..ClientConfig::default()
    }
}

/// Two gateways (`gateway-a` the seed), a login server and a room server, as processes on
/// `flavor`, once each gateway sees the other online.
pub(crate) struct TwoGateways {
    pub(crate) a: ChildProcess,
    pub(crate) b: ChildProcess,
    pub(crate) login: ChildProcess,
    pub(crate) rooms: ChildProcess,
}

impl TwoGateways {
    /// With `gateway` flags for both gateways, `a_only` for A, `room` flags for the room server.
    pub(crate) async fn start(
        flavor: RuntimeFlavor,
        gateway: &[&str],
        a_only: &[&str],
        room: &[&str],
    ) -> anyhow::Result<Self> {
        let flavor = flavor.as_arg();
        let spawn = |what: &str, extra: &[&str]| {
            let mut args = vec!["--flavor", flavor, what];
            args.extend_from_slice(extra);
            ChildProcess::spawn(&args)
        };
        let a = spawn(
            "serve-gateway",
            &[&["--node-id", "gateway-a"], gateway, a_only].concat(),
        )?;
        let gossip = a.get("gossip")?.to_owned();
        let seed = ["--seed", gossip.as_str()];
        let b = spawn(
            "serve-gateway",
            &[&["--node-id", "gateway-b"], &seed[..], gateway].concat(),
        )?;
        let login = spawn("serve-echo-logic", &seed)?;
        let rooms = spawn("serve-room", &[&seed[..], room].concat())?;
        wait_for_online(a.get("admin")?.parse()?, &["gateway-b"], 4).await?;
        wait_for_online(b.get("admin")?.parse()?, &["gateway-a"], 4).await?;
        Ok(Self { a, b, login, rooms })
    }
}

/// Sends a `RoomOp` ("tick") to each room at `hz` through `send(i, op)` (room `i`'s sender),
/// the rooms' ticks spread over the period, while `running()`.
pub(crate) fn tick_rooms<F>(
    rooms: Vec<String>,
    hz: f64,
    running: impl Fn() -> bool + Clone + Send + 'static,
    send: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(usize, room::RoomOp) + Clone + Send + 'static,
{
    let every = Duration::from_secs_f64(1.0 / hz.max(0.1));
    rooms
        .into_iter()
        .enumerate()
        .map(|(i, room_id)| {
            let (running, send) = (running.clone(), send.clone());
            tokio::spawn(async move {
                let mut next = Instant::now() + every.mul_f64(i as f64 / 97.0 % 1.0);
                while running() {
                    tokio::time::sleep_until(next.into()).await;
                    next += every;
                    let op = room::RoomOp {
                        room_id: room_id.clone(),
                        payload: Bytes::from_static(b"tick"),
                    };
                    send(i, op);
                }
            })
        })
        .collect()
}

async fn measure(flavor: RuntimeFlavor, sessions: usize, args: &DrainArgs) -> anyhow::Result<Run> {
    let gateway = ["--resume-window-ms", RESUME_WINDOW_MS];
    let cluster = TwoGateways::start(flavor, &gateway, &["--admin-token", TOKEN], &[]).await?;
    let a_admin: SocketAddr = cluster.a.get("admin")?.parse()?;
    let a_tcp = format!("tcp://{}", cluster.a.get("tcp")?);

    // Whole rooms per generator process, about `per_process` sessions each.
    let size = args.room_size.max(2);
    let rooms: Vec<usize> = (0..sessions.div_ceil(size))
        .map(|r| size.min(sessions - r * size))
        .collect();
    let per_process_rooms = args.per_process.max(size).div_ceil(size);
    let mut generators = Vec::new();
    for (g, share) in rooms.chunks(per_process_rooms).enumerate() {
        let sizes: Vec<String> = share.iter().map(ToString::to_string).collect();
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + g as u8));
        generators.push(ChildProcess::spawn(&[
            "--flavor",
            RuntimeFlavor::MultiThread.as_arg(),
            "drain-players",
            "--address",
            &a_tcp,
            "--first-room",
            &(g * per_process_rooms).to_string(),
            "--rooms",
            &sizes.join(","),
            "--hz",
            &args.hz.to_string(),
            "--source",
            &source.to_string(),
        ])?);
    }
    let ask = |generators: &mut Vec<ChildProcess>, line: &str| -> anyhow::Result<Vec<String>> {
        for generator in generators.iter_mut() {
            generator.send(line)?;
        }
        generators.iter_mut().map(|g| g.read_line()).collect()
    };
    ask(&mut generators, "SETUP")?;
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
    loop {
        let settled: usize = ask(&mut generators, "SETTLED")?
            .iter()
            .map(|n| n.parse::<usize>().unwrap_or(0))
            .sum();
        if settled >= sessions || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut blackouts: Histogram<u64> = histogram();
    let mut phases: [Histogram<u64>; 3] = [histogram(), histogram(), histogram()];
    let (mut lost, mut doubled, mut not_moved) = (0, 0, 0);
    for line in ask(&mut generators, "STOP")? {
        let share: Share =
            serde_json::from_str(&line).with_context(|| format!("a generator said {line:?}"))?;
        lost += share.lost;
        doubled += share.doubled;
        not_moved += share.not_moved;
        for us in share.blackouts_us {
            blackouts.saturating_record(us);
        }
        for part in share.phases_us {
            for (histogram, us) in phases.iter_mut().zip(part) {
                histogram.saturating_record(us);
            }
        }
    }
    drop(cluster);
    let ms = |q: f64| blackouts.value_at_quantile(q) as f64 / 1000.0;
    let part = |h: &Histogram<u64>| [0.5, 0.99].map(|q| h.value_at_quantile(q) as f64 / 1000.0);
    Ok(Run {
        phases_ms: phases.each_ref().map(part),
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
pub(crate) async fn wait_for_online(
    admin: SocketAddr,
    ids: &[&str],
    members: usize,
) -> anyhow::Result<()> {
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
