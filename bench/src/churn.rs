//! Scenario `s7-churn`: the S3 load in open loop at half the knee, while other clients come and
//! go (1,000 to 2,000 connects and disconnects a minute; each logs in and creates a room, which
//! binds it to the room server, then leaves cleanly or just drops its connection). Reports the
//! steady load's latency with churn next to the same load without it, and then, once every
//! client is gone, what the gateway still holds: sessions, session objects and bindings must
//! all be 0.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use client_sim::generator::Pace;
use prost::Message;
use proto::room::v1 as room;
use runtime::RuntimeFlavor;

use crate::{
    Common,
    report::{COMPARED, Figure, Report, Who, of_flavor, text},
    round_trip::{Clients, Run, Target, drive, find_knee},
    stack::{Services, Stack, Transport, client_config, login},
};

/// Options of `s7-churn`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Steady load in requests per second in all; 0: half of the knee found first.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Rates tried to find the knee.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,4000,8000,12000,16000,20000,24000"
    )]
    knee_rates: Vec<f64>,
    /// Steady connections.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Connects (and as many disconnects) per minute.
    #[arg(long, default_value_t = 1500.0)]
    churn_per_minute: f64,
    /// Length of each run, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
}

struct ChurnRun {
    steady: Run,
    quiet: Run,
    churned: u64,
    churn_failed: u64,
}

/// What a Switchyard gateway still holds after every client left.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct Leftovers {
    pub(crate) sessions: f64,
    pub(crate) session_objects: f64,
    pub(crate) bindings: f64,
}

impl Leftovers {
    /// Nothing held.
    pub(crate) fn clean(&self) -> bool {
        self.sessions == 0.0 && self.session_objects == 0.0 && self.bindings == 0.0
    }
}

pub(crate) async fn run(args: ChurnArgs) -> anyhow::Result<()> {
    let mut report = Report::new(
        "s7-churn",
        format!(
            "churn: S3 at half the knee over {} connections, plus {:.0} connects/disconnects a minute",
            args.connections, args.churn_per_minute
        ),
        args.common.rounds,
    );
    let mut runs: Vec<(RuntimeFlavor, Who, ChurnRun)> = Vec::new();
    let mut leftovers: Vec<(RuntimeFlavor, Leftovers)> = Vec::new();
    let mut rates = Vec::new();
    for &flavor in &args.common.server_flavor {
        let sw = Stack::switchyard(flavor, Services::Rooms).await?;
        let go = Stack::go(&args.common.go_baseline, Services::Rooms).await?;
        let mut stacks = vec![&sw];
        stacks.extend(go.as_ref());
        let mut systems = Vec::new();
        for stack in stacks {
            let target = Target::stack(stack, Transport::Tcp);
            let rate = if args.rate > 0.0 {
                args.rate
            } else {
                let step = Duration::from_millis(1000);
                let knee = find_knee(&target, args.connections, &args.knee_rates, step).await?;
                if knee > 0.0 {
                    knee / 2.0
                } else {
                    // Not even the lowest rate kept p99 ≤ 5 ms on this run: half of it.
                    let lowest = args.knee_rates.iter().copied().fold(f64::MAX, f64::min);
                    report.note(format!(
                        "{:?} ({flavor}): no rate tried kept p99 ≤ 5 ms; ran at half the lowest ({lowest:.0}/s)",
                        target.who
                    ));
                    lowest / 2.0
                }
            };
            rates.push((flavor, target.who, rate));
            let clients =
                Clients::open(&target, args.connections, &format!("steady-{flavor}")).await?;
            systems.push((stack, target, clients, rate));
        }
        for round in 0..args.common.rounds {
            for i in 0..systems.len() {
                let (stack, target, clients, rate) = &systems[(i + round) % systems.len()];
                let run = once(
                    stack,
                    target,
                    clients,
                    *rate,
                    &args,
                    &format!("{flavor}-{round}"),
                )
                .await;
                runs.push((flavor, target.who, run));
            }
            eprintln!("{flavor}: round {}/{} done", round + 1, args.common.rounds);
        }
        for (_, _, clients, _) in systems {
            clients.close().await;
        }
        if let Some(admin) = &sw.admin {
            leftovers.push((flavor, settle(admin.parse()?).await));
        }
    }
    let mut columns = vec!["server runtime", "figure"];
    columns.extend(COMPARED);
    let table = report.table("Steady load over TCP with and without churn", &columns);
    let figures: [Figure<ChurnRun>; 7] = [
        ("steady rate, req/s (half the knee)", |r| {
            r.steady.throughput_per_s
        }),
        ("p50 µs, no churn", |r| r.quiet.p50_us),
        ("p50 µs, churn", |r| r.steady.p50_us),
        ("p99 µs, no churn", |r| r.quiet.p99_us),
        ("p99 µs, churn", |r| r.steady.p99_us),
        ("churn connects done", |r| r.churned as f64),
        ("failed (steady + churn)", |r| {
            (r.steady.failed + r.churn_failed) as f64
        }),
    ];
    for &flavor in &args.common.server_flavor {
        table.compared_rows(&[text(flavor)], &of_flavor(&runs, flavor), &figures);
    }
    let table = report.table(
        "What the Switchyard gateway holds once every client has left",
        &["server runtime", "sessions", "session objects", "bindings"],
    );
    for (flavor, left) in &leftovers {
        table.row(vec![
            text(flavor),
            text(left.sessions),
            text(left.session_objects),
            text(left.bindings),
        ]);
    }
    for (flavor, left) in &leftovers {
        report.target(
            format!("S7 leaked sessions and bindings = 0 ({flavor})"),
            format!(
                "{} sessions, {} session objects, {} bindings",
                left.sessions, left.session_objects, left.bindings
            ),
            left.clean(),
        );
    }
    for (flavor, who, rate) in rates {
        report.note(format!("{who:?} ({flavor}): steady rate {rate:.0} req/s"));
    }
    report.note(format!("Leftovers are read from the gateway's /metrics (switchyard_gateway_sessions, switchyard_gateway_session_objects, switchyard_gateway_bindings) up to 10 s after the last client left; the Go baseline has no such counters. Half the churn clients close cleanly (a goodbye), half just drop the connection: the gateway holds those sessions for its resume window ({} ms in the benchmarks), then ends them.", crate::stack::RESUME_WINDOW_MS));
    report.finish(&args.common.out)
}

/// One round: the steady load alone, then with churn.
async fn once(
    stack: &Stack,
    target: &Target,
    clients: &Clients,
    rate: f64,
    args: &ChurnArgs,
    tag: &str,
) -> ChurnRun {
    let duration = Duration::from_millis(args.duration_ms);
    let pace = Pace::Open { rate_per_s: rate };
    let quiet = drive(target, clients, pace, duration).await;
    let churning = Churning::start(
        stack.address(Transport::Tcp),
        args.churn_per_minute,
        duration,
        Visit {
            ops: 0,
            drop_half: true,
        },
        tag.to_owned(),
    );
    let steady = drive(target, clients, pace, duration).await;
    let (churned, churn_failed) = churning.finish().await;
    ChurnRun {
        steady,
        quiet,
        churned,
        churn_failed,
    }
}

/// How a churn client spends its visit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Visit {
    /// Requests (`GetProperties` of its room) sent one after another once its room exists.
    pub(crate) ops: u32,
    /// Every second client drops its connection without a goodbye; the others close cleanly.
    pub(crate) drop_half: bool,
}

/// What the churn clients did.
#[derive(Default, Debug)]
struct ChurnCounts {
    /// Visits done in full.
    done: AtomicU64,
    /// Visits that failed somewhere (connect, login, create, an op).
    failed: AtomicU64,
}

/// Churn clients coming and going in the background.
pub(crate) struct Churning {
    task: tokio::task::JoinHandle<()>,
    counts: Arc<ChurnCounts>,
}

impl Churning {
    /// Starts clients visiting `address`, `per_minute` a minute for `duration`.
    pub(crate) fn start(
        address: client::Address,
        per_minute: f64,
        duration: Duration,
        visit: Visit,
        tag: String,
    ) -> Self {
        let counts = Arc::new(ChurnCounts::default());
        let task = tokio::spawn(churn(
            address,
            per_minute,
            duration,
            visit,
            tag,
            counts.clone(),
        ));
        Churning { task, counts }
    }

    /// Waits until the last client has left; returns the visits done and failed.
    pub(crate) async fn finish(self) -> (u64, u64) {
        let _ = self.task.await;
        (
            self.counts.done.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }
}

/// Clients that connect (`per_minute` a minute, for `duration`), log in, create a room, send
/// `visit.ops` requests in it, stay 0.2 to 2 s in all and leave. Returns once the last one left.
async fn churn(
    address: client::Address,
    per_minute: f64,
    duration: Duration,
    visit: Visit,
    tag: String,
    counts: Arc<ChurnCounts>,
) {
    let every = Duration::from_secs_f64(60.0 / per_minute.max(1.0));
    let stop_at = Instant::now() + duration;
    let mut next = Instant::now();
    // A set reaped as visits end, so a long soak holds only the clients still visiting.
    let mut visitors = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while next < stop_at {
        tokio::time::sleep_until(next.into()).await;
        while visitors.try_join_next().is_some() {}
        n += 1;
        let (address, counts) = (address.clone(), counts.clone());
        let user = format!("churn-{tag}-{n}");
        visitors.spawn(async move {
            let outcome = visit_once(&address, &user, visit, n).await;
            let counter = if outcome.is_ok() {
                &counts.done
            } else {
                &counts.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
        next += every;
    }
    visitors.join_all().await;
}

/// One churn client's visit; `n` picks how long it stays and whether it says goodbye.
async fn visit_once(
    address: &client::Address,
    user: &str,
    visit: Visit,
    n: u64,
) -> anyhow::Result<()> {
    let arrived = Instant::now();
    let (client, _events) = login(address, &client_config(), user).await?;
    let create = room::CreateRoom {
        max_members: 4,
        properties: Default::default(),
    };
    let response = client
        .request(room::routes::CREATE, create.encode_to_vec())
        .await?;
    anyhow::ensure!(response.is_ok(), "create failed: {response:?}");
    let room_id = room::RoomInfo::decode(response.payload)?.room_id;
    let get = room::RoomRef { room_id }.encode_to_vec();
    for _ in 0..visit.ops {
        let response = client
            .request(room::routes::GET_PROPERTIES, get.clone())
            .await?;
        anyhow::ensure!(response.is_ok(), "get properties failed: {response:?}");
    }
    // Stay 0.2 to 2 s in all.
    let stay = Duration::from_millis(200 + (n * 7919) % 1800);
    tokio::time::sleep_until((arrived + stay).into()).await;
    if !visit.drop_half || n.is_multiple_of(2) {
        client.close().await;
    } // else: dropped without a goodbye
    Ok(())
}

/// Waits up to 10 s for the gateway to hold nothing; returns what it still holds.
pub(crate) async fn settle(admin: SocketAddr) -> Leftovers {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(admin).await;
        if left.clean() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the gateway holds now, from its `/metrics`.
pub(crate) async fn leftovers(admin: SocketAddr) -> Leftovers {
    tokio::task::spawn_blocking(move || read_leftovers(admin))
        .await
        .unwrap_or_default()
}

fn read_leftovers(admin: SocketAddr) -> Leftovers {
    let (_, body) = testkit::http_get(admin, "/metrics");
    let gauge = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Leftovers {
        sessions: gauge(gateway::metrics::SESSIONS),
        session_objects: gauge(gateway::metrics::SESSION_OBJECTS),
        bindings: gauge(gateway::metrics::BINDINGS),
    }
}
