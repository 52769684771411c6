//! Many connections from several generator processes, and scenario `s1-connect-storm`.
//!
//! One process may hold about 20,000 sockets on these machines, so a swarm is split over
//! generator processes (the hidden `swarm` subcommand), each connecting from its own source
//! address (`127.0.0.2`, `127.0.0.3`, …) so no address runs out of ephemeral ports. The parent
//! tells them when to connect (`CONNECT`) and to let go (`CLOSE`) over stdin; each answers with
//! one JSON line. Failed logins are counted by what failed: the gateway's error code, or the
//! client's own error.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use client::{Address, Client};
use runtime::RuntimeFlavor;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{
    Common,
    child::ChildProcess,
    procfs::CpuMeter,
    report::{COMPARED, Figure, Report, Who, of_flavor, text},
    stack::{Fresh, LOGIN, Services, Transport, client_config, login_payload, turn_order},
    stats::histogram,
};

/// Options of the hidden `swarm` subcommand.
#[derive(Args, Debug)]
pub(crate) struct SwarmArgs {
    /// `ws://…` or `tcp://…`.
    #[arg(long)]
    address: String,
    /// Connections to make.
    #[arg(long)]
    count: usize,
    /// Source address of every connection.
    #[arg(long)]
    source: IpAddr,
    /// User id prefix.
    #[arg(long)]
    prefix: String,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
}

/// What a generator process reports after `CONNECT`.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Connected {
    /// Connect + upgrade + login latency of each success, microseconds.
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Failures by what failed (see [`login`]).
    #[serde(default)]
    failures: BTreeMap<String, u64>,
}

/// Connects and logs in as `user`. A failure is named by what failed: the gateway's error code
/// (`upstream_failed`, …) or the client's own error (`connect`, `timeout`, `closed`, `send`),
/// with the details.
async fn login(
    address: &Address,
    config: &client::ClientConfig,
    user: &str,
) -> Result<(Client, client::Events), (&'static str, String)> {
    let (client, events) = Client::connect_with(address.clone(), config.clone())
        .await
        .map_err(|e| ("connect", e.to_string()))?;
    match client.request(LOGIN, login_payload(user)).await {
        Ok(response) if response.is_ok() => Ok((client, events)),
        Ok(response) => Err((
            wire::envelope::code_name(response.status),
            format!("login of {user} refused: {response:?}"),
        )),
        Err(error) => {
            let kind = match error {
                client::ClientError::Connect { .. } => "connect",
                client::ClientError::Closed => "closed",
                client::ClientError::Timeout(_) => "timeout",
                client::ClientError::Send(_) => "send",
            };
            Err((kind, format!("login of {user}: {error}")))
        }
    }
}

/// The hidden `swarm` subcommand: one generator process.
#[allow(clippy::print_stdout)] // stdout is the protocol with the parent
pub(crate) async fn serve(args: SwarmArgs) -> anyhow::Result<()> {
    let address = if let Some(tcp) = args.address.strip_prefix("tcp://") {
        Address::Tcp(tcp.parse()?)
    } else {
        Address::WebSocket(args.address.clone())
    };
    let mut config = client_config();
    config.local_ip = Some(args.source);
    config.event_buffer = 8;
    println!("READY");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let mut clients: Vec<(Client, client::Events)> = Vec::new();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "CONNECT" => {
                let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
                let tasks: Vec<_> = (0..args.count)
                    .map(|i| {
                        let (address, config, limit) =
                            (address.clone(), config.clone(), limit.clone());
                        let user = format!("{}-{i}", args.prefix);
                        tokio::spawn(async move {
                            let _permit = limit.acquire_owned().await;
                            let started = Instant::now();
                            login(&address, &config, &user)
                                .await
                                .map(|c| (c, started.elapsed()))
                        })
                    })
                    .collect();
                let mut report = Connected::default();
                for task in tasks {
                    match task.await? {
                        Ok((client, latency)) => {
                            report.latencies_us.push(latency.as_micros() as u64);
                            clients.push(client);
                        }
                        Err((kind, error)) => {
                            report.errors += 1;
                            *report.failures.entry(kind.to_owned()).or_default() += 1;
                            report.first_error.get_or_insert(error);
                        }
                    }
                }
                println!("{}", serde_json::to_string(&report)?);
            }
            "CLOSE" => {
                for (client, _) in clients.drain(..) {
                    client.close().await;
                }
                println!("{{}}");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Connections held by generator processes.
pub(crate) struct Swarm {
    generators: Vec<ChildProcess>,
}

/// What connecting a swarm measured.
pub(crate) struct SwarmConnect {
    pub(crate) connected: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Failures by what failed (the gateway's error code or the client's error).
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) elapsed: Duration,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

impl Swarm {
    /// Starts generator processes for `sessions` connections to `address`, at most
    /// `per_process` each, each from its own 127.0.0.x.
    pub(crate) fn start(
        address: &Address,
        sessions: usize,
        per_process: usize,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let processes = sessions.div_ceil(per_process.max(1)).max(1);
        let address = address.to_string();
        let mut generators = Vec::with_capacity(processes);
        for g in 0..processes {
            let count = sessions / processes + usize::from(g < sessions % processes);
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + g as u8));
            generators.push(ChildProcess::spawn(&[
                "--flavor",
                RuntimeFlavor::MultiThread.as_arg(),
                "swarm",
                "--address",
                &address,
                "--count",
                &count.to_string(),
                "--source",
                &source.to_string(),
                "--prefix",
                &format!("{prefix}-g{g}"),
            ])?);
        }
        Ok(Swarm { generators })
    }

    /// Connects every generator's share at once; returns when all are connected.
    pub(crate) async fn connect(&mut self) -> anyhow::Result<SwarmConnect> {
        let started = Instant::now();
        for generator in &mut self.generators {
            generator.send("CONNECT")?;
        }
        let mut all = histogram();
        let mut result = SwarmConnect {
            connected: 0,
            errors: 0,
            first_error: None,
            failures: BTreeMap::new(),
            elapsed: Duration::ZERO,
            p50_us: 0.0,
            p99_us: 0.0,
        };
        for generator in &mut self.generators {
            let line = generator.read_line()?;
            let connected: Connected =
                serde_json::from_str(&line).with_context(|| format!("generator said {line:?}"))?;
            for us in &connected.latencies_us {
                all.saturating_record(us * 1000);
            }
            result.connected += connected.latencies_us.len() as u64;
            result.errors += connected.errors;
            for (kind, count) in connected.failures {
                *result.failures.entry(kind).or_default() += count;
            }
            if result.first_error.is_none() {
                result.first_error = connected.first_error;
            }
        }
        result.elapsed = started.elapsed();
        result.p50_us = all.value_at_quantile(0.5) as f64 / 1000.0;
        result.p99_us = all.value_at_quantile(0.99) as f64 / 1000.0;
        Ok(result)
    }

    /// Closes every connection (clean close) and waits until the generators did.
    pub(crate) fn close(mut self) -> anyhow::Result<()> {
        for generator in &mut self.generators {
            generator.send("CLOSE")?;
        }
        for generator in &mut self.generators {
            generator.read_line()?;
        }
        Ok(())
    }
}

/// Options of `s1-connect-storm`.
#[derive(Args, Debug, Clone)]
pub(crate) struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Connections in the storm.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Most connections per generator process (each process has its own source address).
    #[arg(long, default_value_t = 5_000)]
    per_process: usize,
    /// Client transport.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// The server answering the logins: a bare login server (`echo`, written with the SDK) or
    /// the match server (`match`, logic-match, as in production).
    #[arg(long, value_enum, default_value_t = LoginServer::Echo)]
    login_server: LoginServer,
}

/// Which server answers the logins of a storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LoginServer {
    Echo,
    Match,
}

impl LoginServer {
    fn services(self) -> Services {
        match self {
            LoginServer::Echo => Services::Rooms,
            LoginServer::Match => Services::Matchmaking,
        }
    }
}

struct StormRun {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    errors: u64,
    failures: BTreeMap<String, u64>,
}

/// `s1-connect-storm`: `sessions` clients connect, upgrade and log in at once (fresh servers
/// every round).
pub(crate) async fn run_storm(args: StormArgs) -> anyhow::Result<()> {
    let mut report = Report::new(
        "s1-connect-storm",
        format!(
            "connect storm: {} × (connect + {} + login)",
            args.sessions,
            if args.transport == Transport::Ws {
                "upgrade"
            } else {
                "TCP"
            }
        ),
        args.common.rounds,
    );
    let mut results: Vec<(RuntimeFlavor, Who, StormRun)> = Vec::new();
    let mut first_errors = Vec::new();
    for round in 0..args.common.rounds {
        for &flavor in &args.common.server_flavor {
            for who in turn_order(&args.common.go_baseline, round) {
                let run = storm_once(&args, flavor, who, round, &mut first_errors).await?;
                if !run.failures.is_empty() {
                    report.note(format!(
                        "failed logins of {who:?} ({flavor}, round {}) by what failed: {}",
                        round + 1,
                        failures_text(&run.failures)
                    ));
                }
                results.push((flavor, who, run));
            }
        }
        eprintln!("round {}/{} done", round + 1, args.common.rounds);
    }
    let ours = results.iter().filter(|(_, who, _)| *who == Who::Switchyard);
    let (storms, failed) = ours.fold((0, 0), |(n, f), (_, _, run)| (n + 1, f + run.errors));
    report.target(
        "every login of every storm succeeds (Switchyard)",
        format!(
            "{failed} of {} logins failed ({storms} storms)",
            storms * args.sessions as u64
        ),
        failed == 0,
    );
    let mut columns = vec!["server runtime", "figure"];
    columns.extend(COMPARED);
    let table = report.table(
        format!(
            "{} connections over {} from {} generator processes",
            args.sessions,
            args.transport,
            args.sessions.div_ceil(args.per_process.max(1))
        ),
        &columns,
    );
    let figures: [Figure<StormRun>; 5] = [
        ("sessions/s", |r| r.per_s),
        ("connect+login p50 ms", |r| r.p50_us / 1000.0),
        ("connect+login p99 ms", |r| r.p99_us / 1000.0),
        ("server CPU µs per session", |r| r.cpu_us),
        ("failed", |r| r.errors as f64),
    ];
    for &flavor in &args.common.server_flavor {
        table.compared_rows(&[text(flavor)], &of_flavor(&results, flavor), &figures);
    }
    report.note(format!("logins answered by {}. floor: a bare WebSocket (or TCP) echo server; its \"login\" is one echoed round trip. Go's runtime does not change with the Switchyard server runtime.", match args.login_server {
        LoginServer::Echo => "a login server written with the SDK (Go: go-room)",
        LoginServer::Match => "the match server, logic-match (Go: go-match)",
    }));
    for error in first_errors {
        report.note(format!("first error: {error}"));
    }
    report.finish(&args.common.out)
}

async fn storm_once(
    args: &StormArgs,
    flavor: RuntimeFlavor,
    who: Who,
    round: usize,
    first_errors: &mut Vec<String>,
) -> anyhow::Result<StormRun> {
    let system = Fresh::start(
        who,
        flavor,
        args.transport,
        args.login_server.services(),
        &args.common.go_baseline,
    )
    .await?;
    let mut swarm = Swarm::start(
        &system.address,
        args.sessions,
        args.per_process,
        &format!("storm{round}"),
    )?;
    let cpu = CpuMeter::start(&system.pids);
    let connected = swarm.connect().await?;
    let cpu_micros = cpu.elapsed_micros();
    if let Some(error) = &connected.first_error {
        first_errors.push(format!("{who:?} ({flavor}): {error}"));
    }
    swarm.close()?;
    Ok(StormRun {
        per_s: connected.connected as f64 / connected.elapsed.as_secs_f64(),
        p50_us: connected.p50_us,
        p99_us: connected.p99_us,
        cpu_us: cpu_micros as f64 / connected.connected.max(1) as f64,
        errors: connected.errors,
        failures: connected.failures,
    })
}

/// `upstream_failed 4557, timeout 3`.
fn failures_text(failures: &BTreeMap<String, u64>) -> String {
    failures
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}
