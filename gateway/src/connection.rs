//! One client connection: the reader (frames in, requests dispatched with bounded concurrency,
//! idle timeout) and the writer (the session's bounded queue out to the socket).

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use prost::Message;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span};
use wire::{Envelope, ErrorCode, FrameError, Kind, envelope};

use crate::{gateway::Gateway, outbox::Outbound, session::Session};

/// Incoming frame bodies of one connection.
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes, FrameError>> + Send>>;
/// Outgoing frame bodies of one connection.
pub(crate) type FrameSink = Pin<Box<dyn Sink<Bytes, Error = FrameError> + Send>>;

/// How long a write may block before the client counts as not reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one connection until it ends. Never returns an error: whatever ends a connection is
/// logged once here and reported to the client when it can be.
pub(crate) async fn serve(
    gateway: Arc<Gateway>,
    stream: FrameStream,
    mut sink: FrameSink,
    peer: SocketAddr,
    transport: &'static str,
) {
    if gateway.is_draining() {
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
        let writer = tokio::spawn(write_loop(sink, session.clone()).in_current_span());
        read_loop(&gateway, &session, stream).await;
        let count = gateway.sessions.remove(&session);
        gateway.sessions_changed(count);
        gateway.session_closed(&session);
        session.close("session ended");
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        info!(user = session.user().as_deref().unwrap_or(""), reason = %session.end_reason(), "session closed");
    }
    .instrument(span)
    .await;
}

async fn refuse(sink: &mut FrameSink, code: ErrorCode, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sink
            .send(envelope::encode(&envelope::kick(code as u32, reason)))
            .await;
        let _ = sink.close().await;
    })
    .await;
}

async fn read_loop(gateway: &Arc<Gateway>, session: &Arc<Session>, mut stream: FrameStream) {
    let idle = gateway.limits.idle_timeout;
    let mut deadline = Instant::now() + idle;
    loop {
        let frame = tokio::select! {
            _ = session.stop.cancelled() => return,
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
                session.send(&envelope::error(
                    0,
                    0,
                    ErrorCode::TooLarge,
                    "frame exceeds the size limit",
                ));
                return session.close("frame over the size limit");
            }
            Some(Err(FrameError::Unsupported(what))) => {
                bad_frame("unsupported");
                session.send(&envelope::error(0, 0, ErrorCode::BadRequest, what));
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
            session.send(&envelope::error(
                0,
                0,
                ErrorCode::BadRequest,
                "undecodable envelope",
            ));
            continue;
        };
        match Kind::try_from(request.kind) {
            Ok(Kind::Request) => dispatch(gateway, session, request).await,
            Ok(Kind::Heartbeat) => {
                session.send(&envelope::heartbeat());
            }
            _ => {
                bad_frame("unexpected_kind");
                session.send(&envelope::error(
                    request.msg_id,
                    request.route,
                    ErrorCode::BadRequest,
                    "unexpected envelope kind",
                ));
            }
        }
    }
}

fn bad_frame(reason: &'static str) {
    ::metrics::counter!(crate::metrics::BAD_FRAMES, "reason" => reason).increment(1);
}

/// Starts one request. Waits (and so stops reading) while the session has its maximum of
/// requests in flight.
async fn dispatch(gateway: &Arc<Gateway>, session: &Arc<Session>, request: Envelope) {
    let (msg_id, route) = (request.msg_id, request.route);
    if !session.allow_request() {
        session.send(&envelope::error(
            msg_id,
            route,
            ErrorCode::RateLimited,
            "too many requests",
        ));
        return;
    }
    if !session.begin_request(msg_id) {
        session.send(&envelope::error(
            msg_id,
            route,
            ErrorCode::DuplicateMessageId,
            "this message id is already in flight",
        ));
        return;
    }
    let permit = tokio::select! {
        permit = session.permits.clone().acquire_owned() => permit,
        _ = session.stop.cancelled() => return,
    };
    let Ok(permit) = permit else { return };
    let (gateway, session) = (gateway.clone(), session.clone());
    let span = tracing::debug_span!(parent: &session.span, "request", msg_id, route);
    gateway.tracker.clone().spawn(
        async move {
            let response = gateway.handle_request(&session, request).await;
            // Free the id before the client can see the response and reuse it.
            session.end_request(msg_id);
            session.send(&response);
            drop(permit);
        }
        .instrument(span),
    );
}

/// Writes the session's queue to the socket, batching what is queued between flushes.
async fn write_loop(sink: FrameSink, session: Arc<Session>) {
    write_queue(sink, &session).await;
    // Whatever ended the writer, nothing more is queued for this connection.
    session.outbox().close();
}

async fn write_queue(mut sink: FrameSink, session: &Session) {
    let outbound = session.outbox();
    loop {
        let item = tokio::select! {
            biased;
            _ = session.abort.cancelled() => return,
            item = outbound.recv() => item,
        };
        let frame = match item {
            Outbound::Frame(frame) => frame,
            Outbound::Close => break,
        };
        let mut close = false;
        let written = async {
            sink.feed(frame).await?;
            while let Some(next) = outbound.try_recv() {
                match next {
                    Outbound::Frame(frame) => sink.feed(frame).await?,
                    Outbound::Close => {
                        close = true;
                        break;
                    }
                }
            }
            sink.flush().await
        };
        let result = tokio::select! {
            biased;
            _ = session.abort.cancelled() => return,
            result = tokio::time::timeout(WRITE_TIMEOUT, written) => result,
        };
        match result {
            Ok(Ok(())) if !close => {}
            Ok(Ok(())) => break,
            Ok(Err(error)) => {
                debug!(%error, "write failed");
                session.close("write failed");
                return;
            }
            Err(_) => {
                session.kick(ErrorCode::SlowConsumer, "the client does not read");
                session.abort.cancel();
                return;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}
