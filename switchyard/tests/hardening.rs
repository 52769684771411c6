//! A slow node is not a gone node, with real processes: a room server paused (SIGSTOP) or
//! starved of CPU keeps its players and their rooms; a request it cannot answer in time is a
//! timeout, and the binding stays.

mod support;

use std::time::{Duration, Instant};

use client::ErrorCode;
use support::*;

/// A gateway with a short request timeout, so a pause shorter than failure detection outlasts
/// it.
fn gateway(sandbox: &mut Sandbox) -> Service {
    sandbox.gateway_with(
        "gw",
        &[
            "--request-timeout-ms",
            "300",
            "--failure-detection-ms",
            "2000",
        ],
    )
}

/// `count` players in rooms of `size` on the room server, each room with its id.
async fn players_in_rooms(gateway: &Service, count: usize, size: usize) -> Vec<(Player, String)> {
    let mut players: Vec<(Player, String)> = Vec::new();
    let mut room_id = String::new();
    for i in 0..count {
        let player = Player::login(client_address(gateway, i % 2 == 0), &format!("p{i}")).await;
        if i % size == 0 {
            room_id = player.create_room().await.room_id;
        } else {
            player.join_room(&room_id).await;
        }
        players.push((player, room_id.clone()));
    }
    players
}

/// Every player's next operation succeeds in its own room: nobody lost a binding or a room.
async fn everyone_still_plays(players: &[(Player, String)], label: &str) {
    for (player, room_id) in players {
        let response = player.try_op(room_id, label).await;
        assert!(
            response.is_ok(),
            "{} after {label}: {response:?}",
            player.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_room_server_is_slow_not_gone_and_its_players_keep_their_room() {
    let mut sandbox = Sandbox::new();
    let gateway = gateway(&mut sandbox);
    let room_server = sandbox.start("logic-room", "room", &["--failure-detection-ms", "2000"]);
    let _matcher = sandbox.start("logic-match", "match", &["--failure-detection-ms", "2000"]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    let players = players_in_rooms(&gateway, 2, 2).await;
    let (player, room_id) = &players[0];
    assert_eq!(player.op(room_id, "before").await, 1);

    // Paused for 450 ms against a 300 ms request timeout: a timeout, nothing else.
    room_server.stop();
    let paused = Instant::now();
    let response = player.try_op(room_id, "while paused").await;
    let waited = paused.elapsed();
    tokio::time::sleep(Duration::from_millis(450).saturating_sub(paused.elapsed())).await;
    room_server.signal(Signal::SIGCONT);
    assert_eq!(
        response.code(),
        Some(ErrorCode::UpstreamTimeout),
        "{response:?} after {waited:?}"
    );
    // The binding and the room are still there.
    everyone_still_plays(&players, "after a short pause").await;

    // Paused for 80% of the failure detection time: still not gone.
    room_server.stop();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    room_server.signal(Signal::SIGCONT);
    everyone_still_plays(&players, "after a long pause").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_players_keep_their_rooms_while_the_room_server_or_the_gateway_is_starved() {
    let mut sandbox = Sandbox::new();
    let gateway = gateway(&mut sandbox);
    let room_server = sandbox.start("logic-room", "room", &["--failure-detection-ms", "2000"]);
    let _matcher = sandbox.start("logic-match", "match", &["--failure-detection-ms", "2000"]);
    wait_for_members(&gateway, &["gw", "room", "match"]).await;
    let players = players_in_rooms(&gateway, 50, 10).await;
    everyone_still_plays(&players, "setup").await;

    // Starved of CPU: running 40 ms in every 100, then 100 ms in every 600 (stopped 500 ms at
    // a time), as a process on an overloaded machine is.
    for service in [&room_server, &gateway] {
        let ms = Duration::from_millis;
        testkit::starve(service.child.id(), ms(60), ms(40), ms(2000)).await;
        testkit::starve(service.child.id(), ms(500), ms(100), ms(3000)).await;
        everyone_still_plays(&players, "starvation").await;
    }
}
