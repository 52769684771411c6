//! One client connection: the reader (frames in, requests dispatched with bounded concurrency,
//! idle timeout) and the writer (the session's bounded queue out to the socket), and how the
//! connection ends: last frames written, the socket shut for writing, then read until the
//! client closes (briefly), so a client is told why before the close instead of getting a
//! reset.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use prost::Message;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span};
use wire::{Envelope, ErrorCode, FrameError, Kind, envelope};

use crate::{
    conn::{Conn, Ending},
    gateway::Gateway,
    outbox::{Outbound, PushFrame},
    refusal::Refusal,
    session::Session,
    socket::Socket,
};

/// What the writer hands a transport: a frame, a push to encode, or the close with the code
/// the session ended with (the WebSocket close status is chosen from it).
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Bytes),
    Push(PushFrame),
    /// Bytes already framed (the rest of a frame written in place; TCP only).
    Raw(Bytes),
    Close(u32),
}

/// Incoming frame bodies of one connection.
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes, FrameError>> + Send>>;
/// Outgoing frames of one connection.
pub(crate) type FrameSink = Pin<Box<dyn Sink<Outgoing, Error = FrameError> + Send>>;

/// How long a session's last frames (a kick) may take to leave before the socket is closed.
const LAST_WORDS: Duration = Duration::from_secs(2);
/// How long a closing connection is read (and discarded) while the client closes its side.
const LINGER: Duration = Duration::from_secs(2);

/// Serves one connection until it ends. Never returns an error: whatever ends a connection is
/// logged once here and reported to the client when it can be.
pub(crate) async fn serve(
    gateway: Arc<Gateway>,
    mut stream: FrameStream,
    mut sink: FrameSink,
    peer: SocketAddr,
    transport: &'static str,
    socket: Option<Socket>,
) {
    if gateway.is_fenced() {
        refuse(
            &mut sink,
            ErrorCode::Partitioned,
            gateway.partitioned_text(),
        )
        .await;
        ::metrics::counter!(crate::metrics::CONNECTIONS, "transport" => transport, "outcome" => "partitioned").increment(1);
        return;
    }
    if !gateway.accepts_new_work() {
        refuse(
            &mut sink,
            ErrorCode::ServerDraining,
            "this gateway is draining; connect to another",
        )
        .await;
        ::metrics::counter!(crate::metrics::CONNECTIONS, "transport" => transport, "outcome" => "draining").increment(1);
        return;
    }
    // A full gateway still takes connections, to redirect them on their first request; with
    // this many more it refuses them outright.
    let max = gateway.majority.capacity();
    if max > 0 && gateway.sessions.len() as u64 >= max + max / 4 + 64 {
        refuse(
            &mut sink,
            ErrorCode::GatewayFull,
            "this gateway is full; connect to another",
        )
        .await;
        ::metrics::counter!(crate::metrics::CONNECTIONS, "transport" => transport, "outcome" => "full").increment(1);
        return;
    }
    ::metrics::counter!(crate::metrics::CONNECTIONS, "transport" => transport, "outcome" => "accepted").increment(1);
    let id = gateway.sessions.new_id();
    let span = info_span!("session", node = %gateway.node_id, session = id, %peer, transport, user = tracing::field::Empty);
    let conn = Conn::new(&gateway.limits.conn, span.clone(), socket);
    let session = Session::new(id, gateway.limits.session, conn.clone());
    async {
        let count = gateway.sessions.insert(session.clone());
        gateway.sessions_changed(count);
        debug!("session opened");
        let writer = gateway
            .tracker
            .spawn(write_loop(sink, conn.clone()).in_current_span());
        // A RESUME swaps the session this connection carries.
        let session = read_loop(&gateway, &conn, session, &mut stream).await;
        if !conn.is_ending() {
            conn.close_as(Ending::Dropped, "client closed the connection");
        }
        gateway.connection_ended(&conn, &session);
        let _ = tokio::time::timeout(LAST_WORDS * 2, writer).await;
        linger(&mut stream).await;
        info!(user = session.user().as_deref().unwrap_or(""), ending = ?conn.ending(), reason = %conn.end_reason(), "connection closed");
    }
    .instrument(span)
    .await;
}

async fn refuse(sink: &mut FrameSink, code: ErrorCode, reason: &str) {
    let _ = tokio::time::timeout(LAST_WORDS, async {
        let kick = envelope::encode(&envelope::kick(code as u32, reason));
        let _ = sink.send(Outgoing::Frame(kick)).await;
        let _ = sink.send(Outgoing::Close(code as u32)).await;
        let _ = sink.close().await;
    })
    .await;
}

/// Reads what the client still sends while it closes its side, so the socket is not closed
/// with unread data (which would reset the connection and lose the frames not yet taken).
async fn linger(stream: &mut FrameStream) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// Reads the connection until it ends; returns the session it carried last.
async fn read_loop(
    gateway: &Arc<Gateway>,
    conn: &Arc<Conn>,
    mut session: Arc<Session>,
    stream: &mut FrameStream,
) -> Arc<Session> {
    let idle = gateway.limits.idle_timeout;
    let mut deadline = Instant::now() + idle;
    // The first request decides where the client is served (`placement`).
    let mut placed = false;
    loop {
        let frame = tokio::select! {
            _ = conn.stop.cancelled() => return session,
            // Drain: no new requests; the connection stays until drain kicks it.
            _ = conn.quiesce.cancelled() => {
                conn.stop.cancelled().await;
                return session;
            }
            _ = tokio::time::sleep_until(deadline) => {
                // A silent client may be one whose network is gone: its session is held.
                let reason = "no traffic within the idle timeout";
                conn.end_with(Ending::Dropped, reason, &envelope::kick(ErrorCode::IdleTimeout as u32, reason));
                return session;
            }
            frame = stream.next() => frame,
        };
        let bytes = match frame {
            None => {
                conn.close_as(
                    Ending::Dropped,
                    "client closed the connection without a goodbye",
                );
                return session;
            }
            Some(Err(FrameError::Closed)) => {
                conn.close_as(Ending::Goodbye, "client closed the connection");
                return session;
            }
            Some(Ok(bytes)) => bytes,
            Some(Err(FrameError::TooLarge { size, max })) => {
                bad_frame("too_large");
                debug!(size, max, "frame over the size limit");
                refusal(conn, 0, 0, Refusal::TooLarge);
                conn.close_as(
                    Ending::Kicked(ErrorCode::TooLarge as u32),
                    "frame over the size limit",
                );
                return session;
            }
            Some(Err(FrameError::Unsupported(_))) => {
                bad_frame("unsupported");
                refusal(conn, 0, 0, Refusal::TextMessage);
                continue;
            }
            Some(Err(FrameError::Transport(reason))) => {
                debug!(%reason, "transport error");
                conn.close_as(Ending::Dropped, "transport error");
                return session;
            }
        };
        deadline = Instant::now() + idle;
        let Ok(request) = Envelope::decode(bytes) else {
            bad_frame("undecodable");
            refusal(conn, 0, 0, Refusal::Undecodable);
            continue;
        };
        match Kind::try_from(request.kind) {
            Ok(Kind::Request | Kind::Resume | Kind::Migrate) if request.msg_id == 0 => {
                bad_frame("reserved_msg_id");
                refusal(conn, 0, request.route, Refusal::ReservedMessageId);
            }
            Ok(Kind::Request) => {
                if !placed {
                    placed = true;
                    if !gateway.place_first_request(conn, &request) {
                        return session;
                    }
                }
                if let Some(wait) = dispatch(gateway, conn, &session, request) {
                    wait.await;
                }
            }
            Ok(Kind::Resume) => {
                // A session coming back is served where it asks (its place is taken already).
                placed = true;
                // Boxed: once per connection at most, and inline it would make every idle
                // connection's reader task that much larger.
                if let Some(resumed) = Box::pin(gateway.resume(conn, &session, request)).await {
                    session = resumed;
                }
            }
            Ok(Kind::Migrate) => {
                gateway.client_migrate(conn, &session, request.msg_id, request.seq);
            }
            Ok(Kind::Goodbye) => {
                conn.close_as(Ending::Goodbye, "client said goodbye");
                return session;
            }
            Ok(Kind::Heartbeat) => {
                conn.send(&envelope::heartbeat());
            }
            _ => {
                bad_frame("unexpected_kind");
                refusal(conn, request.msg_id, request.route, Refusal::UnexpectedKind);
            }
        }
    }
}

fn refusal(conn: &Conn, msg_id: u32, route: u32, refusal: Refusal) {
    conn.send(&envelope::error(
        msg_id,
        route,
        refusal.code(),
        refusal.text(),
    ));
}

fn bad_frame(reason: &'static str) {
    ::metrics::counter!(crate::metrics::BAD_FRAMES, "reason" => reason).increment(1);
}

/// Starts one request: at once when the connection has a free slot and no earlier requests to
/// wait for. Otherwise the wait (which stops reading) is returned, boxed: it is rare, and kept
/// inline it would make every idle connection's reader task as large as the waiting state
/// (about 1.3 KiB more per session in `bench s2-idle-memory`).
fn dispatch(
    gateway: &Arc<Gateway>,
    conn: &Arc<Conn>,
    session: &Arc<Session>,
    request: Envelope,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
    let (msg_id, route) = (request.msg_id, request.route);
    if !conn.allow_request() {
        refusal(conn, msg_id, route, Refusal::RateLimited);
        return None;
    }
    if !conn.begin_request(msg_id) {
        refusal(conn, msg_id, route, Refusal::DuplicateMessageId);
        return None;
    }
    let rebound = session.take_rebound();
    // A waiter for several permits (a drain holding the connection's requests) takes every
    // permit as it is freed, so this never overtakes one.
    if !rebound && let Ok(permit) = conn.permits.clone().try_acquire_owned() {
        gateway.start_request(conn, session, request, permit);
        return None;
    }
    let (gateway, conn, session) = (gateway.clone(), conn.clone(), session.clone());
    Some(Box::pin(async move {
        if rebound {
            // A node moved this session's bindings (a room changed servers): the requests
            // already sent to the old node are answered first (it forwards them), so this one,
            // which may go to the new node, cannot overtake them.
            tokio::select! {
                _ = tokio::time::timeout(gateway.limits.request_timeout, conn.requests_done()) => {}
                _ = conn.stop.cancelled() => return,
            }
        }
        let permit = tokio::select! {
            permit = conn.permits.clone().acquire_owned() => permit,
            _ = conn.stop.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        gateway.start_request(&conn, &session, request, permit);
    }))
}

/// Writes the connection's queue to the socket, batching what is queued between flushes.
async fn write_loop(sink: FrameSink, conn: Arc<Conn>) {
    write_queue(sink, &conn).await;
    // Whatever ended the writer, nothing more is queued for this connection.
    conn.outbox().close();
}

async fn write_queue(mut sink: FrameSink, conn: &Conn) {
    let outbound = conn.outbox();
    let max_age = outbound.max_age();
    // Once the session is ending, its last frames (a kick) get LAST_WORDS in all.
    let mut last_words_until = None;
    loop {
        let mut close = false;
        let first = match outbound.recv().await {
            Outbound::Frame(frame) => Outgoing::Frame(frame),
            Outbound::Push(push) => Outgoing::Push(push),
            Outbound::Raw(rest) => Outgoing::Raw(rest),
            Outbound::Close => break,
        };
        let written = async {
            sink.feed(first).await?;
            while let Some(next) = outbound.try_recv() {
                match next {
                    Outbound::Frame(frame) => sink.feed(Outgoing::Frame(frame)).await?,
                    Outbound::Push(push) => sink.feed(Outgoing::Push(push)).await?,
                    Outbound::Raw(rest) => sink.feed(Outgoing::Raw(rest)).await?,
                    Outbound::Close => {
                        close = true;
                        break;
                    }
                }
            }
            sink.flush().await
        };
        if conn.is_ending() && last_words_until.is_none() {
            last_words_until = Some(Instant::now() + LAST_WORDS);
        }
        // A client whose socket takes nothing for the age limit is not reading.
        let limit = last_words_until.map_or(max_age, |until| {
            until.saturating_duration_since(Instant::now())
        });
        match tokio::time::timeout(limit, written).await {
            Ok(Ok(())) if !close => outbound.flushed(),
            Ok(Ok(())) => break,
            Ok(Err(error)) => {
                debug!(%error, "write failed");
                conn.close_as(Ending::Dropped, "write failed");
                return;
            }
            Err(_) if last_words_until.is_some() => return,
            // Its backlog is dropped and the kick queued: try to get that out.
            Err(_) => conn.drop_slow_consumer(),
        }
    }
    let _ = tokio::time::timeout(LAST_WORDS, async {
        let _ = sink.send(Outgoing::Close(conn.end_code())).await;
        let _ = sink.close().await;
    })
    .await;
}
