//! Scenario `s5-match`: matchmaking. Logged-in players all queue at once for 2-player duels;
//! the match server asks the room servers for their load, creates a room for each pair, binds
//! both players to it and pushes `MatchFound`. Reports tickets per second (players matched per
//! second, first ticket to last notification) and the time from the last ticket accepted to
//! the last player notified.

use std::time::{Duration, Instant};

use clap::Args;
use client::{Client, Events};
use prost::Message;
use proto::matchmaking::v1::{self as mm, routes};
use runtime::RuntimeFlavor;

use crate::{
    Common,
    procfs::CpuMeter,
    report::{COMPARED, Compared, Figure, Report, Who, of_flavor, text},
    stack::{Services, Stack, Transport, client_config, login},
    stats::histogram,
};

/// Options of `s5-match`.
#[derive(Args, Debug, Clone)]
pub(crate) struct MatchArgs {
    #[command(flatten)]
    common: Common,
    /// Players queueing at once.
    #[arg(long, default_value_t = 1000)]
    players: usize,
    /// How long the last player may wait for its match.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

const TARGET_TICKETS_PER_S: f64 = 2000.0;

struct MatchRun {
    tickets_per_s: f64,
    last_ticket_to_notified_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_ticket: f64,
    unmatched: u64,
}

pub(crate) async fn run(args: MatchArgs) -> anyhow::Result<()> {
    let mut report = Report::new(
        "s5-match",
        format!(
            "matchmaking: {} players queue for duels at once",
            args.players
        ),
        args.common.rounds,
    );
    let mut results: Vec<(RuntimeFlavor, Who, MatchRun)> = Vec::new();
    for &flavor in &args.common.server_flavor {
        let mut stacks = vec![Stack::switchyard(flavor, Services::Matchmaking).await?];
        if let Some(go) = Stack::go(&args.common.go_baseline, Services::Matchmaking).await? {
            stacks.push(go);
        }
        for round in 0..args.common.rounds {
            for i in 0..stacks.len() {
                let stack = &stacks[(i + round) % stacks.len()];
                let run = once(stack, &args, &format!("m{round}-{flavor}")).await?;
                results.push((flavor, stack.system, run));
            }
            eprintln!("{flavor}: round {}/{} done", round + 1, args.common.rounds);
        }
    }
    let mut columns = vec!["server runtime", "figure"];
    columns.extend(COMPARED);
    let figures: [Figure<MatchRun>; 6] = [
        ("tickets/s", |r| r.tickets_per_s),
        ("last ticket → everyone notified, ms", |r| {
            r.last_ticket_to_notified_ms
        }),
        ("queue → match found p50 ms", |r| r.p50_ms),
        ("queue → match found p99 ms", |r| r.p99_ms),
        ("server CPU µs per ticket", |r| r.cpu_us_per_ticket),
        ("unmatched players", |r| r.unmatched as f64),
    ];
    let mut targets = Vec::new();
    let table = report.table(
        format!("{} players, mode duel (2 per match)", args.players),
        &columns,
    );
    for &flavor in &args.common.server_flavor {
        let mine = of_flavor(&results, flavor);
        table.compared_rows(&[text(flavor)], &mine, &figures);
        if let Some(sw) = Compared::of(&mine, |r| r.tickets_per_s).switchyard {
            targets.push((flavor, sw));
        }
    }
    for (flavor, sw) in targets {
        report.target(
            format!("S5 ≥ 2,000 tickets/s ({flavor})"),
            format!("{:.0} tickets/s", sw.median),
            sw.median >= TARGET_TICKETS_PER_S,
        );
    }
    report.note("Switchyard: gateway, logic-match (also the login server) and logic-room, each its own process; a match is placed on the least-loaded room server after a load request to every room server, both players are bound to it (acknowledged) and then notified. Go: go-gateway, go-match, go-room. There is no floor for matchmaking.");
    report.finish(&args.common.out)
}

/// One round: fresh players log in, then all queue at once.
async fn once(stack: &Stack, args: &MatchArgs, tag: &str) -> anyhow::Result<MatchRun> {
    let config = client_config();
    let address = stack.address(Transport::Tcp);
    let mut players: Vec<(Client, Events)> = Vec::with_capacity(args.players);
    let indexes: Vec<usize> = (0..args.players).collect();
    for chunk in indexes.chunks(250) {
        let logins = chunk.iter().map(|i| {
            let user = format!("{tag}-{i}");
            let (address, config) = (&address, &config);
            async move { login(address, config, &user).await }
        });
        for player in futures::future::join_all(logins).await {
            players.push(player?);
        }
    }
    let enqueue: bytes::Bytes = mm::Enqueue {
        mode: "duel".into(),
    }
    .encode_to_vec()
    .into();
    let timeout = Duration::from_secs(args.timeout_secs);
    let cpu = CpuMeter::start(&stack.pids);
    let started = Instant::now();
    let tasks: Vec<_> = players
        .into_iter()
        .map(|(client, mut events)| {
            let enqueue = enqueue.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let response = client.request(routes::ENQUEUE, enqueue).await.ok()?;
                if !response.is_ok() {
                    return None;
                }
                let accepted = Instant::now();
                let found = tokio::time::timeout(timeout, async {
                    while let Some(push) = events.next_push().await {
                        if push.route == routes::PUSH_MATCH_FOUND {
                            return Some(Instant::now());
                        }
                    }
                    None
                })
                .await
                .ok()
                .flatten();
                found.map(|found| (client, sent, accepted, found))
            })
        })
        .collect();
    let mut latency = histogram();
    let (mut last_accepted, mut last_found) = (started, started);
    let mut matched = 0u64;
    let mut done = Vec::with_capacity(args.players);
    for task in tasks {
        if let Some((client, sent, accepted, found)) = task.await? {
            done.push(client);
            matched += 1;
            latency.saturating_record((found - sent).as_nanos() as u64);
            last_accepted = last_accepted.max(accepted);
            last_found = last_found.max(found);
        }
    }
    let cpu_micros = cpu.elapsed_micros();
    for client in done {
        client.close().await;
    }
    let span = (last_found - started).as_secs_f64().max(1e-9);
    Ok(MatchRun {
        tickets_per_s: matched as f64 / span,
        last_ticket_to_notified_ms: last_found
            .saturating_duration_since(last_accepted)
            .as_secs_f64()
            * 1000.0,
        p50_ms: latency.value_at_quantile(0.5) as f64 / 1e6,
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1e6,
        cpu_us_per_ticket: cpu_micros as f64 / matched.max(1) as f64,
        unmatched: args.players as u64 - matched,
    })
}
