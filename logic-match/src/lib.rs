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

use bytes::Bytes;
use clap::Parser;
use logic_sdk::{LogicError, LogicServer, Reply, RunningLogic, Sdk};
use mesh::NodeKind;
use prost::Message;
use proto::matchmaking::v1::{self as mm, errors, routes};
use runtime::{Listeners, NodeArgs};
use tokio_util::sync::CancellationToken;
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
}

struct Matchmaker {
    queues: std::sync::Mutex<Queues>,
    collect_timeout: Duration,
    retry: Duration,
}

impl Matchmaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Places a formed match in the background; on failure its players are told and queued
    /// again (at the front) after the retry delay.
    fn spawn_placement(self: &Arc<Self>, sdk: Sdk, mode: String, tickets: Vec<Ticket>) {
        let matchmaker = self.clone();
        tokio::spawn(async move {
            let mut tickets = tickets;
            loop {
                match placement::place(&sdk, &mode, &tickets, matchmaker.collect_timeout).await {
                    Ok(info) => {
                        placement::announce(&sdk, &mode, &tickets, &info).await;
                        matchmaker.lock().placed(&tickets);
                        metrics::counter!("switchyard_match_matches_total", "mode" => mode.clone())
                            .increment(1);
                        return;
                    }
                    Err(placement::NotPlaced(reason)) => {
                        warn!(%mode, players = tickets.len(), %reason, "match not placed; players stay queued");
                        placement::delayed(&sdk, &mode, &tickets, &reason).await;
                        tokio::time::sleep(matchmaker.retry).await;
                        match matchmaker.lock().requeue(&mode, tickets) {
                            Some(again) => tickets = again,
                            None => return,
                        }
                    }
                }
            }
        });
    }
}

/// A started match server.
pub struct MatchServer {
    /// The node and its SDK.
    pub running: RunningLogic,
    matchmaker: Arc<Matchmaker>,
}

impl MatchServer {
    /// Runs until `shutdown`, then drains: the server goes offline, every queue is emptied and
    /// each waiting player is told (`QueueCancelled`, with the reason); matches already being
    /// placed finish within the drain grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let MatchServer {
            running,
            matchmaker,
        } = self;
        let sdk = running.sdk.clone();
        running
            .node
            .run(shutdown, || async move {
                let drained = matchmaker.lock().drain_all();
                let reason = "the match server is shutting down; queue again";
                info!(players = drained.len(), "drain: queues emptied");
                for (mode, ticket) in &drained {
                    let cancelled = mm::QueueCancelled {
                        mode: mode.clone(),
                        reason: reason.to_owned(),
                    };
                    let recipient = logic_sdk::Recipient {
                        user_id: ticket.user.clone(),
                        gateway: ticket.gateway.clone(),
                    };
                    sdk.push_ordered(
                        [recipient],
                        routes::PUSH_QUEUE_CANCELLED,
                        cancelled.encode_to_vec(),
                    );
                }
                // Let the pushes leave before the node does.
                tokio::time::sleep(Duration::from_millis(200)).await;
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
        collect_timeout: Duration::from_millis(config.collect_timeout_ms),
        retry: Duration::from_millis(config.retry_ms),
    });
    {
        let queues = matchmaker.lock();
        for (mode, size) in queues.modes() {
            info!(%mode, size, "mode configured");
        }
    }
    let running = server(matchmaker.clone(), checker)
        .start(node_config, listeners)
        .await?;
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

fn decode<M: Message + Default>(payload: Bytes) -> Result<M, LogicError> {
    M::decode(payload).map_err(|e| LogicError::bad_request(format!("undecodable request: {e}")))
}

fn server(matchmaker: Arc<Matchmaker>, checker: login::Checker) -> LogicServer {
    let (enqueue, cancel) = (matchmaker.clone(), matchmaker.clone());
    LogicServer::new(NodeKind::MATCH)
        .public_route(routes::LOGIN, move |_, payload| {
            let checker = checker.clone();
            async move {
                let request: mm::Login = decode(payload)?;
                let user = checker.check(&request.user_id, &request.token)?;
                Ok(Reply::message(&mm::LoginOk {
                    user_id: user.clone(),
                })
                .login(user))
            }
        })
        .route(routes::ENQUEUE, move |ctx, payload| {
            let matchmaker = enqueue.clone();
            async move {
                let request: mm::Enqueue = decode(payload)?;
                let ticket = Ticket {
                    user: ctx.user()?.to_owned(),
                    gateway: Some(ctx.gateway.clone()),
                };
                let result = matchmaker.lock().enqueue(&request.mode, ticket);
                let (position, formed) = result.map_err(|e| match e {
                    QueueError::UnknownMode => {
                        LogicError::new(errors::UNKNOWN_MODE, "no such mode")
                    }
                    QueueError::AlreadyQueued => {
                        LogicError::new(errors::ALREADY_QUEUED, "already queued")
                    }
                })?;
                metrics::gauge!("switchyard_match_waiting").set(matchmaker.lock().waiting() as f64);
                if let Some(tickets) = formed {
                    matchmaker.spawn_placement(ctx.sdk().clone(), request.mode.clone(), tickets);
                }
                let queued = mm::Queued {
                    mode: request.mode,
                    position: position as u32,
                };
                // Watch the session: a player who disconnects leaves the queue.
                Ok(Reply::message(&queued).watch_session())
            }
        })
        .route(routes::CANCEL, move |ctx, _| {
            let matchmaker = cancel.clone();
            async move {
                let was_queued = matchmaker.lock().cancel(ctx.user()?);
                Ok(Reply::message(&mm::Cancelled { was_queued }))
            }
        })
        .on_session_closed(move |closed, _| {
            let matchmaker = matchmaker.clone();
            async move {
                if let Some(user) = closed.user_id
                    && matchmaker.lock().disconnected(&user)
                {
                    info!(%user, reason = %closed.reason, "player left the queue: disconnected");
                }
            }
        })
}
