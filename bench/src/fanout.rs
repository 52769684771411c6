//! Scenario `fanout`: room broadcast. Rooms of 10, 50 and 200 members; one member of each room
//! sends operations at 10 or 30 Hz (open loop); every member receives each one. Reports
//! deliveries per second, delivery latency (from the send timestamp carried in the payload to
//! arrival) and deliveries per second of server CPU, for Switchyard and the Go baseline.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use client::{Address, Client, ClientConfig};
use hdrhistogram::Histogram;
use prost::Message;
use proto::room::v1::{self as room, routes};
use serde::Serialize;

use crate::{
    child::ChildProcess,
    gateway_rr::{GoBaseline, login_payload, wait_for_login},
    procfs::CpuMeter,
    stats::{Spread, histogram},
};

const LOGIN: u32 = proto::route(1, 1);

/// Options of the `fanout` scenario.
#[derive(Args, Debug, Clone)]
pub(crate) struct FanoutArgs {
    /// Room sizes.
    #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
    sizes: Vec<usize>,
    /// Operations per second per room.
    #[arg(long, value_delimiter = ',', default_value = "10,30")]
    hz: Vec<f64>,
    /// Clients in all (split into rooms of the size measured).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Length of each run, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    duration_ms: u64,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the Go baseline's binaries are.
    #[arg(long, default_value = "target/go-baseline/bin")]
    go_baseline: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum System {
    Switchyard,
    Go,
}

struct Stack {
    system: System,
    tcp: std::net::SocketAddr,
    pids: Vec<u32>,
    _processes: Vec<ChildProcess>,
}

impl Stack {
    async fn switchyard() -> anyhow::Result<Self> {
        let gateway = ChildProcess::spawn(&["serve-gateway", "--flavor", "multi-thread"])?;
        let gossip = gateway.get("gossip")?.to_owned();
        let logic = ChildProcess::spawn(&[
            "serve-echo-logic",
            "--flavor",
            "current-thread",
            "--seed",
            &gossip,
        ])?;
        let rooms =
            ChildProcess::spawn(&["serve-room", "--flavor", "multi-thread", "--seed", &gossip])?;
        let tcp = gateway.get("tcp")?.parse()?;
        wait_for_login(&Address::Tcp(tcp)).await?;
        let pids = vec![gateway.pid(), logic.pid(), rooms.pid()];
        Ok(Stack {
            system: System::Switchyard,
            tcp,
            pids,
            _processes: vec![gateway, logic, rooms],
        })
    }

    fn go(dir: &std::path::Path) -> anyhow::Result<Option<Self>> {
        Ok(GoBaseline::start(dir)?.map(|go| Stack {
            system: System::Go,
            tcp: go.tcp,
            pids: vec![go.gateway.pid(), go.room.pid()],
            _processes: vec![go.gateway, go.room],
        }))
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Run {
    deliveries_per_s: f64,
    expected_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    server_cores: f64,
    deliveries_per_core_s: f64,
}

#[derive(Serialize)]
struct Row {
    system: System,
    size: usize,
    hz: f64,
    rooms: usize,
    deliveries_per_s: Spread,
    expected_per_s: f64,
    p50_us: Spread,
    p99_us: Spread,
    server_cores: Spread,
    deliveries_per_core_s: Spread,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    machine: crate::Machine,
    args: String,
    rows: Vec<Row>,
}

pub(crate) async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let mut stacks = vec![Stack::switchyard().await?];
    if let Some(go) = Stack::go(&args.go_baseline)? {
        wait_for_login(&Address::Tcp(go.tcp)).await?;
        stacks.push(go);
    }
    let mut runs: Vec<(System, usize, u64, Run)> = Vec::new();
    let mut group = 0u64;
    for &size in &args.sizes {
        for &hz in &args.hz {
            for round in 0..args.rounds {
                for i in 0..stacks.len() {
                    let stack = &stacks[(i + round) % stacks.len()];
                    group += 1;
                    let result =
                        measure(stack, size, hz, &args, group)
                            .await
                            .with_context(|| {
                                format!("{:?} rooms of {size} at {hz} Hz", stack.system)
                            })?;
                    runs.push((stack.system, size, hz.to_bits(), result));
                }
            }
            eprintln!("rooms of {size} at {hz} Hz done");
        }
    }
    let mut rows = Vec::new();
    for &size in &args.sizes {
        for &hz in &args.hz {
            for stack in &stacks {
                let mine: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.0 == stack.system && r.1 == size && r.2 == hz.to_bits())
                    .map(|r| &r.3)
                    .collect();
                rows.push(Row {
                    system: stack.system,
                    size,
                    hz,
                    rooms: (args.clients / size).max(1),
                    deliveries_per_s: Spread::of(mine.iter().map(|r| r.deliveries_per_s)),
                    expected_per_s: mine.first().map_or(0.0, |r| r.expected_per_s),
                    p50_us: Spread::of(mine.iter().map(|r| r.p50_us)),
                    p99_us: Spread::of(mine.iter().map(|r| r.p99_us)),
                    server_cores: Spread::of(mine.iter().map(|r| r.server_cores)),
                    deliveries_per_core_s: Spread::of(mine.iter().map(|r| r.deliveries_per_core_s)),
                });
            }
        }
    }
    let report = Report {
        scenario: "room fan-out",
        machine: crate::Machine::read(),
        args: format!("{args:?}"),
        rows,
    };
    print(&report, &args);
    crate::stats::write_json(args.json.as_deref(), &report)?;
    Ok(())
}

#[allow(clippy::print_stdout)] // the report is this command's output
fn print(report: &Report, args: &FanoutArgs) {
    println!(
        "# room fan-out ({} clients, {} rounds × {} ms; median (min–max))",
        args.clients, args.rounds, args.duration_ms
    );
    println!("machine: {}", report.machine);
    println!();
    println!(
        "| system | room size | Hz | rooms | deliveries/s (expected) | delivery p50 µs | p99 µs | server cores | deliveries per core-s | / Go |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &report.rows {
        let go = report
            .rows
            .iter()
            .find(|r| r.system == System::Go && r.size == row.size && r.hz == row.hz);
        let versus = match (row.system, go) {
            (System::Switchyard, Some(go)) => format!(
                "{:.2}",
                row.deliveries_per_core_s.median / go.deliveries_per_core_s.median
            ),
            _ => "-".into(),
        };
        println!(
            "| {:?} | {} | {} | {} | {} ({:.0}) | {} | {} | {} | {} | {} |",
            row.system,
            row.size,
            row.hz,
            row.rooms,
            row.deliveries_per_s,
            row.expected_per_s,
            row.p50_us,
            row.p99_us,
            row.server_cores,
            row.deliveries_per_core_s,
            versus
        );
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One run: rooms of `size`, one sender per room at `hz`, every member counting arrivals.
async fn measure(
    stack: &Stack,
    size: usize,
    hz: f64,
    args: &FanoutArgs,
    group: u64,
) -> anyhow::Result<Run> {
    let rooms = (args.clients / size).max(1);
    let config = ClientConfig {
        heartbeat: None,
        event_buffer: 4096,
        ..ClientConfig::default()
    };
    let latency: Arc<Mutex<Histogram<u64>>> = Arc::new(Mutex::new(histogram()));
    let delivered = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut connections = Vec::new();
    for r in 0..rooms {
        // The first member creates the room; the others join it, all at once.
        let (creator, creator_events) =
            connect(stack, &config, &format!("fan-{group}-{r}-0")).await?;
        let create = room::CreateRoom {
            max_members: size as u32,
            properties: Default::default(),
        };
        let response = creator
            .request(routes::CREATE, create.encode_to_vec())
            .await?;
        anyhow::ensure!(response.is_ok(), "create failed: {response:?}");
        let room_id = room::RoomInfo::decode(response.payload)?.room_id;
        senders.push((creator.clone(), room_id.clone()));
        let mut members = vec![(creator, creator_events)];
        let joins = (1..size).map(|m| {
            let (config, room_id) = (config.clone(), room_id.clone());
            async move {
                let (client, events) =
                    connect(stack, &config, &format!("fan-{group}-{r}-{m}")).await?;
                let response = client
                    .request(routes::JOIN, room::JoinRoom { room_id }.encode_to_vec())
                    .await?;
                anyhow::ensure!(response.is_ok(), "join failed: {response:?}");
                anyhow::Ok((client, events))
            }
        });
        for joined in futures::future::join_all(joins).await {
            members.push(joined?);
        }
        for (client, mut events) in members {
            let (latency, delivered, counting, stop) = (
                latency.clone(),
                delivered.clone(),
                counting.clone(),
                stop.clone(),
            );
            receivers.push(tokio::spawn(async move {
                let mut h = histogram();
                loop {
                    let push = tokio::select! {
                        _ = stop.cancelled() => break,
                        push = events.next_push() => match push { Some(push) => push, None => break },
                    };
                    if push.route != routes::PUSH_OP || !counting.load(Ordering::Relaxed) {
                        continue;
                    }
                    let Ok(event) = room::RoomOpEvent::decode(push.payload) else { continue };
                    let Some(sent) = event.payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else { continue };
                    h.saturating_record(now_nanos().saturating_sub(sent));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut all) = latency.lock() {
                    let _ = all.add(&h);
                }
            }));
            connections.push(client);
        }
    }
    let duration = Duration::from_millis(args.duration_ms);
    let every = Duration::from_secs_f64(1.0 / hz.max(0.1));
    let cpu = CpuMeter::start(&stack.pids);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (client, room_id)) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            // Spread the rooms' ticks over the period.
            let mut next = Instant::now() + every.mul_f64(i as f64 / 97.0 % 1.0);
            let stop_at = Instant::now() + duration;
            while next < stop_at {
                tokio::time::sleep_until(next.into()).await;
                let op = room::RoomOp {
                    room_id: room_id.clone(),
                    payload: Bytes::copy_from_slice(&now_nanos().to_le_bytes()),
                };
                let client = client.clone();
                tokio::spawn(async move { client.request(routes::OP, op.encode_to_vec()).await });
                next += every;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    // Deliveries still in flight arrive within this grace; they are counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let elapsed = started.elapsed();
    counting.store(false, Ordering::Relaxed);
    let cpu_micros = cpu.elapsed_micros();
    stop.cancel();
    for receiver in receivers {
        let _ = receiver.await;
    }
    for client in &connections {
        client.close().await;
    }
    let count = delivered.load(Ordering::Relaxed) as f64;
    let h = latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram());
    let cores = cpu_micros as f64 / 1e6 / elapsed.as_secs_f64();
    Ok(Run {
        deliveries_per_s: count / duration.as_secs_f64(),
        expected_per_s: rooms as f64 * hz * size as f64,
        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        server_cores: cores,
        deliveries_per_core_s: count / (cpu_micros.max(1) as f64 / 1e6),
    })
}

async fn connect(
    stack: &Stack,
    config: &ClientConfig,
    user: &str,
) -> anyhow::Result<(Client, client::Events)> {
    let (client, events) = Client::connect_with(Address::Tcp(stack.tcp), config.clone()).await?;
    let login = client.request(LOGIN, login_payload(user)).await?;
    anyhow::ensure!(login.is_ok(), "login failed: {login:?}");
    Ok((client, events))
}

/// Options of `serve-room`.
#[derive(Args, Debug)]
pub(crate) struct RoomArgs {
    /// Gossip address of the gateway.
    #[arg(long)]
    seed: String,
}

/// `serve-room`: a room server (logic-room) joining through `seed`.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_room(args: RoomArgs) -> anyhow::Result<()> {
    let mut config = logic_room::Config::defaults();
    config.node.seeds = vec![args.seed];
    config.max_members = 1000;
    let server = logic_room::start(config, runtime::Listeners::loopback().await?).await?;
    println!("READY node_id={}", server.running.sdk.node_id());
    server.run(tokio_util::sync::CancellationToken::new()).await;
    Ok(())
}
