//! `serve-bare-rooms`: the floor of room fan-out. One process speaks just enough of the client
//! protocol over TCP for `s4-fanout` (login, create, join, op) and broadcasts each operation by
//! writing its push, encoded once, straight into every member's socket from the task that read
//! the operation: no hop, no queue, no task per delivery. What a delivery costs here is about
//! what the kernel charges for a loopback write (and the wake-up of the reader), so
//! Switchyard's deliveries per server core-second are reported against it.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use prost::Message;
use proto::room::v1::{self as room, routes};
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::codec::FramedRead;

/// A member's socket, written by whichever connection's task broadcasts, with what the socket
/// did not take yet (written by one flushing task, in order, before anything newer).
struct Out {
    half: OwnedWriteHalf,
    backlog: Mutex<BytesMut>,
}

type Writer = Arc<Out>;

struct Room {
    members: Vec<(String, Writer)>,
    seq: u64,
}

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Room>>,
    next: std::sync::atomic::AtomicU64,
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A frame as it goes on the wire: length prefix and envelope.
fn frame(envelope: &wire::Envelope) -> Bytes {
    let body = envelope.encode_to_vec();
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

/// Writes `frame` to one member: at once when nothing is waiting and its socket takes it,
/// else behind what waits, flushed by a task.
fn write(out: &Writer, frame: &[u8]) {
    let mut backlog = out.backlog.lock().unwrap_or_else(PoisonError::into_inner);
    if !backlog.is_empty() {
        backlog.extend_from_slice(frame);
        return;
    }
    match out.half.try_write(frame) {
        Ok(n) if n == frame.len() => return,
        Ok(n) => backlog.extend_from_slice(&frame[n..]),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => backlog.extend_from_slice(frame),
        Err(_) => return,
    }
    drop(backlog);
    tokio::spawn(flush(out.clone()));
}

async fn flush(out: Writer) {
    loop {
        if out.half.writable().await.is_err() {
            return;
        }
        let mut backlog = out.backlog.lock().unwrap_or_else(PoisonError::into_inner);
        match out.half.try_write(&backlog) {
            Ok(n) => {
                backlog.advance(n);
                if backlog.is_empty() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                backlog.clear();
                return;
            }
        }
    }
}

#[allow(clippy::print_stdout)] // the READY line is the protocol with the parent
pub(crate) async fn serve() -> anyhow::Result<()> {
    let listener = crate::stack::bind_loopback().await?;
    println!("READY tcp={}", listener.local_addr()?);
    let rooms = Arc::new(Rooms::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let (read, write_half) = stream.into_split();
            let writer: Writer = Arc::new(Out {
                half: write_half,
                backlog: Mutex::default(),
            });
            let mut frames = FramedRead::new(read, wire::FrameCodec::new(wire::DEFAULT_MAX_FRAME));
            let mut user = String::new();
            while let Some(Ok(bytes)) = frames.next().await {
                let Ok(request) = wire::Envelope::decode(bytes) else {
                    return;
                };
                let answer = |status: u32, payload: Vec<u8>| {
                    frame(&wire::envelope::response(
                        request.msg_id,
                        request.route,
                        status,
                        String::new(),
                        payload.into(),
                    ))
                };
                let response = match request.route {
                    routes::CREATE => {
                        let n = rooms
                            .next
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let room_id = format!("{n:016x}");
                        rooms.lock().insert(
                            room_id.clone(),
                            Room {
                                members: vec![(user.clone(), writer.clone())],
                                seq: 0,
                            },
                        );
                        let info = room::RoomInfo {
                            room_id,
                            owner: user.clone(),
                            ..Default::default()
                        };
                        answer(0, info.encode_to_vec())
                    }
                    routes::JOIN => {
                        let Ok(join) = room::JoinRoom::decode(request.payload) else {
                            return;
                        };
                        let joined = rooms
                            .lock()
                            .get_mut(&join.room_id)
                            .map(|r| r.members.push((user.clone(), writer.clone())))
                            .is_some();
                        answer(
                            if joined {
                                0
                            } else {
                                room::errors::ROOM_NOT_FOUND
                            },
                            Vec::new(),
                        )
                    }
                    routes::OP => {
                        let Ok(op) = room::RoomOp::decode(request.payload) else {
                            return;
                        };
                        let mut all = rooms.lock();
                        let Some(room) = all.get_mut(&op.room_id) else {
                            drop(all);
                            write(&writer, &answer(room::errors::ROOM_NOT_FOUND, Vec::new()));
                            continue;
                        };
                        room.seq += 1;
                        let event = room::RoomOpEvent {
                            room_id: op.room_id,
                            seq: room.seq,
                            from: user.clone(),
                            payload: op.payload,
                        };
                        let push = frame(&wire::envelope::push(
                            room.seq,
                            routes::PUSH_OP,
                            event.encode_to_vec().into(),
                        ));
                        for (_, member) in &room.members {
                            write(member, &push);
                        }
                        drop(all);
                        answer(0, Vec::new())
                    }
                    // The login, and anything else: answered.
                    _ => {
                        if request.route == proto::matchmaking::v1::routes::LOGIN
                            && let Ok(login) =
                                proto::matchmaking::v1::Login::decode(request.payload.clone())
                        {
                            user = login.user_id;
                        }
                        answer(0, Vec::new())
                    }
                };
                write(&writer, &response);
            }
            // Gone: out of every room.
            for room in rooms.lock().values_mut() {
                room.members.retain(|(_, w)| !Arc::ptr_eq(w, &writer));
            }
        });
    }
}
