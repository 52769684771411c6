//! `client-sim load`: many simulated clients in one process. Scenarios: `login` (connect and
//! log in), `room-op` (players in rooms sending operations, closed or open loop) and `match`
//! (players queue; time until matched). Prints throughput, latency p50/p90/p99/max and errors
//! by code; optionally writes the same as JSON.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Barrier;

use crate::{
    generator::{self, MakeRequest, Pace, histogram},
    player::{Player, address},
};

/// A load scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Connect and log in, as fast as allowed; latency of connect + login.
    Login,
    /// Players in rooms send room operations; latency of each operation's response; pushes
    /// received are counted as deliveries.
    RoomOp,
    /// Players queue for matches; latency from queueing to the match-found push.
    Match,
}

/// Options of the load generator.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// The gateway: `ws://host:port/ws` or `tcp://host:port`.
    #[arg(
        long,
        env = "SWITCHYARD_GATEWAY",
        default_value = "ws://127.0.0.1:7000/ws"
    )]
    pub gateway: String,
    /// What the clients do.
    #[arg(long, value_enum, default_value_t = Scenario::RoomOp)]
    pub scenario: Scenario,
    /// Simultaneous clients.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// How long the measured phase lasts, in seconds (room-op).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Requests per second per client (room-op): 0 = closed loop, one request in flight.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Room size (room-op).
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Payload bytes of each room operation.
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// Match mode (match).
    #[arg(long, default_value = "duel")]
    pub mode: String,
    /// New connections per second while connecting (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// User id prefix (several generators against one cluster need different ones).
    #[arg(long, default_value = "load")]
    pub prefix: String,
    /// Login secret (when the match server checks tokens).
    #[arg(long, env = "SWITCHYARD_LOGIN_SECRET", hide_env_values = true)]
    pub login_secret: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Figures of one load run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Clients.
    pub connections: usize,
    /// Length of the measured phase.
    pub elapsed_secs: f64,
    /// Completed operations (requests, logins or matches) per second.
    pub throughput_per_s: f64,
    /// Pushes received per second (room-op: deliveries).
    pub deliveries_per_s: f64,
    /// Latency percentiles in microseconds.
    pub latency_us: Percentiles,
    /// Failed operations by status code name (or `transport`).
    pub errors: BTreeMap<String, u64>,
}

/// Latency percentiles.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub count: u64,
}

#[derive(Default)]
struct Tally {
    latency: Mutex<Option<Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    done: AtomicU64,
    deliveries: AtomicU64,
}

impl Tally {
    fn merge(&self, h: &Histogram<u64>) {
        let mut latency = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match latency.as_mut() {
            Some(all) => {
                let _ = all.add(h);
            }
            None => *latency = Some(h.clone()),
        }
    }

    fn error(&self, name: &str) {
        self.errors_of(name, 1);
    }

    fn errors_of(&self, name: &str, n: u64) {
        *self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default() += n;
    }
}

pub(crate) async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs one load scenario and returns its figures.
pub async fn measure(args: &LoadArgs) -> anyhow::Result<Report> {
    let tally = Arc::new(Tally::default());
    let elapsed = match args.scenario {
        Scenario::Login => login_storm(args, &tally).await?,
        Scenario::RoomOp => room_ops(args, &tally).await?,
        Scenario::Match => matches(args, &tally).await?,
    };
    let latency = tally
        .latency
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .unwrap_or_else(histogram);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        scenario: args.scenario,
        connections: args.connections,
        elapsed_secs: secs,
        throughput_per_s: tally.done.load(Ordering::Relaxed) as f64 / secs,
        deliveries_per_s: tally.deliveries.load(Ordering::Relaxed) as f64 / secs,
        latency_us: Percentiles {
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            max: latency.max() as f64 / 1000.0,
            count: latency.len(),
        },
        errors: tally
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    })
}

fn print(report: &Report) {
    println!(
        "{:?}: {} clients, {:.1} s: {:.0} ops/s, {:.0} deliveries/s; latency µs p50 {:.0} p90 {:.0} p99 {:.0} max {:.0} ({} samples); errors {:?}",
        report.scenario,
        report.connections,
        report.elapsed_secs,
        report.throughput_per_s,
        report.deliveries_per_s,
        report.latency_us.p50,
        report.latency_us.p90,
        report.latency_us.p99,
        report.latency_us.max,
        report.latency_us.count,
        report.errors
    );
}

/// Connects `args.connections` players (paced by `connect_rate`), recording connect + login
/// latency when `record` is set.
async fn connect_all(
    args: &LoadArgs,
    tally: &Arc<Tally>,
    record: bool,
) -> anyhow::Result<Vec<Player>> {
    let address = address(&args.gateway)?;
    let pace = (args.connect_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.connect_rate));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
        let (address, tally) = (address.clone(), tally.clone());
        let name = format!("{}-{i}", args.prefix);
        let secret = args.login_secret.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            match Player::login(&address, &name, secret.as_deref()).await {
                Ok(player) => {
                    if record {
                        let mut h = histogram();
                        h.saturating_record(t.elapsed().as_nanos() as u64);
                        tally.merge(&h);
                        tally.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(player)
                }
                Err(error) => {
                    tally.error(&format!("login: {}", first_line(&error.to_string())));
                    None
                }
            }
        }));
    }
    let mut players = Vec::with_capacity(args.connections);
    for task in tasks {
        if let Some(player) = task.await? {
            players.push(player);
        }
    }
    Ok(players)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").chars().take(80).collect()
}

async fn login_storm(args: &LoadArgs, tally: &Arc<Tally>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let players = connect_all(args, tally, true).await?;
    let elapsed = started.elapsed();
    for player in &players {
        player.client.close().await;
    }
    Ok(elapsed)
}

async fn room_ops(args: &LoadArgs, tally: &Arc<Tally>) -> anyhow::Result<Duration> {
    let players = connect_all(args, tally, false).await?;
    anyhow::ensure!(!players.is_empty(), "no client could log in");
    // Rooms: the first of every group creates, the others join.
    let size = args.room_size.max(1);
    let mut seated = Vec::with_capacity(players.len());
    let mut players = players.into_iter().peekable();
    while players.peek().is_some() {
        let group: Vec<Player> = players.by_ref().take(size).collect();
        let room = group[0].create_room(size as u32).await?.room_id;
        for player in &group[1..] {
            player.join_room(&room).await?;
        }
        for player in group {
            seated.push((player, room.clone()));
        }
    }
    let duration = Duration::from_secs_f64(args.duration_secs.max(0.1));
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let mut clients = Vec::with_capacity(seated.len());
    let mut rooms = Vec::with_capacity(seated.len());
    let mut counters = Vec::with_capacity(seated.len());
    for (player, room) in seated {
        let Player {
            client, mut events, ..
        } = player;
        let deliveries = tally.clone();
        // Count pushes (deliveries) for as long as the connection lives.
        counters.push(tokio::spawn(async move {
            while events.next_push().await.is_some() {
                deliveries.deliveries.fetch_add(1, Ordering::Relaxed);
            }
        }));
        clients.push(client);
        rooms.push(room);
    }
    let pace = if args.rate > 0.0 {
        Pace::Open {
            rate_per_s: args.rate * clients.len() as f64,
        }
    } else {
        Pace::Closed
    };
    let make: MakeRequest = Arc::new(move |i| {
        let op = room::RoomOp {
            room_id: rooms[i].clone(),
            payload: payload.clone(),
        };
        (
            proto::room::v1::routes::OP,
            prost::Message::encode_to_vec(&op).into(),
        )
    });
    let outcome = generator::drive(&clients, pace, duration, make).await;
    tally.merge(&outcome.latency);
    tally.done.fetch_add(outcome.completed, Ordering::Relaxed);
    for (name, n) in &outcome.errors {
        tally.errors_of(name, *n);
    }
    if outcome.generator_behind() {
        tally.error("generator-bound (fell behind its open-loop schedule)");
    }
    // Let the last pushes arrive before the counters stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for counter in counters {
        counter.abort();
    }
    for client in &clients {
        client.close().await;
    }
    Ok(outcome.elapsed.min(duration + Duration::from_millis(200)))
}

use proto::room::v1 as room;

async fn matches(args: &LoadArgs, tally: &Arc<Tally>) -> anyhow::Result<Duration> {
    let players = connect_all(args, tally, false).await?;
    anyhow::ensure!(!players.is_empty(), "no client could log in");
    let start_line = Arc::new(Barrier::new(players.len() + 1));
    let mut tasks = Vec::new();
    for mut player in players {
        let (tally, start_line, mode) = (tally.clone(), start_line.clone(), args.mode.clone());
        tasks.push(tokio::spawn(async move {
            start_line.wait().await;
            let t = Instant::now();
            if let Err(error) = player.enqueue(&mode).await {
                tally.error(&first_line(&error.to_string()));
                return None;
            }
            match player.match_found(Duration::from_secs(60), |_| {}).await {
                Ok(_) => {
                    let mut h = histogram();
                    h.saturating_record(t.elapsed().as_nanos() as u64);
                    tally.merge(&h);
                    tally.done.fetch_add(1, Ordering::Relaxed);
                    Some(Instant::now())
                }
                Err(error) => {
                    tally.error(&first_line(&error.to_string()));
                    None
                }
            }
        }));
    }
    start_line.wait().await;
    let started = Instant::now();
    let mut last = started;
    for task in tasks {
        if let Some(done) = task.await? {
            last = last.max(done);
        }
    }
    Ok(last - started)
}
