//! TCP framing: a 4-byte big-endian length, then that many bytes of encoded envelope.
//!
//! The length prefix is never trusted for allocation: a frame's bytes are buffered only as they
//! arrive, and a prefix above the limit is an error at once.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default largest frame (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame (or its announced length) exceeds the limit.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced or actual size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The transport sent something that is not a binary frame (a WebSocket text message).
    #[error("unsupported frame: {0}")]
    Unsupported(&'static str),
    /// The connection failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// The peer closed the connection cleanly (a WebSocket close frame): a goodbye.
    #[error("the peer closed the connection")]
    Closed,
}

impl From<std::io::Error> for FrameError {
    fn from(error: std::io::Error) -> Self {
        FrameError::Transport(error.to_string())
    }
}

/// Length-prefixed frames with a size limit.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec accepting frames up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge {
                size: len,
                max: self.max,
            });
        }
        if src.len() < 4 + len {
            // Deliberately no `reserve(len)`: memory grows with bytes received, not claimed.
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.len() > self.max {
            return Err(FrameError::TooLarge {
                size: frame.len(),
                max: self.max,
            });
        }
        dst.reserve(4 + frame.len());
        dst.put_u32(frame.len() as u32);
        dst.put_slice(&frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(max: usize, input: &[u8]) -> (Vec<Bytes>, Option<String>, usize) {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None, buf.capacity()),
                Err(e) => return (frames, Some(e.to_string()), buf.capacity()),
            }
        }
    }

    #[test]
    fn frames_split_on_their_length_prefix() {
        let (frames, error, _) = decode_all(16, &[0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(frames, vec![Bytes::from_static(b"hi"), Bytes::new()]);
        assert_eq!(error, None, "a partial frame waits for more bytes");
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        let (frames, error, capacity) = decode_all(1 << 20, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert!(frames.is_empty());
        assert_eq!(
            error.as_deref(),
            Some("frame of 4294967295 bytes exceeds the limit of 1048576 bytes")
        );
        assert!(capacity < 64, "buffer grew to {capacity} bytes");
    }

    #[test]
    fn a_claimed_length_within_the_limit_allocates_nothing_up_front() {
        let (_, error, capacity) = decode_all(1 << 20, &[0x00, 0x0f, 0xff, 0xff, 1]);
        assert_eq!(error, None);
        assert!(capacity < 64, "buffer grew to {capacity} bytes");
    }

    #[test]
    fn encoding_refuses_oversized_frames() {
        let mut out = BytesMut::new();
        assert!(
            FrameCodec::new(2)
                .encode(Bytes::from_static(b"abc"), &mut out)
                .is_err()
        );
        FrameCodec::new(3)
            .encode(Bytes::from_static(b"abc"), &mut out)
            .expect("fits");
        assert_eq!(&out[..], &[0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
