//! The client protocol on the wire, shared by the gateway and the client library.
//!
//! # Layout
//! - `codec`: [`FrameCodec`], the TCP length-prefix framing with its size limit.
//! - [`envelope`]: constructors for every envelope kind, and status code names.
//! - [`ws`]: WebSocket settings and message/frame conversion.
//! - [`auth`]: the default login token scheme.

pub mod auth;
mod codec;
pub mod envelope;
#[cfg(feature = "ws")]
pub mod ws;

pub use codec::{DEFAULT_MAX_FRAME, FrameCodec, FrameError};
pub use proto::client::v1::{Envelope, ErrorCode, Kind};
