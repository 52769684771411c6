//! Accept loops for the two client transports: WebSocket (binary messages on `/ws`) and TCP
//! (length-prefixed frames). Each accepted connection becomes a frame stream and sink served
//! by `connection::serve`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt, future};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    http::StatusCode,
    protocol::WebSocketConfig,
};
use tokio_util::{codec::Framed, sync::CancellationToken};
use tracing::{debug, warn};
use wire::{FrameCodec, FrameError};

use crate::{connection, gateway::Gateway};

/// How long a client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop`, handing each to `serve`. Accept errors (out of file
/// descriptors, usually) back off instead of spinning.
async fn accept_loop(
    listener: TcpListener,
    stop: CancellationToken,
    transport: &'static str,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, transport, "accepting a client failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        serve(stream, peer);
    }
}

pub(crate) async fn accept_tcp(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let codec = FrameCodec::new(gateway.limits.max_frame);
    accept_loop(listener, stop, "tcp", |stream, peer| {
        let (sink, stream) = tcp_framed(stream, codec).split();
        gateway.tracker.spawn(connection::serve(
            gateway.clone(),
            Box::pin(stream),
            Box::pin(sink),
            peer,
            "tcp",
        ));
    })
    .await;
}

/// Frames over a client's TCP connection, with buffers sized for the idle session most
/// connections are: a 1 KiB read buffer (a typical message in one read; it grows only for a
/// larger frame) and a write buffer allocated on the first write, growing to the largest burst.
/// Writes still batch up to 2 KiB before the sink makes room by flushing. (Framed's defaults,
/// 8 KiB each, cost about 3 KiB more per idle session in `bench s2-idle-memory`.)
fn tcp_framed(stream: TcpStream, codec: FrameCodec) -> Framed<TcpStream, FrameCodec> {
    let mut framed = Framed::with_capacity(stream, codec, 2048);
    *framed.read_buffer_mut() = BytesMut::with_capacity(1024);
    *framed.write_buffer_mut() = BytesMut::new();
    framed
}

pub(crate) async fn accept_ws(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let config = wire::ws::config(gateway.limits.max_frame);
    accept_loop(listener, stop, "ws", |stream, peer| {
        gateway
            .tracker
            .spawn(serve_ws(gateway.clone(), stream, peer, config));
    })
    .await;
}

/// Completes the WebSocket handshake (within a time limit), then serves the connection.
async fn serve_ws(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    config: WebSocketConfig,
) {
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, only_ws_path, Some(config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            debug!(%peer, %error, "WebSocket handshake failed");
            ::metrics::counter!(crate::metrics::CONNECTIONS, "transport" => "ws", "outcome" => "bad_handshake").increment(1);
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket handshake timed out");
            ::metrics::counter!(crate::metrics::CONNECTIONS, "transport" => "ws", "outcome" => "handshake_timeout").increment(1);
            return;
        }
    };
    let (sink, stream) = ws.split();
    let sink = sink
        .sink_map_err(|e| FrameError::Transport(e.to_string()))
        .with(|frame: Bytes| future::ready(Ok::<_, FrameError>(wire::ws::message(frame))));
    let stream = stream.filter_map(|message| future::ready(wire::ws::frame(message)));
    connection::serve(gateway, Box::pin(stream), Box::pin(sink), peer, "ws").await;
}

/// Accepts the upgrade only on `/ws`.
#[allow(clippy::result_large_err)] // the signature is tungstenite's callback type
fn only_ws_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == "/ws" {
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some("not found: the WebSocket endpoint is /ws".into()));
    *refusal.status_mut() = StatusCode::NOT_FOUND;
    Err(refusal)
}
