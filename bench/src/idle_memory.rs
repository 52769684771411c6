//! Scenario `idle-memory`: the gateway's resident memory per idle, logged-in session, over
//! WebSocket and over TCP, next to a bare WebSocket echo server holding the same number of
//! idle connections (the floor). RSS is read from `/proc` for the server processes only.

use std::time::Duration;

use clap::Args;
use client::{Address, Client, ClientConfig};
use serde::Serialize;

use crate::{child::ChildProcess, procfs::rss_kib, stats::Spread};

const LOGIN: u32 = proto::route(1, 1);

/// Options of the `idle-memory` scenario.
#[derive(Args, Debug, Clone)]
pub(crate) struct IdleArgs {
    /// Idle sessions to hold (this process holds the client side: keep it under the fd limit).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Rounds (fresh servers each round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    machine: crate::Machine,
    sessions: usize,
    gateway_ws_kib_per_session: Spread,
    gateway_tcp_kib_per_session: Spread,
    bare_ws_kib_per_connection: Spread,
}

pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let (mut ws, mut tcp, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        ws.push(gateway_round(args.sessions, true).await?);
        tcp.push(gateway_round(args.sessions, false).await?);
        bare.push(bare_round(args.sessions).await?);
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }
    let report = Report {
        scenario: "idle memory per session",
        machine: crate::Machine::read(),
        sessions: args.sessions,
        gateway_ws_kib_per_session: Spread::of(ws),
        gateway_tcp_kib_per_session: Spread::of(tcp),
        bare_ws_kib_per_connection: Spread::of(bare),
    };
    print(&report);
    crate::stats::write_json(args.json.as_deref(), &report)?;
    Ok(())
}

#[allow(clippy::print_stdout)] // the report is this command's output
fn print(r: &Report) {
    println!(
        "# idle memory per session ({} sessions; median (min–max) KiB)",
        r.sessions
    );
    println!("machine: {}", r.machine);
    println!();
    println!("| server | KiB per idle session | / bare WS |");
    println!("|---|---|---|");
    let floor = r.bare_ws_kib_per_connection.median;
    println!(
        "| gateway, WebSocket, logged in | {} | {:.2} |",
        r.gateway_ws_kib_per_session,
        r.gateway_ws_kib_per_session.median / floor
    );
    println!(
        "| gateway, TCP, logged in | {} | {:.2} |",
        r.gateway_tcp_kib_per_session,
        r.gateway_tcp_kib_per_session.median / floor
    );
    println!(
        "| bare WebSocket echo (floor) | {} | 1.00 |",
        r.bare_ws_kib_per_connection
    );
}

/// Holds `sessions` idle, logged-in sessions on a fresh gateway; KiB of gateway RSS each.
async fn gateway_round(sessions: usize, ws: bool) -> anyhow::Result<f64> {
    let gateway = ChildProcess::spawn(&["serve-gateway", "--flavor", "multi-thread"])?;
    let gossip = gateway.get("gossip")?.to_owned();
    let _logic = ChildProcess::spawn(&[
        "serve-echo-logic",
        "--flavor",
        "current-thread",
        "--seed",
        &gossip,
    ])?;
    let address = if ws {
        Address::WebSocket(gateway.get("ws")?.to_owned())
    } else {
        Address::Tcp(gateway.get("tcp")?.parse()?)
    };
    crate::gateway_rr::wait_for_login(&address).await?;
    settle().await;
    let before = rss_kib(gateway.pid()).unwrap_or(0);
    let mut clients = Vec::with_capacity(sessions);
    let config = ClientConfig {
        heartbeat: None,
        event_buffer: 8,
        ..ClientConfig::default()
    };
    for chunk in (0..sessions).collect::<Vec<_>>().chunks(500) {
        let logins = chunk.iter().map(|i| {
            let (address, config) = (address.clone(), config.clone());
            async move {
                let (client, events) = Client::connect_with(address, config).await?;
                let login = client
                    .request(
                        LOGIN,
                        crate::gateway_rr::login_payload(&format!("idle-{i}")),
                    )
                    .await?;
                anyhow::ensure!(login.is_ok(), "login failed: {login:?}");
                anyhow::Ok((client, events))
            }
        });
        for result in futures::future::join_all(logins).await {
            clients.push(result?);
        }
    }
    settle().await;
    let after = rss_kib(gateway.pid()).unwrap_or(0);
    drop(clients);
    Ok(after.saturating_sub(before) as f64 / sessions as f64)
}

/// The same number of idle connections on a bare WebSocket echo server.
async fn bare_round(sessions: usize) -> anyhow::Result<f64> {
    let server = ChildProcess::spawn(&["serve-bare-ws", "--flavor", "multi-thread"])?;
    let url = server.get("ws")?.to_owned();
    settle().await;
    let before = rss_kib(server.pid()).unwrap_or(0);
    let mut sockets = Vec::with_capacity(sessions);
    for chunk in (0..sessions).collect::<Vec<_>>().chunks(500) {
        let connects = chunk.iter().map(|_| {
            tokio_tungstenite::connect_async_with_config(
                url.as_str(),
                Some(wire::ws::config(1 << 20)),
                true,
            )
        });
        for result in futures::future::join_all(connects).await {
            sockets.push(result?.0);
        }
    }
    settle().await;
    let after = rss_kib(server.pid()).unwrap_or(0);
    drop(sockets);
    Ok(after.saturating_sub(before) as f64 / sessions as f64)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}
