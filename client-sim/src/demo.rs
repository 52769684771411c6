//! `client-sim demo`: the matchmaking story. N players log in, queue, are matched and bound to
//! the least-loaded room server, then each sends a room operation every few seconds and prints
//! what it receives. Ends with one summary line (`DEMO OK ...` or `DEMO FAILED ...`).
//!
//! Players hold a [`Session`] given every gateway: when their gateway drains (stopped) they
//! move to another one, when the connection drops they resume, and each such step is printed,
//! as are room migrations and room operations refused while a room server goes away.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use client::{Push, Session, SessionEvent, SessionEvents};
use prost::Message;
use proto::room::v1::{self as room, routes as room_routes};

use crate::player::{Player, Pushes, address};

/// Options of the demo.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// The gateways: `ws://host:port/ws` or `tcp://host:port`, comma separated or the flag
    /// repeated. Players connect to the first that accepts and move to the others when it
    /// goes away.
    #[arg(
        long,
        env = "SWITCHYARD_GATEWAY",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:7000/ws"
    )]
    pub gateway: Vec<String>,
    /// Players in the story (a multiple of the mode's size).
    #[arg(long, default_value_t = 2)]
    pub users: usize,
    /// The match mode to queue for.
    #[arg(long, default_value = "duel")]
    pub mode: String,
    /// Room operations each player sends (0: keep going until interrupted).
    #[arg(long, default_value_t = 3)]
    pub ops: u64,
    /// Time between a player's room operations, in ms.
    #[arg(long, default_value_t = 2_000)]
    pub op_interval_ms: u64,
    /// How long to keep trying to reach a gateway that serves logins, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    /// Appended to every player's name, so two demos can play in one cluster.
    #[arg(long, default_value = "")]
    pub name_suffix: String,
    /// Login secret (when the match server checks tokens).
    #[arg(long, env = "SWITCHYARD_LOGIN_SECRET", hide_env_values = true)]
    pub login_secret: Option<String>,
}

struct Story {
    room_id: String,
    /// The room server the players were matched onto.
    room_node: String,
    /// Where the room ended up after moves (`RoomMigrateComplete`), when it moved.
    moved_to: Option<String>,
    received: usize,
    /// Operations whose `seq` did not follow the previous one's (lost or doubled).
    seq_gaps: usize,
    /// Times the session came back on a new connection.
    reconnects: usize,
}

/// A player's session events told as they come: pushes are handed on, the rest printed.
struct Narrated {
    name: String,
    events: SessionEvents,
    reconnects: usize,
}

impl Pushes for Narrated {
    async fn next_push(&mut self) -> Option<Push> {
        let name = &self.name;
        loop {
            match self.events.next().await? {
                SessionEvent::Push(push) => return Some(push),
                SessionEvent::Connected {
                    address,
                    reconnect: true,
                    resumed,
                } => {
                    self.reconnects += 1;
                    if resumed {
                        println!(
                            "[{name}] reconnected to {address}: session resumed, no push lost"
                        );
                    } else {
                        println!(
                            "[{name}] reconnected to {address}: session resumed, some pushes were lost"
                        );
                    }
                }
                SessionEvent::Connected { .. } => {}
                SessionEvent::Offline { grace, moving } => {
                    let next = if moving {
                        "migrating now"
                    } else {
                        "staying until it moves us"
                    };
                    println!("[{name}] gateway going offline (grace {grace:?}): {next}");
                }
                SessionEvent::MoveSuggested { moving } => {
                    let next = if moving {
                        "moving now"
                    } else {
                        "staying for now"
                    };
                    println!("[{name}] most of our room is on another gateway: {next}");
                }
                SessionEvent::Kicked { code, reason } => {
                    println!("[{name}] kicked by the gateway: {reason} ({code})");
                }
                SessionEvent::Disconnected {
                    reconnect: true,
                    reason,
                } => println!("[{name}] disconnected ({reason}): reconnecting"),
                SessionEvent::Disconnected { reason, .. } => {
                    println!("[{name}] disconnected for good: {reason}");
                    return None;
                }
                SessionEvent::Unsolicited(_) => {}
            }
        }
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let names: Vec<String> = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    ]
    .iter()
    .cycle()
    .take(args.users)
    .enumerate()
    .map(|(i, n)| {
        let suffix = &args.name_suffix;
        if i < 10 {
            format!("{n}{suffix}")
        } else {
            format!("{n}{}{suffix}", i / 10)
        }
    })
    .collect();
    println!(
        "demo: {} players, mode {}, gateways {}",
        names.len(),
        args.mode,
        args.gateway.join(", ")
    );
    let mut tasks = Vec::new();
    for name in names.clone() {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let result = play(&args, &name).await;
            if let Err(error) = &result {
                println!("[{name}] failed: {error:#}");
            }
            result
        }));
    }
    let mut stories = Vec::new();
    for task in tasks {
        if let Ok(Ok(story)) = task.await {
            stories.push(story);
        }
    }
    let rooms: BTreeSet<(&str, &str, Option<&str>)> = stories
        .iter()
        .map(|s| {
            (
                s.room_id.as_str(),
                s.room_node.as_str(),
                s.moved_to.as_deref(),
            )
        })
        .collect();
    let complete =
        stories.len() == names.len() && (args.ops == 0 || stories.iter().all(|s| s.received > 0));
    let summary = rooms
        .iter()
        .map(|(room, node, moved)| match moved {
            Some(to) => format!("{room} on {node} (moved to {to})"),
            None => format!("{room} on {node}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if complete {
        let received: Vec<String> = stories.iter().map(|s| s.received.to_string()).collect();
        let reconnects: usize = stories.iter().map(|s| s.reconnects).sum();
        let gaps: usize = stories.iter().map(|s| s.seq_gaps).sum();
        println!(
            "DEMO OK: {} players matched into {} room(s): {summary}; operations received per player: {}; reconnections: {reconnects}; seq gaps: {gaps}",
            stories.len(),
            rooms.len(),
            received.join(",")
        );
        Ok(())
    } else {
        println!(
            "DEMO FAILED: {} of {} players finished; rooms: {summary}",
            stories.len(),
            names.len()
        );
        bail!("the demo did not complete")
    }
}

async fn play(args: &DemoArgs, name: &str) -> anyhow::Result<Story> {
    let addresses = args
        .gateway
        .iter()
        .map(|a| address(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let narrated = |events| Narrated {
        name: name.to_owned(),
        events,
        reconnects: 0,
    };
    let secret = args.login_secret.as_deref();
    let mut player = loop {
        match Player::<Session, _>::login_session(&addresses, name, secret, narrated).await {
            Ok(player) => break player,
            Err(error) if Instant::now() < deadline => {
                println!("[{name}] waiting for the cluster: {error:#}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => return Err(error),
        }
    };
    println!("[{name}] logged in");
    let queued = loop {
        match player.enqueue(&args.mode).await {
            Ok(queued) => break queued,
            Err(error) if Instant::now() < deadline => {
                println!("[{name}] waiting for a match server: {error:#}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => return Err(error),
        }
    };
    println!(
        "[{name}] queued for {} (position {})",
        queued.mode, queued.position
    );
    let found = player
        .match_found(Duration::from_secs(args.wait_secs), |reason| {
            println!("[{name}] match delayed: {reason}")
        })
        .await?;
    println!(
        "[{name}] matched: room {} on {} with {}",
        found.room_id,
        found.room_node,
        found.members.join(", ")
    );

    let members = found.members.len().max(1);
    let expected = if args.ops == 0 {
        usize::MAX
    } else {
        members * args.ops as usize
    };
    let mut sent = 0u64;
    let mut received = 0usize;
    let mut last_seq = None;
    let mut seq_gaps = 0;
    let mut room_node = found.room_node.clone();
    let mut moved_to = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(args.op_interval_ms.max(10)));
    let quiet_limit = Duration::from_millis(args.op_interval_ms.max(10) * 3 + 5_000);
    let mut last_event = Instant::now();
    while received < expected {
        tokio::select! {
            // Pushes already here first: the story is told in the order things happened
            // (a room's move before the operations sent after it).
            biased;
            push = player.events.next_push() => {
                let push = push.context("disconnected during the match")?;
                last_event = Instant::now();
                match push.route {
                    room_routes::PUSH_OP => {
                        let op = room::RoomOpEvent::decode(push.payload)?;
                        received += 1;
                        println!("[{name}] received seq {} from {}: {:?}", op.seq, op.from, String::from_utf8_lossy(&op.payload));
                        if last_seq.is_some_and(|last: u64| op.seq != last + 1) {
                            seq_gaps += 1;
                            println!("[{name}] seq jumped from {} to {}", last_seq.unwrap_or(0), op.seq);
                        }
                        last_seq = Some(op.seq);
                    }
                    room_routes::PUSH_MEMBER_LEFT => {
                        let event = room::MemberEvent::decode(push.payload)?;
                        println!("[{name}] {} left the room ({})", event.user_id, event.reason);
                    }
                    room_routes::PUSH_OWNER_CHANGED => {
                        let event = room::OwnerChanged::decode(push.payload)?;
                        println!("[{name}] the room's owner is now {}", event.owner);
                    }
                    room_routes::PUSH_ROOM_CLOSED => {
                        println!("[{name}] the room was closed");
                    }
                    room_routes::PUSH_ROOM_MIGRATE_START => {
                        let event = room::RoomMigrateStart::decode(push.payload)?;
                        println!("[{name}] room {} moving from {}: operations wait for the move", event.room_id, event.from_node);
                    }
                    room_routes::PUSH_ROOM_MIGRATE_COMPLETE => {
                        let event = room::RoomMigrateComplete::decode(push.payload)?;
                        if event.success {
                            let seq = last_seq.map_or_else(|| "no operation yet".to_owned(), |s| format!("last seq {s}"));
                            println!("[{name}] room {} moved from {room_node} to {} (same room id, seq continues; {seq})", event.room_id, event.node_id);
                            room_node = event.node_id.clone();
                            moved_to = Some(event.node_id);
                        } else {
                            println!("[{name}] room {} move failed; it stays on {room_node}", event.room_id);
                        }
                    }
                    _ => {}
                }
            }
            _ = ticker.tick(), if args.ops == 0 || sent < args.ops => {
                sent += 1;
                let move_text = format!("{name} move {sent}");
                // A room server going away refuses (or drops) an operation: told, not fatal.
                match player.room_op(&found.room_id, Bytes::from(move_text.clone())).await {
                    Ok(response) if response.is_ok() => {
                        let seq = room::OpAccepted::decode(response.payload).map(|a| a.seq).unwrap_or(0);
                        println!("[{name}] sent {move_text:?} (seq {seq})");
                    }
                    Ok(response) => {
                        println!("[{name}] operation refused: {} ({})", response.error, response.status);
                    }
                    Err(error) => println!("[{name}] operation failed: {error:#}"),
                }
            }
            _ = tokio::time::sleep(quiet_limit.saturating_sub(last_event.elapsed())) => {
                println!("[{name}] no more operations arrived");
                break;
            }
        }
    }
    // A player who is done says goodbye: the session ends at once, nothing is held for a resume.
    player.client.close().await;
    Ok(Story {
        room_id: found.room_id,
        room_node: found.room_node,
        moved_to,
        received,
        seq_gaps,
        reconnects: player.events.reconnects,
    })
}
