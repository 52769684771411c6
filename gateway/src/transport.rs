//! Accept loops for the two client transports: WebSocket (binary messages on `/ws`) and TCP
//! (length-prefixed frames). Each accepted connection becomes a frame stream and sink served
//! by `connection::serve`.
//!
//! Every client socket gets Nagle off and a capped kernel send buffer
//! (`--socket-send-buffer-bytes`): the session's queue is bounded in bytes and age, and a queue
//! is only bounded if the kernel buffer behind it is too (left alone, Linux grows a socket's
//! send buffer to megabytes for a client that does not read).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt, future};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream, tcp::OwnedReadHalf};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request, Response},
    http::StatusCode,
    protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
};
use tokio_util::{
    codec::{Decoder, Encoder, FramedRead, FramedWrite},
    sync::CancellationToken,
};
use tracing::{debug, warn};
use wire::{ErrorCode, FrameCodec, FrameError};

use crate::{
    connection::{self, Outgoing},
    gateway::Gateway,
    socket::Socket,
};

/// How long a client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop`, handing each to `serve`. Accept errors (out of file
/// descriptors, usually) back off instead of spinning.
async fn accept_loop(
    listener: TcpListener,
    stop: CancellationToken,
    transport: &'static str,
    send_buffer: usize,
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
        if send_buffer > 0
            && let Err(error) = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer)
        {
            debug!(%error, "could not cap the socket send buffer");
        }
        serve(stream, peer);
    }
}

pub(crate) async fn accept_tcp(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let codec = TcpCodec(FrameCodec::new(gateway.limits.max_frame));
    let send_buffer = gateway.limits.socket_send_buffer;
    accept_loop(listener, stop, "tcp", send_buffer, |stream, peer| {
        let (read, socket) = Socket::split(stream);
        let (stream, sink) = tcp_framed(read, &socket, codec);
        gateway.tracker.spawn(connection::serve(
            gateway.clone(),
            Box::pin(stream),
            Box::pin(sink),
            peer,
            "tcp",
            Some(socket),
        ));
    })
    .await;
}

/// The TCP framing with the writer's close as a no-op (TCP has no close frame: closing the
/// sink shuts the socket for writing).
#[derive(Clone, Copy, Debug)]
struct TcpCodec(FrameCodec);

impl Decoder for TcpCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.0.decode(src)
    }
}

impl Encoder<Outgoing> for TcpCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Outgoing, dst: &mut BytesMut) -> Result<(), FrameError> {
        match item {
            Outgoing::Frame(frame) => self.0.encode(frame, dst),
            Outgoing::Push(push) => {
                // Straight into the write buffer: the shared payload is copied once, here.
                let envelope = wire::envelope::push(push.seq, push.route, push.payload);
                dst.reserve(framed_len(&envelope));
                put_framed(&envelope, dst).map_err(|e| FrameError::Transport(e.to_string()))
            }
            Outgoing::Raw(rest) => {
                dst.put_slice(&rest);
                Ok(())
            }
            Outgoing::Close(_) => Ok(()),
        }
    }
}

/// Bytes `envelope` takes as a TCP frame.
pub(crate) fn framed_len(envelope: &wire::Envelope) -> usize {
    4 + envelope.encoded_len()
}

/// Puts `envelope` into `dst` as a TCP frame: its length (4 bytes, big-endian), then it.
pub(crate) fn put_framed(
    envelope: &wire::Envelope,
    dst: &mut impl BufMut,
) -> Result<(), prost::EncodeError> {
    dst.put_u32(envelope.encoded_len() as u32);
    envelope.encode(dst)
}

/// Frames over a client's TCP connection, read and written as two independent halves of the
/// socket, with buffers sized for the idle session most connections are: a 1 KiB read
/// buffer (a typical message in one read; it grows only for a larger frame) and a write buffer
/// allocated on the first write, growing to the largest burst. Writes still batch up to 2 KiB
/// before the sink makes room by flushing. (Framed's defaults, 8 KiB each, cost about 3 KiB
/// more per idle session in `bench s2-idle-memory`.)
fn tcp_framed(
    read: OwnedReadHalf,
    socket: &Socket,
    codec: TcpCodec,
) -> (
    FramedRead<OwnedReadHalf, TcpCodec>,
    FramedWrite<Socket, TcpCodec>,
) {
    let read = FramedRead::with_capacity(read, codec, 1024);
    let mut write = FramedWrite::new(socket.clone(), codec);
    write.set_backpressure_boundary(2048);
    *write.write_buffer_mut() = BytesMut::new();
    (read, write)
}

pub(crate) async fn accept_ws(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let config = wire::ws::config(gateway.limits.max_frame);
    let send_buffer = gateway.limits.socket_send_buffer;
    accept_loop(listener, stop, "ws", send_buffer, |stream, peer| {
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
    // Boxed: it is over before the session starts, and inline it would stay in the size of
    // every connection's task (about 0.5 KiB per session).
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        only_ws_path,
        Some(config),
    ));
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
    let sink = sink.with(|out: Outgoing| future::ready(Ok::<_, FrameError>(ws_message(out))));
    let stream = stream.filter_map(|message| future::ready(wire::ws::frame(message)));
    connection::serve(gateway, Box::pin(stream), Box::pin(sink), peer, "ws", None).await;
}

/// A frame as a binary message; the close as a close frame whose status says why: 1009 for a
/// frame over the limit, 1001 when the gateway drains, 1008 for a client that does not read,
/// 1000 otherwise.
fn ws_message(out: Outgoing) -> Message {
    match out {
        // Nothing is written in place on a WebSocket, so nothing is left over to write raw.
        Outgoing::Frame(frame) | Outgoing::Raw(frame) => wire::ws::message(frame),
        Outgoing::Push(push) => wire::ws::message(wire::envelope::encode(&wire::envelope::push(
            push.seq,
            push.route,
            push.payload,
        ))),
        Outgoing::Close(code) => {
            let status = match ErrorCode::try_from(code as i32) {
                Ok(ErrorCode::TooLarge) => CloseCode::Size,
                Ok(ErrorCode::ServerDraining) => CloseCode::Away,
                Ok(ErrorCode::SlowConsumer) => CloseCode::Policy,
                _ => CloseCode::Normal,
            };
            Message::Close(Some(CloseFrame {
                code: status,
                reason: wire::envelope::code_name(code).into(),
            }))
        }
    }
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
