//! One connection to a gateway: a reader task matching responses to requests by message id and
//! turning everything else into events; requests are written directly.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use prost::Message;
use proto::client::v1::{Resumed, SessionInfo};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;
use wire::{Envelope, ErrorCode, FrameError, Kind, envelope};

use crate::transport::{self, Address, FrameSink, FrameStream};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Largest frame sent or accepted.
    pub max_frame: usize,
    /// How long a request waits for its response.
    pub request_timeout: Duration,
    /// How long connecting (and the WebSocket handshake) may take: an address whose packets
    /// go nowhere (a gateway cut off, a host that is down) fails after this, not after the
    /// operating system's minutes, so the next address is tried.
    pub connect_timeout: Duration,
    /// Send a heartbeat this often (keeps the gateway's idle timer quiet; the gateway answers
    /// each one).
    pub heartbeat: Option<Duration>,
    /// With heartbeats on: a connection on which nothing arrives for this long (no answer to
    /// two heartbeats) is taken for dead and closed, as a network that silently stopped
    /// carrying anything (a cable, a partition) would otherwise never be noticed.
    pub silence: Duration,
    /// Events buffered before the reader waits for the application (and so stops reading
    /// the socket).
    pub event_buffer: usize,
    /// Source address to connect from (e.g. one of several `127.0.0.x` when one address runs
    /// out of ephemeral ports); `None` lets the system choose.
    pub local_ip: Option<std::net::IpAddr>,
    /// This client was redirected to the gateway it connects to: its requests say so, and the
    /// gateway serves it (or answers `GATEWAY_FULL`) instead of redirecting it again.
    pub redirected: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_frame: wire::DEFAULT_MAX_FRAME,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            heartbeat: Some(Duration::from_secs(5)),
            silence: Duration::from_secs(12),
            event_buffer: 1024,
            local_ip: None,
            redirected: false,
        }
    }
}

/// Why a request failed before a response arrived.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        reason: String,
    },
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// No response within the request timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// Sending failed.
    #[error("send failed: {0}")]
    Send(String),
}

/// A response to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The route requested.
    pub route: u32,
    /// 0 on success; else an [`ErrorCode`] or an application code (>= 1000).
    pub status: u32,
    /// Error text.
    pub error: String,
    /// The payload.
    pub payload: Bytes,
    /// The answer to a login (or a resume): what resuming the session takes.
    pub session: Option<SessionInfo>,
    /// The answer to a resume.
    pub resumed: Option<Resumed>,
    /// A redirect (status `REDIRECTED`): another gateway serves this client; connect to one
    /// of these addresses with [`ClientConfig::redirected`] set and send the request there
    /// (nothing was applied here). [`crate::Session::login`] does it.
    pub redirect: Vec<String>,
}

/// What a client keeps to resume its session after its connection drops
/// ([`Client::resume_ticket`], [`Client::resume`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeTicket {
    /// The user the session belongs to.
    pub user_id: String,
    /// The session.
    pub session_id: u64,
    /// The newest resume token (each is good for one resume).
    pub token: String,
    /// The seq of the last push received.
    pub last_seq: u64,
}

impl Response {
    /// True on success.
    pub fn is_ok(&self) -> bool {
        self.status == 0
    }

    /// The gateway error code, when the status is one.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::try_from(self.status as i32).ok()
    }

    /// Decodes the payload as a protobuf message.
    pub fn decode<M: Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.payload.clone())
    }
}

/// A server push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The push's route.
    pub route: u32,
    /// Per-session sequence number, from 1, without gaps.
    pub seq: u64,
    /// The payload.
    pub payload: Bytes,
}

/// Things that happen to a connection, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A server push.
    Push(Push),
    /// The gateway is going offline (draining); move when convenient.
    Offline {
        /// Time left before the gateway closes remaining connections.
        grace: Duration,
    },
    /// Another gateway suits this session better (most of the user's room is there): call
    /// [`Client::migrate`] when convenient (then `MigrateTo` follows); until then it is served
    /// here.
    MoveSuggested,
    /// The session moved to another gateway (a drain, or the client's `migrate`): reconnect
    /// to one of `addresses` and resume with `ticket` ([`Client::resume`]). The gateway closes
    /// this connection next.
    MigrateTo {
        /// The new gateway's client addresses (`ws://…/ws`, `tcp://…`).
        addresses: Vec<String>,
        /// What resuming there takes (the token it issued, and the last push received here).
        ticket: ResumeTicket,
    },
    /// The gateway closed the connection with this code and reason.
    Kicked {
        /// An [`ErrorCode`] (or an application code).
        code: u32,
        /// Why.
        reason: String,
    },
    /// A response matching no request in flight: the gateway's answer to a frame it could not
    /// read (message id 0), or one that arrived after its request timed out.
    Unsolicited(Response),
    /// The connection ended (always the last event).
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// The event stream of a connection.
pub struct Events(mpsc::Receiver<Event>);

impl Events {
    /// The next event; `None` after `Disconnected`.
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    /// The next push, skipping other events; `None` once disconnected.
    pub async fn next_push(&mut self) -> Option<Push> {
        loop {
            match self.next().await? {
                Event::Push(push) => return Some(push),
                Event::Disconnected { .. } => return None,
                _ => {}
            }
        }
    }
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Response>>>>;

/// What the reader learns that a resume needs: the newest session info, and the last push.
#[derive(Default)]
struct SessionTrack {
    /// The session info of the newest login or resume answer.
    info: Mutex<Option<SessionInfo>>,
    last_seq: AtomicU64,
}

/// A connection to a gateway. Cloning shares the connection.
#[derive(Clone)]
pub struct Client {
    sink: Arc<tokio::sync::Mutex<FrameSink>>,
    pending: Pending,
    next_id: Arc<AtomicU32>,
    config: ClientConfig,
    reader: Arc<ReaderGuard>,
    track: Arc<SessionTrack>,
}

impl Client {
    /// Connects with default settings.
    pub async fn connect(address: Address) -> Result<(Client, Events), ClientError> {
        Self::connect_with(address, ClientConfig::default()).await
    }

    /// Connects with `config`.
    pub async fn connect_with(
        address: Address,
        config: ClientConfig,
    ) -> Result<(Client, Events), ClientError> {
        let connecting = transport::connect(&address, config.max_frame, config.local_ip);
        let (stream, sink) = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Ok(connected) => connected.map_err(|e| ClientError::Connect {
                address: address.to_string(),
                reason: e.to_string(),
            })?,
            Err(_) => {
                return Err(ClientError::Connect {
                    address: address.to_string(),
                    reason: format!("no connection within {:?}", config.connect_timeout),
                });
            }
        };
        let pending: Pending = Arc::default();
        let track = Arc::new(SessionTrack::default());
        let (events_tx, events_rx) = mpsc::channel(config.event_buffer.max(1));
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let silence = config.heartbeat.map(|_| config.silence);
        let reader = tokio::spawn(read_loop(
            stream,
            pending.clone(),
            events_tx,
            track.clone(),
            silence,
        ))
        .abort_handle();
        let client = Client {
            sink,
            pending,
            next_id: Arc::new(AtomicU32::new(1)),
            config,
            reader: Arc::new(ReaderGuard(reader)),
            track,
        };
        if let Some(every) = client.config.heartbeat {
            let weak = Arc::downgrade(&client.sink);
            tokio::spawn(async move {
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    ticker.tick().await;
                    let Some(sink) = weak.upgrade() else { return };
                    if sink
                        .lock()
                        .await
                        .send(envelope::encode(&envelope::heartbeat()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        Ok((client, Events(events_rx)))
    }

    /// Connects and resumes the session `ticket` names (a dropped connection's): the answer
    /// says whether every push after `ticket.last_seq` follows (`resumed.resumed`), and the
    /// events start with them. A refused resume (an error status: the token's code, or
    /// `SESSION_GONE`) leaves the connection open without a session; log in again on it.
    pub async fn resume(
        address: Address,
        config: ClientConfig,
        ticket: &ResumeTicket,
    ) -> Result<(Client, Events, Response), ClientError> {
        let (client, events) = Self::connect_with(address, config).await?;
        let msg_id = client.next_msg_id();
        let resume = envelope::resume(msg_id, &ticket.token, ticket.last_seq, &ticket.user_id);
        // Pushes replayed after the answer continue from the client's last one.
        client
            .track
            .last_seq
            .store(ticket.last_seq, Ordering::Relaxed);
        let response = client.exchange(msg_id, envelope::encode(&resume)).await?;
        Ok((client, events, response))
    }

    /// What resuming this connection's session takes, once it is logged in (or resumed): the
    /// newest token and the last push received.
    pub fn resume_ticket(&self) -> Option<ResumeTicket> {
        let info = lock(&self.track.info);
        let session = info.as_ref()?;
        Some(ResumeTicket {
            user_id: session.user_id.clone(),
            session_id: session.session_id,
            token: session.resume_token.clone(),
            last_seq: self.track.last_seq.load(Ordering::Relaxed),
        })
    }

    /// Asks the gateway to move this session to another gateway now (after `Offline`, at a
    /// moment that suits the app). On success the events bring `MigrateTo` next; an error
    /// status (`MIGRATION_UNAVAILABLE`) means the session stays here.
    pub async fn migrate(&self) -> Result<Response, ClientError> {
        let msg_id = self.next_msg_id();
        let migrate = Envelope {
            kind: Kind::Migrate as i32,
            msg_id,
            // The last push received: the gateway moves only the pushes held after it.
            seq: self.track.last_seq.load(Ordering::Relaxed),
            ..Envelope::default()
        };
        self.exchange(msg_id, envelope::encode(&migrate)).await
    }

    /// Sends a request and waits for its response.
    pub async fn request(
        &self,
        route: u32,
        payload: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        let msg_id = self.next_msg_id();
        self.request_with_id(msg_id, route, payload).await
    }

    fn next_msg_id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Sends a request with a message id of the caller's choosing (ids must be unique among
    /// requests in flight; the gateway refuses a reused one).
    pub async fn request_with_id(
        &self,
        msg_id: u32,
        route: u32,
        payload: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        let mut request = envelope::request(msg_id, route, payload.into());
        request.redirected = self.config.redirected;
        self.exchange(msg_id, envelope::encode(&request)).await
    }

    /// Sends `frame` (carrying `msg_id`) and waits for the response with that id.
    async fn exchange(&self, msg_id: u32, frame: Bytes) -> Result<Response, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(msg_id, tx);
        if let Err(error) = self.send_frame(frame).await {
            self.lock_pending().remove(&msg_id);
            return Err(error);
        }
        match tokio::time::timeout(self.config.request_timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.lock_pending().remove(&msg_id);
                Err(ClientError::Timeout(self.config.request_timeout))
            }
        }
    }

    /// Sends a raw frame body as is (for tests of bad input).
    pub async fn send_frame(&self, frame: Bytes) -> Result<(), ClientError> {
        self.sink
            .lock()
            .await
            .send(frame)
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Ends the session (GOODBYE: rooms and queues are told at once, nothing is held for a
    /// resume) and closes the connection.
    pub async fn close(&self) {
        let mut sink = self.sink.lock().await;
        let _ = sink.send(envelope::encode(&envelope::goodbye())).await;
        let _ = sink.close().await;
    }

    /// Drops the connection without a goodbye, as a network failure would: the gateway holds
    /// the session for its resume window ([`Client::resume`]).
    pub async fn drop_connection(&self) {
        self.reader.0.abort();
        // Dropping the sink's half (the reader's went with its task) closes the socket.
        *self.sink.lock().await = Box::pin(
            futures::sink::drain().sink_map_err(|never: std::convert::Infallible| match never {}),
        );
    }

    /// Stops reading from the socket, as a stuck client would (responses and events stop
    /// arriving; the gateway sees a client that does not read).
    pub fn stop_reading(&self) {
        self.reader.0.abort();
    }

    /// True when `other` is a handle of this same connection.
    pub(crate) fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.reader, &other.reader)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Response>>> {
        lock(&self.pending)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn read_loop(
    mut stream: FrameStream,
    pending: Pending,
    events: mpsc::Sender<Event>,
    track: Arc<SessionTrack>,
    silence: Option<Duration>,
) {
    let reason = loop {
        let next = match silence {
            Some(silence) => match tokio::time::timeout(silence, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    break format!("the gateway went silent (nothing for {silence:?})");
                }
            },
            None => stream.next().await,
        };
        let frame = match next {
            None => break "connection closed".to_owned(),
            Some(Err(FrameError::Unsupported(what))) => {
                debug!(what, "ignoring an unsupported frame");
                continue;
            }
            Some(Err(FrameError::Closed)) => break "connection closed".to_owned(),
            Some(Err(error)) => break error.to_string(),
            Some(Ok(frame)) => frame,
        };
        let Ok(envelope) = Envelope::decode(frame) else {
            debug!("ignoring an undecodable frame");
            continue;
        };
        let event = match Kind::try_from(envelope.kind) {
            Ok(Kind::Response) => {
                let waiter = pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&envelope.msg_id);
                let info = envelope
                    .session
                    .clone()
                    .or_else(|| envelope.resumed.as_ref().and_then(|r| r.session.clone()));
                if let Some(info) = info {
                    *lock(&track.info) = Some(info);
                }
                let response = Response {
                    route: envelope.route,
                    status: envelope.status,
                    error: envelope.error,
                    payload: envelope.payload,
                    session: envelope.session,
                    resumed: envelope.resumed,
                    redirect: Vec::new(),
                };
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(response);
                        continue;
                    }
                    None => Event::Unsolicited(response),
                }
            }
            Ok(Kind::Redirect) => {
                let waiter = lock(&pending).remove(&envelope.msg_id);
                let redirect = envelope.redirect.unwrap_or_default();
                let response = Response {
                    route: envelope.route,
                    status: envelope.status,
                    error: "redirected to another gateway".to_owned(),
                    payload: Bytes::new(),
                    session: None,
                    resumed: None,
                    redirect: redirect.addresses,
                };
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(response);
                        continue;
                    }
                    None => Event::Unsolicited(response),
                }
            }
            Ok(Kind::Push) => {
                track.last_seq.store(envelope.seq, Ordering::Relaxed);
                Event::Push(Push {
                    route: envelope.route,
                    seq: envelope.seq,
                    payload: envelope.payload,
                })
            }
            Ok(Kind::Kick) => {
                let kick = envelope.kick.unwrap_or_default();
                Event::Kicked {
                    code: kick.code,
                    reason: kick.reason,
                }
            }
            Ok(Kind::MigrateTo) => {
                let to = envelope.migrate_to.unwrap_or_default();
                let info = lock(&track.info).clone().unwrap_or_default();
                Event::MigrateTo {
                    addresses: to.addresses,
                    ticket: ResumeTicket {
                        user_id: info.user_id,
                        session_id: info.session_id,
                        token: to.token,
                        last_seq: track.last_seq.load(Ordering::Relaxed),
                    },
                }
            }
            Ok(Kind::MoveSuggested) => Event::MoveSuggested,
            Ok(Kind::Offline) => Event::Offline {
                grace: Duration::from_millis(envelope.offline.map_or(0, |o| o.grace_ms)),
            },
            _ => continue,
        };
        // Waiting here when the application does not read events stops reading the socket:
        // the gateway then sees a slow consumer.
        if events.send(event).await.is_err() {
            break "events dropped".to_owned();
        }
    };
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
    let _ = events.send(Event::Disconnected { reason }).await;
}

/// The reader task, stopped when the last handle of its client is dropped: a dropped client
/// closes its connection (both halves of the socket go) instead of leaving it open.
#[derive(Debug)]
struct ReaderGuard(tokio::task::AbortHandle);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
