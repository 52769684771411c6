//! `switchyard up`: the whole system on loopback, each service its own process (this binary,
//! run with the service's command), on the embedded defaults: two gateways (the second on
//! the defaults' ports + 10, seeded by the first), two room servers, a match server. The two
//! gateways and the match server are the regular nodes (the first gateway forms the
//! configuration; Raft runs embedded in them); the room servers are temporary. Ctrl-C
//! (or SIGTERM) stops them all gracefully. With `--demo`, the client-sim demo runs once the
//! system is up, its players given both gateways, and `up` exits with the demo's result.

use std::process::Stdio;

use clap::Args;
use tokio::process::{Child, Command};

/// Options of `up`.
#[derive(Args, Debug, Clone)]
pub(crate) struct UpArgs {
    /// Run the client-sim demo story against the system, then stop everything.
    #[arg(long)]
    demo: bool,
    /// Players in the demo.
    #[arg(long, default_value_t = 2)]
    demo_users: usize,
    /// Empty rooms to preload on the first room server (so the match server's choice of the
    /// emptier one shows).
    #[arg(long, default_value_t = 3)]
    preload_rooms: u32,
}

fn service(name: &str, args: &[&str]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg(name)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let preload = args.preload_rooms.to_string();
    let mut children = vec![
        (
            "gateway-1",
            service(
                "gateway",
                &[
                    "--node-id",
                    "gateway-1",
                    "--role",
                    "regular",
                    "--init-cluster",
                    "gateway-1,gateway-2,logic-match",
                ],
            )?,
        ),
        (
            "gateway-2",
            service(
                "gateway",
                &[
                    "--node-id",
                    "gateway-2",
                    "--role",
                    "regular",
                    "--seeds",
                    "127.0.0.1:7946",
                    "--ws-listen",
                    "127.0.0.1:7010",
                    "--tcp-listen",
                    "127.0.0.1:7011",
                    "--grpc-listen",
                    "127.0.0.1:7110",
                    "--gossip-listen",
                    "127.0.0.1:7956",
                    "--admin-listen",
                    "127.0.0.1:9110",
                ],
            )?,
        ),
        (
            "logic-room-1",
            service(
                "logic-room",
                &["--node-id", "logic-room-1", "--preload-rooms", &preload],
            )?,
        ),
        (
            "logic-room-2",
            service("logic-room", &["--node-id", "logic-room-2"])?,
        ),
        (
            "logic-match",
            service(
                "logic-match",
                &["--node-id", "logic-match", "--role", "regular"],
            )?,
        ),
    ];
    println!(
        "switchyard is up: clients connect to gateway-1 (ws://127.0.0.1:7000/ws, tcp://127.0.0.1:7001) or gateway-2 (ws://127.0.0.1:7010/ws, tcp://127.0.0.1:7011)"
    );
    println!(
        "admin: http://127.0.0.1:9100/cluster/nodes, /metrics, /readyz (gateway-1; gateway-2: port 9110)"
    );
    let result = if args.demo {
        let users = args.demo_users.to_string();
        let mut demo = service(
            "client-sim",
            &[
                "demo",
                "--gateway",
                "ws://127.0.0.1:7000/ws,ws://127.0.0.1:7010/ws",
                "--users",
                &users,
                "--ops",
                "3",
                "--op-interval-ms",
                "1000",
            ],
        )?;
        let status = demo.wait().await?;
        if status.success() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("the demo failed: {status}"))
        }
    } else {
        runtime::signal::shutdown().await;
        Ok(())
    };
    println!("stopping every service");
    for (name, child) in &mut children {
        if let Some(pid) = child.id() {
            // SIGTERM: each service drains and leaves the cluster.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            if let Err(error) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
                println!("{name}: could not send SIGTERM: {error}");
            }
        }
    }
    for (name, mut child) in children {
        match tokio::time::timeout(std::time::Duration::from_secs(15), child.wait()).await {
            Ok(Ok(status)) => println!("{name} stopped: {status}"),
            _ => {
                println!("{name} did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
    result
}
