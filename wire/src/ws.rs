//! The client protocol over WebSocket: binary messages are frames; settings sized on purpose.

use bytes::Bytes;
use tungstenite::{Message, error::CapacityError, protocol::WebSocketConfig};

use crate::FrameError;

/// WebSocket settings for a frame limit of `max_frame` bytes. The read buffer is 2 KiB, not
/// tungstenite's 128 KiB default: tungstenite zero-fills the whole read buffer before every
/// read, so all of it stays resident for every connection, idle or not. 2 KiB takes a typical
/// game message in one read; larger messages still arrive whole, over more reads. (4 KiB cost
/// about 2 KiB more per idle session in `bench s2-idle-memory`.)
pub fn config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2048)
        .write_buffer_size(8192)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// One WebSocket message as a frame body. Control messages (ping, pong) yield `None`.
pub fn frame(message: Result<Message, tungstenite::Error>) -> Option<Result<Bytes, FrameError>> {
    match message {
        Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
        Ok(Message::Text(_)) => Some(Err(FrameError::Unsupported("text message"))),
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
        Ok(Message::Close(_)) => Some(Err(FrameError::Closed)),
        Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
            Some(Err(FrameError::TooLarge {
                size,
                max: max_size,
            }))
        }
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => None,
        Err(error) => Some(Err(FrameError::Transport(error.to_string()))),
    }
}

/// A WebSocket error as a frame error, so a sink of messages becomes a sink of frames with
/// `SinkExt::with` (not `sink_map_err`: its mapping runs once, and a second error, such as a
/// close after a failed send, panics).
impl From<tungstenite::Error> for FrameError {
    fn from(error: tungstenite::Error) -> Self {
        FrameError::Transport(error.to_string())
    }
}

/// A frame body as a WebSocket message.
pub fn message(frame: Bytes) -> Message {
    Message::Binary(frame)
}
