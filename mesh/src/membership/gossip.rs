//! The embedded membership backend: chitchat gossip over UDP.
//!
//! Each node gossips its record as key/values. A node that stops gracefully publishes
//! `state=left` before it stops gossiping, so peers drop it at once; a node that dies is dropped
//! by chitchat's failure detector within the configured detection time.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState as GossipState,
    ProtocolVersion, transport::UdpTransport,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Members, Membership};
use crate::{
    node::{NodeId, NodeInfo},
    record::{self, Decoded},
};

/// Settings of the gossip backend.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Nodes with another cluster id ignore each other.
    pub cluster_id: String,
    /// Gossip addresses of seed nodes (`host:port`); empty for the first node of a cluster.
    pub seeds: Vec<String>,
    /// How often each node gossips with a few peers.
    pub gossip_interval: Duration,
    /// How long a dead node may stay silent before peers drop it (loopback: well under 3 s).
    pub failure_detection: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            cluster_id: "switchyard".into(),
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(100),
            failure_detection: Duration::from_secs(2),
        }
    }
}

/// Membership by chitchat gossip.
pub struct GossipMembership {
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    members: watch::Receiver<Arc<Members>>,
    joined: Arc<AtomicBool>,
    gossip_interval: Duration,
    gossip_addr: SocketAddr,
}

fn free_udp_port(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind(listen)?.local_addr()
}

impl GossipMembership {
    /// Starts gossiping on `listen` as node `me`. Port 0 picks a free port.
    pub async fn start(
        config: &GossipConfig,
        me: &NodeInfo,
        listen: SocketAddr,
    ) -> std::io::Result<Self> {
        // chitchat binds its socket itself: with port 0, find a free port first, and try again
        // should another process take it in between.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let gossip_addr = if listen.port() == 0 {
                free_udp_port(listen)?
            } else {
                listen
            };
            match Self::start_at(config, me, gossip_addr).await {
                Err(error) if listen.port() == 0 && attempts < 5 => {
                    debug!(%error, "gossip port was taken; trying another");
                }
                result => return result,
            }
        }
    }

    /// The gossip address peers use for this node.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    async fn start_at(
        config: &GossipConfig,
        me: &NodeInfo,
        gossip_addr: SocketAddr,
    ) -> std::io::Result<Self> {
        let advertise = advertised(gossip_addr, me.grpc_addr);
        let generation = me.started_at_ms;
        let chitchat_id = ChitchatId::new(me.id.as_str(), generation, advertise);
        // phi = silence / mean heartbeat interval. Heartbeats of a node reach a peer about
        // every one or two gossip rounds, so a threshold of detection / (2 rounds) drops a
        // silent node after at most `failure_detection`.
        let rounds = config.failure_detection.as_secs_f64() / config.gossip_interval.as_secs_f64();
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: (rounds / 2.0).max(2.0),
            sampling_window_size: 100,
            max_interval: config.failure_detection,
            initial_interval: config.gossip_interval,
            dead_node_grace_period: Duration::from_secs(3600),
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: gossip_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let initial = record::encode(me)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let handle = chitchat::spawn_chitchat(chitchat_config, initial, &UdpTransport)
            .await
            .map_err(std::io::Error::other)?;
        let chitchat = handle.chitchat();
        let live = chitchat.lock().await.live_nodes_watcher();
        let joined = Arc::new(AtomicBool::new(config.seeds.is_empty()));
        let (members_tx, members) = watch::channel(Arc::new(Members::new()));
        tokio::spawn(translate_live_nodes(
            live,
            members_tx,
            joined.clone(),
            me.id.clone(),
        ));
        info!(node = %me.id, %gossip_addr, seeds = ?config.seeds, "gossip membership started");
        Ok(Self {
            handle: tokio::sync::Mutex::new(Some(handle)),
            chitchat,
            members,
            joined,
            gossip_interval: config.gossip_interval,
            gossip_addr: advertise,
        })
    }
}

/// The gossip address peers should use: the socket's own, unless it is bound to an unspecified
/// address, in which case the host of the advertised gRPC address stands in.
fn advertised(gossip: SocketAddr, grpc: SocketAddr) -> SocketAddr {
    if gossip.ip().is_unspecified() {
        SocketAddr::new(grpc.ip(), gossip.port())
    } else {
        gossip
    }
}

/// Turns chitchat's live-node states into member records, whenever they change.
async fn translate_live_nodes(
    mut live: watch::Receiver<BTreeMap<ChitchatId, GossipState>>,
    members_tx: watch::Sender<Arc<Members>>,
    joined: Arc<AtomicBool>,
    me: NodeId,
) {
    let mut invalid_logged: HashSet<String> = HashSet::new();
    loop {
        let members = {
            let states = live.borrow_and_update();
            let mut members = Members::new();
            // A node id may appear twice while a restarted node's old generation ages out:
            // keep the newest generation.
            let mut newest: BTreeMap<&str, (&ChitchatId, &GossipState)> = BTreeMap::new();
            for (id, state) in states.iter() {
                let entry = newest.entry(&*id.node_id).or_insert((id, state));
                if id.generation_id > entry.0.generation_id {
                    *entry = (id, state);
                }
            }
            for (node_id, (_, state)) in newest {
                match record::decode(node_id, |k| state.get(k)) {
                    Ok(Decoded::Member(info)) => {
                        invalid_logged.remove(node_id);
                        members.insert(info.id.clone(), *info);
                    }
                    Ok(Decoded::Left) => {}
                    Err(error) => {
                        if invalid_logged.insert(node_id.to_owned()) {
                            warn!(peer = node_id, %error, "ignoring a node with an unreadable record");
                        }
                    }
                }
            }
            members
        };
        if members.keys().any(|id| *id != me) {
            joined.store(true, Ordering::Relaxed);
        }
        debug!(members = members.len(), "membership changed");
        if members_tx.send(Arc::new(members)).is_err() || live.changed().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl Membership for GossipMembership {
    async fn publish(&self, record: &NodeInfo) {
        let mut chitchat = self.chitchat.lock().await;
        let state = chitchat.self_node_state();
        for (key, value) in record::encode(record) {
            state.set(key, value);
        }
    }

    fn members(&self) -> watch::Receiver<Arc<Members>> {
        self.members.clone()
    }

    fn is_joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    async fn leave(&self) {
        {
            let mut chitchat = self.chitchat.lock().await;
            chitchat
                .self_node_state()
                .set(record::key::STATE, record::STATE_LEFT);
        }
        // Two gossip rounds carry the tombstone to peers before we go silent.
        tokio::time::sleep(self.gossip_interval * 3).await;
        self.abort().await;
    }

    async fn abort(&self) {
        if let Some(handle) = self.handle.lock().await.take()
            && let Err(error) = handle.shutdown().await
        {
            warn!(%error, "gossip did not shut down cleanly");
        }
    }
}
