//! WebSocket input after the handshake: the bytes a client sends, read by a server-side
//! tungstenite socket with our settings (`wire::ws::config`), messages converted with
//! `wire::ws::frame` as the gateway does.

use std::io::{self, Read, Write};

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use tungstenite::{WebSocket, protocol::Role};
use wire::{DEFAULT_MAX_FRAME, FrameError};

/// Input: a frame limit, a read size, then raw bytes from the client.
///
/// Properties: no frame body above the limit is ever returned; a size error names our limit and
/// a size above it; reading ends (every read consumes input or fails).
pub fn ws_bytes(data: &[u8]) {
    let (settings, stream) = data.split_at(data.len().min(2));
    let max = match settings.first().copied().unwrap_or(0) {
        s @ 0..=127 => usize::from(s),
        s @ 128..=191 => usize::from(s) * 64,
        _ => DEFAULT_MAX_FRAME,
    };
    let read_size = usize::from(settings.get(1).copied().unwrap_or(0)).max(1);
    let outputs = read_all(max, stream, read_size);
    for output in outputs {
        if let Output::Frame(frame) = output {
            assert!(
                frame.len() <= max,
                "a frame of {} bytes passed",
                frame.len()
            );
        }
    }
}

/// Input: a description of well-formed client frames (messages, fragments, control frames,
/// masks), encoded by a small client-side writer and read back by the server socket.
///
/// Properties: what the gateway receives is exactly what the model expects: every binary
/// message within the limit, whole and unchanged; a text message refused as unsupported; a
/// message above the limit (however fragmented, or only announced) refused as too large, and
/// nothing after it; control frames invisible. `message` and `frame` convert a body both ways.
pub fn ws_frames(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(case) = Case::arbitrary(&mut input) else {
        return;
    };
    let outputs = read_all(case.max, &case.wire, case.read_size);
    assert_eq!(outputs, case.expected, "max {}", case.max);
    for output in &case.expected {
        if let Output::Frame(body) = output {
            let round_trip = wire::ws::frame(Ok(wire::ws::message(body.clone())));
            assert!(matches!(round_trip, Some(Ok(b)) if b == body));
        }
    }
}

/// What the gateway's connection loop sees for one message or error.
#[derive(PartialEq, Eq)]
enum Output {
    Frame(Bytes),
    Unsupported,
    TooLarge,
    Transport,
}

impl std::fmt::Debug for Output {
    /// Frames by length and first bytes: a failing case may hold megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Frame(body) => {
                let head = &body[..body.len().min(8)];
                write!(f, "Frame({} bytes, starting {head:02x?})", body.len())
            }
            Output::Unsupported => f.write_str("Unsupported"),
            Output::TooLarge => f.write_str("TooLarge"),
            Output::Transport => f.write_str("Transport"),
        }
    }
}

/// Reads every message the way the gateway's stream does, until the first error.
fn read_all(max: usize, stream: &[u8], read_size: usize) -> Vec<Output> {
    let peer = Peer {
        data: stream,
        read_size,
    };
    let mut socket = WebSocket::from_raw_socket(peer, Role::Server, Some(wire::ws::config(max)));
    let mut outputs = Vec::new();
    // Every message takes at least a 2-byte header, so a reader that makes progress is done by then.
    for _ in 0..stream.len() / 2 + 2 {
        let message = socket.read();
        let failed = message.is_err();
        match wire::ws::frame(message) {
            Some(Ok(frame)) => outputs.push(Output::Frame(frame)),
            Some(Err(FrameError::Unsupported(_))) => outputs.push(Output::Unsupported),
            Some(Err(FrameError::TooLarge { size, max: limit })) => {
                assert_eq!(limit, max, "a size error names another limit");
                assert!(size > max, "a size error for {size} bytes, limit {max}");
                outputs.push(Output::TooLarge);
            }
            Some(Err(FrameError::Transport(_))) => outputs.push(Output::Transport),
            // A close frame ends the stream the way the old `None` did; the reader goes on
            // until tungstenite reports the end.
            Some(Err(FrameError::Closed)) | None => {}
        }
        if failed {
            return outputs;
        }
    }
    panic!("the socket kept returning messages past the end of its input");
}

/// The client side of the connection: hands out its bytes in reads of at most `read_size`, and
/// swallows what the server writes (pongs, the close reply).
struct Peer<'a> {
    data: &'a [u8],
    read_size: usize,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.read_size).min(self.data.len());
        let (now, rest) = self.data.split_at(n);
        buf[..n].copy_from_slice(now);
        self.data = rest;
        Ok(n)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A generated conversation: the bytes a client sends and what the server must make of them.
struct Case {
    max: usize,
    read_size: usize,
    wire: Vec<u8>,
    expected: Vec<Output>,
    /// The data message being assembled from fragments, and whether it is text.
    message: Vec<u8>,
    text: bool,
    /// The server stops reading here: after a close, a refused frame or a protocol error.
    ended: bool,
}

const OP_CONTINUE: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

impl Case {
    fn arbitrary(u: &mut Unstructured<'_>) -> Result<Case> {
        // Limits up to 64 KiB, far above tungstenite's 2 KiB reads: the code paths of the 1 MiB
        // default (which `ws_bytes` uses) at a fraction of the time per input.
        let max = match u.int_in_range(0..=2u8)? {
            0 => usize::from(u.int_in_range(0..=64u8)?),
            1 => usize::from(u.int_in_range(0..=4096u16)?),
            _ => 1 << 16,
        };
        let read_size = match u.int_in_range(0..=2u8)? {
            0 => usize::from(u.int_in_range(1..=16u8)?),
            1 => usize::from(u.arbitrary::<u16>()?).max(1),
            _ => usize::MAX,
        };
        // Tiny reads of a megabyte message cost much time and find nothing more.
        let read_size = read_size.max(max / 256);
        let mut case = Case {
            max,
            read_size,
            wire: Vec::new(),
            expected: Vec::new(),
            message: Vec::new(),
            text: false,
            ended: false,
        };
        let items = u.int_in_range(0..=8u8)?;
        for _ in 0..items {
            case.item(u)?;
            if case.ended {
                return Ok(case);
            }
        }
        // The stream ends without a closing handshake: a transport error.
        case.expected.push(Output::Transport);
        Ok(case)
    }

    /// Adds one message or control frame.
    fn item(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0..=7u8)? {
            0 | 1 => {
                let payload = self.payload(u)?;
                self.data_message(u, OP_BINARY, &payload)
            }
            2 => {
                let text = self.text(u)?;
                self.data_message(u, OP_TEXT, text.as_bytes())
            }
            3 => {
                let payload = control_payload(u)?;
                self.frame(u, true, OP_PING, payload)
            }
            4 => {
                let payload = control_payload(u)?;
                self.frame(u, true, OP_PONG, payload)
            }
            5 => {
                // A close, with no body or a normal-closure code and a reason.
                let mut payload = Vec::new();
                if u.arbitrary()? {
                    payload.extend_from_slice(&1000u16.to_be_bytes());
                    let reason: &str = u.arbitrary()?;
                    payload.extend(reason.bytes().take(64));
                    while std::str::from_utf8(&payload[2..]).is_err() {
                        payload.pop();
                    }
                }
                self.frame(u, true, OP_CLOSE, &payload)
            }
            6 => {
                // A header announcing more than the limit, and not a byte of it.
                let len = u.int_in_range(self.max as u64 + 1..=i64::MAX as u64)?;
                let opcode = if u.arbitrary()? { OP_BINARY } else { OP_TEXT };
                self.header(true, opcode, len, Some(u.arbitrary()?));
                self.end(Some(Output::TooLarge));
                Ok(())
            }
            _ => {
                // A protocol violation: an unmasked frame, or a reserved bit set.
                let payload: &[u8] = u.arbitrary()?;
                let payload = &payload[..payload.len().min(self.max)];
                if u.arbitrary()? {
                    self.header(true, OP_BINARY, payload.len() as u64, None);
                    self.wire.extend_from_slice(payload);
                } else {
                    let start = self.wire.len();
                    self.write_frame(u, true, OP_BINARY, payload)?;
                    self.wire[start] |= 0x40;
                }
                self.end(Some(Output::Transport));
                Ok(())
            }
        }
    }

    /// A binary payload: bytes from the input, or a run of one byte of a length near the limit
    /// (to reach large limits with little input).
    fn payload(&self, u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
        if u.arbitrary()? {
            return Ok(u.arbitrary::<&[u8]>()?.to_vec());
        }
        let len = self.near_limit(u, 1)?;
        Ok(vec![u.arbitrary()?; len])
    }

    /// A text payload, from the input or as a run of one character near the limit.
    fn text(&self, u: &mut Unstructured<'_>) -> Result<String> {
        if u.arbitrary()? {
            return Ok(u.arbitrary::<&str>()?.to_owned());
        }
        let c: char = u.arbitrary()?;
        let count = self.near_limit(u, c.len_utf8())?;
        Ok(std::iter::repeat_n(c, count).collect())
    }

    /// A count of `unit`-byte items whose size is within 64 units of the limit, either side.
    fn near_limit(&self, u: &mut Unstructured<'_>, unit: usize) -> Result<usize> {
        let around = self.max / unit;
        u.int_in_range(around.saturating_sub(64)..=around + 64)
    }

    /// One data message in one to four fragments, with control frames between them.
    fn data_message(&mut self, u: &mut Unstructured<'_>, opcode: u8, payload: &[u8]) -> Result<()> {
        let mut cuts: Vec<usize> = (0..u.int_in_range(0..=3u8)?)
            .map(|_| u.int_in_range(0..=payload.len()))
            .collect::<Result<_>>()?;
        cuts.sort_unstable();
        cuts.push(payload.len());
        let mut start = 0;
        for (i, &end) in cuts.iter().enumerate() {
            let last = i + 1 == cuts.len();
            let op = if i == 0 { opcode } else { OP_CONTINUE };
            self.frame(u, last, op, &payload[start..end])?;
            start = end;
            if !last && !self.ended && u.ratio(1, 4)? {
                let ping = control_payload(u)?;
                self.frame(u, true, OP_PING, ping)?;
            }
            if self.ended {
                break;
            }
        }
        Ok(())
    }

    /// One masked client frame, and what the server makes of it.
    fn frame(
        &mut self,
        u: &mut Unstructured<'_>,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> Result<()> {
        self.write_frame(u, fin, opcode, payload)?;
        self.expect(fin, opcode, payload);
        Ok(())
    }

    /// One masked client frame.
    fn write_frame(
        &mut self,
        u: &mut Unstructured<'_>,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> Result<()> {
        let mask: [u8; 4] = u.arbitrary()?;
        self.header(fin, opcode, payload.len() as u64, Some(mask));
        // Masked in place, eight bytes at a time: bytewise, masking costs more than reading.
        let start = self.wire.len();
        self.wire.extend_from_slice(payload);
        let mask8 = u64::from_ne_bytes([mask, mask].concat().try_into().expect("8 bytes"));
        let mut words = self.wire[start..].chunks_exact_mut(8);
        for word in &mut words {
            let masked = u64::from_ne_bytes((&*word).try_into().expect("8 bytes")) ^ mask8;
            word.copy_from_slice(&masked.to_ne_bytes());
        }
        for (byte, m) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
            *byte ^= m;
        }
        Ok(())
    }

    /// The model: the limit applies to every frame, control frames included, and to a data
    /// message's fragments together; a whole binary message is delivered, a text message refused.
    fn expect(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let data = matches!(opcode, OP_CONTINUE | OP_TEXT | OP_BINARY);
        let assembled = if data { self.message.len() } else { 0 };
        if payload.len() > self.max || assembled + payload.len() > self.max {
            return self.end(Some(Output::TooLarge));
        }
        match opcode {
            OP_CLOSE => self.end(None),
            OP_PING | OP_PONG => {}
            _ => {
                if opcode != OP_CONTINUE {
                    self.text = opcode == OP_TEXT;
                }
                self.message.extend_from_slice(payload);
                if fin {
                    let message = std::mem::take(&mut self.message);
                    self.expected.push(if self.text {
                        Output::Unsupported
                    } else {
                        Output::Frame(Bytes::from(message))
                    });
                }
            }
        }
    }

    /// The server stops reading, after `output` if any.
    fn end(&mut self, output: Option<Output>) {
        if !self.ended {
            self.expected.extend(output);
            self.ended = true;
        }
    }

    /// A frame header (RFC 6455 section 5.2), with the shortest length encoding.
    fn header(&mut self, fin: bool, opcode: u8, len: u64, mask: Option<[u8; 4]>) {
        self.wire.push(u8::from(fin) << 7 | opcode);
        let masked = if mask.is_some() { 0x80 } else { 0 };
        match len {
            0..=125 => self.wire.push(masked | len as u8),
            126..=0xffff => {
                self.wire.push(masked | 126);
                self.wire.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.wire.push(masked | 127);
                self.wire.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(mask) = mask {
            self.wire.extend_from_slice(&mask);
        }
    }
}

/// A control frame's body: at most 125 bytes.
fn control_payload<'a>(u: &mut Unstructured<'a>) -> Result<&'a [u8]> {
    let payload: &[u8] = u.arbitrary()?;
    Ok(&payload[..payload.len().min(125)])
}
