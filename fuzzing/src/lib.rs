//! Property checks over every decoder that reads bytes from the network, one function per fuzz
//! target. Each takes the fuzzer's input, runs the decoder the way production code does, and
//! panics when a property is violated; an input that decodes to nothing is fine.
//!
//! The cargo-fuzz package (`fuzz/`, nightly) calls these functions from its targets, and
//! `tests/corpus.rs` replays the kept corpus through them on stable, so `cargo test` exercises
//! every input the fuzzers found interesting.
//!
//! # Layout
//! - `codec`: the TCP frame codec, read through tokio-util's `FramedRead` as the gateway does.
//! - `envelope`: client envelope decoding.
//! - `websocket`: WebSocket bytes after the handshake, through tungstenite with our settings.
//! - `record`: the gossip record decoder.
//! - `datagram`: the UDP datagram decoder (tag and payload).
//! - `mesh_payload`: mesh requests and the typed handlers' payload decoding.
//! - `quorum_message`: the quorum's JSON mesh messages (Raft, STATUS, REGISTER).

mod codec;
mod datagram;
mod envelope;
mod mesh_payload;
mod quorum_message;
mod record;
mod websocket;

pub use codec::frame_codec;
pub use datagram::datagram;
pub use envelope::envelope;
pub use mesh_payload::mesh_payload;
pub use quorum_message::quorum_message;
pub use record::gossip_record;
pub use websocket::{ws_bytes, ws_frames};
