//! Match server: players queue by mode; when a mode's queue holds a full match, the match is
//! placed on the least-loaded room server (asked all at once, request / multiple-response),
//! the players are bound to it through the gateways and told where their room is.
//!
//! # Layout
//! - [`Config`], [`start`], [`run`]: configuration, routes, the server's life.
//! - `queue`: the queues (pure; table-tested), behind one mutex.
//! - `placement`: load collection, ranking, room creation, binding, notifications.
//! - `login`: the login check (HMAC token, or any name in development).

mod login;
mod placement;
mod queue;

use std::{sync::Arc, time::Duration};

use clap::Parser;
use logic_sdk::{Context, LogicError, LogicServer, Reply, RunningLogic, Sdk, SessionClosed};
use mesh::NodeKind;
use prost::Message;
use proto::matchmaking::v1::{self as mm, errors, routes};
use runtime::{Held, Listeners, NodeArgs};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::queue::{QueueError, Queues, Ticket};

/// Configuration of `logic-match`.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Config {
    /// Cluster, listener and telemetry settings.
    #[command(flatten)]
    pub node: NodeArgs,

    /// Modes and their match sizes.
    #[arg(long, env = "SWITCHYARD_MODES", default_value = "duel=2")]
    pub modes: String,

    /// Login tokens must be hex HMAC-SHA256(secret, user id). Unset: any user id is accepted
    /// (development only; a warning is logged).
    #[arg(long, env = "SWITCHYARD_LOGIN_SECRET", hide_env_values = true)]
    pub login_secret: Option<String>,

    /// Time each room server has to report its load, in ms; slower ones are skipped.
    #[arg(long, env = "SWITCHYARD_COLLECT_TIMEOUT_MS", default_value_t = 500)]
    pub collect_timeout_ms: u64,

    /// After a match could not be placed, its players are queued again after this long, in ms.
    #[arg(long, env = "SWITCHYARD_RETRY_MS", default_value_t = 1_000)]
    pub retry_ms: u64,

    /// Players held by a gateway that died (or was cut off) leave their queue this long after
    /// it is gone (ms; the gateways' resume window).
    #[arg(long, env = "SWITCHYARD_GATEWAY_GRACE_MS", default_value_t = 30_000)]
    pub gateway_grace_ms: u64,
}

/// What every route of a match server shares: the queues and the login check.
struct Matchmaker {
    queues: std::sync::Mutex<Queues>,
    checker: login::Checker,
    collect_timeout: Duration,
    retry: Duration,
    /// Placements in flight (also on the node's tasks): the drain waits for them.
    placements: TaskTracker,
}

/// The reason queued players receive when the server drains.
const SHUTTING_DOWN: &str = "the match server is shutting down; queue again";

impl Matchmaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Places a formed match in the background, on the node's tasks; on failure its players
    /// are told and queued again (at the front) after the retry delay, unless the server has
    /// started draining meanwhile: then they are told to queue again elsewhere.
    fn spawn_placement(self: &Arc<Self>, sdk: &Sdk, mode: String, tickets: Vec<Ticket>) {
        let placement = self.clone().place(sdk.clone(), mode, tickets);
        sdk.spawn(self.placements.track_future(placement));
    }

    async fn place(self: Arc<Self>, sdk: Sdk, mode: String, mut tickets: Vec<Ticket>) {
        loop {
            match placement::place(&sdk, &mode, &tickets, self.collect_timeout).await {
                Ok(info) => {
                    placement::announce(&sdk, &mode, &tickets, &info).await;
                    self.lock().placed(&tickets);
                    metrics::counter!("switchyard_match_matches_total", "mode" => mode.clone())
                        .increment(1);
                    return;
                }
                Err(placement::NotPlaced(reason)) => {
                    warn!(%mode, players = tickets.len(), %reason, "match not placed; players stay queued");
                    placement::delayed(&sdk, &mode, &tickets, &reason).await;
                    tokio::time::sleep(self.retry).await;
                    if !sdk.cluster().accepts_new_work() {
                        self.lock().placed(&tickets);
                        let cancelled = tickets.iter().map(|t| (mode.clone(), t.clone()));
                        cancel_queued(&sdk, cancelled.collect());
                        return;
                    }
                    match self.lock().requeue(&mode, tickets) {
                        Some(again) => tickets = again,
                        None => return,
                    }
                }
            }
        }
    }
}

/// Tells players they are no longer queued because the server is shutting down.
fn cancel_queued(sdk: &Sdk, players: Vec<(String, Ticket)>) {
    for (mode, ticket) in players {
        let cancelled = mm::QueueCancelled {
            mode,
            reason: SHUTTING_DOWN.to_owned(),
        };
        let recipient = logic_sdk::Recipient {
            user_id: ticket.user,
            gateway: ticket.gateway,
        };
        sdk.push_ordered(
            [recipient],
            routes::PUSH_QUEUE_CANCELLED,
            cancelled.encode_to_vec(),
        );
    }
}

/// A started match server.
pub struct MatchServer {
    /// The node and its SDK.
    pub running: RunningLogic,
    matchmaker: Arc<Matchmaker>,
}

impl MatchServer {
    /// Runs until `shutdown`, then drains: the server goes offline (no new players), every
    /// queue is emptied and each waiting player is told (`QueueCancelled`, with the reason);
    /// matches already being placed finish within the drain grace period, and the players of
    /// one that could not be placed are told the same instead of being queued again.
    pub async fn run(self, shutdown: CancellationToken) {
        let MatchServer {
            running,
            matchmaker,
        } = self;
        let sdk = running.sdk.clone();
        running
            .node
            .run(shutdown, |drain| {
                let (matchmaker, sdk) = (matchmaker.clone(), sdk.clone());
                async move {
                    // A requested drain waits for the queues to empty by themselves (no new
                    // tickets while offline), unless it is cancelled.
                    if drain.hold_while(|| matchmaker.lock().queued() > 0).await == Held::Undrained
                    {
                        return;
                    }
                    let drained = matchmaker.lock().drain_all();
                    info!(players = drained.len(), "drain: queues emptied");
                    cancel_queued(&sdk, drained);
                    matchmaker.placements.close();
                    matchmaker.placements.wait().await;
                    // Let the pushes leave before the node does.
                    sdk.flush_pushes().await;
                }
            })
            .await;
    }
}

/// Starts the match server; returns once it has joined the cluster and serves.
pub async fn start(config: Config, listeners: Listeners) -> anyhow::Result<MatchServer> {
    let modes = queue::parse_modes(&config.modes).map_err(anyhow::Error::msg)?;
    let mut node_config = config.node.node_config(NodeKind::MATCH);
    if node_config.gossip.seeds.is_empty() {
        node_config.gossip.seeds = vec!["127.0.0.1:7946".into()];
    }
    let checker = login::Checker::new(config.login_secret.as_deref());
    if !checker.is_checking() {
        warn!("no login secret: any user id is accepted (development only)");
    }
    let matchmaker = Arc::new(Matchmaker {
        queues: std::sync::Mutex::new(Queues::new(modes)),
        checker,
        collect_timeout: Duration::from_millis(config.collect_timeout_ms),
        retry: Duration::from_millis(config.retry_ms),
        placements: TaskTracker::new(),
    });
    {
        let queues = matchmaker.lock();
        for (mode, size) in queues.modes() {
            info!(%mode, size, "mode configured");
        }
    }
    let running = server(matchmaker.clone())
        .start(node_config, listeners)
        .await?;
    let mut lost = running
        .sdk
        .gateways_lost(Duration::from_millis(config.gateway_grace_ms));
    let forgetting = matchmaker.clone();
    running.sdk.spawn(async move {
        while let Some(gateway) = lost.recv().await {
            let users = forgetting.lock().forget_gateway(&gateway);
            info!(%gateway, left = users.len(), "players held by a lost gateway left the queue");
        }
    });
    Ok(MatchServer {
        running,
        matchmaker,
    })
}

/// Runs the match server until `shutdown`, then drains and leaves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, listeners).await?.run(shutdown).await;
    Ok(())
}

/// The routes of a match server.
fn server(matchmaker: Arc<Matchmaker>) -> LogicServer<Arc<Matchmaker>> {
    LogicServer::with_state(NodeKind::MATCH, matchmaker)
        .handle_public(routes::LOGIN, login)
        .handle(routes::ENQUEUE, enqueue)
        .handle(routes::CANCEL, cancel)
        .handle_session_closed(session_closed)
}

/// 1:1 (public): the session's user, once the credential checks out.
async fn login(
    matchmaker: Arc<Matchmaker>,
    _: Context,
    request: mm::Login,
) -> Result<Reply, LogicError> {
    let user = matchmaker.checker.check(&request.user_id, &request.token)?;
    Ok(Reply::message(&mm::LoginOk {
        user_id: user.clone(),
    })
    .login(user))
}

/// 20:1: queues the user; a full match is placed in the background. The session is watched:
/// a player who disconnects leaves the queue.
async fn enqueue(
    matchmaker: Arc<Matchmaker>,
    ctx: Context,
    request: mm::Enqueue,
) -> Result<Reply, LogicError> {
    let ticket = Ticket {
        user: ctx.user()?.to_owned(),
        gateway: Some(ctx.gateway.clone()),
    };
    if !ctx.sdk().cluster().accepts_new_work() {
        return Err(LogicError::new(
            errors::NODE_DRAINING,
            "this match server is draining; queue again",
        ));
    }
    let result = matchmaker.lock().enqueue(&request.mode, ticket);
    let (position, formed) = result.map_err(|e| match e {
        QueueError::UnknownMode => LogicError::new(errors::UNKNOWN_MODE, "no such mode"),
        QueueError::AlreadyQueued => LogicError::new(errors::ALREADY_QUEUED, "already queued"),
    })?;
    metrics::gauge!("switchyard_match_waiting").set(matchmaker.lock().waiting() as f64);
    if let Some(tickets) = formed {
        matchmaker.spawn_placement(ctx.sdk(), request.mode.clone(), tickets);
    }
    let queued = mm::Queued {
        mode: request.mode,
        position: position as u32,
    };
    Ok(Reply::message(&queued).watch_session())
}

/// 20:2: leaves the queue.
async fn cancel(
    matchmaker: Arc<Matchmaker>,
    ctx: Context,
    _: mm::Cancel,
) -> Result<mm::Cancelled, LogicError> {
    let was_queued = matchmaker.lock().cancel(ctx.user()?);
    Ok(mm::Cancelled { was_queued })
}

/// A queued player's session closed: they leave the queue.
async fn session_closed(matchmaker: Arc<Matchmaker>, closed: SessionClosed, _: Sdk) {
    if let Some(user) = closed.user_id
        && matchmaker.lock().disconnected(&user)
    {
        info!(%user, reason = %closed.reason, "player left the queue: disconnected");
    }
}

#[cfg(test)]
mod tests {
    use proto::logic::v1::{LogicRequest, logic_client::LogicClient};
    use runtime::Node;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_draining_match_server_queues_nobody() {
        let cluster = format!("match-unit-{}", std::process::id());
        let node_args = |id: &str, seed: &str| {
            let args = [
                "logic-match",
                "--node-id",
                id,
                "--cluster-id",
                &cluster,
                "--cluster-secret",
                "match-unit-test-secret",
                "--seeds",
                seed,
                "--gossip-interval-ms",
                "50",
            ];
            Config::parse_from(args)
        };
        // A node calling the match server as a gateway would.
        let caller_config = node_args("caller", "127.0.0.1:9")
            .node
            .node_config("caller");
        let listeners = Listeners::loopback().await.expect("bind");
        let mut caller = Node::start(caller_config, listeners, |_| {})
            .await
            .expect("caller starts");
        caller.serve(|routes| routes).await.expect("serves");
        let seed = caller.addrs().gossip.to_string();
        let listeners = Listeners::loopback().await.expect("bind");
        let server = start(node_args("match", &seed), listeners)
            .await
            .expect("starts");
        let match_id = server.running.sdk.node_id();
        let members = caller.cluster().clone();
        testkit::eventually(
            "the caller sees the match server",
            Duration::from_secs(5),
            || members.node(&match_id).is_some(),
        )
        .await;

        server.running.sdk.cluster().go_offline().await;
        let channel = caller.mesh().peer_channel(&match_id).expect("a member");
        let request = LogicRequest {
            route: routes::ENQUEUE,
            payload: mm::Enqueue {
                mode: "duel".into(),
            }
            .encode_to_vec()
            .into(),
            session_id: 1,
            user_id: "ann".into(),
            gateway_node: "caller".into(),
            attributes: Default::default(),
        };
        let response = LogicClient::new(channel)
            .handle(request)
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(response.status, errors::NODE_DRAINING);
        assert_eq!(server.matchmaker.lock().waiting(), 0, "nobody was queued");
    }
}
