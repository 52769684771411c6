//! The write half of a client's TCP socket, shared by the connection's writer task and whoever
//! queues a push for it while the writer is idle: that push is written in place, straight into
//! the socket from the task that numbered it (`outbox.rs` says when that is allowed), instead
//! of waking the writer task to copy it there. For a room broadcast this is one `send(2)` per
//! member and nothing else, the shape of the fan-out floor `bench s4-fanout` measures. The
//! read half is tokio's own, read by the connection's reader.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use socket2::SockRef;
use tokio::{
    io::{AsyncWrite, Interest},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::{
    outbox::{Outbound, Written},
    transport::{framed_len, put_framed},
};

/// Pushes up to this size are framed on the stack when written in place.
const STACK_FRAME: usize = 512;

/// The write half of a client's TCP socket (cloning shares it; the socket is shut for writing
/// when the last clone goes).
#[derive(Clone, Debug)]
pub(crate) struct Socket(Arc<OwnedWriteHalf>);

impl Socket {
    /// The read half, and the shared write half.
    pub(crate) fn split(stream: TcpStream) -> (OwnedReadHalf, Self) {
        let (read, write) = stream.into_split();
        (read, Socket(Arc::new(write)))
    }

    fn stream(&self) -> &TcpStream {
        (*self.0).as_ref()
    }

    /// `send(2)` without waiting: how much the socket took, or `WouldBlock`.
    fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        let stream = self.stream();
        stream.try_io(Interest::WRITABLE, || SockRef::from(stream).send(buf))
    }

    /// Writes a push in place, framed as the TCP transport frames it (a 4-byte big-endian
    /// length, then the envelope): all of it, part of it (the rest to be queued), or nothing.
    pub(crate) fn write_in_place(&self, item: &Outbound) -> Written {
        match item {
            Outbound::Push(push) => {
                let envelope = wire::envelope::push(push.seq, push.route, push.payload.clone());
                let len = framed_len(&envelope);
                let mut stack = [0u8; STACK_FRAME];
                let mut heap = Vec::new();
                let frame: &[u8] = if len <= STACK_FRAME {
                    if put_framed(&envelope, &mut &mut stack[..]).is_err() {
                        return Written::Nothing;
                    }
                    &stack[..len]
                } else {
                    heap.reserve_exact(len);
                    if put_framed(&envelope, &mut heap).is_err() {
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

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream().poll_write_ready(cx))?;
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
        Poll::Ready(SockRef::from(self.stream()).shutdown(std::net::Shutdown::Write))
    }
}
