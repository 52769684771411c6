//! A client's TCP socket, shared by the connection's reader, its writer task and whoever
//! queues a push for it while the writer is idle: that push is written in place, straight into
//! the socket from the task that numbered it (`outbox.rs` says when that is allowed), instead of
//! waking the writer task to copy it there. For a room broadcast this is one `send(2)` per
//! member and nothing else, the shape of the fan-out floor `bench s4-fanout` measures.
//!
//! Reads and writes are `read(2)` and `send(2)` on the shared socket (tokio's readiness, no
//! lock between the two directions), so the reader and the writer are independent halves.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{BufMut, Bytes};
use prost::Message;
use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

use crate::outbox::{Outbound, Written};

/// Pushes up to this size are framed on the stack when written in place.
const STACK_FRAME: usize = 512;

/// A client's TCP socket (cloning shares it).
#[derive(Clone, Debug)]
pub(crate) struct Socket(Arc<TcpStream>);

impl Socket {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Socket(Arc::new(stream))
    }

    /// `send(2)` without waiting: how much the socket took, or `WouldBlock`.
    fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .try_io(Interest::WRITABLE, || SockRef::from(&*self.0).send(buf))
    }

    /// Writes a push in place, framed as the TCP transport frames it (a 4-byte big-endian
    /// length, then the envelope): all of it, part of it (the rest to be queued), or nothing.
    pub(crate) fn write_in_place(&self, item: &Outbound) -> Written {
        match item {
            Outbound::Push(push) => {
                let envelope = wire::envelope::push(push.seq, push.route, push.payload.clone());
                let len = envelope.encoded_len();
                let mut stack = [0u8; STACK_FRAME];
                let mut heap = Vec::new();
                let frame: &[u8] = if 4 + len <= STACK_FRAME {
                    let mut out = &mut stack[..];
                    out.put_u32(len as u32);
                    if envelope.encode(&mut out).is_err() {
                        return Written::Nothing;
                    }
                    &stack[..4 + len]
                } else {
                    heap.reserve_exact(4 + len);
                    heap.put_u32(len as u32);
                    if envelope.encode(&mut heap).is_err() {
                        return Written::Nothing;
                    }
                    &heap
                };
                match self.try_send(frame) {
                    Ok(n) if n >= frame.len() => Written::All,
                    Ok(n) => Written::Part(Bytes::copy_from_slice(&frame[n..])),
                    Err(_) => Written::Nothing,
                }
            }
            // Responses, what comes after a partial write and the close are the writer task's
            // (see `Conn::queue` for why responses are).
            Outbound::Frame(_) | Outbound::Raw(_) | Outbound::Close => Written::Nothing,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.try_send(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}
