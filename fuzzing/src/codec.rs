//! The TCP frame codec: one piece against random chunks, and the read buffer's growth.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use arbitrary::Unstructured;
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::{Decoder, Encoder, FramedRead};
use wire::{DEFAULT_MAX_FRAME, FrameCodec};

/// The read buffer the gateway gives a TCP session (`gateway/src/transport.rs`).
const INITIAL_CAPACITY: usize = 1024;

/// Input: a frame limit, read sizes, then the bytes a client sends.
///
/// Properties:
/// - the stream decoded from one buffer and read in random chunks through `FramedRead` gives
///   the same frames and the same error;
/// - the frames re-encode to exactly the bytes they were read from, and none exceeds the limit;
/// - `decode` never allocates, and the read buffer's capacity never exceeds what was fed plus
///   the limit (and a prefix), nor twice what was fed: memory follows the bytes received, never
///   a length a prefix claims.
pub fn frame_codec(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let max = match input.int_in_range(0..=3u8).unwrap_or(0) {
        0 => usize::from(input.int_in_range(0..=64u8).unwrap_or(0)),
        1 => usize::from(input.int_in_range(0..=4096u16).unwrap_or(0)),
        2 => 1 << 16,
        _ => DEFAULT_MAX_FRAME,
    };
    let reads = input.int_in_range(0..=15u8).unwrap_or(0);
    let read_sizes: Vec<usize> = (0..reads)
        .map(|_| usize::from(input.arbitrary::<u16>().unwrap_or(0)).max(1))
        .collect();
    let stream = input.take_rest();

    let whole = decode_whole(max, stream);
    let chunked = decode_chunked(max, stream, read_sizes);
    assert_eq!(whole, chunked, "one piece and chunks disagree");

    let mut encoded = BytesMut::new();
    for frame in &whole.frames {
        assert!(
            frame.len() <= max,
            "a frame of {} bytes passed",
            frame.len()
        );
        FrameCodec::new(max)
            .encode(frame.clone(), &mut encoded)
            .expect("a decoded frame re-encodes");
    }
    assert_eq!(
        &encoded[..],
        &stream[..encoded.len()],
        "frames re-encode to other bytes"
    );
    if whole.error.is_none() {
        assert_eq!(encoded.len(), stream.len(), "bytes left without an error");
    }
}

/// What a stream decodes to: its frames, then the error that ended it, if any.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Bytes>,
    error: Option<String>,
}

/// Decodes from one buffer holding the whole stream, as `FramedRead` would at end of input.
fn decode_whole(max: usize, stream: &[u8]) -> Decoded {
    let mut codec = FrameCodec::new(max);
    let mut buffer = BytesMut::from(stream);
    let mut frames = Vec::new();
    loop {
        let capacity = buffer.capacity();
        let result = codec.decode(&mut buffer);
        assert!(buffer.capacity() <= capacity, "decode allocated");
        match result {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(error) => {
                return Decoded {
                    frames,
                    error: Some(error.to_string()),
                };
            }
        }
    }
    let error = match codec.decode_eof(&mut buffer) {
        Ok(frame) => {
            assert_eq!(frame, None, "a frame appeared at end of input");
            None
        }
        Err(error) => Some(error.to_string()),
    };
    Decoded { frames, error }
}

/// Reads the stream through `FramedRead` in chunks of the given sizes (cycled), checking the
/// read buffer's capacity after every frame.
fn decode_chunked(max: usize, stream: &[u8], read_sizes: Vec<usize>) -> Decoded {
    let reader = Chunked {
        data: stream,
        fed: 0,
        read_sizes,
        next: 0,
    };
    let mut framed = FramedRead::with_capacity(reader, FrameCodec::new(max), INITIAL_CAPACITY);
    let mut frames = Vec::new();
    loop {
        let item = framed
            .next()
            .now_or_never()
            .expect("an in-memory reader never waits");
        // `split_to` hands a frame's bytes away with the buffer's capacity: add them back to see
        // the capacity the buffer reached while reading the frame.
        let handed_out = match &item {
            Some(Ok(frame)) => 4 + frame.len(),
            _ => 0,
        };
        let reached = framed.read_buffer().capacity() + handed_out;
        let fed = framed.get_ref().fed;
        assert!(
            reached <= INITIAL_CAPACITY.max(fed + max + 4),
            "read buffer reached {reached} bytes after {fed} bytes fed (limit {max})"
        );
        assert!(
            reached <= INITIAL_CAPACITY.max(2 * fed),
            "read buffer reached {reached} bytes after {fed} bytes fed: allocation ahead of data"
        );
        match item {
            Some(Ok(frame)) => frames.push(frame),
            Some(Err(error)) => {
                return Decoded {
                    frames,
                    error: Some(error.to_string()),
                };
            }
            None => {
                return Decoded {
                    frames,
                    error: None,
                };
            }
        }
    }
}

/// An in-memory peer that delivers its bytes in reads of varying size.
struct Chunked<'a> {
    data: &'a [u8],
    fed: usize,
    read_sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = match self.read_sizes.get(self.next) {
            Some(&size) => size,
            None => usize::MAX,
        };
        self.next = (self.next + 1) % self.read_sizes.len().max(1);
        let n = size.min(buf.remaining()).min(self.data.len() - self.fed);
        let start = self.fed;
        buf.put_slice(&self.data[start..start + n]);
        self.fed += n;
        Poll::Ready(Ok(()))
    }
}
