//! Rooms and matches under stress, as real processes: room limits that keep every broadcast
//! deliverable, routing by room id, rooms moving between servers (drain, owner's request, a
//! target that dies), and the drain order of room and match servers.

mod support;

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use prost::Message;
use proto::{
    matchmaking::v1::{self as mm, routes as match_routes},
    room::v1::{self as room, errors as room_errors, routes as room_routes},
};
use support::*;
use tokio::task::JoinSet;

/// The default `--max-op-bytes` of logic-room.
const MAX_OP_BYTES: usize = 64 * 1024;

/// Sends a room operation of `size` bytes; the response status.
async fn op_of_size(player: &Player, room_id: &str, size: usize) -> u32 {
    let op = room::RoomOp {
        room_id: room_id.to_owned(),
        payload: Bytes::from(vec![b'x'; size]),
    };
    let response = player
        .client
        .request(room_routes::OP, op.encode_to_vec())
        .await
        .expect("answered");
    response.status
}

/// The payload size that makes a room operation's request frame `frame` bytes long.
fn op_size_for_frame(room_id: &str, frame: usize) -> usize {
    let frame_len = |size: usize| {
        let op = room::RoomOp {
            room_id: room_id.to_owned(),
            payload: Bytes::from(vec![b'x'; size]),
        };
        let request = proto::client::v1::Envelope {
            kind: proto::client::v1::Kind::Request as i32,
            route: room_routes::OP,
            msg_id: 1,
            payload: op.encode_to_vec().into(),
            ..Default::default()
        };
        request.encoded_len()
    };
    let mut size = frame;
    while frame_len(size) > frame {
        size -= frame_len(size) - frame;
    }
    size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_operation_over_the_limit_is_refused_and_no_member_is_disconnected() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let _room = sandbox.start("logic-room", "room", &[]);
    let _matcher = sandbox.start("logic-match", "match", &[]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    // Every member on TCP: a frame over the client limit would end their connection.
    let mut players = Vec::new();
    for name in ["tcp-a", "tcp-b", "tcp-c"] {
        players.push(Player::login(client_address(&gateway, false), name).await);
    }
    let room_id = players[0].create_room().await.room_id;
    for player in &players[1..] {
        player.join_room(&room_id).await;
    }

    // A request just under the gateway's 1 MiB frame limit: the gateway takes it, and its
    // broadcast would be a little larger than a client frame; the room refuses it.
    let just_under_the_frame_limit = op_size_for_frame(&room_id, 1024 * 1024 - 8);
    assert_eq!(
        op_of_size(&players[0], &room_id, just_under_the_frame_limit).await,
        room_errors::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        op_of_size(&players[1], &room_id, MAX_OP_BYTES + 1).await,
        room_errors::PAYLOAD_TOO_LARGE
    );
    let oversized = room::SetProperties {
        room_id: room_id.clone(),
        properties: HashMap::from([("big".to_owned(), "v".repeat(5000))]),
    };
    let response = players[2]
        .client
        .request(room_routes::SET_PROPERTIES, oversized.encode_to_vec())
        .await
        .expect("answered");
    assert_eq!(response.status, room_errors::PAYLOAD_TOO_LARGE);

    // An operation at the limit reaches every member, and the refusals took no place in the
    // room's order; `ops_seen` fails if anyone was disconnected or kicked.
    assert_eq!(op_of_size(&players[2], &room_id, MAX_OP_BYTES).await, 0);
    players[1].op(&room_id, "still here").await;
    for player in &mut players {
        let seen = player.ops_seen(2).await;
        assert_eq!(seen[0].0, 1);
        assert_eq!(
            seen[0].1.len(),
            MAX_OP_BYTES,
            "{} got the full op",
            player.name
        );
        assert_eq!(seen[1], (2, "still here".to_owned()), "{}", player.name);
    }
}

/// Acceptance 3: room server r1 drains (SIGTERM) with ten rooms under traffic. Every room
/// continues on r2 with the same id, members, owner and properties; members see
/// RoomMigrateStart then RoomMigrateComplete; every operation sent (pipelined, before, during
/// and after the move) is applied once, in the order sent, with no gap in the room's seq; r1
/// exits well within its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_room_server_moves_every_room_under_traffic_without_losing_an_op() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let leaving = sandbox.start("logic-room", "r1", &[]);
    let _matcher = sandbox.start("logic-match", "match", &[]);
    wait_for_members(&gateway, &["gw", "r1", "match"]).await;
    // Twenty players in ten rooms, all on r1 (the only room server so far).
    let mut rooms = Vec::new();
    for n in 0..10 {
        let owner = Player::login(client_address(&gateway, n % 2 == 0), &format!("own-{n}")).await;
        let guest = Player::login(client_address(&gateway, n % 2 == 1), &format!("gst-{n}")).await;
        let info = owner.create_room().await;
        assert_eq!(info.node_id, "r1");
        guest.join_room(&info.room_id).await;
        let map = format!("map-{n}");
        set_property(&owner, &info.room_id, "map", &map).await;
        rooms.push((info.room_id, owner, guest));
    }
    let _staying = sandbox.start("logic-room", "r2", &[]);
    wait_for_members(&gateway, &["r2"]).await;

    // Each owner sends operations, four in flight at a time, until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = JoinSet::new();
    let mut watchers = Vec::new();
    for (room_id, owner, guest) in rooms {
        let (stop, id) = (stop.clone(), room_id.clone());
        senders.spawn(async move {
            let sent = send_until(&owner, &id, &stop).await;
            (id, owner, sent)
        });
        watchers.push((room_id, guest));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    leaving.signal(Signal::SIGTERM);
    let signalled = std::time::Instant::now();
    let exited = tokio::task::spawn_blocking(move || {
        let mut leaving = leaving;
        let status = leaving.child.wait().expect("wait");
        (status, signalled.elapsed())
    });
    let (status, took) = exited.await.expect("r1 exits");
    assert!(status.success(), "r1 exit: {status:?}");
    assert!(
        took < Duration::from_secs(8),
        "r1 took {took:?} to drain (grace 10 s)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();

    let mut sent_by_room = HashMap::new();
    let mut owners = Vec::new();
    while let Some(done) = senders.join_next().await {
        let (room_id, owner, sent) = done.expect("sender");
        sent_by_room.insert(room_id.clone(), sent);
        owners.push((room_id, owner));
    }
    for (room_id, mut player) in owners.into_iter().chain(watchers) {
        let sent = &sent_by_room[&room_id];
        let seen = room_story(&mut player, &room_id, sent.len()).await;
        // Every operation once, in the order sent, numbered without a gap.
        let payloads: Vec<String> = seen.ops.iter().map(|(_, p)| p.clone()).collect();
        let expected: Vec<String> = (0..sent.len()).map(|k| k.to_string()).collect();
        if let Some(at) = (0..expected.len()).find(|&i| payloads[i] != expected[i]) {
            let window = at.saturating_sub(2)..(at + 3).min(expected.len());
            panic!(
                "{} in {room_id}: saw {:?} where {:?} was sent",
                player.name,
                &payloads[window.clone()],
                &expected[window]
            );
        }
        let first = seen.ops[0].0;
        for (i, (seq, _)) in seen.ops.iter().enumerate() {
            assert_eq!(*seq, first + i as u64, "{}: seq gap", player.name);
        }
        let accepted: Vec<u64> = sent.clone();
        let seqs: Vec<u64> = seen.ops.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs, accepted,
            "{}: the seqs the sender was told",
            player.name
        );
        assert_eq!(
            seen.moves,
            vec!["start".to_owned(), "complete r2".to_owned()],
            "{}",
            player.name
        );
        // The room as it was, on r2.
        let info = members(&player, &room_id).await;
        assert_eq!(info.node_id, "r2");
        let n = room_id_index(&info);
        assert_eq!(info.owner, format!("own-{n}"));
        assert_eq!(info.members, vec![format!("own-{n}"), format!("gst-{n}")]);
        assert_eq!(info.properties.get("map"), Some(&format!("map-{n}")));
    }
}

/// The index `n` of a room whose owner is `own-n`.
fn room_id_index(info: &room::RoomInfo) -> String {
    info.owner.trim_start_matches("own-").to_owned()
}

async fn set_property(player: &Player, room_id: &str, key: &str, value: &str) {
    let request = room::SetProperties {
        room_id: room_id.to_owned(),
        properties: [(key.to_owned(), value.to_owned())].into(),
    };
    let response = player
        .client
        .request(room_routes::SET_PROPERTIES, request.encode_to_vec())
        .await
        .expect("answered");
    assert!(response.is_ok(), "{response:?}");
}

async fn members(player: &Player, room_id: &str) -> room::RoomInfo {
    let request = room::RoomRef {
        room_id: room_id.to_owned(),
    };
    let response = player
        .client
        .request(room_routes::MEMBERS, request.encode_to_vec())
        .await
        .expect("answered");
    assert!(response.is_ok(), "{} members: {response:?}", player.name);
    room::RoomInfo::decode(response.payload).expect("decodes")
}

/// Sends operations "0", "1", ... four in flight at a time until `stop`; the seq each was
/// given, in the order sent (every one must be accepted).
async fn send_until(
    player: &Player,
    room_id: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<u64> {
    use futures::StreamExt;
    let ops = futures::stream::iter(0..)
        .take_while(|_| std::future::ready(!stop.is_cancelled()))
        .map(|k| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            player.try_op(room_id, &k.to_string()).await
        })
        .buffered(4);
    futures::pin_mut!(ops);
    let mut seqs = Vec::new();
    while let Some(response) = ops.next().await {
        assert!(
            response.is_ok(),
            "{} op {}: {response:?}",
            player.name,
            seqs.len()
        );
        seqs.push(
            room::OpAccepted::decode(response.payload)
                .expect("decodes")
                .seq,
        );
    }
    seqs
}

/// What a member saw of a room: its operations (seq, payload) and its moves, in order.
struct Story {
    ops: Vec<(u64, String)>,
    moves: Vec<String>,
}

/// Reads a member's pushes until `ops` operations of `room_id` arrived.
async fn room_story(player: &mut Player, room_id: &str, ops: usize) -> Story {
    let mut story = Story {
        ops: Vec::new(),
        moves: Vec::new(),
    };
    while story.ops.len() < ops {
        let event = tokio::time::timeout(Duration::from_secs(10), player.events.next())
            .await
            .unwrap_or_else(|_| panic!("{}: saw {} of {ops} ops", player.name, story.ops.len()));
        let Some(client::Event::Push(push)) = event else {
            assert!(event.is_some(), "{}: events ended", player.name);
            continue;
        };
        match push.route {
            room_routes::PUSH_OP => {
                let op = room::RoomOpEvent::decode(push.payload).expect("decodes");
                assert_eq!(op.room_id, room_id);
                story
                    .ops
                    .push((op.seq, String::from_utf8_lossy(&op.payload).into_owned()));
            }
            room_routes::PUSH_ROOM_MIGRATE_START => {
                let start = room::RoomMigrateStart::decode(push.payload).expect("decodes");
                assert_eq!(start.room_id, room_id);
                story.moves.push("start".into());
            }
            room_routes::PUSH_ROOM_MIGRATE_COMPLETE => {
                let done = room::RoomMigrateComplete::decode(push.payload).expect("decodes");
                assert_eq!(done.room_id, room_id);
                assert!(done.success, "{done:?}");
                story.moves.push(format!("complete {}", done.node_id));
            }
            _ => {}
        }
    }
    story
}

/// Acceptance 4: only the owner may move a room. A member's request is refused with
/// NOT_THE_OWNER; the owner's moves the room to the other server, answered with the room there,
/// and both members go on in it there, seq continuing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_moves_a_room_and_its_members_follow() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let _r1 = sandbox.start("logic-room", "r1", &[]);
    let _r2 = sandbox.start("logic-room", "r2", &[]);
    let _matcher = sandbox.start("logic-match", "match", &[]);
    wait_for_members(&gateway, &["gw", "r1", "r2", "match"]).await;
    let mut owner = Player::login(client_address(&gateway, true), "owner").await;
    let mut guest = Player::login(client_address(&gateway, false), "guest").await;
    let info = owner.create_room().await;
    let (room_id, before) = (info.room_id, info.node_id);
    guest.join_room(&room_id).await;
    assert_eq!(owner.op(&room_id, "0").await, 1);

    let ask = |player: &Player| {
        let request = room::RoomRef {
            room_id: room_id.clone(),
        };
        let client = player.client.clone();
        async move {
            client
                .request(room_routes::MIGRATE, request.encode_to_vec())
                .await
                .expect("answered")
        }
    };
    let refused = ask(&guest).await;
    assert_eq!(refused.status, room_errors::NOT_THE_OWNER, "{refused:?}");
    let moved = ask(&owner).await;
    assert!(moved.is_ok(), "{moved:?}");
    let there = room::RoomInfo::decode(moved.payload).expect("decodes");
    assert_ne!(there.node_id, before, "the room moved");
    assert_eq!(there.room_id, room_id, "and kept its id");

    assert_eq!(guest.op(&room_id, "1").await, 2);
    assert_eq!(owner.op(&room_id, "2").await, 3);
    for player in [&mut owner, &mut guest] {
        let story = room_story(player, &room_id, 3).await;
        assert_eq!(
            story.moves,
            vec!["start".to_owned(), format!("complete {}", there.node_id)]
        );
        assert_eq!(
            story.ops,
            vec![(1, "0".into()), (2, "1".into()), (3, "2".into())]
        );
        assert_eq!(members(player, &room_id).await.node_id, there.node_id);
    }
}

/// Room ids name no server, and requests go to the room's host: a member of rooms on two
/// servers acts in both, a non-member is told NOT_A_MEMBER (not ROOM_NOT_FOUND), and a made-up
/// room id is ROOM_NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_rooms_host_whichever_server_a_user_is_bound_to() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let r1 = sandbox.start("logic-room", "r1", &[]);
    let _matcher = sandbox.start("logic-match", "match", &[]);
    wait_for_members(&gateway, &["gw", "r1", "match"]).await;
    let ann = Player::login(client_address(&gateway, true), "ann").await;
    let bob = Player::login(client_address(&gateway, false), "bob").await;
    let cy = Player::login(client_address(&gateway, true), "cy").await;
    let first = ann.create_room().await;
    assert_eq!(first.node_id, "r1");
    assert!(!first.room_id.contains('@'), "{}", first.room_id);
    let r2 = sandbox.start("logic-room", "r2", &[]);
    wait_for_members(&gateway, &["r2"]).await;
    wait_for_members(&r1, &["r2"]).await;
    // r2 asks r1 where r1's rooms are: it must know r1.
    wait_for_members(&r2, &["r1"]).await;
    // r2 is emptier (once the gateway sees ann in r1): bob's room goes there.
    eventually(
        "the gateway sees r1's member",
        Duration::from_secs(10),
        || {
            gateway.nodes()["nodes"].as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["id"] == "r1" && n["load"]["sessions"].as_u64() >= Some(1))
            })
        },
    )
    .await;
    let second = bob.create_room().await;
    assert_eq!(second.node_id, "r2");

    // ann, bound to r1 first, joins the room on r2 and acts in both.
    ann.join_room(&second.room_id).await;
    assert_eq!(ann.op(&first.room_id, "in r1").await, 1);
    assert_eq!(ann.op(&second.room_id, "in r2").await, 1);
    assert_eq!(bob.op(&second.room_id, "me too").await, 2);

    // cy is in no room: a member's request is refused as such, on both servers' rooms.
    for room_id in [&first.room_id, &second.room_id] {
        let refused = cy.try_op(room_id, "let me in").await;
        assert_eq!(refused.status, room_errors::NOT_A_MEMBER, "{refused:?}");
    }
    let nowhere = cy.try_op("0123456789abcdef", "anyone?").await;
    assert_eq!(nowhere.status, room_errors::ROOM_NOT_FOUND, "{nowhere:?}");
}

/// Acceptance 7: the target of a room's move is paused (SIGSTOP) when the move begins, then
/// killed: the source asks it again until the membership declares it gone, then moves the room
/// to the next server. The room survives exactly once, on r3, with its members and seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_survives_exactly_once_when_its_target_dies_mid_move() {
    let mut sandbox = Sandbox::new();
    let detection = ["--failure-detection-ms", "1000"];
    let gateway = sandbox.gateway_with("gw", &detection);
    let source = sandbox.start("logic-room", "r1", &detection);
    let _matcher = sandbox.start("logic-match", "match", &detection);
    wait_for_members(&gateway, &["gw", "r1", "match"]).await;
    let mut owner = Player::login(client_address(&gateway, true), "owner").await;
    let mut guest = Player::login(client_address(&gateway, false), "guest").await;
    let room_id = owner.create_room().await.room_id;
    guest.join_room(&room_id).await;
    assert_eq!(owner.op(&room_id, "0").await, 1);
    // Two empty servers: r2 ranks first (the node id breaks the tie), so it is the target.
    let doomed = sandbox.start("logic-room", "r2", &detection);
    let _r3 = sandbox.start("logic-room", "r3", &detection);
    wait_for_members(&gateway, &["r2", "r3"]).await;
    wait_for_members(&source, &["r2", "r3"]).await;

    doomed.stop();
    source.signal(Signal::SIGTERM);
    // The guest's op, sent while the room is moving, is held and applied after the move.
    let held = guest.try_op(&room_id, "1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    doomed.signal(Signal::SIGKILL);
    let held = held.await;
    assert!(held.is_ok(), "{held:?}");
    for player in [&mut owner, &mut guest] {
        let story = room_story(player, &room_id, 2).await;
        assert_eq!(
            story.moves,
            vec!["start".to_owned(), "complete r3".to_owned()],
            "{}",
            player.name
        );
        assert_eq!(
            story.ops,
            vec![(1, "0".into()), (2, "1".into())],
            "{}",
            player.name
        );
    }
    assert_eq!(owner.op(&room_id, "2").await, 3);
    let info = members(&guest, &room_id).await;
    assert_eq!(info.node_id, "r3");
    assert_eq!(info.members, vec!["owner".to_owned(), "guest".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_whose_match_waits_for_a_room_server_are_told_when_the_match_server_drains() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let matcher = sandbox.start(
        "logic-match",
        "match",
        &["--modes", "duel=2", "--retry-ms", "300"],
    );
    wait_for_members(&gateway, &["gw", "match"]).await;
    let mut a = Player::login(client_address(&gateway, true), "wait-a").await;
    let mut b = Player::login(client_address(&gateway, false), "wait-b").await;
    a.enqueue("duel").await;
    b.enqueue("duel").await;
    // No room server: the match is formed but waits, being retried.
    a.push(match_routes::PUSH_MATCH_DELAYED).await;

    matcher.signal(Signal::SIGTERM);
    for player in [&mut a, &mut b] {
        let cancelled =
            mm::QueueCancelled::decode(player.push(match_routes::PUSH_QUEUE_CANCELLED).await)
                .expect("decodes");
        assert_eq!(cancelled.mode, "duel", "{}", player.name);
        assert_eq!(
            cancelled.reason,
            "the match server is shutting down; queue again"
        );
    }
    eventually("the match server left", Duration::from_secs(10), || {
        !gateway.nodes()["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == "match"))
    })
    .await;
}

/// A room server killed outright (kill -9) cannot tell anyone: the wills it left with the
/// gateway do. Within the failure-detection time every member is unbound from it and receives
/// RoomClosed (server failed), in that order, so a new room request goes to a live server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_killed_room_server_are_told_their_rooms_closed() {
    let mut sandbox = Sandbox::new();
    let detection = ["--failure-detection-ms", "1000"];
    let gateway = sandbox.gateway_with("gw", &detection);
    let doomed = sandbox.start("logic-room", "r1", &detection);
    let _matcher = sandbox.start("logic-match", "match", &detection);
    wait_for_members(&gateway, &["gw", "r1", "match"]).await;
    let mut players = Vec::new();
    for n in 0..4 {
        players.push(Player::login(client_address(&gateway, n % 2 == 0), &format!("p{n}")).await);
    }
    // Two rooms on r1: p0 and p1 in one, p2 and p3 in the other; p0 also in the second, so
    // a member of two rooms is told of both.
    let first = players[0].create_room().await.room_id;
    players[1].join_room(&first).await;
    let second = players[2].create_room().await.room_id;
    players[3].join_room(&second).await;
    players[0].join_room(&second).await;
    // p3 leaves its room: it is told nothing when the server dies.
    let leave = room::LeaveRoom {
        room_id: second.clone(),
    };
    let left = players[3]
        .client
        .request(room_routes::LEAVE, leave.encode_to_vec())
        .await
        .expect("answered");
    assert!(left.is_ok(), "{left:?}");
    let _survivor = sandbox.start("logic-room", "r2", &detection);
    wait_for_members(&gateway, &["gw", "r1", "r2", "match"]).await;

    doomed.signal(Signal::SIGKILL);
    let killed = std::time::Instant::now();
    let expected: [&[&String]; 3] = [&[&first, &second], &[&first], &[&second]];
    for (player, rooms) in players.iter_mut().zip(expected) {
        let mut closed = Vec::new();
        while closed.len() < rooms.len() {
            let event = room::RoomClosed::decode(player.push(room_routes::PUSH_ROOM_CLOSED).await)
                .expect("decodes");
            assert_eq!(event.reason, logic_room::SERVER_FAILED);
            closed.push(event.room_id);
        }
        closed.sort();
        let mut rooms: Vec<String> = rooms.iter().map(|r| (*r).clone()).collect();
        rooms.sort();
        assert_eq!(
            closed, rooms,
            "{} is told of each of its rooms once",
            player.name
        );
    }
    // Within the failure-detection time (1 s) and the gossip that carries it.
    let told_after = killed.elapsed();
    assert!(
        told_after < Duration::from_secs(5),
        "told after {told_after:?}"
    );
    // Unbound before being told: the next room request reaches the surviving server.
    for player in &players[..3] {
        let fresh = player.create_room().await;
        assert_eq!(fresh.node_id, "r2", "{} created {fresh:?}", player.name);
    }
    // p3, who had left, got no RoomClosed.
    let mut p3 = players.pop().expect("p3");
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match p3.events.next().await {
                Some(client::Event::Push(push)) if push.route == room_routes::PUSH_ROOM_CLOSED => {
                    return push;
                }
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(extra.is_err(), "a member who left was told: {extra:?}");
}

/// A drain asked for through the admin API keeps a room server's rooms while players finish
/// (no new rooms there meanwhile), and cancelling it returns the server to service with every
/// room as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_room_server_drain_keeps_its_rooms() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let token = ["--admin-token", "sesame"];
    let rooms = sandbox.start("logic-room", "room", &token);
    let _matcher = sandbox.start("logic-match", "match", &[]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    let mut host = Player::login(client_address(&gateway, false), "host").await;
    let room_id = host.create_room().await.room_id;

    let drain =
        |method: &str, path: &str| testkit::http_request(rooms.admin, method, path, Some("sesame"));
    let (status, body) = drain("POST", "/admin/drain?grace_ms=30000");
    assert_eq!(status, 200, "{body}");
    wait_for_state(&gateway, "room", "offline").await;
    // The room goes on; a new room has nowhere to go.
    assert!(host.try_op(&room_id, "still here").await.is_ok());
    let guest = Player::login(client_address(&gateway, true), "guest").await;
    let refused = guest.try_create_room().await;
    assert!(
        !refused.is_ok(),
        "a room was placed on a draining server: {refused:?}"
    );

    let (status, body) = drain("POST", "/admin/undrain");
    assert_eq!(status, 200, "{body}");
    wait_for_state(&gateway, "room", "online").await;
    guest.join_room(&room_id).await;
    assert_eq!(host.ops_seen(1).await.len(), 1);
    assert_eq!(guest.create_room().await.node_id, "room");
    let (_, body) = drain("GET", "/admin/drain");
    assert!(body.contains("\"online\""), "{body}");
}

/// Affinity: a member joining a room whose members are on another gateway is moved there
/// (through the resume path: no new login, no push lost), so a broadcast crosses one gateway;
/// with affinity off (`--affinity-max-per-gateway 0`) it stays where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_a_room_moves_to_the_gateway_holding_most_of_it() {
    for affinity in ["64", "0"] {
        let mut sandbox = Sandbox::new();
        let a = sandbox.gateway("gw-a");
        let b = sandbox.gateway("gw-b");
        let flags = ["--affinity-max-per-gateway", affinity];
        let _rooms = sandbox.start("logic-room", "r1", &flags);
        let _matcher = sandbox.start("logic-match", "match", &[]);
        wait_for_members(&a, &["gw-a", "gw-b", "r1", "match"]).await;
        wait_for_members(&b, &["gw-a", "gw-b", "r1", "match"]).await;
        let ann = Player::login(client_address(&a, false), "ann").await;
        let bob = Player::login(client_address(&a, true), "bob").await;
        let room_id = ann.create_room().await.room_id;
        bob.join_room(&room_id).await;

        let (dan, mut events) = client::Session::connect(
            [client_address(&b, false)],
            client::SessionConfig::default(),
        )
        .await
        .expect("connects");
        let login = mm::Login {
            user_id: "dan".into(),
            token: String::new(),
        };
        let answer = dan
            .request(match_routes::LOGIN, login.encode_to_vec())
            .await
            .expect("answered");
        assert!(answer.is_ok(), "{answer:?}");
        let join = room::JoinRoom {
            room_id: room_id.clone(),
        };
        let joined = dan
            .request(room_routes::JOIN, join.encode_to_vec())
            .await
            .expect("answered");
        assert!(joined.is_ok(), "{joined:?}");

        let moved = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match events.next().await {
                    Some(client::SessionEvent::Connected {
                        reconnect: true,
                        address,
                        resumed,
                    }) => return (address, resumed),
                    Some(_) => {}
                    None => panic!("dan's session ended"),
                }
            }
        })
        .await;
        if affinity == "0" {
            assert!(moved.is_err(), "affinity off: dan stays on gw-b: {moved:?}");
        } else {
            let (address, resumed) = moved.expect("dan moves");
            assert_eq!(
                address,
                client_address(&a, false),
                "to gw-a, where ann and bob are"
            );
            assert!(resumed, "nothing lost on the way");
        }
        // Either way dan is in the room and acts in it.
        let op = room::RoomOp {
            room_id: room_id.clone(),
            payload: Bytes::from_static(b"hello"),
        };
        let sent = dan
            .request(room_routes::OP, op.encode_to_vec())
            .await
            .expect("answered");
        assert!(sent.is_ok(), "{sent:?}");
        dan.close().await;
        if affinity == "0" {
            continue;
        }
        // A plain client is told, not moved: it is served where it is until it asks, and its
        // MIGRATE goes to the gateway suggested.
        let mut ed = Player::login(client_address(&b, false), "ed").await;
        ed.join_room(&room_id).await;
        let told = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if let Some(client::Event::MoveSuggested) = ed.events.next().await {
                    return;
                }
            }
        })
        .await;
        assert!(told.is_ok(), "ed was told to move");
        assert!(ed.try_op(&room_id, "still on gw-b").await.is_ok());
        let asked = ed.client.migrate().await.expect("answered");
        assert!(asked.is_ok(), "{asked:?}");
        let a_tcp = client_address(&a, false).to_string();
        let addresses = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if let Some(client::Event::MigrateTo { addresses, .. }) = ed.events.next().await {
                    return addresses;
                }
            }
        })
        .await
        .expect("told where to go");
        assert!(addresses.contains(&a_tcp), "to gw-a: {addresses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_held_by_a_killed_gateway_leave_their_rooms_after_the_grace_unless_they_came_back()
{
    let mut sandbox = Sandbox::new();
    let detection = ["--failure-detection-ms", "1000"];
    let survivor = sandbox.gateway_with("gw1", &detection);
    let doomed = sandbox.gateway_with("gw2", &detection);
    let grace = [
        "--failure-detection-ms",
        "1000",
        "--gateway-grace-ms",
        "1500",
    ];
    let _rooms = sandbox.start("logic-room", "r1", &grace);
    let _matcher = sandbox.start("logic-match", "match", &grace);
    wait_for_members(&survivor, &["gw1", "gw2", "r1", "match"]).await;
    let mut host = Player::login(client_address(&survivor, true), "host").await;
    let room_id = host.create_room().await.room_id;
    // Two players through gw2: `ghost` never comes back, `back` logs in again through gw1
    // and acts in the room within the grace.
    let ghost = Player::login(client_address(&doomed, true), "ghost").await;
    ghost.join_room(&room_id).await;
    let back = Player::login(client_address(&doomed, true), "back").await;
    back.join_room(&room_id).await;

    doomed.signal(Signal::SIGKILL);
    let killed = std::time::Instant::now();
    let back = Player::login(client_address(&survivor, true), "back").await;
    back.op(&room_id, "still here").await;

    let left =
        room::MemberEvent::decode(host.push(room_routes::PUSH_MEMBER_LEFT).await).expect("decodes");
    assert_eq!(
        (left.user_id.as_str(), left.reason.as_str()),
        ("ghost", "gateway lost")
    );
    // After the failure detection (1 s, plus gossip) and the grace (1.5 s).
    assert!(
        killed.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        killed.elapsed()
    );
    let members = host
        .client
        .request(
            room_routes::MEMBERS,
            room::RoomRef {
                room_id: room_id.clone(),
            }
            .encode_to_vec(),
        )
        .await
        .expect("answered");
    let members = room::RoomInfo::decode(members.payload)
        .expect("decodes")
        .members;
    assert_eq!(members, ["host", "back"], "the one who came back stays");
}
