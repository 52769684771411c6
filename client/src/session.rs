//! A session that outlives its connections: [`Session`] watches one [`Client`] at a time and,
//! when its connection ends without the session ending, connects again and resumes (after a
//! dropped connection, or to follow its gateway's drain to another gateway).
//!
//! Opt in by using [`Session`] instead of [`Client`]: the plain client stays what it is (one
//! connection, every protocol event handed to the application as it comes), for tests, load
//! generators and applications that want to decide each step themselves.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, info};
use wire::ErrorCode;

use crate::{
    connection::{Client, ClientConfig, ClientError, Event, Events, Push, Response, ResumeTicket},
    transport::Address,
};

/// Settings of a [`Session`].
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Settings of each connection. Its `request_timeout` also bounds how long a request
    /// waits for a reconnection ([`Session::request`]) and each connect-and-resume attempt.
    pub client: ClientConfig,
    /// How long after a connection ends the session keeps trying to resume (the gateway's
    /// `--resume-window-ms`, 30 s by default: a later resume would be refused anyway).
    pub resume_window: Duration,
    /// The pause after a round of attempts (every address once) failed; doubled after each
    /// failed round up to `retry_max`.
    pub retry_min: Duration,
    /// The longest pause between rounds of attempts.
    pub retry_max: Duration,
    /// Ask to move (`MIGRATE`) as soon as the gateway says it is going offline, or suggests
    /// another gateway (room affinity). On by
    /// default: the move costs one reconnection whenever it happens, and moving at once
    /// avoids the grace's end, when the gateway stops reading requests (a request sent then
    /// is never answered). An application that would rather move at a quiet moment (between
    /// rounds) turns this off and calls [`Session::migrate`] itself before the grace ends; if
    /// it does not, the gateway moves it when the grace ends and the session follows anyway.
    pub move_on_offline: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            resume_window: Duration::from_secs(30),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            move_on_offline: true,
        }
    }
}

/// What happens to a [`Session`], in order.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// Connected: the first connection (`reconnect: false`), or a new one that took the
    /// session over after a [`SessionEvent::Disconnected`] with `reconnect: true`.
    Connected {
        /// The gateway connected to.
        address: Address,
        /// True for every connection after the first.
        reconnect: bool,
        /// On a reconnection: true when every push after the last one received follows, false
        /// when the gateway no longer held some of them (the pushes go on from a later `seq`:
        /// the application resynchronises its state). Always false on the first connection.
        resumed: bool,
    },
    /// Another gateway suits the session better (most of its room is there). With `moving`
    /// the session has asked to move already ([`SessionConfig::move_on_offline`]); otherwise
    /// call [`Session::migrate`] when convenient.
    MoveSuggested {
        /// True when the session asked to move at once.
        moving: bool,
    },
    /// A server push. Across reconnections pushes come once each, in `seq` order.
    Push(Push),
    /// The gateway is going offline (draining). With `moving` the session has asked to move
    /// already ([`SessionConfig::move_on_offline`]); otherwise call [`Session::migrate`]
    /// before `grace` ends, or the gateway moves the session when it ends.
    Offline {
        /// Time left before the gateway moves (or closes) remaining connections.
        grace: Duration,
        /// True when the session asked to move at once.
        moving: bool,
    },
    /// The gateway ended the session with this code and reason (logged in elsewhere, kicked
    /// by a server, too slow a reader, a drain with no other gateway). A
    /// [`SessionEvent::Disconnected`] with `reconnect: false` follows. (A kick for an idle
    /// connection keeps the session: it is resumed like a dropped connection.)
    Kicked {
        /// An [`ErrorCode`] (or an application code).
        code: u32,
        /// Why.
        reason: String,
    },
    /// A response matching no request in flight (see [`Event::Unsolicited`]).
    Unsolicited(Box<Response>),
    /// The connection ended. With `reconnect: true` the session is resuming on a new
    /// connection ([`SessionEvent::Connected`] with `reconnect: true` follows, or this event
    /// again with `reconnect: false`). With `reconnect: false` the session is over: this is
    /// the last event.
    Disconnected {
        /// True while the session is being resumed.
        reconnect: bool,
        /// Why the connection ended (or, when final, why the session could not go on).
        reason: String,
    },
}

/// The event stream of a [`Session`].
pub struct SessionEvents(mpsc::Receiver<SessionEvent>);

impl SessionEvents {
    /// The next event; `None` after the final `Disconnected`.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        self.0.recv().await
    }

    /// The next push, skipping other events; `None` once the session is over.
    pub async fn next_push(&mut self) -> Option<Push> {
        loop {
            match self.next().await? {
                SessionEvent::Push(push) => return Some(push),
                SessionEvent::Disconnected {
                    reconnect: false, ..
                } => return None,
                _ => {}
            }
        }
    }
}

/// A logged-in session that reconnects by itself: after a connection dropped without a
/// goodbye it connects again (to the same gateway first, then the others given, pausing
/// between rounds) and resumes within [`SessionConfig::resume_window`]; when its gateway
/// drains it asks to move and resumes at the gateway it is sent to (or, failing that, at the
/// others given). Pushes go on once each and in order; every change shows as a
/// [`SessionEvent`]. Cloning shares the session.
///
/// **Requests across reconnections.** [`Session::request`] sent while the session is between
/// connections waits for the next one (at most the request timeout, then
/// [`ClientError::Timeout`]); once the session is over it fails with [`ClientError::Closed`].
/// A request whose connection ends before its answer arrives fails with
/// [`ClientError::Closed`]: the server may or may not have handled it, so it is not sent
/// again (requests need not be idempotent); send it again after `Connected` when that is
/// safe. Requests sent before a move are answered before the move (the gateway answers them
/// first).
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

struct Shared {
    config: SessionConfig,
    /// The gateways given: where to resume when the one used is gone.
    addresses: Vec<Address>,
    /// The current connection, as requests see it.
    link: watch::Sender<Link>,
    /// Set by [`Session::close`]: the end of the connection ends the session.
    closing: AtomicBool,
}

#[derive(Clone)]
enum Link {
    /// Connected: requests go here.
    Up(Client),
    /// Connected but moving (`MIGRATE` sent or `MIGRATE_TO` received): the gateway reads no
    /// more requests, so new ones wait for the next connection.
    Moving(Client),
    /// Between connections.
    Down,
    /// The session is over.
    Over,
}

impl Session {
    /// Connects to the first of `addresses` that accepts (in order), with the first
    /// connection's `Connected` event waiting. Log in next with [`Session::request`]: a
    /// connection lost before the login answer ends the session (there is nothing to resume).
    pub async fn connect(
        addresses: impl IntoIterator<Item = Address>,
        config: SessionConfig,
    ) -> Result<(Session, SessionEvents), ClientError> {
        let addresses: Vec<Address> = addresses.into_iter().collect();
        let mut failure = no_address();
        for address in &addresses {
            match Client::connect_with(address.clone(), config.client.clone()).await {
                Ok((client, events)) => {
                    return Ok(Session::start(config, &addresses, client, events, address));
                }
                Err(error) => failure = error,
            }
        }
        Err(failure)
    }

    /// Connects to the first of `addresses` that accepts and logs in there (`route`,
    /// `payload`); returns the login's answer with the session. A gateway that redirects the
    /// client (it is full, or much busier than another) is followed once: the client connects
    /// where it was sent, says it was redirected, and logs in there, where it is served or
    /// answered `GATEWAY_FULL`, never sent on. The first event names the gateway that serves
    /// it.
    pub async fn login(
        addresses: impl IntoIterator<Item = Address>,
        config: SessionConfig,
        route: u32,
        payload: impl Into<Bytes>,
    ) -> Result<(Session, SessionEvents, Response), ClientError> {
        let addresses: Vec<Address> = addresses.into_iter().collect();
        let payload: Bytes = payload.into();
        let mut failure = no_address();
        for address in &addresses {
            let (client, events) =
                match Client::connect_with(address.clone(), config.client.clone()).await {
                    Ok(connected) => connected,
                    Err(error) => {
                        failure = error;
                        continue;
                    }
                };
            // A gateway that takes the connection and then refuses it (fenced off from the
            // majority, say) is passed over like one that does not answer.
            let answer = match client.request(route, payload.clone()).await {
                Ok(answer) => answer,
                Err(error) => {
                    failure = error;
                    continue;
                }
            };
            if answer.redirect.is_empty() {
                let (session, events) = Session::start(config, &addresses, client, events, address);
                return Ok((session, events, answer));
            }
            info!(from = %address, to = ?answer.redirect, "redirected to another gateway");
            let mut redirected = config.client.clone();
            redirected.redirected = true;
            for target in same_kind_first(&answer.redirect, address) {
                match Client::connect_with(target.clone(), redirected.clone()).await {
                    Ok((client, events)) => {
                        let answer = client.request(route, payload.clone()).await?;
                        let (session, events) =
                            Session::start(config, &addresses, client, events, &target);
                        return Ok((session, events, answer));
                    }
                    Err(error) => failure = error,
                }
            }
        }
        Err(failure)
    }

    /// A session on `client`, whose first event is `Connected` to `address`.
    fn start(
        config: SessionConfig,
        addresses: &[Address],
        client: Client,
        events: Events,
        address: &Address,
    ) -> (Session, SessionEvents) {
        let (tx, rx) = mpsc::channel(config.client.event_buffer.max(1));
        let _ = tx.try_send(SessionEvent::Connected {
            address: address.clone(),
            reconnect: false,
            resumed: false,
        });
        let shared = Arc::new(Shared {
            config,
            addresses: addresses.to_vec(),
            link: watch::Sender::new(Link::Up(client.clone())),
            closing: AtomicBool::new(false),
        });
        tokio::spawn(supervise(
            shared.clone(),
            client,
            events,
            address.clone(),
            tx,
        ));
        (Session { shared }, SessionEvents(rx))
    }

    /// Sends a request on the current connection (waiting for one while the session is
    /// between connections) and waits for its response; see "Requests across
    /// reconnections" above.
    pub async fn request(
        &self,
        route: u32,
        payload: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        let client = self.connected().await?;
        client.request(route, payload).await
    }

    /// Asks to move to another gateway now (after [`SessionEvent::Offline`] when
    /// [`SessionConfig::move_on_offline`] is off). On success (an OK answer) the session
    /// follows by itself: `Disconnected { reconnect: true }`, then `Connected { reconnect:
    /// true }`. An error status (`MIGRATION_UNAVAILABLE`: no other gateway can take it) leaves
    /// the session where it is.
    pub async fn migrate(&self) -> Result<Response, ClientError> {
        let client = self.connected().await?;
        start_move(&self.shared, client).await
    }

    /// Ends the session (GOODBYE: nothing is held for a resume). The last event is
    /// `Disconnected { reconnect: false }`.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Link::Up(client) | Link::Moving(client) = self.shared.link.send_replace(Link::Over) {
            client.close().await;
        }
    }

    /// Drops the current connection without a goodbye, as a network failure would: the
    /// session reconnects and resumes.
    pub async fn drop_connection(&self) {
        let current = self.shared.link.borrow().clone();
        if let Link::Up(client) | Link::Moving(client) = current {
            // New requests wait for the next connection rather than go to this one.
            set_link(&self.shared, |_| Some(Link::Down));
            client.drop_connection().await;
        }
    }

    /// The connection in use, waiting (at most the request timeout) while there is none.
    async fn connected(&self) -> Result<Client, ClientError> {
        let wait = self.shared.config.client.request_timeout;
        let mut link = self.shared.link.subscribe();
        let ready = tokio::time::timeout(
            wait,
            link.wait_for(|l| matches!(l, Link::Up(_) | Link::Over)),
        )
        .await;
        match ready {
            Err(_) => Err(ClientError::Timeout(wait)),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(link)) => match &*link {
                Link::Up(client) => Ok(client.clone()),
                _ => Err(ClientError::Closed),
            },
        }
    }
}

/// Sends `MIGRATE` on `client`: new requests wait meanwhile; a refusal puts it back in use.
async fn start_move(shared: &Shared, client: Client) -> Result<Response, ClientError> {
    set_link(shared, |link| match link {
        Link::Up(current) if current.same_connection(&client) => {
            Some(Link::Moving(current.clone()))
        }
        _ => None,
    });
    let answer = client.migrate().await;
    if !answer.as_ref().is_ok_and(Response::is_ok) {
        debug!(?answer, "the move was refused; the session stays");
        set_link(shared, |link| match link {
            Link::Moving(current) if current.same_connection(&client) => {
                Some(Link::Up(current.clone()))
            }
            _ => None,
        });
    }
    answer
}

/// Changes the link when `change` says so; never once the session is over. True when it
/// changed.
fn set_link(shared: &Shared, change: impl FnOnce(&Link) -> Option<Link>) -> bool {
    shared.link.send_if_modified(|link| {
        if matches!(link, Link::Over) {
            return false;
        }
        match change(link) {
            Some(new) => {
                *link = new;
                true
            }
            None => false,
        }
    })
}

/// How one connection ended.
enum End {
    /// The session is over.
    Over(String),
    /// The session moved: resume at one of `addresses` with `ticket`.
    Moved {
        addresses: Vec<String>,
        ticket: ResumeTicket,
    },
    /// The connection was lost; the session is held for a resume.
    Dropped(String),
    /// The gateway was cut off from the majority of the cluster: resume at another one.
    Partitioned(String),
}

fn no_address() -> ClientError {
    ClientError::Connect {
        address: String::new(),
        reason: "no gateway address given".to_owned(),
    }
}

/// Runs the session: watches each connection until it ends, then reconnects and resumes, or
/// ends the session.
async fn supervise(
    shared: Arc<Shared>,
    mut client: Client,
    mut events: Events,
    mut address: Address,
    tx: mpsc::Sender<SessionEvent>,
) {
    // The seq of the last push handed to the application: where a resume picks up.
    let mut last_seq = 0;
    loop {
        let Some(end) = watch_connection(&shared, &client, &mut events, &tx, &mut last_seq).await
        else {
            // The application dropped its events: nobody is listening.
            shared.link.send_replace(Link::Over);
            return;
        };
        let (first, ticket, reason) = match end {
            End::Over(reason) => return finish(&shared, &tx, reason).await,
            End::Moved {
                addresses,
                mut ticket,
            } => {
                ticket.last_seq = last_seq;
                let first = same_kind_first(&addresses, &address);
                (
                    first,
                    ticket,
                    "the session moved to another gateway".to_owned(),
                )
            }
            End::Dropped(reason) => match resume_ticket(&client, last_seq) {
                Some(ticket) => (vec![address.clone()], ticket, reason),
                None => return finish(&shared, &tx, before_login(&reason)).await,
            },
            // The other gateways first: this one is tried last (`reconnect` adds it).
            End::Partitioned(reason) => match resume_ticket(&client, last_seq) {
                Some(ticket) => {
                    let others = shared.addresses.iter().filter(|a| **a != address);
                    (others.cloned().collect(), ticket, reason)
                }
                None => return finish(&shared, &tx, before_login(&reason)).await,
            },
        };
        set_link(&shared, |_| Some(Link::Down));
        info!(user = %ticket.user_id, %reason, "connection ended; resuming the session");
        let disconnected = SessionEvent::Disconnected {
            reconnect: true,
            reason,
        };
        if tx.send(disconnected).await.is_err() {
            return;
        }
        match reconnect(&shared, first, &ticket).await {
            Ok((new_client, new_events, new_address, resumed)) => {
                if !set_link(&shared, |_| Some(Link::Up(new_client.clone()))) {
                    // Closed meanwhile.
                    new_client.close().await;
                    let reason = "closed by the application".to_owned();
                    return finish(&shared, &tx, reason).await;
                }
                info!(user = %ticket.user_id, address = %new_address, resumed, "session resumed");
                (client, events, address) = (new_client, new_events, new_address);
                let connected = SessionEvent::Connected {
                    address: address.clone(),
                    reconnect: true,
                    resumed,
                };
                if tx.send(connected).await.is_err() {
                    return;
                }
            }
            Err(reason) => return finish(&shared, &tx, reason).await,
        }
    }
}

/// The ticket to resume `client`'s session with, after push `last_seq` (none before login).
fn resume_ticket(client: &Client, last_seq: u64) -> Option<ResumeTicket> {
    let mut ticket = client.resume_ticket()?;
    ticket.last_seq = last_seq;
    Some(ticket)
}

fn before_login(reason: &str) -> String {
    format!("{reason} (before login: there is no session to resume)")
}

/// Ends the session: the final event.
async fn finish(shared: &Shared, tx: &mpsc::Sender<SessionEvent>, reason: String) {
    shared.link.send_replace(Link::Over);
    info!(%reason, "session over");
    let _ = tx
        .send(SessionEvent::Disconnected {
            reconnect: false,
            reason,
        })
        .await;
}

/// Hands one connection's events on until it ends; `None` when the application dropped its
/// events.
async fn watch_connection(
    shared: &Arc<Shared>,
    client: &Client,
    events: &mut Events,
    tx: &mpsc::Sender<SessionEvent>,
    last_seq: &mut u64,
) -> Option<End> {
    let mut moved = None;
    let mut kicked = None;
    let reason = loop {
        let handed = match events.next().await {
            // The reader stopped (a dropped connection) after handing on what it read.
            None => break "connection lost".to_owned(),
            Some(Event::Disconnected { reason }) => break reason,
            Some(Event::Push(push)) => {
                *last_seq = push.seq;
                SessionEvent::Push(push)
            }
            Some(Event::Offline { grace }) => {
                let moving = shared.config.move_on_offline && moved.is_none();
                if moving {
                    // Not awaited here: the answer comes through the reader, which may be
                    // waiting for this loop to take events.
                    let (shared, client) = (shared.clone(), client.clone());
                    tokio::spawn(async move { start_move(&shared, client).await });
                }
                SessionEvent::Offline { grace, moving }
            }
            Some(Event::MoveSuggested) => {
                let moving = shared.config.move_on_offline && moved.is_none();
                if moving {
                    let (shared, client) = (shared.clone(), client.clone());
                    tokio::spawn(async move { start_move(&shared, client).await });
                }
                SessionEvent::MoveSuggested { moving }
            }
            Some(Event::MigrateTo { addresses, ticket }) => {
                // The gateway closes next; pushes it still sends come first.
                set_link(shared, |_| Some(Link::Moving(client.clone())));
                moved = Some((addresses, ticket));
                continue;
            }
            Some(Event::Kicked { code, reason }) => {
                kicked = Some((code, reason));
                continue;
            }
            Some(Event::Unsolicited(response)) => SessionEvent::Unsolicited(Box::new(response)),
        };
        tx.send(handed).await.ok()?;
    };
    if shared.closing.load(Ordering::Relaxed) {
        return Some(End::Over("closed by the application".to_owned()));
    }
    if let Some((addresses, ticket)) = moved {
        return Some(End::Moved { addresses, ticket });
    }
    match kicked {
        Some((code, reason)) if code == ErrorCode::IdleTimeout as u32 => {
            Some(End::Dropped(format!("kicked: {reason}")))
        }
        Some((code, reason)) if code == ErrorCode::Partitioned as u32 => {
            Some(End::Partitioned(format!("kicked: {reason}")))
        }
        Some((code, reason)) => {
            let end = End::Over(format!("kicked by the gateway: {reason} (code {code})"));
            tx.send(SessionEvent::Kicked { code, reason }).await.ok()?;
            Some(end)
        }
        None => Some(End::Dropped(reason)),
    }
}

/// The addresses a `MIGRATE_TO` names, those of `current`'s transport first.
fn same_kind_first(addresses: &[String], current: &Address) -> Vec<Address> {
    let parsed: Vec<Address> = addresses.iter().filter_map(|a| Address::parse(a)).collect();
    let same = |a: &Address| a.is_tcp() == current.is_tcp();
    let (mut first, others): (Vec<_>, Vec<_>) = parsed.into_iter().partition(same);
    first.extend(others);
    first
}

/// Connects and resumes with `ticket`: `first` in order, then the session's other addresses,
/// round after round with growing pauses, until one resumes it, one refuses it for good, or
/// the resume window passes. Returns the connection and whether every push follows.
async fn reconnect(
    shared: &Shared,
    first: Vec<Address>,
    ticket: &ResumeTicket,
) -> Result<(Client, Events, Address, bool), String> {
    let config = &shared.config;
    let deadline = Instant::now() + config.resume_window;
    let mut candidates = first;
    for address in &shared.addresses {
        if !candidates.contains(address) {
            candidates.push(address.clone());
        }
    }
    let mut pause = config.retry_min;
    let mut last_error = "no gateway address".to_owned();
    loop {
        for address in &candidates {
            if shared.closing.load(Ordering::Relaxed) {
                return Err("closed by the application".to_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let attempt = Client::resume(address.clone(), config.client.clone(), ticket);
            let outcome = tokio::time::timeout(left.min(config.client.request_timeout), attempt);
            match outcome.await {
                Ok(Ok((client, events, answer))) if answer.is_ok() => {
                    let resumed = answer.resumed.is_some_and(|r| r.resumed);
                    return Ok((client, events, address.clone(), resumed));
                }
                Ok(Ok((_, _, answer))) if refused_for_good(&answer) => {
                    return Err(format!(
                        "the session cannot be resumed: {} (code {})",
                        answer.error, answer.status
                    ));
                }
                Ok(Ok((_, _, answer))) => {
                    last_error = format!("{address}: {} (code {})", answer.error, answer.status);
                }
                Ok(Err(error)) => last_error = format!("{address}: {error}"),
                Err(_) => last_error = format!("{address}: no answer in time"),
            }
            debug!(%last_error, "a resume attempt failed");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no gateway resumed the session within {:?} (last: {last_error})",
                config.resume_window
            ));
        }
        // Spread by session, so that the clients of a failed gateway do not come back at
        // once: up to half the pause more.
        let spread = pause.mul_f64((ticket.session_id % 16) as f64 / 32.0);
        tokio::time::sleep((pause + spread).min(left)).await;
        pause = (pause * 2).min(config.retry_max);
    }
}

/// True for a resume refusal that no other attempt can change: the session ended, or the
/// token can never work.
fn refused_for_good(answer: &Response) -> bool {
    matches!(
        answer.code(),
        Some(
            ErrorCode::SessionGone
                | ErrorCode::TokenInvalid
                | ErrorCode::TokenExpired
                | ErrorCode::TokenReused
                | ErrorCode::TokenWrongUser
                | ErrorCode::TokenWrongCluster
                | ErrorCode::AlreadyLoggedIn
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_tries_the_current_transport_first() {
        let check = |current: &str, announced: &[&str], expected: &[&str]| {
            let current = Address::parse(current).expect("an address");
            let announced: Vec<String> = announced.iter().map(|a| (*a).to_owned()).collect();
            let order: Vec<String> = same_kind_first(&announced, &current)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(order, expected, "from {current}");
        };
        let announced = ["ws://b:7000/ws", "tcp://10.0.0.2:7001"];
        check(
            "tcp://10.0.0.1:7001",
            &announced,
            &["tcp://10.0.0.2:7001", "ws://b:7000/ws"],
        );
        check(
            "ws://a:7000/ws",
            &announced,
            &["ws://b:7000/ws", "tcp://10.0.0.2:7001"],
        );
        // Host names count as their transport (`--public-host`); unreadable addresses are
        // skipped.
        check(
            "tcp://10.0.0.1:7001",
            &["ws://b:7000/ws", "tcp://b:7001"],
            &["tcp://b:7001", "ws://b:7000/ws"],
        );
        check(
            "tcp://a:7001",
            &["ws://b:7000/ws", "tcp://10.0.0.2:7001"],
            &["tcp://10.0.0.2:7001", "ws://b:7000/ws"],
        );
        check("ws://a:7000/ws", &["http://b", "tcp://b"], &[]);
    }
}
