//! Scenario `affinity`: what room affinity saves. Two gateways, a login and a room server;
//! every room's members log in alternately on gateway A and gateway B (the worst spread), join,
//! and one member per room sends at `--hz`. With affinity on (the room server's
//! `--affinity-max-per-gateway`), a joining member on the other gateway is moved (resume path)
//! to the gateway holding most of the room, so each broadcast crosses one gateway; off, it
//! crosses both. Reports gateways per room after setup, deliveries per second and deliveries
//! per second of server CPU (gateways, room and login server together), off against on.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use client::{Address, Session, SessionConfig, SessionEvent};
use prost::Message;
use proto::room::v1::{self as room, routes};
use runtime::RuntimeFlavor;

use crate::{
    Common,
    drain::{TwoGateways, tick_rooms},
    procfs::CpuMeter,
    report::{Report, text},
    stack::{LOGIN, login_payload},
    stats::Spread,
};

/// Options of `affinity`.
#[derive(Args, Debug, Clone)]
pub(crate) struct AffinityArgs {
    #[command(flatten)]
    common: Common,
    /// Clients in all (rooms of `--room-size`).
    #[arg(long, default_value_t = 400)]
    clients: usize,
    /// Members per room (one sends).
    #[arg(long, default_value_t = 20)]
    room_size: usize,
    /// Operations per second per room.
    #[arg(long, default_value_t = 30.0)]
    hz: f64,
    /// Length of each measured run, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    duration_ms: u64,
}

/// One run's figures.
struct Run {
    gateways_per_room: f64,
    deliveries_per_s: f64,
    per_core_s: f64,
}

pub(crate) async fn run(args: AffinityArgs) -> anyhow::Result<()> {
    let mut report = Report::new(
        "affinity",
        format!(
            "{} clients in rooms of {}, members alternately on two gateways, one sender per room at {} Hz",
            args.clients, args.room_size, args.hz
        ),
        args.common.rounds,
    );
    let table = report.table(
        "Room affinity off against on",
        &[
            "server runtime",
            "affinity",
            "gateways per room",
            "deliveries/s",
            "deliveries per server core-second",
        ],
    );
    let mut ratios = Vec::new();
    for &flavor in &args.common.server_flavor {
        let mut per_core = Vec::new();
        for (label, limit) in [("off", "0"), ("on", "1000")] {
            let mut runs = Vec::new();
            for round in 0..args.common.rounds {
                let run = measure(flavor, limit, &args)
                    .await
                    .with_context(|| format!("{flavor}, affinity {label}, round {round}"))?;
                runs.push(run);
            }
            let spread = |f: fn(&Run) -> f64| Spread::of(runs.iter().map(f));
            let core = spread(|r| r.per_core_s);
            table.row(vec![
                text(flavor),
                text(label),
                text(spread(|r| r.gateways_per_room)),
                text(spread(|r| r.deliveries_per_s)),
                text(core),
            ]);
            per_core.push(core.median);
        }
        ratios.push((flavor, per_core[1] / per_core[0].max(f64::MIN_POSITIVE)));
    }
    for (flavor, ratio) in ratios {
        report.target(
            format!("affinity saves server CPU per delivery ({flavor})"),
            format!("{ratio:.2}× the deliveries per core-second"),
            ratio > 1.0,
        );
    }
    report.note("Members log in alternately on gateways A and B; with affinity on, a member joining a room most of whose members are on the other gateway is moved there through the resume path (no new login). Server CPU is the two gateways, the room server and the login server together. The generator runs in this process (its CPU is not counted).");
    report.finish(&args.common.out)
}

async fn measure(
    flavor: RuntimeFlavor,
    affinity: &str,
    args: &AffinityArgs,
) -> anyhow::Result<Run> {
    let cluster = TwoGateways::start(flavor, &[], &[], &["--affinity", affinity]).await?;
    let pids: Vec<u32> = [&cluster.a, &cluster.b, &cluster.login, &cluster.rooms]
        .iter()
        .map(|p| p.pid())
        .collect();
    let gateways = [
        Address::Tcp(cluster.a.get("tcp")?.parse()?),
        Address::Tcp(cluster.b.get("tcp")?.parse()?),
    ];

    let size = args.room_size.max(2);
    let delivered = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut members = Vec::new();
    for r in 0..(args.clients / size).max(1) {
        let mut room_id = String::new();
        for m in 0..size {
            let address = gateways[m % 2].clone();
            let user = format!("aff-{r}-{m}");
            let (session, events, answer) =
                Session::login([address], session_config(), LOGIN, login_payload(&user)).await?;
            anyhow::ensure!(answer.is_ok(), "login of {user}: {answer:?}");
            let answer = if m == 0 {
                let create = room::CreateRoom {
                    max_members: size as u32,
                    properties: Default::default(),
                };
                session
                    .request(routes::CREATE, create.encode_to_vec())
                    .await?
            } else {
                let join = room::JoinRoom {
                    room_id: room_id.clone(),
                };
                session.request(routes::JOIN, join.encode_to_vec()).await?
            };
            anyhow::ensure!(answer.is_ok(), "{user} in the room: {answer:?}");
            if m == 0 {
                room_id = room::RoomInfo::decode(answer.payload)?.room_id;
                senders.push((session.clone(), room_id.clone()));
            }
            members.push((r, session, events));
        }
    }
    // Moves settle (each member's last connection is where it stays).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut spread: Vec<HashSet<String>> = vec![HashSet::new(); senders.len()];
    let mut receivers = Vec::new();
    for (r, session, mut events) in members {
        let (delivered, counting) = (delivered.clone(), counting.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        receivers.push((r, rx, session));
        tokio::spawn(async move {
            let mut at = String::new();
            while let Some(event) = events.next().await {
                match event {
                    SessionEvent::Connected { address, .. } => at = address.to_string(),
                    SessionEvent::Push(push)
                        if push.route == routes::PUSH_OP && counting.load(Ordering::Relaxed) =>
                    {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    SessionEvent::Disconnected {
                        reconnect: false, ..
                    } => break,
                    _ => {}
                }
            }
            // Where the member ended up (its last connection).
            let _ = tx.send(at);
        });
    }
    let duration = Duration::from_millis(args.duration_ms);
    let cpu = CpuMeter::start(&pids);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let (sessions, room_ids): (Vec<Session>, Vec<String>) = senders.iter().cloned().unzip();
    let stop_at = started + duration;
    let ticking = tick_rooms(room_ids, args.hz, move || Instant::now() < stop_at, {
        move |i, op: room::RoomOp| {
            let session = sessions[i].clone();
            tokio::spawn(async move { session.request(routes::OP, op.encode_to_vec()).await });
        }
    });
    for ticker in ticking {
        ticker.await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu_micros = cpu.elapsed_micros();
    let count = delivered.load(Ordering::Relaxed) as f64;
    for (r, rx, session) in receivers {
        session.close().await;
        if let Ok(at) = rx.await {
            spread[r].insert(at);
        }
    }
    let gateways_per_room =
        spread.iter().map(HashSet::len).sum::<usize>() as f64 / spread.len().max(1) as f64;
    Ok(Run {
        gateways_per_room,
        deliveries_per_s: count / elapsed.as_secs_f64(),
        per_core_s: count / (cpu_micros.max(1) as f64 / 1e6),
    })
}

fn session_config() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.client.heartbeat = None;
    config.client.event_buffer = 4096;
    config
}
