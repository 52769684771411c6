//! The whole system as real processes: gateways, room servers and a match server started from
//! the `switchyard` binary on loopback ports, driven through the client library.

mod support;

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use proto::{
    matchmaking::v1::{self as mm, routes as match_routes},
    room::v1::{self as room, errors as room_errors, routes as room_routes},
};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_players_are_bound_to_the_emptier_room_server_and_see_one_order_of_operations() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let _busy = sandbox.start("logic-room", "room-busy", &["--preload-rooms", "3"]);
    // These two run on single-threaded runtimes (`--runtime`), the others on the default.
    let _empty = sandbox.start("logic-room", "room-empty", &["--runtime", "current-thread"]);
    let matcher = sandbox.start(
        "logic-match",
        "match",
        &["--modes", "duel=2", "--runtime", "current-thread"],
    );
    wait_for_members(&gateway, &["gw", "room-busy", "room-empty", "match"]).await;
    // The match server places by what it sees: both room servers, online.
    wait_for_members(&matcher, &["room-busy", "room-empty"]).await;

    let mut ann = Player::login(client_address(&gateway, true), "ann").await;
    let mut ben = Player::login(client_address(&gateway, false), "ben").await;
    ann.enqueue("duel").await;
    ben.enqueue("duel").await;
    let (found_a, found_b) = (ann.matched().await, ben.matched().await);
    assert_eq!(
        found_a.room_node, "room-empty",
        "the server with fewer rooms gets the match"
    );
    assert_eq!(found_a.room_id, found_b.room_id);
    let room_id = found_a.room_id;

    // They are bound to the room server: their room operations land there, and every member,
    // the sender included, sees them in one order.
    let sent = [
        ann.op(&room_id, "a1").await,
        ben.op(&room_id, "b1").await,
        ann.op(&room_id, "a2").await,
    ];
    assert_eq!(sent, [1, 2, 3]);
    let seen_a = ann.ops_seen(3).await;
    let seen_b = ben.ops_seen(3).await;
    assert_eq!(
        seen_a,
        vec![(1, "a1".into()), (2, "b1".into()), (3, "a2".into())]
    );
    assert_eq!(seen_a, seen_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_leaving_hands_the_room_over_and_a_disconnect_is_announced() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let _room = sandbox.start("logic-room", "room", &[]);
    let _matcher = sandbox.start("logic-match", "match", &["--modes", "trio=3"]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    let mut players = Vec::new();
    for name in ["owner", "second", "third"] {
        let player = Player::login(client_address(&gateway, true), name).await;
        player.enqueue("trio").await;
        players.push(player);
    }
    let mut room_id = String::new();
    for player in &mut players {
        room_id = player.matched().await.room_id;
    }
    let info = room::RoomInfo::decode(
        players[1]
            .client
            .request(
                room_routes::GET_PROPERTIES,
                room::RoomRef {
                    room_id: room_id.clone(),
                }
                .encode_to_vec(),
            )
            .await
            .expect("answered")
            .payload,
    )
    .expect("decodes");
    assert_eq!(
        info.owner, "owner",
        "the first matched player owns the room"
    );

    let leave = players[0]
        .client
        .request(
            room_routes::LEAVE,
            room::LeaveRoom {
                room_id: room_id.clone(),
            }
            .encode_to_vec(),
        )
        .await
        .expect("answered");
    assert!(leave.is_ok());
    let changed =
        room::OwnerChanged::decode(players[1].push(room_routes::PUSH_OWNER_CHANGED).await)
            .expect("decodes");
    assert_eq!(
        changed.owner, "second",
        "the longest-standing member is elected"
    );

    // A member who disconnects leaves with a reason.
    players[2].client.close().await;
    loop {
        let left = room::MemberEvent::decode(players[1].push(room_routes::PUSH_MEMBER_LEFT).await)
            .expect("decodes");
        if left.user_id == "third" {
            assert_eq!(left.reason, "disconnected");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_room_is_removed_after_its_ttl() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let room_server = sandbox.start("logic-room", "room", &["--empty-room-ttl-ms", "300"]);
    let _matcher = sandbox.start("logic-match", "match", &[]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    let player = Player::login(client_address(&gateway, false), "solo").await;
    let created = player.try_create_room().await;
    let room_id = room::RoomInfo::decode(created.payload)
        .expect("decodes")
        .room_id;
    let rooms_of = |service: &Service| -> Option<u64> {
        let nodes = service.nodes();
        nodes["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == "room")
            .and_then(|n| n["load"]["rooms"].as_u64())
    };
    eventually(
        "the room server reports one room",
        Duration::from_secs(5),
        || rooms_of(&room_server) == Some(1),
    )
    .await;
    player
        .client
        .request(
            room_routes::LEAVE,
            room::LeaveRoom {
                room_id: room_id.clone(),
            }
            .encode_to_vec(),
        )
        .await
        .expect("answered");
    eventually("the empty room is removed", Duration::from_secs(5), || {
        rooms_of(&room_server) == Some(0)
    })
    .await;
    let join = player
        .client
        .request(
            room_routes::JOIN,
            room::JoinRoom { room_id }.encode_to_vec(),
        )
        .await
        .expect("answered");
    assert_eq!(join.status, room_errors::ROOM_NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_who_disconnects_while_queued_leaves_the_queue() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let _room = sandbox.start("logic-room", "room", &[]);
    let _matcher = sandbox.start("logic-match", "match", &["--modes", "duel=2"]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    let quitter = Player::login(client_address(&gateway, true), "quitter").await;
    quitter.enqueue("duel").await;
    quitter.client.close().await;
    drop(quitter);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut a = Player::login(client_address(&gateway, true), "stay-a").await;
    let mut b = Player::login(client_address(&gateway, true), "stay-b").await;
    a.enqueue("duel").await;
    b.enqueue("duel").await;
    let found = a.matched().await;
    assert_eq!(
        found.members,
        vec!["stay-a".to_owned(), "stay-b".to_owned()],
        "the quitter was not matched"
    );
    assert_eq!(b.matched().await.room_id, found.room_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_server_that_does_not_answer_the_load_request_is_skipped() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let _busy = sandbox.start(
        "logic-room",
        "room-busy",
        &["--preload-rooms", "2", "--failure-detection-ms", "20000"],
    );
    let frozen = sandbox.start(
        "logic-room",
        "room-frozen",
        &["--failure-detection-ms", "20000"],
    );
    let _matcher = sandbox.start(
        "logic-match",
        "match",
        &[
            "--modes",
            "duel=2",
            "--collect-timeout-ms",
            "300",
            "--failure-detection-ms",
            "20000",
        ],
    );
    wait_for_members(&gateway, &["gw", "room-busy", "room-frozen", "match"]).await;
    // Frozen, the emptier server still looks like a member but answers nothing.
    frozen.stop();
    let mut a = Player::login(client_address(&gateway, true), "fa").await;
    let mut b = Player::login(client_address(&gateway, true), "fb").await;
    a.enqueue("duel").await;
    b.enqueue("duel").await;
    let found = a.matched().await;
    assert_eq!(
        found.room_node, "room-busy",
        "the silent server was skipped"
    );
    assert_eq!(b.matched().await.room_id, found.room_id);
    frozen.signal(Signal::SIGCONT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_players_on_two_gateways_are_matched_into_one_room() {
    let mut sandbox = Sandbox::new();
    let g1 = sandbox.gateway("g1");
    let g2 = sandbox.gateway("g2");
    let _room = sandbox.start("logic-room", "room", &[]);
    let _matcher = sandbox.start("logic-match", "match", &["--modes", "ten=10"]);
    wait_for_members(&g1, &["g1", "g2", "room", "match"]).await;
    wait_for_members(&g2, &["g1", "g2", "room", "match"]).await;
    let mut players = Vec::new();
    for i in 0..10 {
        let gateway = if i % 2 == 0 { &g1 } else { &g2 };
        let player = Player::login(client_address(gateway, i % 3 == 0), &format!("p{i}")).await;
        player.enqueue("ten").await;
        players.push(player);
    }
    let mut rooms = Vec::new();
    for player in &mut players {
        let found = player.matched().await;
        assert_eq!(found.members.len(), 10);
        rooms.push(found.room_id);
    }
    rooms.dedup();
    assert_eq!(rooms.len(), 1, "one room for all ten");
    let room_id = rooms[0].clone();
    players[3].op(&room_id, "from p3").await;
    for player in &mut players {
        assert_eq!(
            player.ops_seen(1).await,
            vec![(1, "from p3".to_owned())],
            "{} on either gateway sees it",
            player.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_room_server_players_are_told_and_stay_queued_until_one_comes() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let _matcher = sandbox.start(
        "logic-match",
        "match",
        &["--modes", "duel=2", "--retry-ms", "300"],
    );
    wait_for_members(&gateway, &["gw", "match"]).await;
    let mut a = Player::login(client_address(&gateway, true), "early-a").await;
    let mut b = Player::login(client_address(&gateway, false), "early-b").await;
    a.enqueue("duel").await;
    b.enqueue("duel").await;
    let delayed =
        mm::MatchDelayed::decode(a.push(match_routes::PUSH_MATCH_DELAYED).await).expect("decodes");
    assert_eq!(delayed.reason, "no room server is available");
    let _late = sandbox.start("logic-room", "late-room", &[]);
    let found = a.matched().await;
    assert_eq!(found.room_node, "late-room");
    assert_eq!(b.matched().await.room_id, found.room_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_server_that_shuts_down_closes_its_rooms_with_a_reason_and_unbinds_the_members() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let room_server = sandbox.start("logic-room", "room", &[]);
    let _matcher = sandbox.start("logic-match", "match", &["--modes", "duel=2"]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    let mut a = Player::login(client_address(&gateway, true), "drain-a").await;
    let mut b = Player::login(client_address(&gateway, false), "drain-b").await;
    a.enqueue("duel").await;
    b.enqueue("duel").await;
    let room_id = a.matched().await.room_id;
    b.matched().await;

    room_server.signal(Signal::SIGTERM);
    for player in [&mut a, &mut b] {
        let closed = room::RoomClosed::decode(player.push(room_routes::PUSH_ROOM_CLOSED).await)
            .expect("decodes");
        assert_eq!(closed.room_id, room_id);
        assert_eq!(closed.reason, "the room server is shutting down");
    }
    // Unbound: a room request no longer goes to the leaving server (none is left, so the
    // gateway answers that no server handles the route) instead of failing as a lost binding.
    eventually("the room server left", Duration::from_secs(10), || {
        !gateway.nodes()["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == "room"))
    })
    .await;
    let op = room::RoomOp {
        room_id,
        payload: Bytes::from_static(b"late"),
    };
    let response = a
        .client
        .request(room_routes::OP, op.encode_to_vec())
        .await
        .expect("answered");
    assert_eq!(
        response.code(),
        Some(client::ErrorCode::RouteNotFound),
        "{response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_server_that_shuts_down_tells_every_queued_player() {
    let mut sandbox = Sandbox::new();
    let gateway = sandbox.gateway("gw");
    let _room = sandbox.start("logic-room", "room", &[]);
    let matcher = sandbox.start("logic-match", "match", &["--modes", "trio=3"]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    let mut waiting = Player::login(client_address(&gateway, true), "waiting").await;
    waiting.enqueue("trio").await;
    matcher.signal(Signal::SIGTERM);
    let cancelled =
        mm::QueueCancelled::decode(waiting.push(match_routes::PUSH_QUEUE_CANCELLED).await)
            .expect("decodes");
    assert_eq!(cancelled.mode, "trio");
    assert_eq!(
        cancelled.reason,
        "the match server is shutting down; queue again"
    );
}
