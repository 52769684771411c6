//! The cluster configuration and the majority rule.
//!
//! **Regular** nodes make up the cluster configuration, kept by Raft ([openraft], embedded in
//! every regular node: no external service). **Temporary** nodes come and go with gossip and
//! never count. Once a configuration exists, a node serves only while it is in touch with a
//! majority of the regular nodes:
//!
//! - the Raft leader knows when a majority last acknowledged it (`millis_since_quorum_ack`);
//! - a follower learns it from every append the leader sends (the leader adds its figure, and
//!   only appends the follower accepts count, so a deposed leader's appends do not);
//! - a node outside the configuration (temporary, or regular and not yet registered) asks a
//!   regular node for its figure.
//!
//! The instant the majority was last in touch is this node's lease. When it is older than
//! `fence_after` the node is **fenced**: it publishes `quorum=fenced` and servers stop
//! serving (the gateway disconnects its clients with the `partitioned` reason). Raft elects a
//! new leader on the majority side within its election timeout, well inside `fence_after`, so
//! the majority never fences itself over a lost leader. With no configuration at all (nobody
//! ran InitCluster) every node serves: the cluster is **unmanaged**.
//!
//! [openraft]: https://docs.rs/openraft

#[doc(hidden)]
pub mod fuzzing;
mod network;
mod store;
mod types;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mesh::{Cluster, HandlerError, Mesh, NodeId, NodeInfo, NodeKind, QuorumState};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

pub use types::{NodeNum, node_num};

use types::TypeConfig;

/// Mesh command: where a node stands (any node answers; nodes outside the configuration ask).
const STATUS: u32 = 0x1310;
/// Mesh command: add the sender as a regular node (a regular node forwards it to the leader).
const REGISTER: u32 = 0x1311;

/// A regular node as the configuration records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// Node kind (`gateway`, `room`, …).
    pub kind: String,
    /// gRPC address.
    pub grpc: String,
    /// Admin HTTP address, if it published one.
    pub admin: Option<String>,
    /// Sessions it accepts (gateways; 0 = unlimited), when it joined the configuration: what
    /// the others cover while it is gone.
    pub capacity: u64,
    /// When it joined the configuration (ms since the Unix epoch).
    pub since_ms: u64,
}

impl Member {
    fn of(node: &NodeInfo) -> Self {
        Self {
            id: node.id.to_string(),
            kind: node.kind.to_string(),
            grpc: node.grpc_addr.to_string(),
            admin: node.admin_addr.clone(),
            capacity: node.load.capacity,
            since_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// How this node takes part.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Raft's cluster name (the cluster id).
    pub cluster_id: String,
    /// A regular node runs Raft and counts toward the majority.
    pub regular: bool,
    /// Node ids to form the configuration with, once every one of them is a member (give it
    /// to one node only).
    pub init: Vec<String>,
    /// A node out of touch with the majority for this long is fenced.
    pub fence_after: Duration,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout (randomized between this and twice this).
    pub election: Duration,
    /// Where a regular node keeps its Raft log and vote (`raft-<node id>.json`); `None`: in
    /// memory.
    pub data_dir: Option<std::path::PathBuf>,
}

impl Settings {
    /// The defaults for a node: 150 ms heartbeats, elections after 0.5-1 s, fenced after 3.5 s.
    ///
    /// A follower refuses to vote while its leader's lease (the longest election timeout)
    /// runs, so replacing a dead leader can take two election rounds: up to about 2.5 s.
    /// The fence time stays above that, or the majority would fence itself while it elects.
    pub fn new(cluster_id: impl Into<String>, regular: bool) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            regular,
            init: Vec::new(),
            fence_after: Duration::from_millis(3500),
            heartbeat: Duration::from_millis(150),
            election: Duration::from_millis(500),
            data_dir: None,
        }
    }
}

/// Where this node stands, as last computed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuorumStatus {
    /// Unmanaged, serving or fenced.
    pub state: QuorumState,
    /// The Raft leader's node id, if known.
    pub leader: Option<String>,
    /// The regular nodes (the configuration), by id.
    pub regular: Vec<Member>,
    /// Raft term, when this node runs Raft.
    pub term: u64,
}

impl QuorumStatus {
    /// The configuration's record of `id`, if it is a regular node.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.regular.iter().find(|m| m.id == id)
    }
}

/// Why a configuration operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    /// Only regular nodes run Raft.
    #[error("this node is temporary: only a regular node can do this")]
    Temporary,
    /// InitCluster on a configured cluster.
    #[error("the cluster configuration already exists")]
    AlreadyInitialized,
    /// A node the operation names is not a member of the cluster.
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(String),
    /// A node named for the configuration is temporary.
    #[error("node {0} is temporary (start it with --role regular)")]
    NotRegular(String),
    /// Purge of a node that is still a member.
    #[error("node {0} is alive: only a node that is gone can be purged")]
    Live(String),
    /// Purge of a node outside the configuration.
    #[error("node {0} is not a regular node of the configuration")]
    NotConfigured(String),
    /// The operation runs on the leader: this is where it is.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader, if known.
        leader: Option<Member>,
    },
    /// Raft could not complete the change (no majority, say).
    #[error("the configuration change failed: {0}")]
    Raft(String),
    /// Asking another node failed.
    #[error("node {node} did not answer: {reason}")]
    Unreachable {
        /// The node asked.
        node: String,
        /// Why.
        reason: String,
    },
}

/// What the STATUS command answers.
#[derive(Serialize, Deserialize)]
struct StatusReply {
    managed: bool,
    serving: bool,
    /// How long ago the majority was last in touch with the answering node.
    majority_age_ms: Option<u64>,
    leader: Option<String>,
    voters: Vec<Member>,
}

/// Errors that cross the mesh in a REGISTER answer.
#[derive(Serialize, Deserialize)]
enum RegisterAnswer {
    Done,
    Failed(String),
}

/// This node's part in the configuration. Cloneable.
#[derive(Clone)]
pub struct Quorum {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    mesh: Mesh,
    settings: Settings,
    raft: Option<Raft<TypeConfig>>,
    me: NodeNum,
    /// When a majority of the regular nodes was last in touch with this node.
    contact: Mutex<Option<Instant>>,
    /// A configuration exists (sticky: once seen, a node never serves unmanaged again).
    managed: AtomicBool,
    /// Whether this node's Raft may start elections now.
    campaigning: AtomicBool,
    /// When each other voter last answered a ping.
    reached: Mutex<HashMap<NodeNum, Instant>>,
    status: watch::Sender<QuorumStatus>,
}

impl Quorum {
    /// Starts taking part: Raft on a regular node, the STATUS and REGISTER commands, and the
    /// task that keeps [`Quorum::watch`] current (and this node's `quorum` record field).
    pub async fn start(
        cluster: Cluster,
        mesh: Mesh,
        settings: Settings,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, QuorumError> {
        let me = node_num(cluster.self_id().as_str());
        let raft_cell: Arc<OnceLock<Raft<TypeConfig>>> = Arc::new(OnceLock::new());
        let raft = if settings.regular {
            let config = openraft::Config {
                cluster_name: settings.cluster_id.clone(),
                heartbeat_interval: settings.heartbeat.as_millis() as u64,
                election_timeout_min: settings.election.as_millis() as u64,
                election_timeout_max: settings.election.as_millis() as u64 * 2,
                // The log is never purged: the state machine is rebuilt from it at start.
                snapshot_policy: openraft::SnapshotPolicy::Never,
                ..Default::default()
            }
            .validate()
            .map_err(|e| QuorumError::Raft(e.to_string()))?;
            let cell = raft_cell.clone();
            let network = network::Network {
                mesh: mesh.clone(),
                majority_ack: Arc::new(move || cell.get().and_then(leader_ack_ms)),
            };
            let file = settings.data_dir.as_ref().map(|dir| {
                dir.join(format!(
                    "raft-{}.json",
                    cluster.self_id().as_str().replace('/', "_")
                ))
            });
            let log = store::LogStore::open(file)
                .await
                .map_err(|e| QuorumError::Raft(format!("cannot read the Raft log: {e}")))?;
            let raft = Raft::new(
                me,
                Arc::new(config),
                network,
                log,
                store::StateMachine::default(),
            )
            .await
            .map_err(|e| QuorumError::Raft(e.to_string()))?;
            let _ = raft_cell.set(raft.clone());
            Some(raft)
        } else {
            None
        };
        let (status, _) = watch::channel(QuorumStatus::default());
        let quorum = Quorum {
            inner: Arc::new(Inner {
                cluster,
                mesh,
                settings,
                raft,
                me,
                contact: Mutex::new(None),
                managed: AtomicBool::new(false),
                campaigning: AtomicBool::new(true),
                reached: Mutex::new(HashMap::new()),
                status,
            }),
        };
        quorum.serve_commands();
        tracker.spawn(quorum.clone().follow(stop.clone()));
        if quorum.inner.raft.is_some() {
            tracker.spawn(quorum.clone().ping_voters(stop.clone()));
        }
        if !quorum.inner.settings.init.is_empty() {
            tracker.spawn(quorum.clone().init_when_present(stop));
        }
        Ok(quorum)
    }

    /// Where this node stands now.
    pub fn status(&self) -> QuorumStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that sees every change of [`Quorum::status`].
    pub fn watch(&self) -> watch::Receiver<QuorumStatus> {
        self.inner.status.subscribe()
    }

    /// How long a node out of touch with the majority takes to fence itself.
    pub fn fence_after(&self) -> std::time::Duration {
        self.inner.settings.fence_after
    }

    /// True when this node runs Raft.
    pub fn is_regular(&self) -> bool {
        self.inner.raft.is_some()
    }

    /// Forms the configuration from `ids` (this node's among them or not), once every one is a
    /// regular member of the cluster (waiting up to 10 s for gossip to show them).
    pub async fn init(&self, ids: &[String]) -> Result<(), QuorumError> {
        let raft = self.inner.raft.as_ref().ok_or(QuorumError::Temporary)?;
        if self.is_configured() || self.inner.managed.load(Ordering::Relaxed) {
            return Err(QuorumError::AlreadyInitialized);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let members = loop {
            // Only a node gossip has not shown yet can come; a temporary one stays temporary.
            match self.regular_members(ids) {
                Ok(members) => break members,
                Err(QuorumError::UnknownNode(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        };
        raft.initialize(members).await.map_err(|e| match e {
            openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(
                _,
            )) => QuorumError::AlreadyInitialized,
            other => QuorumError::Raft(other.to_string()),
        })?;
        self.become_managed();
        info!(nodes = ?ids, "cluster configuration formed");
        Ok(())
    }

    /// Asks `contact` (any member) to add this node to the configuration.
    pub async fn register_via(&self, contact: &NodeId) -> Result<(), QuorumError> {
        if self.inner.raft.is_none() {
            return Err(QuorumError::Temporary);
        }
        let me = Member::of(&self.inner.cluster.self_info());
        self.ask_register(contact, &me).await
    }

    /// Removes a regular node that is gone from the configuration (on the leader).
    pub async fn purge(&self, id: &str) -> Result<(), QuorumError> {
        let raft = self.leader_raft()?;
        if self.inner.cluster.node(&NodeId::new(id)).is_some() {
            return Err(QuorumError::Live(id.to_owned()));
        }
        let num = node_num(id);
        if self.status().member(id).is_none() {
            return Err(QuorumError::NotConfigured(id.to_owned()));
        }
        within_change_time(
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([num])), false),
        )
        .await?;
        info!(node = id, "node purged from the configuration");
        Ok(())
    }

    /// The leader's record, if known.
    pub fn leader(&self) -> Option<Member> {
        let status = self.status();
        let leader = status.leader.as_deref()?;
        status.member(leader).cloned()
    }

    fn is_configured(&self) -> bool {
        self.inner.raft.as_ref().is_some_and(|raft| {
            raft.metrics()
                .borrow()
                .membership_config
                .voter_ids()
                .next()
                .is_some()
        })
    }

    /// This node's Raft when it leads, else where the leader is.
    fn leader_raft(&self) -> Result<&Raft<TypeConfig>, QuorumError> {
        let raft = self.inner.raft.as_ref().ok_or(QuorumError::Temporary)?;
        if raft.metrics().borrow().state == ServerState::Leader {
            Ok(raft)
        } else {
            Err(QuorumError::NotLeader {
                leader: self.leader(),
            })
        }
    }

    /// The members named by `ids`, each a regular member of the cluster.
    fn regular_members(&self, ids: &[String]) -> Result<BTreeMap<NodeNum, Member>, QuorumError> {
        let members = self.inner.cluster.members();
        ids.iter()
            .map(|id| {
                let node = members
                    .get(&NodeId::new(id.as_str()))
                    .ok_or_else(|| QuorumError::UnknownNode(id.clone()))?;
                if !node.regular {
                    return Err(QuorumError::NotRegular(id.clone()));
                }
                Ok((node_num(id), Member::of(node)))
            })
            .collect()
    }

    async fn ask_register(&self, contact: &NodeId, me: &Member) -> Result<(), QuorumError> {
        let unreachable = |reason: String| QuorumError::Unreachable {
            node: contact.to_string(),
            reason,
        };
        let body = serde_json::to_vec(me).map_err(|e| unreachable(e.to_string()))?;
        let reply = self
            .inner
            .mesh
            .request_with_timeout(contact, REGISTER, body, Duration::from_secs(10))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match serde_json::from_slice(&reply).map_err(|e| unreachable(e.to_string()))? {
            RegisterAnswer::Done => Ok(()),
            RegisterAnswer::Failed(reason) => Err(QuorumError::Raft(reason)),
        }
    }

    /// Adds `member` as a voter (on the leader), or passes the request to the leader.
    async fn register(&self, member: Member) -> Result<(), QuorumError> {
        match self.leader_raft() {
            Ok(raft) => {
                let num = node_num(&member.id);
                if raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .voter_ids()
                    .any(|v| v == num)
                {
                    return Ok(());
                }
                let id = member.id.clone();
                within_change_time(raft.add_learner(num, member, true)).await?;
                within_change_time(
                    raft.change_membership(
                        ChangeMembers::AddVoterIds(BTreeSet::from([num])),
                        false,
                    ),
                )
                .await?;
                info!(node = %id, "regular node added to the configuration");
                Ok(())
            }
            Err(QuorumError::NotLeader {
                leader: Some(leader),
            }) if leader.id != self.inner.cluster.self_id().as_str() => {
                Box::pin(self.ask_register(&NodeId::new(leader.id.as_str()), &member)).await
            }
            Err(error) => Err(error),
        }
    }

    fn serve_commands(&self) {
        if let Some(raft) = &self.inner.raft {
            let quorum = self.clone();
            network::serve(
                &self.inner.mesh,
                raft.clone(),
                Arc::new(move |at| quorum.heard(at)),
            );
            let quorum = self.clone();
            self.inner.mesh.handle(REGISTER, move |_, payload| {
                let quorum = quorum.clone();
                async move {
                    let member: Member = serde_json::from_slice(&payload)
                        .map_err(|e| HandlerError::new(HandlerError::BAD_PAYLOAD, e.to_string()))?;
                    let answer = match quorum.register(member).await {
                        Ok(()) => RegisterAnswer::Done,
                        Err(error) => RegisterAnswer::Failed(error.to_string()),
                    };
                    network::encode(&answer)
                }
            });
        }
        let quorum = self.clone();
        self.inner.mesh.handle(STATUS, move |_, _| {
            let quorum = quorum.clone();
            async move {
                let status = quorum.status();
                let reply = StatusReply {
                    managed: quorum.inner.managed.load(Ordering::Relaxed),
                    serving: status.state == QuorumState::Serving,
                    majority_age_ms: quorum.majority_age().map(|a| a.as_millis() as u64),
                    leader: status.leader,
                    voters: status.regular,
                };
                network::encode(&reply)
            }
        });
    }

    /// A configuration exists (from now on, for good). A node that just learned it counts as
    /// in touch from that moment: it learned it from the configuration's side, and must not
    /// fence (and disconnect its clients) before its first contact can arrive.
    fn become_managed(&self) {
        if !self.inner.managed.swap(true, Ordering::Relaxed) {
            self.heard(Instant::now());
        }
    }

    /// The majority was in touch at `at`.
    fn heard(&self, at: Instant) {
        let mut contact = lock(&self.inner.contact);
        if contact.is_none_or(|c| c < at) {
            *contact = Some(at);
        }
    }

    fn majority_age(&self) -> Option<Duration> {
        lock(&self.inner.contact).map(|c| c.elapsed())
    }

    /// Keeps the status current: every 100 ms (and, outside the configuration, asks a regular
    /// node where it stands every 300 ms).
    async fn follow(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll = Instant::now() - Duration::from_secs(1);
        let mut last_register = Instant::now() - Duration::from_secs(10);
        let mut poll_turn = 0usize;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let voter = self.observe_raft();
            if !voter && last_poll.elapsed() >= Duration::from_millis(300) {
                last_poll = Instant::now();
                poll_turn = poll_turn.wrapping_add(1);
                if let Some(asked) = self.poll(poll_turn).await
                    && self.inner.raft.is_some()
                    && self.status().state == QuorumState::Serving
                    && last_register.elapsed() >= Duration::from_secs(2)
                {
                    // A regular node outside the configuration joins it.
                    last_register = Instant::now();
                    let quorum = self.clone();
                    tokio::spawn(async move {
                        if let Err(error) = quorum.register_via(&asked).await {
                            warn!(%error, "cannot join the configuration yet");
                        }
                    });
                }
            }
            self.publish().await;
        }
        if let Some(raft) = &self.inner.raft {
            let _ = raft.shutdown().await;
        }
    }

    /// Pings every other voter every 50 ms (each within 150 ms), notes who answered, and opens
    /// or closes the election gate ([`Quorum::campaign_only_with_a_majority_in_sight`]) after
    /// each round.
    async fn ping_voters(self, stop: CancellationToken) {
        let Some(raft) = self.inner.raft.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sent = Instant::now();
            let (voters, targets): (Vec<NodeNum>, Vec<(NodeNum, NodeId)>) = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                let membership = metrics.membership_config.membership();
                let targets = membership
                    .voter_ids()
                    .filter(|v| *v != self.inner.me)
                    .filter_map(|v| {
                        membership
                            .get_node(&v)
                            .map(|m| (v, NodeId::new(m.id.as_str())))
                    })
                    .collect();
                (membership.voter_ids().collect(), targets)
            };
            let pings = targets.into_iter().map(|(num, node)| {
                let mesh = self.inner.mesh.clone();
                async move {
                    let answered = mesh
                        .request_with_timeout(
                            &node,
                            mesh::command::PING,
                            Vec::new(),
                            Duration::from_millis(150),
                        )
                        .await
                        .is_ok();
                    (num, answered)
                }
            });
            let answers = futures::future::join_all(pings).await;
            {
                let mut reached = lock(&self.inner.reached);
                for (num, answered) in answers {
                    if answered {
                        reached.insert(num, sent);
                    }
                }
            }
            self.campaign_only_with_a_majority_in_sight(&raft, &voters);
        }
    }

    /// Reads Raft's view: the leader's own majority contact. True when this node is a voter.
    fn observe_raft(&self) -> bool {
        let Some(raft) = &self.inner.raft else {
            return false;
        };
        let metrics = raft.metrics().borrow().clone();
        let voters: Vec<NodeNum> = metrics.membership_config.voter_ids().collect();
        if voters.is_empty() {
            return false;
        }
        // No grace here: a configuration read back from disk says nothing about who is in
        // touch now (a voter that learned it from an append was heard by that append).
        self.inner.managed.store(true, Ordering::Relaxed);
        if metrics.state == ServerState::Leader {
            if voters == [self.inner.me] {
                self.heard(Instant::now());
            } else if let Some(age) = metrics.millis_since_quorum_ack {
                let now = Instant::now();
                self.heard(now.checked_sub(Duration::from_millis(age)).unwrap_or(now));
            }
        }
        metrics::gauge!("switchyard_quorum_term").set(metrics.current_term as f64);
        voters.contains(&self.inner.me)
    }

    /// What Raft's pre-vote would do (openraft 0.9 has none): a node may start elections only
    /// while it reaches a majority of the voters (itself included: each other voter answered
    /// a mesh ping within `IN_SIGHT`, shorter than the shortest election timeout). One cut off
    /// from them does not campaign, so its term does not climb while it is alone and its return
    /// does not depose the majority's leader; voters that lost their leader but reach each
    /// other elect as usual, and so does a whole cluster starting again.
    fn campaign_only_with_a_majority_in_sight(&self, raft: &Raft<TypeConfig>, voters: &[NodeNum]) {
        let now = Instant::now();
        let in_sight = {
            let reached = lock(&self.inner.reached);
            voters
                .iter()
                .filter(|&&v| {
                    v == self.inner.me
                        || reached
                            .get(&v)
                            .is_some_and(|at| now.saturating_duration_since(*at) < IN_SIGHT)
                })
                .count()
        };
        let may = in_sight * 2 > voters.len();
        if self.inner.campaigning.swap(may, Ordering::Relaxed) != may {
            raft.runtime_config().elect(may);
            if !may {
                info!("no majority of the regular nodes in sight: not starting elections");
            }
        }
    }

    /// Asks a regular member where it stands; the majority's contact through it counts here.
    /// Returns the node asked when it serves.
    async fn poll(&self, turn: usize) -> Option<NodeId> {
        let me = self.inner.cluster.self_id();
        let mut regular: Vec<NodeInfo> = self
            .inner
            .cluster
            .members()
            .values()
            .filter(|n| n.regular && n.id != me && n.quorum != QuorumState::Unmanaged)
            .cloned()
            .collect();
        if regular.is_empty() {
            return None;
        }
        // Serving ones first, then round robin.
        regular.sort_by_key(|n| (n.quorum != QuorumState::Serving, n.id.clone()));
        let serving = regular
            .iter()
            .filter(|n| n.quorum == QuorumState::Serving)
            .count()
            .max(1);
        let asked = regular[turn % serving].id.clone();
        let sent = Instant::now();
        let reply = self
            .inner
            .mesh
            .request_with_timeout(&asked, STATUS, Vec::new(), Duration::from_millis(500))
            .await
            .ok()?;
        let reply: StatusReply = serde_json::from_slice(&reply).ok()?;
        if reply.serving
            && let Some(age) = reply.majority_age_ms
        {
            self.heard(sent.checked_sub(Duration::from_millis(age)).unwrap_or(sent));
        }
        if reply.managed && reply.serving {
            self.become_managed();
        } else if reply.managed {
            // Learned from a fenced node: no grace.
            self.inner.managed.store(true, Ordering::Relaxed);
        }
        if !reply.serving {
            return None;
        }
        self.remember_configuration(reply.leader, reply.voters);
        Some(asked)
    }

    fn remember_configuration(&self, leader: Option<String>, voters: Vec<Member>) {
        self.inner.status.send_if_modified(|status| {
            let changed = status.leader != leader || status.regular != voters;
            status.leader = leader;
            status.regular = voters;
            changed
        });
    }

    /// Computes the state, publishes it (status watch, record, metrics, logs) when it changed.
    async fn publish(&self) {
        let managed = self.inner.managed.load(Ordering::Relaxed);
        let state = standing(
            managed,
            self.majority_age(),
            self.inner.settings.fence_after,
        );
        let (leader, regular, term) = match &self.inner.raft {
            Some(raft) if self.is_configured() => {
                let metrics = raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                let regular: Vec<Member> = membership
                    .voter_ids()
                    .filter_map(|id| membership.get_node(&id).cloned())
                    .collect();
                let leader = metrics
                    .current_leader
                    .and_then(|l| membership.get_node(&l))
                    .map(|m| m.id.clone());
                (leader, regular, metrics.current_term)
            }
            _ => {
                let status = self.status();
                (status.leader, status.regular, 0)
            }
        };
        let before = self.status();
        if before.leader != leader && leader.is_some() {
            info!(
                leader = leader.as_deref().unwrap_or(""),
                term,
                regular = regular.len(),
                "cluster configuration leader"
            );
        }
        let previous = before.state;
        self.inner.status.send_if_modified(|status| {
            let next = QuorumStatus {
                state,
                leader,
                regular,
                term,
            };
            let changed = *status != next;
            *status = next;
            changed
        });
        if previous != state {
            let node = self.inner.cluster.self_id();
            match state {
                QuorumState::Fenced => {
                    warn!(%node, after = ?self.inner.settings.fence_after, "fenced: out of touch with the majority of the regular nodes");
                    metrics::counter!("switchyard_quorum_fenced_total").increment(1);
                }
                QuorumState::Serving => info!(%node, "in touch with the majority: serving"),
                QuorumState::Unmanaged => {}
            }
            metrics::gauge!("switchyard_quorum_serving")
                .set(f64::from(u8::from(state != QuorumState::Fenced)));
        }
        metrics::gauge!("switchyard_quorum_regular_nodes").set(self.status().regular.len() as f64);
        self.inner.cluster.set_quorum(state).await;
    }

    /// Waits until every node of `--init-cluster` is a member, then forms the configuration.
    async fn init_when_present(self, stop: CancellationToken) {
        let ids = self.inner.settings.init.clone();
        loop {
            if stop.is_cancelled() || self.inner.managed.load(Ordering::Relaxed) {
                return;
            }
            if self.regular_members(&ids).is_ok() {
                match self.init(&ids).await {
                    Ok(()) | Err(QuorumError::AlreadyInitialized) => return,
                    Err(error) => warn!(%error, "cannot form the configuration yet"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// How recently a voter must have answered a ping (sent then) to count as in sight. With a
/// ping round every 50 ms, a node cut off stops campaigning within 250 ms, before its
/// election timer can fire (the last heartbeat, at most 150 ms before the cut, plus at least
/// 500 ms).
const IN_SIGHT: Duration = Duration::from_millis(200);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long a configuration change may take: a leader cut off from its majority never
/// commits one.
const CHANGE_TIME: Duration = Duration::from_secs(5);

async fn within_change_time<T, E: std::fmt::Display>(
    change: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, QuorumError> {
    match tokio::time::timeout(CHANGE_TIME, change).await {
        Ok(done) => done.map_err(|e| QuorumError::Raft(e.to_string())),
        Err(_) => Err(QuorumError::Raft(format!(
            "not committed within {CHANGE_TIME:?}: no majority"
        ))),
    }
}

/// The leader's majority acknowledgement age, in ms (None on a non-leader).
fn leader_ack_ms(raft: &Raft<TypeConfig>) -> Option<u64> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    if metrics.state != ServerState::Leader {
        return None;
    }
    let alone = metrics.membership_config.voter_ids().count() == 1;
    if alone {
        Some(0)
    } else {
        metrics.millis_since_quorum_ack
    }
}

/// The rule: unmanaged clusters serve; a managed node serves while the majority was in touch
/// within `fence_after`.
fn standing(managed: bool, majority_age: Option<Duration>, fence_after: Duration) -> QuorumState {
    if !managed {
        return QuorumState::Unmanaged;
    }
    match majority_age {
        Some(age) if age < fence_after => QuorumState::Serving,
        _ => QuorumState::Fenced,
    }
}

/// True for the node kind that holds clients.
pub fn is_gateway(member: &Member) -> bool {
    member.kind == NodeKind::GATEWAY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_serves_while_the_majority_was_in_touch_within_the_fence_time() {
        let fence = Duration::from_secs(3);
        let cases = [
            (false, None, QuorumState::Unmanaged),
            (false, Some(10), QuorumState::Unmanaged),
            (true, None, QuorumState::Fenced),
            (true, Some(0), QuorumState::Serving),
            (true, Some(2_999), QuorumState::Serving),
            (true, Some(3_000), QuorumState::Fenced),
            (true, Some(60_000), QuorumState::Fenced),
        ];
        for (managed, age, expected) in cases {
            let age = age.map(Duration::from_millis);
            assert_eq!(
                standing(managed, age, fence),
                expected,
                "managed {managed}, age {age:?}"
            );
        }
    }
}
