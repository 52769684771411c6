//! Sessions that outlive their connection: a connection dropped without a goodbye is held for
//! the resume window and resumed with a token, every push after the client's last one replayed
//! exactly once and in order; a goodbye ends the session at once; the window's end tells the
//! bound nodes; tokens that must not work are refused, each with its own code.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use client::{Address, Client, ClientConfig, ErrorCode, Event, Events, ResumeTicket};
use logic_sdk::{BindMode, LogicServer, Recipient, Reply, RunningLogic};
use support::*;

/// Binds the caller to this node (so it is told when the session ends).
const JOIN: u32 = proto::route(4, 1);

/// Test routes plus JOIN; records every session-closed notice (user, reason).
fn recording_routes(closed: Arc<Mutex<Vec<(String, String)>>>) -> LogicServer {
    test_routes("room")
        .route(JOIN, |ctx, _| async move {
            let me = ctx.sdk().node_id();
            Ok(Reply::new("joined").bind_me(BindMode::Append, vec![me]))
        })
        .on_session_closed(move |notice, _| {
            let closed = closed.clone();
            async move {
                let user = notice.user_id.unwrap_or_default();
                closed.lock().expect("lock").push((user, notice.reason));
            }
        })
}

struct Setup {
    gateway: TestGateway,
    logic: RunningLogic,
    closed: Arc<Mutex<Vec<(String, String)>>>,
}

impl Setup {
    async fn start(extra: &[&str]) -> Self {
        let gateway = TestGateway::start("gw", &[], extra).await;
        let closed = Arc::new(Mutex::new(Vec::new()));
        let logic = start_logic(recording_routes(closed.clone()), "r1", &[gateway.gossip]).await;
        gateway.wait_for_nodes("room", 1).await;
        Setup {
            gateway,
            logic,
            closed,
        }
    }

    /// Logs `user` in and binds them to the logic node.
    async fn joined(&self, user: &str) -> (Client, Events) {
        let (client, events) = login(self.gateway.tcp_address(), user).await;
        let joined = client.request(JOIN, Bytes::new()).await.expect("answered");
        assert!(joined.is_ok(), "{joined:?}");
        (client, events)
    }

    /// Pushes `text` to `user` from the logic node.
    async fn push(&self, user: &str, text: String) {
        self.logic
            .sdk
            .push([Recipient::from(user)], JOIN, text)
            .await
            .expect("push sent");
    }

    /// True while the cluster sees `user` online (a held session counts).
    async fn is_online(&self, user: &str) -> bool {
        let presence = self
            .logic
            .sdk
            .presence(&[user.into()])
            .await
            .expect("presence");
        presence.contains_key(user)
    }

    /// The session of `ticket` ended: the bound node was told, the user is offline, and a
    /// resume is refused with `SESSION_GONE`.
    async fn assert_ended(&self, ticket: &ResumeTicket) {
        let user = ticket.user_id.as_str();
        eventually("the bound node is told", Duration::from_secs(5), || {
            !self.closed_notices(user).is_empty()
        })
        .await;
        assert!(!self.is_online(user).await);
        let (_client, _events, answer) = resume(self.gateway.tcp_address(), ticket).await;
        assert_eq!(answer.code(), Some(ErrorCode::SessionGone), "{answer:?}");
    }

    fn closed_notices(&self, user: &str) -> Vec<String> {
        let closed = self.closed.lock().expect("lock");
        closed
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, reason)| reason.clone())
            .collect()
    }
}

/// The next `count` pushes: (seq, text).
async fn pushes(events: &mut Events, count: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let push = tokio::time::timeout(Duration::from_secs(5), events.next_push())
            .await
            .expect("a push in time")
            .expect("still connected");
        seen.push((
            push.seq,
            String::from_utf8_lossy(&push.payload).into_owned(),
        ));
    }
    seen
}

async fn resume(address: Address, ticket: &ResumeTicket) -> (Client, Events, client::Response) {
    Client::resume(address, ClientConfig::default(), ticket)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_with_every_push_it_missed_once_and_in_order() {
    let setup = Setup::start(&[]).await;
    let (client, mut events) = setup.joined("ann").await;
    let login_ticket = client
        .resume_ticket()
        .expect("a login brings a resume ticket");
    assert_eq!(login_ticket.user_id, "ann");
    assert_eq!(login_ticket.last_seq, 0);

    for n in 1..=5 {
        setup.push("ann", format!("m{n}")).await;
    }
    let before = pushes(&mut events, 5).await;
    assert_eq!(before.last().map(|p| p.0), Some(5));
    // The network goes; the gateway notices the socket closed without a goodbye.
    let ticket = client.resume_ticket().expect("ticket");
    assert_eq!(ticket.last_seq, 5);
    client.drop_connection().await;
    drop(events);
    // Pushes sent while nobody is connected are held for the session.
    for n in 6..=10 {
        setup.push("ann", format!("m{n}")).await;
    }

    let (resumed_client, mut events, answer) = resume(setup.gateway.tcp_address(), &ticket).await;
    assert!(answer.is_ok(), "resume refused: {answer:?}");
    let resumed = answer.resumed.expect("a resume answer");
    assert!(resumed.resumed, "every missed push is still held");
    assert_eq!(resumed.first_seq, 6);
    assert_eq!(resumed.user_id, "ann");
    // Then a live push follows the replayed ones.
    setup.push("ann", "m11".into()).await;
    let after = pushes(&mut events, 6).await;
    let expected: Vec<(u64, String)> = (6..=11).map(|n| (n, format!("m{n}"))).collect();
    assert_eq!(
        after, expected,
        "missed pushes once each, in order, then live ones"
    );

    // The session, its user and its binding carried on: nobody was told it closed, and the
    // bound node still routes (no login repeated).
    assert!(setup.closed_notices("ann").is_empty());
    assert_eq!(text(&where_am_i(&resumed_client).await), "r1");
    // A fresh ticket: the answer carried the next token.
    let next = resumed_client.resume_ticket().expect("ticket");
    assert_ne!(next.token, ticket.token);
    assert_eq!(next.session_id, ticket.session_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_resume_window_the_session_ends_and_its_nodes_are_told() {
    let setup = Setup::start(&["--resume-window-ms", "1500"]).await;
    let (client, _events) = setup.joined("bob").await;
    let ticket = client.resume_ticket().expect("ticket");
    client.drop_connection().await;

    // Held: still present for the cluster during the window, and nobody told.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(setup.is_online("bob").await, "held during the window");
    assert!(
        setup.closed_notices("bob").is_empty(),
        "not told during the window"
    );

    setup.assert_ended(&ticket).await;
    assert_eq!(
        setup.closed_notices("bob"),
        vec!["the resume window passed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_ends_the_session_at_once() {
    // The default window is 30 s: only the goodbye can end the session within this test.
    let setup = Setup::start(&[]).await;
    let (client, _events) = setup.joined("cat").await;
    let ticket = client.resume_ticket().expect("ticket");
    client.close().await;
    setup.assert_ended(&ticket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_close_frame_is_a_goodbye() {
    let setup = Setup::start(&[]).await;
    let mut ws = raw_ws(&setup.gateway.ws).await;
    raw_ws_request(&mut ws, LOGIN, "dan").await;
    raw_ws_request(&mut ws, JOIN, "").await;
    // Close the WebSocket with a close frame but no GOODBYE envelope.
    ws.close(None).await.expect("close frame sent");
    eventually("the bound node is told", Duration::from_secs(5), || {
        !setup.closed_notices("dan").is_empty()
    })
    .await;
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client without the client library (which always says goodbye first).
async fn raw_ws(url: &str) -> RawWs {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

/// Sends one request on a raw WebSocket and waits for its answer (which must be a success).
async fn raw_ws_request(ws: &mut RawWs, route: u32, payload: &str) {
    use futures::{SinkExt, StreamExt};
    use prost::Message;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let request = wire::envelope::request(9, route, Bytes::from(payload.to_owned()));
    ws.send(WsMessage::Binary(wire::envelope::encode(&request)))
        .await
        .expect("sent");
    while let Some(message) = ws.next().await {
        if let WsMessage::Binary(frame) = message.expect("read") {
            let answer = wire::Envelope::decode(frame).expect("an envelope");
            assert_eq!(answer.status, 0, "{answer:?}");
            return;
        }
    }
    panic!("closed before the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_live_session_moves_it_to_the_new_connection() {
    // A client that notices a dead network before the gateway does resumes at once.
    let setup = Setup::start(&[]).await;
    let (client, mut old_events) = setup.joined("eve").await;
    let ticket = client.resume_ticket().expect("ticket");
    let (fresh, mut events, answer) = resume(setup.gateway.ws_address(), &ticket).await;
    assert!(answer.resumed.expect("resumed").resumed);
    // The old connection is closed without a kick; pushes go to the new one.
    loop {
        match old_events.next().await {
            Some(Event::Disconnected { .. }) | None => break,
            Some(Event::Kicked { code, .. }) => panic!("the old connection was kicked: {code}"),
            Some(_) => {}
        }
    }
    setup.push("eve", "live".into()).await;
    assert_eq!(pushes(&mut events, 1).await, vec![(1, "live".to_owned())]);
    assert_eq!(text(&where_am_i(&fresh).await), "r1");
    assert!(setup.closed_notices("eve").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_no_longer_held_are_reported_as_a_gap() {
    let setup = Setup::start(&["--replay-max-pushes", "4"]).await;
    let (client, _events) = setup.joined("fay").await;
    let ticket = client.resume_ticket().expect("ticket");
    client.drop_connection().await;
    for n in 1..=10 {
        setup.push("fay", format!("m{n}")).await;
    }
    let (_client, mut events, answer) = resume(setup.gateway.tcp_address(), &ticket).await;
    let resumed = answer.resumed.expect("a resume answer");
    assert!(!resumed.resumed, "six pushes are gone: the client is told");
    assert_eq!(resumed.first_seq, 7);
    let held: Vec<u64> = pushes(&mut events, 4)
        .await
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(held, vec![7, 8, 9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_must_not_resume_are_refused_each_with_its_code() {
    let setup = Setup::start(&["--resume-token-ttl-ms", "60000"]).await;
    let (client, _events) = setup.joined("gus").await;
    let ticket = client.resume_ticket().expect("ticket");
    client.drop_connection().await;
    let address = || setup.gateway.tcp_address();

    // Another user's claim on the token.
    let wrong_user = ResumeTicket {
        user_id: "mallory".into(),
        ..ticket.clone()
    };
    let (_c, _e, answer) = resume(address(), &wrong_user).await;
    assert_eq!(answer.code(), Some(ErrorCode::TokenWrongUser), "{answer:?}");

    // A forged token, and garbage.
    // A token with one byte of its signature changed.
    let mut forged = ticket.clone();
    let end = forged.token.len();
    let last = if forged.token.ends_with("00") {
        "11"
    } else {
        "00"
    };
    forged.token.replace_range(end - 2..end, last);
    let (_c, _e, answer) = resume(address(), &forged).await;
    assert_eq!(answer.code(), Some(ErrorCode::TokenInvalid), "{answer:?}");
    let garbage = ResumeTicket {
        token: "not a token".into(),
        ..ticket.clone()
    };
    let (_c, _e, answer) = resume(address(), &garbage).await;
    assert_eq!(answer.code(), Some(ErrorCode::TokenInvalid), "{answer:?}");

    // The right token works once; a second use is refused.
    let (resumed, _e, answer) = resume(address(), &ticket).await;
    assert!(answer.is_ok(), "{answer:?}");
    let (_c, _e, answer) = resume(address(), &ticket).await;
    assert_eq!(answer.code(), Some(ErrorCode::TokenReused), "{answer:?}");
    // The refused connection is still usable: it can log in.
    assert_eq!(text(&where_am_i(&resumed).await), "r1");

    // A token of another cluster (same secret, other cluster id).
    let other = TestGateway::start("gw-b", &[], &["--cluster-id", "other-cluster"]).await;
    let next = resumed.resume_ticket().expect("ticket");
    let (_c, _e, answer) = resume(other.tcp_address(), &next).await;
    assert_eq!(
        answer.code(),
        Some(ErrorCode::TokenWrongCluster),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let setup = Setup::start(&["--resume-token-ttl-ms", "1"]).await;
    let (client, _events) = setup.joined("hal").await;
    let ticket = client.resume_ticket().expect("ticket");
    client.drop_connection().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_c, _e, answer) = resume(setup.gateway.tcp_address(), &ticket).await;
    assert_eq!(answer.code(), Some(ErrorCode::TokenExpired), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_logged_in_connection_is_refused() {
    let setup = Setup::start(&[]).await;
    let (first, _events) = setup.joined("ida").await;
    let ticket = first.resume_ticket().expect("ticket");
    let (other, mut events) = setup.joined("jon").await;
    let frame = wire::envelope::encode(&wire::envelope::resume(77, &ticket.token, 0, "ida"));
    other.send_frame(frame).await.expect("sent");
    // The refusal arrives as the answer to message 77, which the client did not send through
    // `request`: an unsolicited response.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(Event::Unsolicited(response))) => {
                assert_eq!(response.code(), Some(ErrorCode::AlreadyLoggedIn));
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no refusal: {other:?}"),
        }
    }
}
