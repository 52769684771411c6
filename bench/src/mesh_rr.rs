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
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    child::ChildProcess,
    report::{Cell, Figure, Report, text},
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
    /// Where the Markdown and JSON reports go.
    #[arg(long, default_value = "target/bench-reports")]
    out: PathBuf,
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
    let mut report = Report::new(
        "mesh",
        format!(
            "mesh request/response vs bare tonic unary (payload {} B, {} server)",
            args.payload, args.server_flavor
        ),
        args.rounds,
    );
    let table = report.table(
        format!("Request/response (loaded: {} in flight)", args.concurrency),
        &["figure", "mesh", "bare tonic", "mesh / bare"],
    );
    let figures: [Figure<Pair>; 4] = [
        ("one in flight p50 µs", |r| r.0.p50_us),
        ("one in flight p99 µs", |r| r.0.p99_us),
        ("loaded p99 µs", |r| r.1.p99_us),
        ("loaded req/s", |r| r.1.throughput_per_s),
    ];
    for (name, figure) in figures {
        let mesh = Spread::of(mesh_runs.iter().map(figure));
        let bare = Spread::of(bare_runs.iter().map(figure));
        table.row(vec![
            text(name),
            Cell::Spread(mesh),
            Cell::Spread(bare),
            Cell::Ratio(Some(mesh.median / bare.median)),
        ]);
    }
    report.note("Two server processes (a Switchyard node, a bare tonic server answering the same message) and a client node on loopback; ABBA order over the rounds.");
    report.finish(&args.out)?;
    client_node.shutdown(|| async {}).await;
    Ok(())
}

/// A latency run and a throughput run of one target.
type Pair = (RunFigures, RunFigures);

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
