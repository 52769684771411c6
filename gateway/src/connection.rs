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
    gateway::Gateway,
    outbox::{Outbound, PushFrame},
    refusal::Refusal,
    session::Session,
};

/// What the writer hands a transport: a frame, a push to encode, or the close with the code
/// the session ended with (the WebSocket close status is chosen from it).
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Bytes),
    Push(PushFrame),
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
) {
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
    let max = gateway.limits.max_sessions;
    if max > 0 && gateway.sessions.len() as u64 >= max {
        refuse(
            &mut sink,
            ErrorCode::ServerDraining,
            "this gateway is full; connect to another",
        )
        .await;
        ::metrics::counter!(crate::metrics::CONNECTIONS, "transport" => transport, "outcome" => "full").increment(1);
        return;
    }
    ::metrics::counter!(crate::metrics::CONNECTIONS, "transport" => transport, "outcome" => "accepted").increment(1);
    let id = gateway.sessions.next_id();
    let span = info_span!("session", node = %gateway.node_id, session = id, %peer, transport, user = tracing::field::Empty);
    let session = Session::new(id, &gateway.limits.session, span.clone());
    async {
        let count = gateway.sessions.insert(session.clone());
        gateway.sessions_changed(count);
        debug!("session opened");
        let writer = gateway
            .tracker
            .spawn(write_loop(sink, session.clone()).in_current_span());
        read_loop(&gateway, &session, &mut stream).await;
        let count = gateway.sessions.remove(&session);
        gateway.sessions_changed(count);
        gateway.session_closed(&session);
        session.close("session ended");
        let _ = tokio::time::timeout(LAST_WORDS * 2, writer).await;
        linger(&mut stream).await;
        info!(user = session.user().as_deref().unwrap_or(""), reason = %session.end_reason(), "session closed");
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

async fn read_loop(gateway: &Arc<Gateway>, session: &Arc<Session>, stream: &mut FrameStream) {
    let idle = gateway.limits.idle_timeout;
    let mut deadline = Instant::now() + idle;
    loop {
        let frame = tokio::select! {
            _ = session.stop.cancelled() => return,
            // Drain: no new requests; the session stays until drain kicks it.
            _ = session.quiesce.cancelled() => {
                session.stop.cancelled().await;
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                session.kick(ErrorCode::IdleTimeout, "no traffic within the idle timeout");
                return;
            }
            frame = stream.next() => frame,
        };
        let bytes = match frame {
            None => return session.close("client closed the connection"),
            Some(Ok(bytes)) => bytes,
            Some(Err(FrameError::TooLarge { size, max })) => {
                bad_frame("too_large");
                debug!(size, max, "frame over the size limit");
                refusal(session, 0, 0, Refusal::TooLarge);
                return session.close_with(ErrorCode::TooLarge as u32, "frame over the size limit");
            }
            Some(Err(FrameError::Unsupported(_))) => {
                bad_frame("unsupported");
                refusal(session, 0, 0, Refusal::TextMessage);
                continue;
            }
            Some(Err(FrameError::Transport(reason))) => {
                debug!(%reason, "transport error");
                return session.close("transport error");
            }
        };
        deadline = Instant::now() + idle;
        let Ok(request) = Envelope::decode(bytes) else {
            bad_frame("undecodable");
            refusal(session, 0, 0, Refusal::Undecodable);
            continue;
        };
        match Kind::try_from(request.kind) {
            Ok(Kind::Request) if request.msg_id == 0 => {
                bad_frame("reserved_msg_id");
                refusal(session, 0, request.route, Refusal::ReservedMessageId);
            }
            Ok(Kind::Request) => dispatch(gateway, session, request).await,
            Ok(Kind::Heartbeat) => {
                session.send(&envelope::heartbeat());
            }
            _ => {
                bad_frame("unexpected_kind");
                refusal(
                    session,
                    request.msg_id,
                    request.route,
                    Refusal::UnexpectedKind,
                );
            }
        }
    }
}

fn refusal(session: &Session, msg_id: u32, route: u32, refusal: Refusal) {
    session.send(&envelope::error(
        msg_id,
        route,
        refusal.code(),
        refusal.text(),
    ));
}

fn bad_frame(reason: &'static str) {
    ::metrics::counter!(crate::metrics::BAD_FRAMES, "reason" => reason).increment(1);
}

/// Starts one request. Waits (and so stops reading) while the session has its maximum of
/// requests in flight.
async fn dispatch(gateway: &Arc<Gateway>, session: &Arc<Session>, request: Envelope) {
    let (msg_id, route) = (request.msg_id, request.route);
    if !session.allow_request() {
        refusal(session, msg_id, route, Refusal::RateLimited);
        return;
    }
    if !session.begin_request(msg_id) {
        refusal(session, msg_id, route, Refusal::DuplicateMessageId);
        return;
    }
    let permit = tokio::select! {
        permit = session.permits.clone().acquire_owned() => permit,
        _ = session.stop.cancelled() => return,
    };
    let Ok(permit) = permit else { return };
    gateway.start_request(session, request, permit);
}

/// Writes the session's queue to the socket, batching what is queued between flushes.
async fn write_loop(sink: FrameSink, session: Arc<Session>) {
    write_queue(sink, &session).await;
    // Whatever ended the writer, nothing more is queued for this connection.
    session.outbox().close();
}

async fn write_queue(mut sink: FrameSink, session: &Session) {
    let outbound = session.outbox();
    let max_age = outbound.max_age();
    // Once the session is ending, its last frames (a kick) get LAST_WORDS in all.
    let mut last_words_until = None;
    loop {
        let mut close = false;
        let first = match outbound.recv().await {
            Outbound::Frame(frame) => Outgoing::Frame(frame),
            Outbound::Push(push) => Outgoing::Push(push),
            Outbound::Close => break,
        };
        let written = async {
            sink.feed(first).await?;
            while let Some(next) = outbound.try_recv() {
                match next {
                    Outbound::Frame(frame) => sink.feed(Outgoing::Frame(frame)).await?,
                    Outbound::Push(push) => sink.feed(Outgoing::Push(push)).await?,
                    Outbound::Close => {
                        close = true;
                        break;
                    }
                }
            }
            sink.flush().await
        };
        if session.is_ending() && last_words_until.is_none() {
            last_words_until = Some(Instant::now() + LAST_WORDS);
        }
        // A client whose socket takes nothing for the age limit is not reading.
        let limit = last_words_until.map_or(max_age, |until| {
            until.saturating_duration_since(Instant::now())
        });
        match tokio::time::timeout(limit, written).await {
            Ok(Ok(())) if !close => {}
            Ok(Ok(())) => break,
            Ok(Err(error)) => {
                debug!(%error, "write failed");
                session.close("write failed");
                return;
            }
            Err(_) if last_words_until.is_some() => return,
            // Its backlog is dropped and the kick queued: try to get that out.
            Err(_) => session.drop_slow_consumer(),
        }
    }
    let _ = tokio::time::timeout(LAST_WORDS, async {
        let _ = sink.send(Outgoing::Close(session.end_code())).await;
        let _ = sink.close().await;
    })
    .await;
}
