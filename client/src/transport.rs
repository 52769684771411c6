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
    /// A raw TCP address by host name, e.g. `tcp://gateway-2:7001` (a gateway run with
    /// `--public-host` announces such addresses). The name is resolved at each connect, so
    /// it follows the host to a new IP address.
    TcpHost {
        /// The host name (an IP literal parses as [`Address::Tcp`] instead).
        host: String,
        /// The port.
        port: u16,
    },
}

impl Address {
    /// An address as gateways announce them: `ws://host:port/ws` (or `wss://`),
    /// `tcp://ip:port` (`tcp://[v6]:port`) or `tcp://hostname:port`. Names are not resolved
    /// here but at connect time.
    pub fn parse(text: &str) -> Option<Address> {
        if text.starts_with("ws://") || text.starts_with("wss://") {
            return Some(Address::WebSocket(text.to_owned()));
        }
        let hostport = text.strip_prefix("tcp://")?;
        if let Ok(addr) = hostport.parse() {
            return Some(Address::Tcp(addr));
        }
        let (host, port) = hostport.rsplit_once(':')?;
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
        if host.is_empty() || !host.chars().all(name_char) {
            return None;
        }
        Some(Address::TcpHost {
            host: host.to_owned(),
            port: port.parse().ok()?,
        })
    }

    /// True for the raw TCP transport (by address or by name).
    pub fn is_tcp(&self) -> bool {
        matches!(self, Address::Tcp(_) | Address::TcpHost { .. })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::WebSocket(url) => f.write_str(url),
            Address::Tcp(addr) => write!(f, "tcp://{addr}"),
            Address::TcpHost { host, port } => write!(f, "tcp://{host}:{port}"),
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
            Ok(tcp_pair(stream, max_frame))
        }
        Address::TcpHost { host, port } => {
            // Resolved now, each address tried in turn (a name may have an IPv6 and an IPv4
            // address, only one of them listening).
            let mut last_error = None;
            for addr in tokio::net::lookup_host((host.as_str(), *port)).await? {
                if local_ip.is_some_and(|ip| ip.is_ipv4() != addr.is_ipv4()) {
                    continue;
                }
                match tcp_connect(addr, local_ip).await {
                    Ok(stream) => return Ok(tcp_pair(stream, max_frame)),
                    Err(error) => last_error = Some(error),
                }
            }
            Err(last_error.map_or_else(
                || FrameError::Transport(format!("no address for {host}")),
                FrameError::from,
            ))
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

/// A TCP connection as a frame stream and sink.
fn tcp_pair(stream: TcpStream, max_frame: usize) -> (FrameStream, FrameSink) {
    let (sink, stream) = Framed::new(stream, FrameCodec::new(max_frame)).split();
    (Box::pin(stream), Box::pin(sink))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_names_kept_for_connect_time() {
        let tcp = |a: &str| Some(Address::Tcp(a.parse().expect("a socket address")));
        assert_eq!(
            Address::parse("tcp://127.0.0.1:7001"),
            tcp("127.0.0.1:7001")
        );
        assert_eq!(Address::parse("tcp://[::1]:7001"), tcp("[::1]:7001"));
        let host = |h: &str, port| {
            Some(Address::TcpHost {
                host: h.to_owned(),
                port,
            })
        };
        assert_eq!(
            Address::parse("tcp://gateway-2:7001"),
            host("gateway-2", 7001)
        );
        assert_eq!(
            Address::parse("tcp://gw.example.internal:7011"),
            host("gw.example.internal", 7011)
        );
        assert_eq!(
            Address::parse("ws://gateway-2:7000/ws"),
            Some(Address::WebSocket("ws://gateway-2:7000/ws".to_owned()))
        );
        for bad in [
            "tcp://gateway-2",
            "tcp://:7001",
            "tcp://gateway-2:port",
            "tcp://gateway-2:70000",
            "tcp://gate way:7001",
            "tcp://a/b:7001",
            "http://gateway-2:7001",
            "gateway-2:7001",
        ] {
            assert_eq!(Address::parse(bad), None, "{bad}");
        }
        for text in [
            "tcp://gateway-2:7001",
            "tcp://127.0.0.1:7001",
            "tcp://[::1]:7001",
        ] {
            let address = Address::parse(text).expect("an address");
            assert!(address.is_tcp());
            assert_eq!(address.to_string(), text);
        }
    }

    #[tokio::test]
    async fn a_tcp_host_name_is_resolved_when_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("bound").port();
        let address = Address::parse(&format!("tcp://localhost:{port}")).expect("an address");
        assert!(matches!(address, Address::TcpHost { .. }));
        let accepted = tokio::spawn(async move { listener.accept().await.map(|(_, peer)| peer) });
        let (_stream, _sink) = connect(&address, 1 << 16, None).await.expect("connected");
        let peer = accepted.await.expect("joined").expect("accepted");
        assert!(peer.ip().is_loopback());
        // A name that resolves to nothing fails at connect time, not before.
        let unknown = Address::parse("tcp://no-such-host.invalid:7001").expect("parses");
        assert!(connect(&unknown, 1 << 16, None).await.is_err());
    }
}
