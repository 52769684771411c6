//! Scenario `s2-idle-memory`: gateway resident memory per idle, logged-in session at 10,000
//! sessions, over WebSocket and TCP, for Switchyard and the Go baseline, next to a bare echo
//! server of the same transport holding as many idle connections (the floor). RSS is read from
//! `/proc` for the gateway process only; the clients live in generator processes.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use runtime::RuntimeFlavor;

use crate::{
    Common,
    procfs::rss_kib,
    report::{COMPARED, Compared, Report, text},
    stack::{Floor, Services, Stack, Transport},
    stats::Spread,
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Switchyard,
    Go,
    Floor,
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
    let go_present = args.common.go_baseline.join("go-gateway").exists();
    let mut results: Vec<(RuntimeFlavor, Transport, Who, f64)> = Vec::new();
    let mut failures = Vec::new();
    for round in 0..args.common.rounds {
        for &flavor in &args.common.server_flavor {
            for transport in [Transport::Ws, Transport::Tcp] {
                let mut order = vec![Who::Switchyard, Who::Floor];
                if go_present {
                    order.insert(1, Who::Go);
                }
                let n = order.len();
                order.rotate_left(round % n);
                for who in order {
                    let kib = measure(&args, flavor, transport, who, round, &mut failures).await?;
                    results.push((flavor, transport, who, kib));
                }
            }
        }
        eprintln!("round {}/{} done", round + 1, args.common.rounds);
    }
    let mut columns = vec!["server runtime", "transport", "figure"];
    columns.extend(COMPARED);
    let table = report.table("Resident memory per idle session, KiB", &columns);
    for &flavor in &args.common.server_flavor {
        for transport in [Transport::Ws, Transport::Tcp] {
            let spread = |who: Who| {
                let v: Vec<f64> = results
                    .iter()
                    .filter(|(f, t, w, _)| *f == flavor && *t == transport && *w == who)
                    .map(|r| r.3)
                    .collect();
                (!v.is_empty()).then(|| Spread::of(v))
            };
            let compared = Compared {
                switchyard: spread(Who::Switchyard),
                go: spread(Who::Go),
                floor: spread(Who::Floor),
            };
            let mut row = vec![text(flavor), text(transport), text("KiB per session")];
            row.extend(compared.cells());
            table.row(row);
        }
    }
    for &flavor in &args.common.server_flavor {
        for transport in [Transport::Ws, Transport::Tcp] {
            let v: Vec<f64> = results
                .iter()
                .filter(|(f, t, w, _)| *f == flavor && *t == transport && *w == Who::Switchyard)
                .map(|r| r.3)
                .collect();
            if v.is_empty() {
                continue;
            }
            let sw = Spread::of(v);
            report.target(
                format!("S2 ≤ 8 KiB per idle session ({flavor}, {transport})"),
                format!("{:.1} KiB", sw.median),
                sw.median <= TARGET_KIB,
            );
        }
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
    let (address, pid, _stack, _floor) = match who {
        Who::Switchyard => {
            let stack = Stack::switchyard(flavor, Services::Rooms).await?;
            (
                stack.address(transport),
                stack.gateway_pid,
                Some(stack),
                None,
            )
        }
        Who::Go => {
            let stack = Stack::go(&args.common.go_baseline, Services::Rooms)
                .await?
                .context("no Go baseline")?;
            (
                stack.address(transport),
                stack.gateway_pid,
                Some(stack),
                None,
            )
        }
        Who::Floor => {
            let floor = Floor::for_transport(transport, flavor)?;
            (floor.address()?, floor.pid(), None, Some(floor))
        }
    };
    let mut swarm = Swarm::start(
        &address,
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
