//! A running node: membership, mesh, the gRPC server, the admin endpoint and the shutdown
//! sequence every binary follows.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use mesh::CheckCredential;
use mesh::{
    Cluster, Credential, Mesh, NodeInfo,
    cluster::new_record,
    membership::{GossipMembership, Membership},
};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    service::{Routes, interceptor::InterceptedService},
    transport::server::TcpIncoming,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use proto::admin::v1::{self as admin_pb, admin_server::AdminServer};
use quorum::Quorum;

use crate::{
    admin,
    cluster_admin::{AdminError, ClusterAdmin, grace},
    config::NodeConfig,
    drain::{Drain, DrainControl},
    telemetry,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster secret is unusable.
    #[error(transparent)]
    Secret(#[from] mesh::BadSecret),
    /// The advertised host does not resolve.
    #[error("cannot resolve the advertised host {host:?}: {reason}")]
    Advertise {
        /// The host.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// Gossip could not start.
    #[error("cannot start gossip membership: {0}")]
    Gossip(std::io::Error),
    /// Raft could not start.
    #[error("cannot start the cluster configuration: {0}")]
    Quorum(quorum::QuorumError),
    /// The ready file could not be written.
    #[error("cannot write the ready file: {0}")]
    ReadyFile(std::io::Error),
}

/// The sockets a node serves on, bound before the node starts (so port 0 works).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC server.
    pub grpc: TcpListener,
    /// Admin HTTP (`/metrics`, `/healthz`, `/readyz`).
    pub admin: TcpListener,
    /// Unreliable mesh messages (bound on the gRPC address's IP, any port).
    pub datagram: UdpSocket,
    /// Gossip address (chitchat binds it itself).
    pub gossip: SocketAddr,
}

impl Listeners {
    /// Binds the gRPC and admin listeners and the datagram socket.
    pub async fn bind(addrs: crate::ListenDefaults) -> Result<Self, StartError> {
        let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
        let grpc = TcpListener::bind(addrs.grpc)
            .await
            .map_err(bind_err("grpc", addrs.grpc))?;
        let admin = TcpListener::bind(addrs.admin)
            .await
            .map_err(bind_err("admin", addrs.admin))?;
        let datagram_addr = SocketAddr::new(addrs.grpc.ip(), 0);
        let datagram = UdpSocket::bind(datagram_addr)
            .await
            .map_err(bind_err("datagram", datagram_addr))?;
        Ok(Self {
            grpc,
            admin,
            datagram,
            gossip: addrs.gossip,
        })
    }

    /// Every listener on 127.0.0.1 with a free port: for tests and benchmarks.
    pub async fn loopback() -> Result<Self, StartError> {
        Self::bind(crate::ListenDefaults::LOOPBACK).await
    }
}

/// The addresses a node serves on, as peers and clients reach them.
#[derive(Clone, Debug)]
pub struct BoundAddrs {
    /// gRPC server (advertised).
    pub grpc: SocketAddr,
    /// Gossip socket (advertised).
    pub gossip: SocketAddr,
    /// Admin HTTP (as bound).
    pub admin: SocketAddr,
}

/// Spawns a server's background tasks (actors, queues, retries) so they stop with the node:
/// each runs until it ends or the node stops (after the drain and the leave), and the shutdown
/// sequence waits for it. Cloneable; get one from [`Node::tasks`].
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `task` on the node's tracker until it ends or the node stops, whichever is first.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker
            .spawn(self.stop.clone().run_until_cancelled_owned(task));
    }
}

/// A node that has joined the cluster. Add services with [`Node::serve`], then [`Node::run`].
pub struct Node {
    config: NodeConfig,
    credential: Credential,
    cluster: Cluster,
    mesh: Mesh,
    quorum: Quorum,
    health: HealthReporter,
    addrs: BoundAddrs,
    listeners: Option<(TcpListener, TcpListener)>,
    /// Stops the servers and background tasks, after the node has left.
    stop: CancellationToken,
    tracker: TaskTracker,
    /// Drains asked for through the admin API.
    drains: DrainControl,
}

impl Node {
    /// Joins the cluster (publishes this node's record, starts gossip and the mesh). Nothing is
    /// served until [`Node::serve`]; peers that call in the meantime wait in the listen backlog.
    pub async fn start(
        config: NodeConfig,
        listeners: Listeners,
        prepare: impl FnOnce(&mut NodeInfo),
    ) -> Result<Self, StartError> {
        let credential = Credential::new(&config.secret)?;
        let config_grace = config.drain_grace;
        if config.secret == crate::config::DEV_SECRET {
            warn!(
                "using the development cluster secret; set SWITCHYARD_CLUSTER_SECRET in production"
            );
        }
        let grpc_local = local_addr(&listeners.grpc)?;
        let admin = local_addr(&listeners.admin)?;
        let datagram_local =
            listeners
                .datagram
                .local_addr()
                .map_err(|source| StartError::Bind {
                    what: "datagram",
                    addr: grpc_local,
                    source,
                })?;
        let host = advertised_ip(config.advertise_host.as_deref(), grpc_local.ip()).await?;
        let mut me = new_record(
            config.id.clone(),
            config.kind.clone(),
            SocketAddr::new(host, grpc_local.port()),
            SocketAddr::new(host, datagram_local.port()),
        );
        me.admin_addr = Some(SocketAddr::new(host, admin.port()).to_string());
        me.regular = config.quorum.regular;
        prepare(&mut me);
        wait_for_seed_names(&config.gossip.seeds).await;
        let membership = GossipMembership::start(&config.gossip, &me, listeners.gossip)
            .await
            .map_err(StartError::Gossip)?;
        let gossip = SocketAddr::new(host, membership.gossip_addr().port());
        let membership: Arc<dyn Membership> = Arc::new(membership);

        // Make sure the metrics recorder exists before anything records.
        let _ = telemetry::metrics();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let cluster = Cluster::start(
            membership,
            me.clone(),
            config.load_interval,
            stop.clone(),
            &tracker,
        )
        .await;
        let mesh = Mesh::start(
            cluster.clone(),
            credential.clone(),
            config.mesh.clone(),
            listeners.datagram,
            stop.clone(),
            &tracker,
        );
        let quorum = Quorum::start(
            cluster.clone(),
            mesh.clone(),
            config.quorum.clone(),
            stop.clone(),
            &tracker,
        )
        .await
        .map_err(StartError::Quorum)?;
        let (health, _) = tonic_health::server::health_reporter();
        info!(node = %me.id, kind = %me.kind, grpc = %me.grpc_addr, %gossip, %admin, "node joined the cluster");
        Ok(Self {
            config,
            credential,
            cluster,
            mesh,
            quorum,
            health,
            addrs: BoundAddrs {
                grpc: me.grpc_addr,
                gossip,
                admin,
            },
            listeners: Some((listeners.grpc, listeners.admin)),
            stop,
            tracker,
            drains: DrainControl::new(config_grace),
        })
    }

    /// The cluster as this node sees it.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// This node's mesh.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// This node's part in the cluster configuration: regular or temporary, serving or fenced.
    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    /// Where the server's own background tasks go, so they stop with the node.
    pub fn tasks(&self) -> Tasks {
        Tasks {
            tracker: self.tracker.clone(),
            stop: self.stop.child_token(),
        }
    }

    /// Wraps an internal gRPC service so it rejects calls without the cluster credential.
    pub fn authenticated<S>(&self, service: S) -> InterceptedService<S, CheckCredential> {
        InterceptedService::new(service, self.credential.server_interceptor())
    }

    /// The addresses this node serves on.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// Starts the gRPC server (mesh, health, reflection, plus whatever `add_services` adds)
    /// and the admin endpoint, then writes the ready file if one is configured. Call once.
    pub async fn serve(
        &mut self,
        add_services: impl FnOnce(Routes) -> Routes,
    ) -> Result<(), StartError> {
        let Some((grpc, admin)) = self.listeners.take() else {
            return Ok(());
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_service_status("", ServingStatus::Serving).await;
        self.health = health;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the embedded descriptor set is valid");
        let admin_service = self.authenticated(AdminServer::new(AdminService {
            ops: self.cluster_admin(),
        }));
        let routes = Routes::new(self.mesh.grpc_service())
            .add_service(health_service)
            .add_service(reflection)
            .add_service(admin_service);
        self.spawn_servers(grpc, admin, add_services(routes));
        self.write_ready_file()
    }

    fn spawn_servers(&self, grpc: TcpListener, admin: TcpListener, routes: Routes) {
        let stop = self.stop.clone();
        // Nagle off on every accepted connection, as on the channels that call it: a response
        // written in more than one piece (headers, data, trailers) must not wait for the
        // peer's delayed ACK (40 ms). `Server::tcp_nodelay` does not apply to an incoming
        // stream of our own listener.
        let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
        self.tracker.spawn(async move {
            // Windows and stream limits shared with the peer channels: a burst of calls from
            // a peer is queued by the caller, never taken for a flood (see `mesh::http2`).
            let served = mesh::http2::server()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                warn!(%error, "gRPC server stopped");
            }
        });
        self.tracker.spawn(admin::serve(
            admin,
            admin::AdminState {
                ops: self.cluster_admin(),
                metrics: telemetry::metrics(),
                token: self.config.admin_token.clone(),
            },
            self.stop.clone(),
        ));
    }

    /// The cluster admin operations, for the admin endpoint and the gRPC `Admin` service.
    fn cluster_admin(&self) -> ClusterAdmin {
        ClusterAdmin {
            cluster: self.cluster.clone(),
            mesh: self.mesh.clone(),
            quorum: self.quorum.clone(),
            drains: self.drains.clone(),
            gossip: self.addrs.gossip,
        }
    }

    fn write_ready_file(&self) -> Result<(), StartError> {
        let Some(path) = &self.config.ready_file else {
            return Ok(());
        };
        let text = format!(
            "node_id={}\ngrpc={}\ngossip={}\nadmin={}\n",
            self.cluster.self_id(),
            self.addrs.grpc,
            self.addrs.gossip,
            self.addrs.admin
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(StartError::ReadyFile)
    }

    /// Serves until `shutdown` is cancelled, then: marks the node offline (peers stop sending
    /// new work), runs `drain` within the grace period (warning when it expires), leaves the
    /// cluster, stops the servers and waits for every task.
    ///
    /// A drain asked for through the admin API runs `drain` the same way, but it can be
    /// cancelled (`Drain::undrain`): then the node comes back online and goes on serving. A
    /// SIGTERM during such a drain makes it final.
    pub async fn run<F, Fut>(self, shutdown: CancellationToken, mut drain: F)
    where
        F: FnMut(Drain) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let requested = tokio::select! {
                _ = shutdown.cancelled() => {
                    let grace = self.config.drain_grace;
                    self.drains.stopping(Some(grace));
                    let last = drain(Drain {
                        grace,
                        undrain: CancellationToken::new(),
                        requested: false,
                    });
                    return self.shutdown(|| last).await;
                }
                requested = self.drains.requested() => requested,
            };
            if self
                .drain_on_request(&shutdown, requested, &mut drain)
                .await
            {
                self.leave_and_stop().await;
                return;
            }
        }
    }

    /// Runs one drain asked for through the admin API; true when the node must leave now (the
    /// drain finished, its grace ended, or SIGTERM came), false when it was cancelled.
    async fn drain_on_request<F, Fut>(
        &self,
        shutdown: &CancellationToken,
        requested: Drain,
        drain: &mut F,
    ) -> bool
    where
        F: FnMut(Drain) -> Fut,
        Fut: Future<Output = ()>,
    {
        let node = self.cluster.self_id();
        info!(%node, grace = ?requested.grace, "drain requested: going offline");
        self.go_offline().await;
        let undrain = requested.undrain.clone();
        let limit = requested.grace + self.config.drain_overrun;
        let work = tokio::time::timeout(limit, drain(requested));
        tokio::pin!(work);
        let mut final_ = false;
        loop {
            tokio::select! {
                finished = &mut work => {
                    if finished.is_err() {
                        warn!(%node, "drain grace period expired; leaving with work in progress");
                    }
                    break;
                }
                _ = shutdown.cancelled(), if !final_ => {
                    info!(%node, "SIGTERM during a requested drain: it can no longer be cancelled");
                    self.drains.stopping(None);
                    final_ = true;
                }
            }
        }
        if undrain.is_cancelled() && !final_ {
            info!(%node, "drain cancelled: back online");
            self.cluster.go_online().await;
            self.health
                .set_service_status("", ServingStatus::Serving)
                .await;
            self.drains.back_online();
            return false;
        }
        self.drains.stopping(None);
        true
    }

    async fn go_offline(&self) {
        self.cluster.go_offline().await;
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        // Give gossip a few rounds to carry "offline" to every peer before draining, so no
        // peer places new work here while we drain.
        tokio::time::sleep(self.config.gossip.gossip_interval * 3).await;
    }

    /// The drain state of this node (for servers that report it).
    pub fn drains(&self) -> &DrainControl {
        &self.drains
    }

    /// Stops as a crash would: no offline notice, no leave, servers closed at once. Peers find
    /// out through failure detection. For fault-injection tests.
    pub async fn abort(self) {
        self.cluster.abort().await;
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }

    /// The shutdown sequence of [`Node::run`], started at once.
    pub async fn shutdown<F, Fut>(self, drain: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let node = self.cluster.self_id();
        info!(%node, grace = ?self.config.drain_grace, "shutting down: going offline");
        self.go_offline().await;
        let limit = self.config.drain_grace + self.config.drain_overrun;
        if tokio::time::timeout(limit, drain()).await.is_err() {
            warn!(%node, grace = ?self.config.drain_grace, "drain grace period expired; leaving with work in progress");
        }
        self.leave_and_stop().await;
    }

    async fn leave_and_stop(self) {
        let node = self.cluster.self_id();
        self.cluster.leave().await;
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            warn!(%node, "some tasks did not stop within 5 s");
        }
        info!(%node, "node stopped");
    }
}

/// The gRPC `Admin` service (with the cluster credential): this node's drain, and the cluster
/// admin operations, translated from and to messages (see `cluster_admin`).
struct AdminService {
    ops: ClusterAdmin,
}

type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// A cluster operation's answer as a gRPC response (a refusal carries its code and, for one
/// that runs elsewhere, where).
fn answer<T: Into<U>, U>(result: Result<T, AdminError>) -> Answer<U> {
    result
        .map(|ok| tonic::Response::new(ok.into()))
        .map_err(tonic::Status::from)
}

/// A cluster operation that answers nothing but success, as a gRPC response.
fn done<U: Default>(result: Result<(), AdminError>) -> Answer<U> {
    answer(result.map(|()| U::default()))
}

#[tonic::async_trait]
impl admin_pb::admin_server::Admin for AdminService {
    async fn drain(
        &self,
        request: tonic::Request<admin_pb::DrainRequest>,
    ) -> Answer<admin_pb::DrainStatus> {
        let grace = grace(request.into_inner().grace_ms);
        Ok(tonic::Response::new(self.ops.drain_here(grace)))
    }

    async fn undrain(
        &self,
        _: tonic::Request<admin_pb::UndrainRequest>,
    ) -> Answer<admin_pb::DrainStatus> {
        answer(self.ops.undrain_here())
    }

    async fn status(
        &self,
        _: tonic::Request<admin_pb::StatusRequest>,
    ) -> Answer<admin_pb::DrainStatus> {
        Ok(tonic::Response::new(
            self.ops.drain_status(self.ops.drains.status()),
        ))
    }

    async fn init_cluster(
        &self,
        request: tonic::Request<admin_pb::InitClusterRequest>,
    ) -> Answer<admin_pb::InitClusterResponse> {
        done(self.ops.init(&request.into_inner().nodes).await)
    }

    async fn register_node(
        &self,
        request: tonic::Request<admin_pb::RegisterNodeRequest>,
    ) -> Answer<admin_pb::RegisterNodeResponse> {
        done(self.ops.register(&request.into_inner().contact).await)
    }

    async fn purge_node(
        &self,
        request: tonic::Request<admin_pb::PurgeNodeRequest>,
    ) -> Answer<admin_pb::PurgeNodeResponse> {
        done(self.ops.purge(&request.into_inner().node).await)
    }

    async fn list_nodes(
        &self,
        _: tonic::Request<admin_pb::ListNodesRequest>,
    ) -> Answer<admin_pb::ListNodesResponse> {
        Ok(tonic::Response::new(self.ops.nodes().into()))
    }

    async fn list_rooms(
        &self,
        _: tonic::Request<admin_pb::ListRoomsRequest>,
    ) -> Answer<admin_pb::ListRoomsResponse> {
        Ok(tonic::Response::new(self.ops.rooms().await.into()))
    }

    async fn drain_node(
        &self,
        request: tonic::Request<admin_pb::DrainNodeRequest>,
    ) -> Answer<admin_pb::DrainStatus> {
        let request = request.into_inner();
        answer(self.ops.drain(&request.node, grace(request.grace_ms)))
    }

    async fn undrain_node(
        &self,
        request: tonic::Request<admin_pb::UndrainNodeRequest>,
    ) -> Answer<admin_pb::DrainStatus> {
        answer(self.ops.undrain(&request.into_inner().node))
    }
}

/// Waits (up to 30 s) until seeds given by host name resolve: in container networks a seed's
/// name appears only once its container runs, and gossip re-resolves names only every minute.
async fn wait_for_seed_names(seeds: &[String]) {
    let names: Vec<&String> = seeds
        .iter()
        .filter(|s| s.parse::<SocketAddr>().is_err())
        .collect();
    if names.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for name in names {
        loop {
            let resolved = tokio::net::lookup_host(name.as_str())
                .await
                .map(|mut addrs| addrs.next().is_some());
            match resolved {
                Ok(true) => break,
                result => {
                    if tokio::time::Instant::now() >= deadline {
                        warn!(seed = %name, "seed name does not resolve; gossip will keep trying");
                        break;
                    }
                    let error = result
                        .err()
                        .map_or_else(|| "no address".to_owned(), |e| e.to_string());
                    info!(seed = %name, %error, "waiting for the seed's name to resolve");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what: "listener",
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

async fn advertised_ip(
    host: Option<&str>,
    listen: std::net::IpAddr,
) -> Result<std::net::IpAddr, StartError> {
    match host {
        None if listen.is_unspecified() => Ok(std::net::IpAddr::from([127, 0, 0, 1])),
        None => Ok(listen),
        Some(host) => {
            if let Ok(ip) = host.parse() {
                return Ok(ip);
            }
            let mut addrs =
                tokio::net::lookup_host((host, 0))
                    .await
                    .map_err(|e| StartError::Advertise {
                        host: host.to_owned(),
                        reason: e.to_string(),
                    })?;
            addrs
                .next()
                .map(|a| a.ip())
                .ok_or_else(|| StartError::Advertise {
                    host: host.to_owned(),
                    reason: "no address".into(),
                })
        }
    }
}
