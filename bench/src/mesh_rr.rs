//! Scenario `mesh`: request/response between two nodes on loopback, next to a bare tonic unary
//! call with the same message, measured in the same run with interleaved rounds.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use mesh::{Mesh, NodeId, command};
use proto::mesh::v1::{MeshReply, MeshRequest, mesh_client::MeshClient, mesh_server};
use runtime::{Listeners, Node, NodeConfig};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    child::ChildProcess,
    stats::{RunFigures, Spread, histogram},
};

/// Options of the `mesh` scenario.
#[derive(Args, Debug, Clone)]
pub(crate) struct MeshArgs {
    /// Interleaved rounds per target (each figure is reported as median and min–max).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Requests per latency run (one request in flight).
    #[arg(long, default_value_t = 5_000)]
    requests: u64,
    /// Length of each throughput run, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    duration_ms: u64,
    /// Requests in flight during throughput runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Payload bytes per request.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Tokio flavor of the server processes.
    #[arg(long, value_enum, default_value_t = runtime::RuntimeFlavor::CurrentThread)]
    server_flavor: runtime::RuntimeFlavor,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone)]
enum Target {
    Mesh(Mesh, NodeId),
    Bare(MeshClient<Channel>),
}

impl Target {
    async fn call(&self, payload: Bytes) -> anyhow::Result<()> {
        match self {
            Target::Mesh(mesh, node) => {
                mesh.request(node, command::PING, payload).await?;
            }
            Target::Bare(client) => {
                let request = MeshRequest {
                    command: command::PING,
                    from_node: String::new(),
                    payload,
                };
                client.clone().call(request).await?;
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct TargetReport {
    one_in_flight_p50_us: Spread,
    one_in_flight_p99_us: Spread,
    loaded_p99_us: Spread,
    throughput_per_s: Spread,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    machine: crate::report::Machine,
    args: String,
    mesh: TargetReport,
    bare_tonic: TargetReport,
    ratio_p50: f64,
    ratio_p99: f64,
    ratio_throughput: f64,
}

pub(crate) async fn run(args: MeshArgs) -> anyhow::Result<()> {
    let flavor = args.server_flavor.as_arg();
    let node_server = ChildProcess::spawn(&["--flavor", flavor, "serve-mesh-node"])?;
    let bare_server = ChildProcess::spawn(&["--flavor", flavor, "serve-bare-grpc"])?;

    let mut config = NodeConfig::new("bench-client");
    config.gossip.seeds = vec![node_server.get("gossip")?.to_owned()];
    let mut client_node = Node::start(config, Listeners::loopback().await?, |_| {}).await?;
    client_node.serve(|r| r).await?;
    let server_id = NodeId::new(node_server.get("node_id")?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client_node.cluster().node(&server_id).is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the server node never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mesh = Target::Mesh(client_node.mesh().clone(), server_id);
    let channel = Endpoint::from_shared(format!("http://{}", bare_server.get("grpc")?))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the bare tonic server")?;
    let bare = Target::Bare(MeshClient::new(channel));
    let payload = Bytes::from(vec![7u8; args.payload]);

    // Warm both paths up (connections, allocator, caches).
    measure(
        &mesh,
        &payload,
        &MeshArgs {
            requests: 500,
            duration_ms: 200,
            ..args.clone()
        },
    )
    .await?;
    measure(
        &bare,
        &payload,
        &MeshArgs {
            requests: 500,
            duration_ms: 200,
            ..args.clone()
        },
    )
    .await?;

    let (mut mesh_runs, mut bare_runs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // ABBA order so neither target always runs on a warmer machine.
        if round % 2 == 0 {
            mesh_runs.push(measure(&mesh, &payload, &args).await?);
            bare_runs.push(measure(&bare, &payload, &args).await?);
        } else {
            bare_runs.push(measure(&bare, &payload, &args).await?);
            mesh_runs.push(measure(&mesh, &payload, &args).await?);
        }
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }
    let summarize = |runs: &[(RunFigures, RunFigures)]| TargetReport {
        one_in_flight_p50_us: Spread::of(runs.iter().map(|r| r.0.p50_us)),
        one_in_flight_p99_us: Spread::of(runs.iter().map(|r| r.0.p99_us)),
        loaded_p99_us: Spread::of(runs.iter().map(|r| r.1.p99_us)),
        throughput_per_s: Spread::of(runs.iter().map(|r| r.1.throughput_per_s)),
    };
    let (m, b) = (summarize(&mesh_runs), summarize(&bare_runs));
    let report = Report {
        scenario: "mesh request/response vs bare tonic unary",
        machine: crate::report::Machine::read(),
        args: format!("{args:?}"),
        ratio_p50: m.one_in_flight_p50_us.median / b.one_in_flight_p50_us.median,
        ratio_p99: m.one_in_flight_p99_us.median / b.one_in_flight_p99_us.median,
        ratio_throughput: m.throughput_per_s.median / b.throughput_per_s.median,
        mesh: m,
        bare_tonic: b,
    };
    print_report(&report, &args);
    crate::stats::write_json(args.json.as_deref(), &report)?;
    client_node.shutdown(|| async {}).await;
    Ok(())
}

#[allow(clippy::print_stdout)] // the report is this command's output
fn print_report(r: &Report, args: &MeshArgs) {
    println!(
        "# mesh request/response vs bare tonic unary ({} rounds, payload {} B)",
        args.rounds, args.payload
    );
    println!("machine: {}", r.machine);
    println!("figures: median (min–max)");
    println!();
    println!("| figure | mesh | bare tonic | mesh / bare |");
    println!("|---|---|---|---|");
    println!(
        "| one in flight p50 (µs) | {} | {} | {:.2} |",
        r.mesh.one_in_flight_p50_us, r.bare_tonic.one_in_flight_p50_us, r.ratio_p50
    );
    println!(
        "| one in flight p99 (µs) | {} | {} | {:.2} |",
        r.mesh.one_in_flight_p99_us, r.bare_tonic.one_in_flight_p99_us, r.ratio_p99
    );
    println!(
        "| {} in flight p99 (µs) | {} | {} | {:.2} |",
        args.concurrency,
        r.mesh.loaded_p99_us,
        r.bare_tonic.loaded_p99_us,
        r.mesh.loaded_p99_us.median / r.bare_tonic.loaded_p99_us.median
    );
    println!(
        "| {} in flight throughput (req/s) | {} | {} | {:.2} |",
        args.concurrency,
        r.mesh.throughput_per_s,
        r.bare_tonic.throughput_per_s,
        r.ratio_throughput
    );
}

/// One latency run (one request in flight) and one throughput run (`concurrency` in flight).
async fn measure(
    target: &Target,
    payload: &Bytes,
    args: &MeshArgs,
) -> anyhow::Result<(RunFigures, RunFigures)> {
    let mut latency = histogram();
    let started = Instant::now();
    for _ in 0..args.requests {
        let t = Instant::now();
        target.call(payload.clone()).await?;
        latency.saturating_record(t.elapsed().as_nanos() as u64);
    }
    let sequential = RunFigures::new(&latency, args.requests, started.elapsed());

    let stop_at = Instant::now() + Duration::from_millis(args.duration_ms);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (target, payload) = (target.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while Instant::now() < stop_at {
                let t = Instant::now();
                target.call(payload.clone()).await?;
                h.saturating_record(t.elapsed().as_nanos() as u64);
                n += 1;
            }
            anyhow::Ok((h, n))
        }));
    }
    let mut all = histogram();
    let mut completed = 0;
    for task in tasks {
        let (h, n) = task.await??;
        all.add(&h)?;
        completed += n;
    }
    let loaded = RunFigures::new(&all, completed, started.elapsed());
    Ok((sequential, loaded))
}

/// `serve-mesh-node`: a node that answers mesh pings.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_node() -> anyhow::Result<()> {
    let mut node = Node::start(
        NodeConfig::new("bench-server"),
        Listeners::loopback().await?,
        |_| {},
    )
    .await?;
    node.serve(|r| r).await?;
    println!(
        "READY node_id={} gossip={} grpc={}",
        node.cluster().self_id(),
        node.addrs().gossip,
        node.addrs().grpc
    );
    std::future::pending::<()>().await;
    Ok(())
}

struct BareEcho;

#[tonic::async_trait]
impl mesh_server::Mesh for BareEcho {
    async fn call(
        &self,
        request: tonic::Request<MeshRequest>,
    ) -> Result<tonic::Response<MeshReply>, tonic::Status> {
        Ok(tonic::Response::new(MeshReply {
            payload: request.into_inner().payload,
            error: None,
        }))
    }
}

/// `serve-bare-grpc`: a plain tonic server answering the same message, nothing else.
#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve_bare() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("READY grpc={}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(mesh_server::MeshServer::new(BareEcho))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
