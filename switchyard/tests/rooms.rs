//! Rooms and matches under stress, as real processes: room limits that keep every broadcast
//! deliverable, and the drain order of room and match servers.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_draining_room_server_are_unbound_before_their_rooms_close() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let leaving = sandbox.start("logic-room", "room-1", &[]);
    let _matcher = sandbox.start("logic-match", "match", &[]);
    wait_for_members(&gateway, &["gw", "room-1", "match"]).await;
    // Forty players in twenty rooms, all on room-1 (the only room server so far).
    let mut players = Vec::new();
    for i in 0..40 {
        let name = format!("drain-{i}");
        players.push(Player::login(client_address(&gateway, i % 2 == 0), &name).await);
    }
    for pair in players.chunks(2) {
        let info = pair[0].create_room().await;
        assert_eq!(info.node_id, "room-1");
        pair[1].join_room(&info.room_id).await;
    }
    let _staying = sandbox.start("logic-room", "room-2", &[]);
    wait_for_members(&gateway, &["room-2"]).await;

    leaving.signal(Signal::SIGTERM);
    // Each player asks for a new room the moment it learns its room closed.
    let mut tasks = JoinSet::new();
    for mut player in players {
        tasks.spawn(async move {
            let closed = room::RoomClosed::decode(player.push(room_routes::PUSH_ROOM_CLOSED).await)
                .expect("decodes");
            assert_eq!(closed.reason, "the room server is shutting down");
            let response = player
                .client
                .request(
                    room_routes::CREATE,
                    room::CreateRoom::default().encode_to_vec(),
                )
                .await
                .expect("answered");
            (player.name, response)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (name, response) = done.expect("player task");
        assert!(
            response.is_ok(),
            "{name} was still bound to the draining server: {response:?}"
        );
        let info = room::RoomInfo::decode(response.payload).expect("decodes");
        assert_eq!(info.node_id, "room-2", "{name}");
    }
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
        let fresh = player.create_room().await.room_id;
        assert!(fresh.ends_with("@r2"), "{} created {fresh}", player.name);
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
    assert!(guest.create_room().await.room_id.ends_with("@room"));
    let (_, body) = drain("GET", "/admin/drain");
    assert!(body.contains("\"online\""), "{body}");
}
