//! Scenario `s4-fanout`: room broadcast. Rooms of 10, 50 and 200 members; one member of each room
//! sends operations at 10 or 30 Hz (open loop); every member receives each one. Reports
//! deliveries per second, delivery latency (from the send timestamp carried in the payload to
//! arrival) and deliveries per second of server CPU, for Switchyard and the Go baseline.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use client::ClientConfig;
use hdrhistogram::Histogram;
use prost::Message;
use proto::room::v1::{self as room, routes};
use runtime::RuntimeFlavor;
use serde::Serialize;

use crate::{
    Common,
    procfs::CpuMeter,
    report::{COMPARED, Compared, Figure, Report, Who, text},
    stack::{Services, Stack, Transport, login},
    stats::histogram,
};

/// Options of `s4-fanout`.
#[derive(Args, Debug, Clone)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    common: Common,
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
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Run {
    deliveries_per_s: f64,
    expected_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    server_cores: f64,
    /// This process (the clients: senders and receivers) over the same phase.
    generator_cores: f64,
    deliveries_per_core_s: f64,
    /// Over the measured phase (the sends and the grace after them), for the CPU split.
    ops_per_s: f64,
    delivered_per_s: f64,
    server_micros_per_s: f64,
}

/// Deliveries per second per server core the hot-path issue asks for (rooms of 50 at 30 Hz).
const TARGET_PER_CORE: f64 = 150_000.0;
/// Server CPU per room operation (its per-operation part) the hot-path issue asks for.
const TARGET_PER_OP_US: f64 = 60.0;
/// Server CPU per delivery the hot-path issue asks for.
const TARGET_PER_DELIVERY_US: f64 = 6.0;

pub(crate) async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let mut report = Report::new(
        "s4-fanout",
        format!(
            "room fan-out: {} clients in rooms, one sender per room (open loop)",
            args.clients
        ),
        args.common.rounds,
    );
    let mut runs: Vec<(RuntimeFlavor, Who, usize, u64, Run)> = Vec::new();
    let mut group = 0u64;
    for &flavor in &args.common.server_flavor {
        let mut stacks = vec![Stack::switchyard(flavor, Services::Rooms).await?];
        if let Some(go) = Stack::go(&args.common.go_baseline, Services::Rooms).await? {
            stacks.push(go);
        }
        stacks.push(Stack::bare_rooms(flavor)?);
        for &size in &args.sizes {
            for &hz in &args.hz {
                for round in 0..args.common.rounds {
                    for i in 0..stacks.len() {
                        let stack = &stacks[(i + round) % stacks.len()];
                        group += 1;
                        let result =
                            measure(stack, size, hz, &args, group)
                                .await
                                .with_context(|| {
                                    format!("{:?} rooms of {size} at {hz} Hz", stack.system)
                                })?;
                        runs.push((flavor, stack.system, size, hz.to_bits(), result));
                    }
                }
                eprintln!("{flavor}: rooms of {size} at {hz} Hz done");
            }
        }
    }
    let mut columns = vec!["server runtime", "room size", "Hz", "figure"];
    columns.extend(COMPARED);
    let table = report.table("Deliveries", &columns);
    let figures: [Figure<Run>; 6] = [
        ("deliveries/s", |r| r.deliveries_per_s),
        ("delivery p50 µs", |r| r.p50_us),
        ("delivery p99 µs", |r| r.p99_us),
        ("server cores busy", |r| r.server_cores),
        ("generator cores busy", |r| r.generator_cores),
        ("deliveries per server core-s", |r| r.deliveries_per_core_s),
    ];
    let mut best_per_core: Option<(f64, usize, f64, RuntimeFlavor)> = None;
    for &flavor in &args.common.server_flavor {
        for &size in &args.sizes {
            for &hz in &args.hz {
                let mine: Vec<(Who, &Run)> = runs
                    .iter()
                    .filter(|r| r.0 == flavor && r.2 == size && r.3 == hz.to_bits())
                    .map(|r| (r.1, &r.4))
                    .collect();
                table.compared_rows(&[text(flavor), text(size), text(hz)], &mine, &figures);
                if let Some(sw) = Compared::of(&mine, |r| r.deliveries_per_core_s).switchyard
                    && best_per_core.is_none_or(|b| sw.median > b.0)
                {
                    best_per_core = Some((sw.median, size, hz, flavor));
                }
                let expected = runs
                    .iter()
                    .find(|r| r.0 == flavor && r.2 == size && r.3 == hz.to_bits())
                    .map_or(0.0, |r| r.4.expected_per_s);
                let mut row = vec![
                    text(flavor),
                    text(size),
                    text(hz),
                    text("deliveries/s expected"),
                ];
                row.push(text(format!("{expected:.0}")));
                table.row(row);
            }
        }
    }
    if let Some((per_core, size, hz, flavor)) = best_per_core {
        report.target(
            "S4 ≥ 150k deliveries per second per server core",
            format!("best {per_core:.0} (rooms of {size} at {hz} Hz, {flavor})"),
            per_core >= TARGET_PER_CORE,
        );
    }
    split(&mut report, &args, &runs);
    report.note("Delivery latency runs from the send timestamp in the operation's payload to its arrival at each member. Server CPU counts every server process (Switchyard: gateway, login server, room server; Go: go-gateway, go-room; floor: its one process). The floor is `serve-bare-rooms`: the rooms in one process speaking the client protocol over TCP, each operation's push encoded once and written straight into every member's socket by the task that read it (no hop, no queue, no task per delivery), so its deliveries per core-second are about what the kernel's loopback writes allow.");
    let busiest = runs
        .iter()
        .map(|r| r.4.generator_cores)
        .fold(0.0f64, f64::max);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    report.note(format!(
        "The generator was {} the bottleneck: its busiest run took {busiest:.2} cores of the {threads} its runtime's threads can use{}.",
        if busiest < 0.8 * threads { "not" } else { "perhaps" },
        if busiest < 0.8 * threads { "" } else { " (runs near that are generator-bound: read their latencies with care)" }
    ));
    report.note(format!(
        "Generator cores busy: the clients (one sender per room, every member receiving) in this process, over the same phase. The machine has {} cores: when servers and generator together come near that, the delivery latencies are the machine's as much as the servers'.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    report.finish(&args.common.out)
}

/// Server CPU split into a part per room operation and a part per delivery: a least-squares fit
/// of `CPU µs/s = idle + op × ops/s + delivery × deliveries/s` over every run of a system on a
/// runtime (the room sizes tell the two parts apart).
fn split(report: &mut Report, args: &FanoutArgs, runs: &[(RuntimeFlavor, Who, usize, u64, Run)]) {
    let table = report.table(
        "Server CPU per operation and per delivery (least-squares fit over the runs above)",
        &[
            "server runtime",
            "system",
            "µs per operation",
            "µs per delivery",
            "idle cores",
            "runs",
        ],
    );
    let mut targets = Vec::new();
    for &flavor in &args.common.server_flavor {
        for who in [Who::Switchyard, Who::Go, Who::Floor] {
            let points: Vec<[f64; 3]> = runs
                .iter()
                .filter(|r| r.0 == flavor && r.1 == who)
                .map(|r| [r.4.ops_per_s, r.4.delivered_per_s, r.4.server_micros_per_s])
                .collect();
            let Some([idle, per_op, per_delivery]) = fit(&points) else {
                continue;
            };
            table.row(vec![
                text(flavor),
                text(format!("{who:?}")),
                text(format!("{per_op:.1}")),
                text(format!("{per_delivery:.2}")),
                text(format!("{:.3}", idle / 1e6)),
                text(points.len()),
            ]);
            if who == Who::Switchyard {
                targets.push((flavor, per_op, per_delivery));
            }
        }
    }
    for (flavor, per_op, per_delivery) in targets {
        report.target(
            format!("server CPU per room operation ≤ {TARGET_PER_OP_US} µs ({flavor})"),
            format!("{per_op:.1} µs"),
            per_op <= TARGET_PER_OP_US,
        );
        report.target(
            format!("server CPU per delivery ≤ {TARGET_PER_DELIVERY_US} µs ({flavor})"),
            format!("{per_delivery:.2} µs"),
            per_delivery <= TARGET_PER_DELIVERY_US,
        );
    }
}

/// Least squares for `c = k + a·o + b·d` over points `[o, d, c]`: `[k, a, b]`, or `None` when
/// the points cannot tell the three apart (fewer than three room sizes or rates).
fn fit(points: &[[f64; 3]]) -> Option<[f64; 3]> {
    // Normal equations: (XᵀX) β = Xᵀc with rows X = [1, o, d].
    let mut m = [[0.0f64; 4]; 3];
    for &[o, d, c] in points {
        let x = [1.0, o, d];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += x[i] * x[j];
            }
            m[i][3] += x[i] * c;
        }
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..3 {
        let pivot = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        m.swap(col, pivot);
        if m[col][col].abs() < 1e-9 * (1.0 + m[col][3].abs()) {
            return None;
        }
        for row in 0..3 {
            if row != col {
                let f = m[row][col] / m[col][col];
                let pivot_row = m[col];
                for (cell, p) in m[row].iter_mut().zip(pivot_row).skip(col) {
                    *cell -= f * p;
                }
            }
        }
    }
    Some([m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]])
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
    let generator_cpu = CpuMeter::start(&[std::process::id()]);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let sent = Arc::new(AtomicU64::new(0));
    for (i, (client, room_id)) in senders.into_iter().enumerate() {
        let sent = sent.clone();
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
                sent.fetch_add(1, Ordering::Relaxed);
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
    let generator_micros = generator_cpu.elapsed_micros();
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
        generator_cores: generator_micros as f64 / 1e6 / elapsed.as_secs_f64(),
        deliveries_per_core_s: count / (cpu_micros.max(1) as f64 / 1e6),
        ops_per_s: sent.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        delivered_per_s: count / elapsed.as_secs_f64(),
        server_micros_per_s: cpu_micros as f64 / elapsed.as_secs_f64(),
    })
}

async fn connect(
    stack: &Stack,
    config: &ClientConfig,
    user: &str,
) -> anyhow::Result<(client::Client, client::Events)> {
    login(&stack.address(Transport::Tcp), config, user).await
}
