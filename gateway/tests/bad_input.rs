//! Bad input from the network: each gets its documented code and close behaviour, and the
//! gateway keeps serving a healthy client throughout.

mod support;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use client::{Client, ErrorCode, Event};
use futures::{SinkExt, StreamExt};
use prost::Message;
use proto::client::v1::{Envelope, Kind};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite;

struct Fixture {
    gateway: TestGateway,
    _logic: logic_sdk::RunningLogic,
    healthy: Client,
}

async fn fixture(extra: &[&str]) -> Fixture {
    let gateway = TestGateway::start("gw", &[], extra).await;
    let logic = start_logic(test_routes("room"), "l1", &[gateway.gossip]).await;
    gateway.wait_for_nodes("room", 1).await;
    let config = client::ClientConfig {
        heartbeat: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let (healthy, _events) = connect_with(gateway.tcp_address(), config).await;
    assert!(
        healthy
            .request(LOGIN, "healthy")
            .await
            .expect("answered")
            .is_ok()
    );
    Fixture {
        gateway,
        _logic: logic,
        healthy,
    }
}

impl Fixture {
    async fn still_serving(&self) {
        let response = self
            .healthy
            .request(ECHO, "still here")
            .await
            .expect("answered");
        assert_eq!(response.payload, Bytes::from_static(b"still here"));
    }
}

/// Reads length-prefixed envelopes from a raw TCP socket until it closes (or 3 s pass).
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<Envelope>, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    let mut envelopes = Vec::new();
    let mut rest = &buf[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        envelopes
            .push(Envelope::decode(&rest[4..4 + len]).expect("the gateway sends valid envelopes"));
        rest = &rest[4 + len..];
    }
    (envelopes, closed)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn status_of(envelopes: &[Envelope]) -> Vec<u32> {
    envelopes
        .iter()
        .filter(|e| e.kind == Kind::Response as i32)
        .map(|e| e.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_tcp_are_too_large_and_close_the_connection() {
    let f = fixture(&[]).await;
    let mut raw = TcpStream::connect(f.gateway.tcp).await.expect("connect");
    raw.write_all(b"\x47\x45\x54 / HTTP/1.1 garbage \xff\xfe\x00\x01")
        .await
        .expect("write");
    let (envelopes, closed) = read_until_closed(&mut raw).await;
    assert_eq!(status_of(&envelopes), vec![ErrorCode::TooLarge as u32]);
    assert!(closed, "the gateway closes a connection it cannot frame");
    f.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_length_prefix_is_refused_at_once() {
    let f = fixture(&[]).await;
    let mut raw = TcpStream::connect(f.gateway.tcp).await.expect("connect");
    raw.write_all(&[0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let (envelopes, closed) = read_until_closed(&mut raw).await;
    assert_eq!(status_of(&envelopes), vec![ErrorCode::TooLarge as u32]);
    assert!(closed);
    f.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_and_closes_on_tcp_and_websocket() {
    let f = fixture(&["--max-frame-bytes", "1024"]).await;
    let big = vec![7u8; 2048];
    let mut raw = TcpStream::connect(f.gateway.tcp).await.expect("connect");
    let _ = raw.write_all(&frame(&big)).await;
    let (envelopes, closed) = read_until_closed(&mut raw).await;
    assert_eq!(status_of(&envelopes), vec![ErrorCode::TooLarge as u32]);
    assert!(closed);

    let (mut ws, _) = tokio_tungstenite::connect_async(f.gateway.ws.as_str())
        .await
        .expect("ws connect");
    ws.send(tungstenite::Message::Binary(Bytes::from(big)))
        .await
        .expect("send");
    let mut statuses = Vec::new();
    let mut close_code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(3), ws.next()).await
    {
        match message {
            tungstenite::Message::Binary(body) => {
                statuses.push(Envelope::decode(body).expect("valid").status)
            }
            tungstenite::Message::Close(frame) => close_code = frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    }
    assert_eq!(
        statuses,
        vec![ErrorCode::TooLarge as u32],
        "then the WebSocket closes"
    );
    assert_eq!(
        close_code,
        Some(1009),
        "closed with status 1009 (message too big)"
    );
    f.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_waits_for_the_rest_and_the_connection_ends_cleanly() {
    let f = fixture(&["--idle-timeout-ms", "500"]).await;
    let mut raw = TcpStream::connect(f.gateway.tcp).await.expect("connect");
    let whole = frame(&wire::envelope::encode(&wire::envelope::request(
        1,
        ECHO,
        Bytes::from_static(b"x"),
    )));
    raw.write_all(&whole[..whole.len() - 2])
        .await
        .expect("write");
    // The rest never comes: the idle timeout closes the connection with a kick.
    let (envelopes, closed) = read_until_closed(&mut raw).await;
    assert!(closed);
    assert_eq!(envelopes.last().map(|e| e.kind), Some(Kind::Kick as i32));
    assert_eq!(
        envelopes
            .last()
            .and_then(|e| e.kick.as_ref())
            .map(|k| k.code),
        Some(ErrorCode::IdleTimeout as u32)
    );
    // A client that closes half way: the gateway just ends the session.
    let mut raw = TcpStream::connect(f.gateway.tcp).await.expect("connect");
    raw.write_all(&whole[..3]).await.expect("write");
    raw.shutdown().await.expect("shutdown");
    let (envelopes, closed) = read_until_closed(&mut raw).await;
    assert!(closed && envelopes.is_empty());
    f.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_envelope_is_a_bad_request_and_the_connection_stays_open() {
    let f = fixture(&[]).await;
    for address in [f.gateway.tcp_address(), f.gateway.ws_address()] {
        let (client, mut events) = Client::connect(address.clone()).await.expect("connect");
        client
            .send_frame(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]))
            .await
            .expect("send");
        match tokio::time::timeout(Duration::from_secs(3), events.next())
            .await
            .expect("answered")
        {
            Some(Event::Unsolicited(response)) => {
                assert_eq!(response.code(), Some(ErrorCode::BadRequest), "{address}")
            }
            other => panic!("{address}: expected a BAD_REQUEST, got {other:?}"),
        }
        // Still open and usable.
        assert!(
            client
                .request(LOGIN, "again")
                .await
                .expect("answered")
                .is_ok(),
            "{address}"
        );
    }
    // A WebSocket text message is not a frame either.
    let (mut ws, _) = tokio_tungstenite::connect_async(f.gateway.ws.as_str())
        .await
        .expect("ws connect");
    ws.send(tungstenite::Message::Text("hello".into()))
        .await
        .expect("send");
    let Some(Ok(tungstenite::Message::Binary(body))) = ws.next().await else {
        panic!("no answer")
    };
    assert_eq!(
        Envelope::decode(body).expect("valid").status,
        ErrorCode::BadRequest as u32
    );
    f.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_with_unknown_fields_is_served_normally() {
    let f = fixture(&[]).await;
    let (client, _events) = login(f.gateway.tcp_address(), "future-client").await;
    // A newer client adds field 99 (varint) and field 100 (bytes).
    let mut body = BytesMut::from(
        &wire::envelope::encode(&wire::envelope::request(
            42,
            ECHO,
            Bytes::from_static(b"hi"),
        ))[..],
    );
    body.put_slice(&[0x98, 0x06, 0x01]);
    body.put_slice(&[0xa2, 0x06, 0x03, b'n', b'e', b'w']);
    let mut raw = TcpStream::connect(f.gateway.tcp).await.expect("connect");
    let login_frame = frame(&wire::envelope::encode(&wire::envelope::request(
        1,
        LOGIN,
        Bytes::from_static(b"raw"),
    )));
    raw.write_all(&login_frame).await.expect("write");
    // Requests on one connection run concurrently: wait for the login before the next.
    let mut chunk = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut chunk))
        .await
        .expect("login answer")
        .expect("read");
    assert_eq!(
        Envelope::decode(&chunk[4..n]).expect("valid").status,
        0,
        "logged in"
    );
    raw.write_all(&frame(&body)).await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while got.is_empty() {
            let n = raw.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let mut rest = &chunk[..n];
            while rest.len() >= 4 {
                let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                got.push(Envelope::decode(&rest[4..4 + len]).expect("valid"));
                rest = &rest[4 + len..];
            }
        }
    })
    .await;
    let echo = got
        .iter()
        .find(|e| e.msg_id == 42)
        .expect("the request with unknown fields was answered");
    assert_eq!(echo.status, 0);
    assert_eq!(echo.payload, Bytes::from_static(b"hi"));
    drop(client);
    f.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_reused_while_in_flight_is_refused() {
    let f = fixture(&[]).await;
    let mut raw = TcpStream::connect(f.gateway.tcp).await.expect("connect");
    let request = |id, route, body: &'static [u8]| {
        frame(&wire::envelope::encode(&wire::envelope::request(
            id,
            route,
            Bytes::from_static(body),
        )))
    };
    raw.write_all(&request(1, LOGIN, b"reuser"))
        .await
        .expect("write");
    let mut chunk = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut chunk))
        .await
        .expect("login answer")
        .expect("read");
    assert_eq!(
        Envelope::decode(&chunk[4..n]).expect("valid").status,
        0,
        "logged in"
    );
    raw.write_all(&request(7, SLOW, b"300"))
        .await
        .expect("write");
    raw.write_all(&request(7, ECHO, b"dup"))
        .await
        .expect("write");
    // After the slow one completes, id 7 is free again.
    let mut answers = Vec::new();
    let mut buf = Vec::new();
    while answers.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut chunk))
            .await
            .expect("answers")
            .expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            answers.push(Envelope::decode(&buf[4..4 + len]).expect("valid"));
            buf.drain(..4 + len);
        }
    }
    let for_seven: Vec<(u32, u32)> = answers
        .iter()
        .filter(|e| e.msg_id == 7)
        .map(|e| (e.route, e.status))
        .collect();
    assert_eq!(
        for_seven,
        vec![(ECHO, ErrorCode::DuplicateMessageId as u32), (SLOW, 0)],
        "the duplicate is refused at once; the original completes"
    );
    raw.write_all(&request(7, ECHO, b"reuse"))
        .await
        .expect("write");
    let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut chunk))
        .await
        .expect("answer")
        .expect("read");
    let reused = Envelope::decode(&chunk[4..n]).expect("valid");
    assert_eq!(
        (reused.msg_id, reused.status, &reused.payload[..]),
        (7, 0, &b"reuse"[..])
    );
    f.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_websocket_handshake_is_refused() {
    let f = fixture(&[]).await;
    let ws_addr: std::net::SocketAddr = f
        .gateway
        .ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .expect("addr");
    let mut raw = TcpStream::connect(ws_addr).await.expect("connect");
    raw.write_all(b"\x00\x01\x02 this is not http\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), raw.read_to_end(&mut answer)).await;
    // tungstenite answers an unparsable request by closing (possibly after a 400).
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // The wrong path is a 404.
    let mut raw = TcpStream::connect(ws_addr).await.expect("connect");
    raw.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), raw.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 404"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    f.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_the_reserved_message_id_0_is_a_bad_request() {
    let f = fixture(&[]).await;
    let mut raw = TcpStream::connect(f.gateway.tcp).await.expect("connect");
    let request = wire::envelope::encode(&wire::envelope::request(
        0,
        LOGIN,
        Bytes::from_static(b"zero"),
    ));
    raw.write_all(&frame(&request)).await.expect("write");
    let mut chunk = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut chunk))
        .await
        .expect("answer")
        .expect("read");
    let answer = Envelope::decode(&chunk[4..n]).expect("valid");
    assert_eq!(
        (answer.msg_id, answer.status),
        (0, ErrorCode::BadRequest as u32),
        "refused, not served: {answer:?}"
    );
    // The connection stays open and a proper id is served.
    let request = wire::envelope::encode(&wire::envelope::request(
        1,
        LOGIN,
        Bytes::from_static(b"zero"),
    ));
    raw.write_all(&frame(&request)).await.expect("write");
    let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut chunk))
        .await
        .expect("answer")
        .expect("read");
    let answer = Envelope::decode(&chunk[4..n]).expect("valid");
    assert_eq!((answer.msg_id, answer.status), (1, 0));
    f.still_serving().await;
}

/// A WebSocket sink that failed once must fail again, not panic (the error mapping used to run
/// only once, and the second error — a send after a close — panicked the writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_on_a_closed_websocket_fails_every_time_without_panicking() {
    let f = fixture(&[]).await;
    let (client, _events) = Client::connect(f.gateway.ws_address())
        .await
        .expect("connect");
    client.close().await;
    for _ in 0..3 {
        let sent = client.request(ECHO, "after close").await;
        assert!(sent.is_err(), "{sent:?}");
    }
    f.still_serving().await;
}
