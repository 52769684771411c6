//! Scenarios `s0-floor`, `s3-round-trip` and `s6-transport`: a client command through the
//! gateway to the room server and back (`GetProperties` of the client's own room), over TCP and
//! WebSocket, in closed loop at 1, 100 and 1,000 connections and in open loop at rising rates
//! up to the knee (the highest rate with p99 ≤ 5 ms). Switchyard, the Go baseline and the floor
//! (the same generator against a bare echo of the same transport) take turns in every round.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Args;
use client::{Address, Client};
use client_sim::generator::{self, MakeRequest, Outcome, Pace};
use prost::Message;
use proto::{
    mesh::v1::{MeshRequest, mesh_client::MeshClient},
    room::v1::{self as room, routes},
};
use runtime::RuntimeFlavor;
use serde::Serialize;
use tonic::transport::Endpoint;

use crate::{
    Common,
    procfs::CpuMeter,
    report::{COMPARED, Cell, Compared, Figure, Report, Who, text},
    stack::{Floor, FloorKind, Services, Stack, Transport, client_config, login},
    stats::{Spread, histogram},
};

/// The hot-path issue's one-connection p50 (two raw loopback round trips and the servers' work).
const ONE_CONN_P50_US: f64 = 55.0;
/// The hot-path issue's server CPU per routed command at 100 connections.
const CPU_PER_COMMAND_US: f64 = 25.0;
/// p99 latency under which a rate counts as sustained (the knee's definition).
const KNEE_P99: Duration = Duration::from_millis(5);
/// A system within this share of the floor's closed-loop rate may be held back by the
/// generator rather than by itself.
const GENERATOR_BOUND_SHARE: f64 = 0.8;

/// Options of `s3-round-trip` and `s6-transport`.
#[derive(Args, Debug, Clone)]
pub(crate) struct RoundTripArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connection counts measured in closed loop (one request in flight per connection).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub(crate) connections: Vec<usize>,
    /// Client transports.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tcp,ws")]
    pub(crate) transports: Vec<Transport>,
    /// Length of each closed-loop run, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) duration_ms: u64,
    /// Open-loop rates (requests per second in all) tried in order to find the knee
    /// (`s3-round-trip` only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,4000,8000,12000,16000,20000,24000,32000"
    )]
    pub(crate) knee_rates: Vec<f64>,
    /// Connections of the open-loop runs.
    #[arg(long, default_value_t = 100)]
    pub(crate) knee_connections: usize,
    /// Length of each open-loop step, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) knee_step_ms: u64,
}

/// Where a measured system is.
pub(crate) struct Target {
    pub(crate) who: Who,
    pub(crate) address: Address,
    /// Logs in and creates a room first (the floors answer anything as is).
    pub(crate) real: bool,
    pub(crate) pids: Vec<u32>,
}

impl Target {
    pub(crate) fn stack(stack: &Stack, transport: Transport) -> Self {
        Target {
            who: stack.system,
            address: stack.address(transport),
            real: true,
            pids: stack.pids.clone(),
        }
    }

    pub(crate) fn floor(floor: &Floor) -> anyhow::Result<Self> {
        Ok(Target {
            who: Who::Floor,
            address: floor.address()?,
            real: false,
            pids: vec![floor.pid()],
        })
    }
}

/// Connected clients, each in its own room, and the command each one sends.
pub(crate) struct Clients {
    pub(crate) clients: Vec<Client>,
    _events: Vec<client::Events>,
    pub(crate) make: MakeRequest,
}

impl Clients {
    /// Connects `n` clients to `target`; on a real system each logs in as `<tag>-<i>` and
    /// creates a room of its own.
    pub(crate) async fn open(target: &Target, n: usize, tag: &str) -> anyhow::Result<Self> {
        let config = client_config();
        let mut clients = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        let indexes: Vec<usize> = (0..n).collect();
        for chunk in indexes.chunks(250) {
            let opened = chunk.iter().map(|i| {
                let (config, address) = (config.clone(), target.address.clone());
                let user = format!("{tag}-{i}");
                let real = target.real;
                async move {
                    let (client, events) = login(&address, &config, &user).await?;
                    let room_id = if real {
                        let create = room::CreateRoom {
                            max_members: 2,
                            properties: Default::default(),
                        };
                        let response = client
                            .request(routes::CREATE, create.encode_to_vec())
                            .await?;
                        anyhow::ensure!(response.is_ok(), "create failed: {response:?}");
                        room::RoomInfo::decode(response.payload)?.room_id
                    } else {
                        format!("floor-{i}")
                    };
                    let request: Bytes = room::RoomRef { room_id }.encode_to_vec().into();
                    anyhow::Ok((client, events, request))
                }
            });
            for result in futures::future::join_all(opened).await {
                let (client, e, request) = result?;
                clients.push(client);
                events.push(e);
                requests.push(request);
            }
        }
        Ok(Clients {
            clients,
            _events: events,
            make: Arc::new(move |i| (routes::GET_PROPERTIES, requests[i].clone())),
        })
    }

    pub(crate) async fn close(self) {
        for client in &self.clients {
            client.close().await;
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Run {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) throughput_per_s: f64,
    pub(crate) cpu_us_per_op: f64,
    pub(crate) failed: u64,
    pub(crate) generator_behind: bool,
}

impl Run {
    pub(crate) fn of(outcome: &Outcome, cpu_micros: u64) -> Self {
        Run {
            p50_us: outcome.latency_us(0.5),
            p99_us: outcome.latency_us(0.99),
            throughput_per_s: outcome.throughput_per_s(),
            cpu_us_per_op: cpu_micros as f64 / outcome.completed.max(1) as f64,
            failed: outcome.failed(),
            generator_behind: outcome.generator_behind(),
        }
    }
}

impl Run {
    /// A closed-loop run recorded in a histogram of nanoseconds.
    fn of_histogram(
        latency: &hdrhistogram::Histogram<u64>,
        completed: u64,
        elapsed: Duration,
        cpu_micros: u64,
    ) -> Self {
        Run {
            p50_us: latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: latency.value_at_quantile(0.99) as f64 / 1000.0,
            throughput_per_s: completed as f64 / elapsed.as_secs_f64(),
            cpu_us_per_op: cpu_micros as f64 / completed.max(1) as f64,
            failed: 0,
            generator_behind: false,
        }
    }
}

/// Drives `clients` with `pace` for `duration`, charging the target's processes with CPU.
pub(crate) async fn drive(
    target: &Target,
    clients: &Clients,
    pace: Pace,
    duration: Duration,
) -> Run {
    let cpu = CpuMeter::start(&target.pids);
    let outcome = generator::drive(&clients.clients, pace, duration, clients.make.clone()).await;
    Run::of(&outcome, cpu.elapsed_micros())
}

/// Everything measured in one closed-loop point.
#[derive(Default)]
struct Point {
    runs: Vec<(Who, Run)>,
}

impl Point {
    fn compared(&self, figure: impl Fn(&Run) -> f64) -> Compared {
        let runs: Vec<(Who, &Run)> = self.runs.iter().map(|(w, r)| (*w, r)).collect();
        Compared::of(&runs, figure)
    }

    fn spread(&self, who: Who, figure: impl Fn(&Run) -> f64) -> Option<Spread> {
        self.compared(figure).get(who)
    }

    fn failed(&self, who: Who) -> u64 {
        self.runs
            .iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, r)| r.failed)
            .sum()
    }
}

/// `s3-round-trip` (closed loop and knee) or `s6-transport` (closed loop, TCP vs WebSocket).
pub(crate) async fn run(args: RoundTripArgs, scenario: &'static str) -> anyhow::Result<()> {
    let title = if scenario == "s6-transport" {
        "TCP vs WebSocket: client → gateway → room server → client"
    } else {
        "command round trip: client → gateway → room server → client"
    };
    let mut report = Report::new(scenario, title, args.common.rounds);
    let mut closed = Vec::new();
    let mut knees = Vec::new();
    for &flavor in &args.common.server_flavor {
        let sw = Stack::switchyard(flavor, Services::Rooms).await?;
        let go = Stack::go(&args.common.go_baseline, Services::Rooms).await?;
        for &transport in &args.transports {
            let floor = Floor::for_transport(transport, flavor)?;
            let mut targets = vec![Target::stack(&sw, transport)];
            targets.extend(go.iter().map(|go| Target::stack(go, transport)));
            targets.push(Target::floor(&floor)?);
            for &connections in &args.connections {
                let point = closed_point(&targets, connections, &args).await?;
                eprintln!("{flavor} {transport} {connections} connections: done");
                closed.push((flavor, transport, connections, point));
            }
        }
        // S6 is the transport comparison alone; S3 also finds the knee.
        if scenario == "s3-round-trip" && !args.knee_rates.is_empty() {
            let floor = Floor::for_transport(Transport::Tcp, flavor)?;
            let mut targets = vec![Target::stack(&sw, Transport::Tcp)];
            targets.extend(go.iter().map(|go| Target::stack(go, Transport::Tcp)));
            targets.push(Target::floor(&floor)?);
            let knee = knee_point(&targets, &args).await?;
            eprintln!("{flavor} knee: done");
            knees.push((flavor, knee));
        }
    }
    closed_tables(&mut report, &closed, &args);
    knee_tables(&mut report, &knees, &args);
    report.finish(&args.common.out)
}

/// One closed-loop point: every target, `rounds` times, in rotating order.
async fn closed_point(
    targets: &[Target],
    connections: usize,
    args: &RoundTripArgs,
) -> anyhow::Result<Point> {
    let mut point = Point::default();
    let duration = Duration::from_millis(args.duration_ms);
    let mut opened = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        let clients = Clients::open(target, connections, &format!("rt{t}-{connections}")).await?;
        // Warm-up: connections, allocator, caches.
        drive(target, &clients, Pace::Closed, Duration::from_millis(300)).await;
        opened.push(clients);
    }
    for round in 0..args.common.rounds {
        for i in 0..targets.len() {
            let t = (i + round) % targets.len();
            let run = drive(&targets[t], &opened[t], Pace::Closed, duration).await;
            point.runs.push((targets[t].who, run));
        }
    }
    for clients in opened {
        clients.close().await;
    }
    Ok(point)
}

fn closed_tables(
    report: &mut Report,
    closed: &[(RuntimeFlavor, Transport, usize, Point)],
    args: &RoundTripArgs,
) {
    let mut columns = vec!["server runtime", "transport", "conns", "figure"];
    columns.extend(COMPARED);
    columns.push("note");
    let table = report.table(
        "Closed loop (one request in flight per connection)",
        &columns,
    );
    let mut notes = Vec::new();
    let figures: [Figure<Run>; 4] = [
        ("p50 µs", |r| r.p50_us),
        ("p99 µs", |r| r.p99_us),
        ("req/s", |r| r.throughput_per_s),
        ("server CPU µs/req", |r| r.cpu_us_per_op),
    ];
    for (flavor, transport, connections, point) in closed {
        let floor_rate = point.spread(Who::Floor, |r| r.throughput_per_s);
        for (name, figure) in figures {
            let compared = point.compared(figure);
            let mut note = String::new();
            if name == "req/s" {
                let bound = |s: Option<Spread>| matches!((s, floor_rate), (Some(s), Some(f)) if s.median >= GENERATOR_BOUND_SHARE * f.median);
                if bound(compared.switchyard) || bound(compared.go) {
                    note = "generator-bound (within 80% of the generator's rate against the bare echo)".into();
                }
                for who in [Who::Switchyard, Who::Go, Who::Floor] {
                    let failed = point.failed(who);
                    if failed > 0 {
                        notes.push(format!(
                            "{flavor} {transport} {connections} conns: {who:?} failed {failed} requests"
                        ));
                    }
                }
            }
            let mut row = vec![text(flavor), text(transport), text(connections), text(name)];
            row.extend(compared.cells());
            row.push(text(note));
            table.row(row);
        }
    }
    // TCP vs WebSocket (S6): the same figures side by side.
    let mut s6 = Vec::new();
    for (flavor, transport, connections, point) in closed {
        if *transport != Transport::Tcp {
            continue;
        }
        let Some((.., ws)) = closed
            .iter()
            .find(|(f, t, c, _)| f == flavor && *t == Transport::Ws && c == connections)
        else {
            continue;
        };
        for who in [Who::Switchyard, Who::Go, Who::Floor] {
            for (name, figure) in [
                ("p50 µs", (|r: &Run| r.p50_us) as fn(&Run) -> f64),
                ("req/s", |r| r.throughput_per_s),
                ("server CPU µs/req", |r| r.cpu_us_per_op),
            ] {
                let (Some(tcp), Some(web)) = (point.spread(who, figure), ws.spread(who, figure))
                else {
                    continue;
                };
                s6.push(vec![
                    text(flavor),
                    text(format!("{who:?}")),
                    text(connections),
                    text(name),
                    Cell::Spread(tcp),
                    Cell::Spread(web),
                    Cell::Ratio(Some(web.median / tcp.median)),
                ]);
            }
        }
    }
    if !s6.is_empty() {
        let table = report.table(
            "TCP vs WebSocket (S6)",
            &[
                "server runtime",
                "system",
                "conns",
                "figure",
                "TCP",
                "WebSocket",
                "WebSocket / TCP",
            ],
        );
        table.rows = s6;
    }
    // Targets: one-in-flight p50 ≤ 2× two loopback round trips, and (issue 12) ≤ 55 µs; CPU per
    // routed command ≤ 33 µs, and (issue 12) ≤ 25 µs.
    for (flavor, transport, connections, point) in closed {
        if *transport != Transport::Tcp {
            continue;
        }
        if *connections == 1
            && let (Some(sw), Some(floor)) = (
                point.spread(Who::Switchyard, |r| r.p50_us),
                point.spread(Who::Floor, |r| r.p50_us),
            )
        {
            let two_trips = 2.0 * floor.median;
            report.target(
                format!("S3 one in flight p50 ≤ 2 × two loopback round trips ({flavor}, TCP)"),
                format!(
                    "{:.0} µs = {:.2} × two round trips ({:.0} µs, twice the bare TCP echo's p50)",
                    sw.median,
                    sw.median / two_trips,
                    two_trips
                ),
                sw.median <= 2.0 * two_trips,
            );
            report.target(
                format!("one-connection p50 ≤ {ONE_CONN_P50_US} µs (issue 12; {flavor}, TCP)"),
                format!(
                    "{:.0} µs (the bare TCP echo: {:.0} µs; the raw loopback round trip is S0's)",
                    sw.median, floor.median
                ),
                sw.median <= ONE_CONN_P50_US,
            );
        }
        if *connections
            == args
                .connections
                .iter()
                .copied()
                .filter(|c| *c > 1)
                .min()
                .unwrap_or(0)
            && let Some(cpu) = point.spread(Who::Switchyard, |r| r.cpu_us_per_op)
        {
            report.target(
                format!(
                    "server CPU per routed command ≤ 33 µs ({flavor}, TCP, {connections} conns)"
                ),
                format!("{:.1} µs", cpu.median),
                cpu.median <= 33.0,
            );
            report.target(
                format!(
                    "server CPU per routed command ≤ {CPU_PER_COMMAND_US} µs (issue 12; {flavor}, TCP, {connections} conns)"
                ),
                format!("{:.1} µs", cpu.median),
                cpu.median <= CPU_PER_COMMAND_US,
            );
        }
    }
    for note in notes {
        report.note(note);
    }
    report.note(
        "floor: the same generator against a bare echo of the same transport (decodes each request envelope and answers it); server CPU counts the server processes only (Switchyard: gateway, login server, room server; Go: go-gateway, go-room).",
    );
}

/// Open-loop knees of every target, `rounds` times, plus the p99 seen at each rate.
struct KneePoint {
    /// (who, round, rate, run)
    steps: Vec<(Who, usize, f64, Run)>,
    knees: Vec<(Who, f64)>,
}

async fn knee_point(targets: &[Target], args: &RoundTripArgs) -> anyhow::Result<KneePoint> {
    let mut point = KneePoint {
        steps: Vec::new(),
        knees: Vec::new(),
    };
    let mut opened = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        let clients = Clients::open(target, args.knee_connections, &format!("knee{t}")).await?;
        // Warm-up (connections, caches), not counted.
        drive(target, &clients, Pace::Closed, Duration::from_millis(300)).await;
        opened.push(clients);
    }
    let step = Duration::from_millis(args.knee_step_ms);
    for round in 0..args.common.rounds {
        for i in 0..targets.len() {
            let t = (i + round) % targets.len();
            let mut knee = 0.0;
            for &rate in &args.knee_rates {
                let run = drive(
                    &targets[t],
                    &opened[t],
                    Pace::Open { rate_per_s: rate },
                    step,
                )
                .await;
                point.steps.push((targets[t].who, round, rate, run));
                let sustained = run.p99_us <= KNEE_P99.as_micros() as f64
                    && run.failed == 0
                    && !run.generator_behind;
                if !sustained {
                    break;
                }
                knee = rate;
            }
            point.knees.push((targets[t].who, knee));
            // Let queues from an overloaded step drain before the next target.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for clients in opened {
        clients.close().await;
    }
    Ok(point)
}

fn knee_tables(report: &mut Report, knees: &[(RuntimeFlavor, KneePoint)], args: &RoundTripArgs) {
    if knees.is_empty() {
        return;
    }
    let mut columns = vec!["server runtime", "figure"];
    columns.extend(COMPARED);
    columns.push("note");
    let table = report.table(
        format!(
            "Open loop over TCP, {} connections: the knee (highest rate with p99 ≤ 5 ms, no errors, generator on schedule)",
            args.knee_connections
        ),
        &columns,
    );
    let top = args.knee_rates.iter().copied().fold(0.0, f64::max);
    for (flavor, point) in knees {
        let knees: Vec<(Who, &f64)> = point.knees.iter().map(|(w, k)| (*w, k)).collect();
        let compared = Compared::of(&knees, |k| *k);
        let floor_knee = compared.floor.map_or(0.0, |f| f.median);
        let mut note = String::new();
        if floor_knee < top
            && [compared.switchyard, compared.go]
                .iter()
                .flatten()
                .any(|s| s.median >= floor_knee)
        {
            note = "generator-bound: the generator's own knee against the bare echo is no higher"
                .into();
        } else if [compared.switchyard, compared.go]
            .iter()
            .flatten()
            .any(|s| s.median >= top)
        {
            note = format!("at the highest rate tried ({top:.0}/s): try higher --knee-rates");
        }
        let mut row = vec![text(flavor), text("knee, req/s")];
        row.extend(compared.cells());
        row.push(text(note));
        table.row(row);
    }
    // The curve: p99 at each rate (rounds that reached the rate).
    let mut columns = vec!["server runtime", "rate/s", "figure"];
    columns.extend(COMPARED);
    let table = report.table("Open loop over TCP: latency at each rate", &columns);
    for (flavor, point) in knees {
        for &rate in &args.knee_rates {
            for (name, figure) in [
                ("p50 µs", (|r: &Run| r.p50_us) as fn(&Run) -> f64),
                ("p99 µs", |r| r.p99_us),
                ("req/s done", |r| r.throughput_per_s),
            ] {
                let at_rate: Vec<(Who, &Run)> = point
                    .steps
                    .iter()
                    .filter(|(_, _, r, _)| *r == rate)
                    .map(|(w, _, _, run)| (*w, run))
                    .collect();
                let compared = Compared::of(&at_rate, figure);
                if compared.switchyard.is_none() && compared.go.is_none() {
                    continue;
                }
                let mut row = vec![text(flavor), text(rate), text(name)];
                row.extend(compared.cells());
                table.row(row);
            }
        }
    }
}

/// Finds one system's knee once (used by the churn scenario to pick half of it).
pub(crate) async fn find_knee(
    target: &Target,
    connections: usize,
    rates: &[f64],
    step: Duration,
) -> anyhow::Result<f64> {
    let clients = Clients::open(target, connections, "knee-probe").await?;
    // Warm-up (connections, caches), not counted.
    drive(target, &clients, Pace::Closed, Duration::from_millis(300)).await;
    let mut knee = 0.0;
    for &rate in rates {
        let run = drive(target, &clients, Pace::Open { rate_per_s: rate }, step).await;
        if run.p99_us > KNEE_P99.as_micros() as f64 || run.failed > 0 || run.generator_behind {
            break;
        }
        knee = rate;
    }
    clients.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(knee)
}

/// Options of `s0-floor`.
#[derive(Args, Debug, Clone)]
pub(crate) struct FloorArgs {
    #[command(flatten)]
    common: Common,
    /// Connection counts (closed loop).
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    connections: Vec<usize>,
    /// Length of each run, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    duration_ms: u64,
}

/// `s0-floor`: the bare round trips every other figure is compared with, and the generator's
/// own ceiling: bare TCP echo, bare WebSocket echo (both driven by the load generator) and a
/// bare tonic unary call; at one connection also the raw loopback round trip under them all,
/// and the generator's bare TCP echo as a multiple of it.
pub(crate) async fn run_floor(args: FloorArgs) -> anyhow::Result<()> {
    let mut report = Report::new(
        "s0-floor",
        "floors: raw loopback round trip, bare TCP echo, bare WebSocket echo, bare tonic unary",
        args.common.rounds,
    );
    let duration = Duration::from_millis(args.duration_ms);
    let mut rows = Vec::new();
    for &flavor in &args.common.server_flavor {
        let floors = [
            Floor::start(FloorKind::Tcp, flavor)?,
            Floor::start(FloorKind::Ws, flavor)?,
            Floor::start(FloorKind::Tonic, flavor)?,
        ];
        for &connections in &args.connections {
            let mut runs: Vec<(FloorRow, Run)> = Vec::new();
            let mut clients = Vec::new();
            for floor in &floors[..2] {
                let target = Target::floor(floor)?;
                let opened = Clients::open(&target, connections, "floor").await?;
                drive(&target, &opened, Pace::Closed, Duration::from_millis(300)).await;
                clients.push((target, opened));
            }
            let tonic = tonic_clients(&floors[2], connections).await?;
            tonic_drive(&floors[2], &tonic, Duration::from_millis(300)).await?;
            // The raw round trip is one connection: it takes its turn at that point.
            let turns = if connections == 1 { 4 } else { 3 };
            for round in 0..args.common.rounds {
                for i in 0..turns {
                    let which = (i + round) % turns;
                    let run = match which {
                        0 | 1 => {
                            let (target, opened) = &clients[which];
                            drive(target, opened, Pace::Closed, duration).await
                        }
                        2 => tonic_drive(&floors[2], &tonic, duration).await?,
                        _ => {
                            tokio::task::spawn_blocking(move || raw_round_trips(duration)).await??
                        }
                    };
                    let row = match floors.get(which) {
                        Some(floor) => FloorRow::Served(floor.kind),
                        None => FloorRow::Raw,
                    };
                    runs.push((row, run));
                }
            }
            for (_, opened) in clients {
                opened.close().await;
            }
            rows.push((flavor, connections, runs));
        }
    }
    let table = report.table(
        "Closed loop, one request in flight per connection",
        &[
            "server runtime",
            "floor",
            "conns",
            "p50 µs",
            "p99 µs",
            "req/s",
            "server CPU µs/req",
        ],
    );
    let spread = |runs: &[(FloorRow, Run)], row: FloorRow, figure: fn(&Run) -> f64| {
        let mine: Vec<f64> = runs
            .iter()
            .filter(|(r, _)| *r == row)
            .map(|(_, run)| figure(run))
            .collect();
        (!mine.is_empty()).then(|| Spread::of(mine))
    };
    let all_rows = [
        FloorRow::Raw,
        FloorRow::Served(FloorKind::Tcp),
        FloorRow::Served(FloorKind::Ws),
        FloorRow::Served(FloorKind::Tonic),
    ];
    for (flavor, connections, runs) in &rows {
        for row in all_rows {
            let Some(p50) = spread(runs, row, |r| r.p50_us) else {
                continue;
            };
            let cpu = match row {
                FloorRow::Raw => text("— (both ends in the harness)"),
                FloorRow::Served(_) => Cell::Spread(Spread::of(
                    runs.iter()
                        .filter(|(r, _)| *r == row)
                        .map(|(_, run)| run.cpu_us_per_op),
                )),
            };
            table.row(vec![
                text(flavor),
                text(row),
                text(connections),
                Cell::Spread(p50),
                spread(runs, row, |r| r.p99_us).map_or(text("—"), Cell::Spread),
                spread(runs, row, |r| r.throughput_per_s).map_or(text("—"), Cell::Spread),
                cpu,
            ]);
        }
    }
    // The generator's own cost per request: its bare TCP echo against the raw round trip.
    let mut overhead = Vec::new();
    let echo = FloorRow::Served(FloorKind::Tcp);
    for (flavor, _, runs) in rows.iter().filter(|(_, c, _)| *c == 1) {
        let (Some(raw50), Some(echo50), Some(raw99), Some(echo99)) = (
            spread(runs, FloorRow::Raw, |r| r.p50_us),
            spread(runs, echo, |r| r.p50_us),
            spread(runs, FloorRow::Raw, |r| r.p99_us),
            spread(runs, echo, |r| r.p99_us),
        ) else {
            continue;
        };
        for (figure, raw, echo) in [("p50 µs", raw50, echo50), ("p99 µs", raw99, echo99)] {
            overhead.push(vec![
                text(flavor),
                text(figure),
                Cell::Spread(raw),
                Cell::Spread(echo),
                Cell::Ratio((raw.median > 0.0).then(|| echo.median / raw.median)),
            ]);
        }
        let ratio = echo50.median / raw50.median;
        report.target(
            format!(
                "generator's bare TCP echo p50 ≤ 2 × the raw loopback round trip ({flavor}, 1 conn)"
            ),
            format!(
                "{:.1} µs = {ratio:.2} × the raw round trip ({:.1} µs): the generator and a tokio echo add {:.1} µs",
                echo50.median,
                raw50.median,
                echo50.median - raw50.median
            ),
            ratio <= 2.0,
        );
    }
    if !overhead.is_empty() {
        report
            .table(
                "The generator against the physical floor (1 connection)",
                &[
                    "server runtime",
                    "figure",
                    "raw round trip",
                    "generator → bare TCP echo",
                    "echo / raw",
                ],
            )
            .rows = overhead;
    }
    report.note("The raw loopback round trip is the physical floor (sockperf-style ping-pong): two blocking threads of the harness (std::net, TCP_NODELAY) bounce a 32-byte message, one in flight, no runtime or framing; it takes its turn with the floors at one connection, in the same rounds. Its server runtime column names the turn it ran in, not a runtime it used.");
    report.note("The bare TCP and WebSocket echoes are driven by the same load generator as every scenario (client-sim's engine over the client library): their rates are the generator's ceiling on this machine, and results near them are marked generator-bound elsewhere. The bare TCP echo over the raw round trip is what the generator and a tokio echo add to a loopback round trip.");
    report.note("Switchyard and Go have no rows here: this scenario is the floor the others are divided by.");
    report.finish(&args.common.out)
}

/// A row of the S0 table: a floor server, or the raw round trip between two threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FloorRow {
    Raw,
    Served(FloorKind),
}

impl std::fmt::Display for FloorRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FloorRow::Raw => f.write_str("raw loopback TCP round trip (blocking threads)"),
            FloorRow::Served(kind) => kind.fmt(f),
        }
    }
}

async fn tonic_clients(
    floor: &Floor,
    connections: usize,
) -> anyhow::Result<Vec<MeshClient<tonic::transport::Channel>>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = Endpoint::from_shared(format!("http://{}", floor.addr))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(MeshClient::new(channel));
    }
    Ok(clients)
}

/// Closed loop over tonic unary calls, one in flight per channel.
async fn tonic_drive(
    floor: &Floor,
    clients: &[MeshClient<tonic::transport::Channel>],
    duration: Duration,
) -> anyhow::Result<Run> {
    let cpu = CpuMeter::start(&[floor.pid()]);
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let mut n = 0u64;
                let stop_at = Instant::now() + duration;
                while Instant::now() < stop_at {
                    let t = Instant::now();
                    client
                        .call(MeshRequest {
                            command: mesh::command::PING,
                            from_node: String::new(),
                            payload: Bytes::from_static(&[7; 32]),
                        })
                        .await?;
                    h.saturating_record(t.elapsed().as_nanos() as u64);
                    n += 1;
                }
                anyhow::Ok((h, n))
            })
        })
        .collect();
    let mut all = histogram();
    let mut completed = 0;
    for task in tasks {
        let (h, n) = task.await??;
        all.add(&h)?;
        completed += n;
    }
    Ok(Run::of_histogram(
        &all,
        completed,
        started.elapsed(),
        cpu.elapsed_micros(),
    ))
}

/// Size of the raw round trip's message (the payload size).
const RAW_MESSAGE: usize = 32;

/// The physical floor: a raw loopback TCP round trip, `sockperf`-style. Two blocking threads of
/// this process (`std::net`, `TCP_NODELAY`) ping-pong a 32-byte message for `duration` after a
/// thousand unrecorded ones; no runtime, framing or allocation per message. CPU is not
/// measured (both ends live in the harness).
fn raw_round_trips(duration: Duration) -> anyhow::Result<Run> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut message = [0u8; RAW_MESSAGE];
        loop {
            match socket.read_exact(&mut message) {
                Ok(()) => socket.write_all(&message)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut socket = TcpStream::connect(addr)?;
    socket.set_nodelay(true)?;
    let mut message = [7u8; RAW_MESSAGE];
    let mut ping = |socket: &mut TcpStream| -> std::io::Result<()> {
        socket.write_all(&message)?;
        socket.read_exact(&mut message)
    };
    for _ in 0..1_000 {
        ping(&mut socket)?;
    }
    let mut latency = histogram();
    let mut completed = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let sent = Instant::now();
        ping(&mut socket)?;
        latency.saturating_record(sent.elapsed().as_nanos() as u64);
        completed += 1;
    }
    let elapsed = started.elapsed();
    drop(socket);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the raw echo thread panicked"))??;
    Ok(Run::of_histogram(&latency, completed, elapsed, 0))
}
