//! The cluster admin API's ListRooms against real processes: any node asks every node hosting
//! rooms, and lists each room with its host, its members and the gateways holding them.

mod support;

use serde_json::Value;
use support::*;

const TOKEN: &str = "e2e-admin-token";

/// `GET /admin/cluster/rooms` on `service`, with the bearer token.
fn list_rooms(service: &Service) -> (u16, Value) {
    let (status, body) =
        testkit::http_request(service.admin, "GET", "/admin/cluster/rooms", Some(TOKEN));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rooms_names_each_room_with_its_host_members_and_gateways() {
    let mut sandbox = Sandbox::new();
    let gw1 = sandbox.gateway_with("gw1", &["--admin-token", TOKEN]);
    let gw2 = sandbox.gateway("gw2");
    // No affinity: bob stays on gw2.
    let room = sandbox.start("logic-room", "r1", &["--affinity-max-per-gateway", "0"]);
    let _matcher = sandbox.start("logic-match", "match", &[]);
    wait_for_members(&gw1, &["gw1", "gw2", "r1", "match"]).await;
    wait_for_members(&gw2, &["gw1", "gw2", "r1", "match"]).await;

    let ann = Player::login(client_address(&gw1, false), "ann").await;
    let bob = Player::login(client_address(&gw2, false), "bob").await;
    let room_id = ann.create_room().await.room_id;
    bob.join_room(&room_id).await;

    let (status, listed) = list_rooms(&gw1);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["rooms"],
        serde_json::json!([{
            "room_id": room_id,
            "host": "r1",
            "members": ["ann", "bob"],
            "gateways": ["gw1", "gw2"],
        }]),
        "{listed}"
    );
    // Gateways and the match server host no rooms: skipped, not unanswered.
    assert_eq!(listed["unanswered"], serde_json::json!([]), "{listed}");

    // Without the token, nothing is listed.
    let (status, _) = testkit::http_request(gw1.admin, "GET", "/admin/cluster/rooms", None);
    assert_eq!(status, 401);

    // A room server that stops answering (paused, not yet declared gone) is named, and its
    // rooms are missing.
    room.stop();
    let (status, listed) = list_rooms(&gw1);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["rooms"], serde_json::json!([]), "{listed}");
    assert_eq!(listed["unanswered"], serde_json::json!(["r1"]), "{listed}");
}
