//! HTTP/2 settings of every gRPC connection between nodes: the server every node serves on
//! (`runtime`) and the peer channels that call it (`pool`), chosen together so a legitimate
//! burst from a peer is never taken for a flood.
//!
//! # Why these numbers
//!
//! h2 guards against floods of small frames: every DATA frame that does not end its stream and
//! carries fewer than 256 bytes is charged `256 - len` bytes against a budget of the
//! connection until the application reads the frame, and a spent budget is answered with
//! `GOAWAY ENHANCE_YOUR_CALM` ("too_many_data_frames"), which fails every call on the
//! connection. The budget is half the connection's flow-control window (h2 0.4.19 on; the
//! workspace asks for 0.4.20) and cannot be set through tonic. A unary gRPC call sends its
//! message in one such frame (END_STREAM follows in an empty frame), so a login of about 40
//! bytes costs about 220 bytes of budget until its handler reads it; a response costs the same
//! at the caller until the caller reads it.
//!
//! With hyper's defaults (1 MiB window, so a 512 KiB budget, and no stream limit) about 2,400
//! calls could wait unread: a node starved of CPU for a moment while a gateway forwarded a
//! login storm read more than that at once and cut the gateway off, losing thousands of logins.
//!
//! Now a connection holds at most [`MAX_CONCURRENT_STREAMS`] open calls (a caller queues the
//! rest; it does not fail them) plus at most [`MAX_PENDING_RESETS`] calls its caller gave up on
//! before the server took them. Each holds at most one unread small frame (a message up to
//! 16 KiB is one frame; larger pieces are not charged), so at most (4,096 + 4,096) × 255 =
//! 2,088,960 bytes are charged, within the 2,097,152-byte budget of a [`CONNECTION_WINDOW`] of
//! 4 MiB. The same window at the caller holds 4,096 unread responses with room to spare.
//!
//! What still cuts a connection off is a peer giving up on more than 4,096 calls the server has
//! not taken yet: a legitimate caller does that only to a server stalled for longer than the
//! caller's timeout with thousands of calls open, when those calls have failed anyway. (A
//! stream beyond the limit is refused alone, with `REFUSED_STREAM`, which callers send again;
//! h2 callers do not open one.)

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

/// Calls one peer may have open on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`). Callers
/// beyond it wait in their channel's queue, within their own timeout.
pub const MAX_CONCURRENT_STREAMS: u32 = 4_096;

/// Calls a peer may have given up on (reset) before the server took them, before the server
/// takes it for a "rapid reset" attack. h2's default of 20 is exceeded by a burst of timeouts
/// at a node stalled for a moment; a legitimate caller has at most [`MAX_CONCURRENT_STREAMS`]
/// calls open to give up on.
pub const MAX_PENDING_RESETS: u32 = MAX_CONCURRENT_STREAMS;

/// Flow-control window of a connection, both directions; h2's small-frame budget is half of it.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Flow-control window of one call, both directions (hyper's server default).
pub const STREAM_WINDOW: u32 = 1024 * 1024;

/// The most h2 charges for one small DATA frame (`256 - 1` bytes).
const MAX_CHARGE_PER_FRAME: u32 = 255;

// The arithmetic above, checked when this compiles.
const _: () = assert!(
    (MAX_CONCURRENT_STREAMS + MAX_PENDING_RESETS) * MAX_CHARGE_PER_FRAME <= CONNECTION_WINDOW / 2
);

/// The gRPC server builder every node serves with.
pub fn server() -> Server {
    Server::builder()
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS as usize))
}

/// The endpoint of a peer channel: the same windows as the server, Nagle off, keep-alive.
pub(crate) fn endpoint(uri: String, connect_timeout: Duration) -> Endpoint {
    Endpoint::from_shared(uri)
        .expect("a socket address is a valid URI authority")
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
}
