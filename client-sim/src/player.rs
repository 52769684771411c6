//! One simulated player: the requests of the matchmaking story, typed, over one connection
//! (the load generator's [`Client`]) or a session that reconnects (the demo's [`Session`]).

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use client::{
    Address, Client, ClientConfig, ClientError, Events, Push, Response, Session, SessionConfig,
};
use prost::Message;
use proto::{
    matchmaking::v1::{self as mm, routes as match_routes},
    room::v1::{self as room, routes as room_routes},
};

/// Parses `ws://host:port/ws` or `tcp://host:port` (or a bare `host:port`, as TCP); host
/// names are resolved when connecting.
pub(crate) fn address(text: &str) -> anyhow::Result<Address> {
    let full = if text.contains("://") {
        text.to_owned()
    } else {
        format!("tcp://{text}")
    };
    Address::parse(&full).with_context(|| format!("not a gateway address: {text}"))
}

/// What a player sends its requests through.
pub(crate) trait Requests {
    async fn request(&self, route: u32, payload: Vec<u8>) -> Result<Response, ClientError>;
}

impl Requests for Client {
    async fn request(&self, route: u32, payload: Vec<u8>) -> Result<Response, ClientError> {
        Client::request(self, route, payload).await
    }
}

impl Requests for Session {
    async fn request(&self, route: u32, payload: Vec<u8>) -> Result<Response, ClientError> {
        Session::request(self, route, payload).await
    }
}

/// Where a player's pushes come from.
pub(crate) trait Pushes {
    /// The next push; `None` once disconnected for good.
    async fn next_push(&mut self) -> Option<Push>;
}

impl Pushes for Events {
    async fn next_push(&mut self) -> Option<Push> {
        Events::next_push(self).await
    }
}

pub(crate) struct Player<C = Client, E = Events> {
    pub(crate) name: String,
    pub(crate) client: C,
    pub(crate) events: E,
}

fn client_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(15),
        ..ClientConfig::default()
    }
}

impl Player {
    /// Connects and logs in (with a token when a login secret is given).
    pub(crate) async fn login(
        address: &Address,
        name: &str,
        secret: Option<&str>,
    ) -> anyhow::Result<Player> {
        let (client, events) = Client::connect_with(address.clone(), client_config()).await?;
        log_in(&client, name, secret).await?;
        Ok(Player {
            name: name.to_owned(),
            client,
            events,
        })
    }
}

impl<E> Player<Session, E> {
    /// Opens a session on the first of `addresses` that accepts and logs in; `events` makes
    /// the player's pushes from the session's events.
    pub(crate) async fn login_session(
        addresses: &[Address],
        name: &str,
        secret: Option<&str>,
        events: impl FnOnce(client::SessionEvents) -> E,
    ) -> anyhow::Result<Self> {
        let config = SessionConfig {
            client: client_config(),
            ..SessionConfig::default()
        };
        let (session, session_events) = Session::connect(addresses.to_vec(), config).await?;
        if let Err(error) = log_in(&session, name, secret).await {
            session.close().await;
            return Err(error);
        }
        Ok(Player {
            name: name.to_owned(),
            client: session,
            events: events(session_events),
        })
    }
}

/// Logs in on `client` (with a token when a login secret is given).
async fn log_in(client: &impl Requests, name: &str, secret: Option<&str>) -> anyhow::Result<()> {
    let token = secret
        .map(|s| wire::auth::login_token(s.as_bytes(), name))
        .unwrap_or_default();
    let login = mm::Login {
        user_id: name.to_owned(),
        token,
    };
    let response = client
        .request(match_routes::LOGIN, login.encode_to_vec())
        .await?;
    if !response.is_ok() {
        bail!(
            "login of {name} refused: {} ({})",
            response.error,
            response.status
        );
    }
    Ok(())
}

impl<C: Requests, E: Pushes> Player<C, E> {
    pub(crate) async fn enqueue(&self, mode: &str) -> anyhow::Result<mm::Queued> {
        let response = self
            .client
            .request(
                match_routes::ENQUEUE,
                mm::Enqueue {
                    mode: mode.to_owned(),
                }
                .encode_to_vec(),
            )
            .await?;
        if !response.is_ok() {
            bail!(
                "{} could not queue: {} ({})",
                self.name,
                response.error,
                response.status
            );
        }
        Ok(response.decode()?)
    }

    /// Waits for the match-found push (match-delayed pushes are reported through `on_delay`).
    pub(crate) async fn match_found(
        &mut self,
        limit: Duration,
        mut on_delay: impl FnMut(&str),
    ) -> anyhow::Result<mm::MatchFound> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let push = tokio::time::timeout_at(deadline, self.events.next_push())
                .await
                .with_context(|| format!("{} was not matched within {limit:?}", self.name))?
                .with_context(|| format!("{} was disconnected while queued", self.name))?;
            match push.route {
                match_routes::PUSH_MATCH_FOUND => return Ok(mm::MatchFound::decode(push.payload)?),
                match_routes::PUSH_MATCH_DELAYED => {
                    on_delay(&mm::MatchDelayed::decode(push.payload)?.reason)
                }
                _ => {}
            }
        }
    }

    pub(crate) async fn create_room(&self, max_members: u32) -> anyhow::Result<room::RoomInfo> {
        let request = room::CreateRoom {
            max_members,
            properties: Default::default(),
        };
        let response = self
            .client
            .request(room_routes::CREATE, request.encode_to_vec())
            .await?;
        if !response.is_ok() {
            bail!(
                "{} could not create a room: {} ({})",
                self.name,
                response.error,
                response.status
            );
        }
        Ok(response.decode()?)
    }

    pub(crate) async fn join_room(&self, room_id: &str) -> anyhow::Result<room::RoomInfo> {
        let response = self
            .client
            .request(
                room_routes::JOIN,
                room::JoinRoom {
                    room_id: room_id.to_owned(),
                }
                .encode_to_vec(),
            )
            .await?;
        if !response.is_ok() {
            bail!(
                "{} could not join {room_id}: {} ({})",
                self.name,
                response.error,
                response.status
            );
        }
        Ok(response.decode()?)
    }

    /// Sends a room operation; returns the response (its status tells success).
    pub(crate) async fn room_op(
        &self,
        room_id: &str,
        payload: Bytes,
    ) -> anyhow::Result<client::Response> {
        let op = room::RoomOp {
            room_id: room_id.to_owned(),
            payload,
        };
        Ok(self
            .client
            .request(room_routes::OP, op.encode_to_vec())
            .await?)
    }
}
