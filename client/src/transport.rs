//! The two transports as one pair of frame stream and frame sink.

use std::{net::SocketAddr, pin::Pin};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt, future};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wire::{FrameCodec, FrameError};

/// Incoming frame bodies.
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes, FrameError>> + Send>>;
/// Outgoing frame bodies.
pub(crate) type FrameSink = Pin<Box<dyn Sink<Bytes, Error = FrameError> + Send>>;

/// Where a gateway listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A WebSocket URL, e.g. `ws://127.0.0.1:7000/ws`.
    WebSocket(String),
    /// A raw TCP address (length-prefixed frames).
    Tcp(SocketAddr),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::WebSocket(url) => f.write_str(url),
            Address::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

pub(crate) async fn connect(
    address: &Address,
    max_frame: usize,
) -> Result<(FrameStream, FrameSink), FrameError> {
    match address {
        Address::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sink, stream) = Framed::new(stream, FrameCodec::new(max_frame)).split();
            Ok((Box::pin(stream), Box::pin(sink)))
        }
        Address::WebSocket(url) => {
            let config = wire::ws::config(max_frame);
            let (ws, _) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
                    .await
                    .map_err(|e| FrameError::Transport(e.to_string()))?;
            let (sink, stream) = ws.split();
            let sink = sink
                .sink_map_err(|e| FrameError::Transport(e.to_string()))
                .with(|frame: Bytes| future::ready(Ok::<_, FrameError>(wire::ws::message(frame))));
            let stream = stream.filter_map(|message| future::ready(wire::ws::frame(message)));
            Ok((Box::pin(stream), Box::pin(sink)))
        }
    }
}
