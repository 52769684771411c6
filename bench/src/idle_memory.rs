//! Scenario `s2-idle-memory`: gateway resident memory per idle, logged-in session at 10,000
//! sessions, over WebSocket and TCP, for Switchyard and the Go baseline, next to a bare echo
//! server of the same transport holding as many idle connections (the floor). RSS is read from
//! `/proc` for the gateway process only; the clients live in generator processes.

use std::time::Duration;

use clap::Args;
use runtime::RuntimeFlavor;

use crate::{
    Common,
    procfs::rss_kib,
    report::{COMPARED, Compared, Figure, Report, Who, text},
    stack::{Fresh, Services, Transport, turn_order},
    swarm::Swarm,
};

/// Options of `s2-idle-memory`.
#[derive(Args, Debug, Clone)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Idle sessions to hold.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Most connections per generator process.
    #[arg(long, default_value_t = 5_000)]
    per_process: usize,
}

/// KiB per session target of the issue.
const TARGET_KIB: f64 = 8.0;

pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let mut report = Report::new(
        "s2-idle-memory",
        format!(
            "gateway memory per idle, logged-in session ({} sessions)",
            args.sessions
        ),
        args.common.rounds,
    );
    let mut results: Vec<(RuntimeFlavor, Transport, Who, f64)> = Vec::new();
    let mut failures = Vec::new();
    for round in 0..args.common.rounds {
        for &flavor in &args.common.server_flavor {
            for transport in [Transport::Ws, Transport::Tcp] {
                for who in turn_order(&args.common.go_baseline, round) {
                    let kib = measure(&args, flavor, transport, who, round, &mut failures).await?;
                    results.push((flavor, transport, who, kib));
                }
            }
        }
        eprintln!("round {}/{} done", round + 1, args.common.rounds);
    }
    let mut columns = vec!["server runtime", "transport", "figure"];
    columns.extend(COMPARED);
    let mut targets = Vec::new();
    let table = report.table("Resident memory per idle session, KiB", &columns);
    for &flavor in &args.common.server_flavor {
        for transport in [Transport::Ws, Transport::Tcp] {
            let mine: Vec<(Who, &f64)> = results
                .iter()
                .filter(|(f, t, ..)| *f == flavor && *t == transport)
                .map(|(_, _, who, kib)| (*who, kib))
                .collect();
            let figures: [Figure<f64>; 1] = [("KiB per session", |kib| *kib)];
            table.compared_rows(&[text(flavor), text(transport)], &mine, &figures);
            if let Some(sw) = Compared::of(&mine, |kib| *kib).switchyard {
                targets.push((flavor, transport, sw));
            }
        }
    }
    for (flavor, transport, sw) in targets {
        report.target(
            format!("S2 ≤ 8 KiB per idle session ({flavor}, {transport})"),
            format!("{:.1} KiB", sw.median),
            sw.median <= TARGET_KIB,
        );
    }
    for failure in failures {
        report.note(failure);
    }
    report.note("Each round starts fresh servers; the figure is (gateway RSS with the sessions held − RSS before) / sessions, read after the connections settle. floor: a bare echo server of the same transport (tokio-tungstenite with the gateway's WebSocket settings, or length-prefixed TCP) holding the same number of idle connections.");
    report.finish(&args.common.out)
}

/// Holds `sessions` idle sessions on fresh servers; KiB of gateway RSS each.
async fn measure(
    args: &IdleArgs,
    flavor: RuntimeFlavor,
    transport: Transport,
    who: Who,
    round: usize,
    failures: &mut Vec<String>,
) -> anyhow::Result<f64> {
    let system = Fresh::start(
        who,
        flavor,
        transport,
        Services::Rooms,
        &args.common.go_baseline,
    )
    .await?;
    let pid = system.gateway_pid;
    let mut swarm = Swarm::start(
        &system.address,
        args.sessions,
        args.per_process,
        &format!("idle{round}"),
    )?;
    settle().await;
    let before = rss_kib(pid).unwrap_or(0);
    let connected = swarm.connect().await?;
    anyhow::ensure!(
        connected.connected > 0,
        "{who:?}: no session connected: {:?}",
        connected.first_error
    );
    if connected.errors > 0 {
        failures.push(format!(
            "{who:?} ({transport}, round {}): {} of {} sessions failed to connect ({}); its figure is per connected session",
            round + 1,
            connected.errors,
            args.sessions,
            connected.first_error.clone().unwrap_or_default()
        ));
    }
    settle().await;
    let after = rss_kib(pid).unwrap_or(0);
    swarm.close()?;
    Ok(after.saturating_sub(before) as f64 / connected.connected as f64)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1000)).await;
}
