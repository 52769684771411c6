//! The configuration every node binary shares, flattened into each binary's own `Config`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use mesh::{MeshSettings, NodeId, NodeKind, membership::GossipConfig};

/// The secret used when none is configured. Fine on a laptop; never in production.
pub const DEV_SECRET: &str = "switchyard-dev-secret";

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Cluster, listener and telemetry settings of one node.
#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// This node's id, unique in the cluster. Set it to keep the id across restarts;
    /// default: `<kind>-<random>`.
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    pub node_id: Option<String>,

    /// Nodes only see nodes with the same cluster id.
    #[arg(long, env = "SWITCHYARD_CLUSTER_ID", default_value = "switchyard")]
    pub cluster_id: String,

    /// Shared secret every internal call and datagram carries (8-256 printable characters).
    #[arg(long, env = "SWITCHYARD_CLUSTER_SECRET", default_value = DEV_SECRET, hide_env_values = true)]
    pub cluster_secret: String,

    /// Gossip addresses (`host:port`, UDP) of nodes to join through, comma-separated.
    /// Empty: this node starts a new cluster.
    #[arg(long, env = "SWITCHYARD_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,

    /// Address of the node's gRPC server (mesh, health, reflection, the node's services).
    #[arg(long, env = "SWITCHYARD_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,

    /// Address of the gossip socket (UDP).
    #[arg(long, env = "SWITCHYARD_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,

    /// Address of the HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "SWITCHYARD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Host name or IP other nodes use to reach this one; default: the listen address, or
    /// 127.0.0.1 when listening on all interfaces.
    #[arg(long, env = "SWITCHYARD_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,

    /// How often the node gossips, in milliseconds.
    #[arg(long, env = "SWITCHYARD_GOSSIP_INTERVAL_MS", default_value_t = 100)]
    pub gossip_interval_ms: u64,

    /// How long a silent node may go before the others drop it, in milliseconds.
    #[arg(long, env = "SWITCHYARD_FAILURE_DETECTION_MS", default_value_t = 2000)]
    pub failure_detection_ms: u64,

    /// How often load figures are republished when they changed, in milliseconds.
    #[arg(long, env = "SWITCHYARD_LOAD_INTERVAL_MS", default_value_t = 1000)]
    pub load_interval_ms: u64,

    /// How long a node that received SIGTERM may drain before it leaves anyway, in ms.
    #[arg(long, env = "SWITCHYARD_DRAIN_GRACE_MS", default_value_t = 10_000)]
    pub drain_grace_ms: u64,

    /// Bearer token of the admin HTTP endpoint's operations (drain, undrain and the cluster
    /// operations under `/admin/cluster/`; see docs/ADMIN.md); unset: they are refused. The
    /// gRPC `Admin` service takes the cluster credential instead.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN")]
    pub admin_token: Option<String>,

    /// Default timeout of mesh requests and reliable sends, in milliseconds.
    #[arg(long, env = "SWITCHYARD_MESH_TIMEOUT_MS", default_value_t = 3000)]
    pub mesh_timeout_ms: u64,

    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,

    /// Tokio runtime: `multi-thread` (a worker per core) or `current-thread` (one thread; on
    /// one or two cores often the lower latency).
    #[arg(
        long = "runtime",
        env = "SWITCHYARD_RUNTIME",
        value_enum,
        default_value_t
    )]
    pub runtime_flavor: crate::RuntimeFlavor,

    /// `regular`: this node keeps the cluster configuration (Raft) and counts toward the
    /// majority; `temporary`: it comes and goes and never counts. Once a configuration exists
    /// (see `--init-cluster`), a node out of touch with the majority of the regular nodes stops
    /// serving.
    #[arg(long, env = "SWITCHYARD_ROLE", value_enum, default_value_t)]
    pub role: Role,

    /// Form the cluster configuration from these regular node ids (comma-separated) once every
    /// one is a member. Give it to one node only; or call the admin API's InitCluster.
    #[arg(long, env = "SWITCHYARD_INIT_CLUSTER", value_delimiter = ',')]
    pub init_cluster: Vec<String>,

    /// Where a regular node keeps its Raft log and vote, so that it restarts as the same
    /// member (the whole cluster may restart); unset: in memory (a restarted regular node is
    /// caught up by the leader, but forgets its vote).
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// A node out of touch with the majority of the regular nodes for this long stops serving
    /// (ms). Keep it above what replacing a dead Raft leader takes (up to about 2.5 s).
    #[arg(long, env = "SWITCHYARD_FENCE_AFTER_MS", default_value_t = 3500)]
    pub fence_after_ms: u64,

    /// Once serving, write the node's id and bound addresses (`key=value` lines) to this file.
    /// Lets scripts and tests use port 0.
    #[arg(long, env = "SWITCHYARD_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

/// Whether a node counts toward the cluster's majority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Comes and goes; never counts toward the majority.
    #[default]
    Temporary,
    /// Keeps the cluster configuration (Raft) and counts toward the majority.
    Regular,
}

/// Default listen addresses, chosen by each binary.
#[derive(Clone, Copy, Debug)]
pub struct ListenDefaults {
    /// gRPC server.
    pub grpc: SocketAddr,
    /// Gossip socket.
    pub gossip: SocketAddr,
    /// Admin HTTP.
    pub admin: SocketAddr,
}

impl ListenDefaults {
    /// Every listener on 127.0.0.1 with a free port.
    pub const LOOPBACK: ListenDefaults = ListenDefaults {
        grpc: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            0,
        )),
        gossip: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            0,
        )),
        admin: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            0,
        )),
    };
}

/// Everything [`crate::Node::start`] needs, independent of how it was configured.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node id.
    pub id: NodeId,
    /// Node kind.
    pub kind: NodeKind,
    /// Cluster secret.
    pub secret: String,
    /// Gossip membership settings.
    pub gossip: GossipConfig,
    /// Mesh timeouts.
    pub mesh: MeshSettings,
    /// Host advertised to peers, if not the listen address.
    pub advertise_host: Option<String>,
    /// How often load is republished.
    pub load_interval: Duration,
    /// Drain grace period on shutdown (what clients are told).
    pub drain_grace: Duration,
    /// How much longer than the grace a drain may take (to finish what the grace's end starts).
    pub drain_overrun: Duration,
    /// Bearer token of the admin HTTP drain operations (`None`: refused).
    pub admin_token: Option<String>,
    /// Where to write bound addresses once serving.
    pub ready_file: Option<PathBuf>,
    /// Regular or temporary, the configuration to form, the fence time.
    pub quorum: quorum::Settings,
}

impl NodeConfig {
    /// Defaults for a node of `kind`: a new cluster, the development secret, a random id.
    pub fn new(kind: impl Into<NodeKind>) -> Self {
        let kind = kind.into();
        Self {
            id: random_id(&kind),
            kind,
            secret: DEV_SECRET.to_owned(),
            gossip: GossipConfig::default(),
            mesh: MeshSettings::default(),
            advertise_host: None,
            load_interval: Duration::from_secs(1),
            drain_grace: Duration::from_secs(10),
            drain_overrun: Duration::ZERO,
            admin_token: None,
            ready_file: None,
            quorum: quorum::Settings::new("switchyard", false),
        }
    }
}

impl NodeArgs {
    /// The node configuration these arguments describe.
    pub fn node_config(&self, kind: impl Into<NodeKind>) -> NodeConfig {
        let kind = kind.into();
        let timeout = Duration::from_millis(self.mesh_timeout_ms);
        NodeConfig {
            id: self
                .node_id
                .clone()
                .map_or_else(|| random_id(&kind), NodeId::from),
            kind,
            secret: self.cluster_secret.clone(),
            gossip: GossipConfig {
                cluster_id: self.cluster_id.clone(),
                seeds: self
                    .seeds
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect(),
                gossip_interval: Duration::from_millis(self.gossip_interval_ms.max(10)),
                failure_detection: Duration::from_millis(self.failure_detection_ms.max(100)),
            },
            mesh: MeshSettings {
                request_timeout: timeout,
                send_many_timeout: timeout,
                ..MeshSettings::default()
            },
            advertise_host: self.advertise_host.clone(),
            load_interval: Duration::from_millis(self.load_interval_ms.max(10)),
            drain_grace: Duration::from_millis(self.drain_grace_ms),
            drain_overrun: Duration::ZERO,
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
            ready_file: self.ready_file.clone(),
            quorum: quorum::Settings {
                init: self
                    .init_cluster
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect(),
                fence_after: Duration::from_millis(self.fence_after_ms.max(500)),
                data_dir: self.data_dir.clone(),
                ..quorum::Settings::new(self.cluster_id.clone(), self.role == Role::Regular)
            },
        }
    }

    /// The listen addresses: configured ones, else the binary's defaults.
    pub fn listen(&self, defaults: ListenDefaults) -> ListenDefaults {
        ListenDefaults {
            grpc: self.grpc_listen.unwrap_or(defaults.grpc),
            gossip: self.gossip_listen.unwrap_or(defaults.gossip),
            admin: self.admin_listen.unwrap_or(defaults.admin),
        }
    }
}

fn random_id(kind: &NodeKind) -> NodeId {
    NodeId::new(format!("{kind}-{:06x}", rand::random::<u32>() & 0xff_ffff))
}
