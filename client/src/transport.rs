//! The two transports as one pair of frame stream and frame sink.

use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt, future};
use tokio::net::{TcpSocket, TcpStream};
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

impl Address {
    /// An address as gateways announce them: `ws://host:port/ws` (or `wss://`) or
    /// `tcp://ip:port`.
    pub fn parse(text: &str) -> Option<Address> {
        if text.starts_with("ws://") || text.starts_with("wss://") {
            return Some(Address::WebSocket(text.to_owned()));
        }
        text.strip_prefix("tcp://")?.parse().ok().map(Address::Tcp)
    }
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
    local_ip: Option<IpAddr>,
) -> Result<(FrameStream, FrameSink), FrameError> {
    match address {
        Address::Tcp(addr) => {
            let stream = tcp_connect(*addr, local_ip).await?;
            let (sink, stream) = Framed::new(stream, FrameCodec::new(max_frame)).split();
            Ok((Box::pin(stream), Box::pin(sink)))
        }
        Address::WebSocket(url) => {
            let config = wire::ws::config(max_frame);
            let transport =
                |e: tokio_tungstenite::tungstenite::Error| FrameError::Transport(e.to_string());
            match local_ip {
                None => {
                    let (ws, _) = tokio_tungstenite::connect_async_with_config(
                        url.as_str(),
                        Some(config),
                        true,
                    )
                    .await
                    .map_err(transport)?;
                    Ok(ws_pair(ws))
                }
                Some(ip) => {
                    let uri: tokio_tungstenite::tungstenite::http::Uri = url
                        .parse()
                        .map_err(|e| FrameError::Transport(format!("bad URL {url}: {e}")))?;
                    let host = uri.host().unwrap_or("127.0.0.1");
                    let port = uri.port_u16().unwrap_or(80);
                    let addr = tokio::net::lookup_host((host, port))
                        .await?
                        .next()
                        .ok_or_else(|| FrameError::Transport(format!("no address for {host}")))?;
                    let stream = tcp_connect(addr, Some(ip)).await?;
                    let (ws, _) = tokio_tungstenite::client_async_with_config(
                        url.as_str(),
                        stream,
                        Some(config),
                    )
                    .await
                    .map_err(transport)?;
                    Ok(ws_pair(ws))
                }
            }
        }
    }
}

/// A TCP connection with Nagle off, from `local_ip` when given.
async fn tcp_connect(addr: SocketAddr, local_ip: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match local_ip {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket as a frame stream and sink of binary messages.
fn ws_pair<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> (FrameStream, FrameSink)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let sink =
        sink.with(|frame: Bytes| future::ready(Ok::<_, FrameError>(wire::ws::message(frame))));
    let stream = stream.filter_map(|message| future::ready(wire::ws::frame(message)));
    (Box::pin(stream), Box::pin(sink))
}
