//! A connection over which nothing arrives any more (the network stopped carrying anything,
//! without a reset) is noticed by its heartbeats going unanswered, and closed.

use std::time::{Duration, Instant};

use client::{Address, Client, ClientConfig, Event};

#[tokio::test]
async fn a_connection_that_goes_silent_is_closed_after_the_silence_time() {
    // A "gateway" that accepts and then never sends a byte, holding the socket open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    });
    let config = ClientConfig {
        heartbeat: Some(Duration::from_millis(100)),
        silence: Duration::from_millis(300),
        ..Default::default()
    };
    let started = Instant::now();
    let (_client, mut events) = Client::connect_with(Address::Tcp(addr), config)
        .await
        .expect("connect");
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("noticed within 5 s");
    match event {
        Some(Event::Disconnected { reason }) => assert!(reason.contains("silent"), "{reason}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    holder.abort();
}
