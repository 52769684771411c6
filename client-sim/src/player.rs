//! One simulated player: the requests of the matchmaking story, typed.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use client::{Address, Client, ClientConfig, Events};
use prost::Message;
use proto::{
    matchmaking::v1::{self as mm, routes as match_routes},
    room::v1::{self as room, routes as room_routes},
};

/// Parses `ws://host:port/ws` or `tcp://host:port` (or a bare `host:port`, as TCP).
pub(crate) fn address(text: &str) -> anyhow::Result<Address> {
    if text.starts_with("ws://") || text.starts_with("wss://") {
        return Ok(Address::WebSocket(text.to_owned()));
    }
    let hostport = text.strip_prefix("tcp://").unwrap_or(text);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .with_context(|| format!("cannot resolve {hostport}"))?
        .next()
        .with_context(|| format!("no address for {hostport}"))?;
    Ok(Address::Tcp(addr))
}

pub(crate) struct Player {
    pub(crate) name: String,
    pub(crate) client: Client,
    pub(crate) events: Events,
}

impl Player {
    /// Connects and logs in (with a token when a login secret is given).
    pub(crate) async fn login(
        address: &Address,
        name: &str,
        secret: Option<&str>,
    ) -> anyhow::Result<Player> {
        let config = ClientConfig {
            request_timeout: Duration::from_secs(15),
            ..ClientConfig::default()
        };
        let (client, events) = Client::connect_with(address.clone(), config).await?;
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
        Ok(Player {
            name: name.to_owned(),
            client,
            events,
        })
    }

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
