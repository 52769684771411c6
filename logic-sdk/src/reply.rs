//! What a handler returns: a payload and, optionally, changes the gateway applies before the
//! client sees the response (login, "me" bindings, session attributes, session watch).

use bytes::Bytes;
use mesh::NodeId;
use prost::Message;
use proto::logic::v1 as pb;

/// How a binding change combines with a user's existing bindings (ioGame's semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Replace the bindings with the given nodes.
    Cover,
    /// Add the given nodes after the existing ones, skipping duplicates.
    Append,
    /// Remove the given nodes.
    Remove,
    /// Remove every binding.
    Clear,
}

impl BindMode {
    /// The wire value.
    pub fn to_proto(self) -> pb::BindMode {
        match self {
            BindMode::Cover => pb::BindMode::Cover,
            BindMode::Append => pb::BindMode::Append,
            BindMode::Remove => pb::BindMode::Remove,
            BindMode::Clear => pb::BindMode::Clear,
        }
    }
}

/// A handler's successful answer.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    payload: Bytes,
    login: Option<String>,
    bind_me: Option<(BindMode, Vec<NodeId>)>,
    attributes: Vec<(String, String)>,
    watch_session: bool,
    wills: Vec<pb::Will>,
    revoke_wills: Vec<String>,
    move_to_gateway: Option<NodeId>,
}

impl Reply {
    /// A reply carrying `payload`.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// A reply carrying an encoded protobuf message.
    pub fn message(message: &impl Message) -> Self {
        Self::new(message.encode_to_vec())
    }

    /// On a public route: the client proved it is `user_id`; the gateway attaches the user to
    /// the session (kicking an older session of the same user anywhere in the cluster).
    pub fn login(mut self, user_id: impl Into<String>) -> Self {
        self.login = Some(user_id.into());
        self
    }

    /// Changes the requesting user's bindings; the gateway applies it before it forwards this
    /// reply, so the client's next request already follows the new bindings.
    pub fn bind_me(mut self, mode: BindMode, nodes: Vec<NodeId>) -> Self {
        self.bind_me = Some((mode, nodes));
        self
    }

    /// Sets a session attribute (an empty value removes it).
    pub fn set_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }

    /// Asks the gateway to tell this node when the session closes.
    pub fn watch_session(mut self) -> Self {
        self.watch_session = true;
        self
    }

    /// Leaves a will with the gateway: if this node is ever gone (left without a word, or
    /// declared dead) while the session is bound to it, the gateway pushes `payload` on `route`
    /// to the user (a room's "room closed: server failed", say). One will per `key`; a later
    /// one with the same key replaces it.
    pub fn will(mut self, key: impl Into<String>, route: u32, payload: impl Into<Bytes>) -> Self {
        self.wills.push(pb::Will {
            key: key.into(),
            route,
            payload: payload.into(),
        });
        self
    }

    /// Takes back the will with `key`, whichever node left it (the user left the room, say).
    pub fn revoke_will(mut self, key: impl Into<String>) -> Self {
        self.revoke_wills.push(key.into());
        self
    }

    /// After this answer, moves the user's session to `gateway` (affinity: most of the user's
    /// room is there), as a drain moves it: the client is told `MIGRATE_TO` and resumes there.
    /// The gateway ignores it for itself, or for a gateway that is not online or is full.
    pub fn move_to_gateway(mut self, gateway: NodeId) -> Self {
        self.move_to_gateway = Some(gateway);
        self
    }

    pub(crate) fn into_proto(self) -> pb::LogicResponse {
        pb::LogicResponse {
            status: 0,
            error: String::new(),
            payload: self.payload,
            login_user_id: self.login.unwrap_or_default(),
            bind_me: self.bind_me.map(|(mode, nodes)| pb::BindChange {
                mode: mode.to_proto() as i32,
                node_ids: nodes.iter().map(ToString::to_string).collect(),
            }),
            set_attributes: self.attributes.into_iter().collect(),
            watch_session: self.watch_session,
            wills: self.wills,
            revoke_wills: self.revoke_wills,
            move_to_gateway: self
                .move_to_gateway
                .map(|g| g.to_string())
                .unwrap_or_default(),
        }
    }
}

/// What a typed handler ([`LogicServer::handle`](crate::LogicServer::handle)) returns: a
/// protobuf message, sent as the response payload, or a [`Reply`] (payload plus effects).
pub trait IntoReply {
    /// The reply the gateway receives.
    fn into_reply(self) -> Reply;
}

impl IntoReply for Reply {
    fn into_reply(self) -> Reply {
        self
    }
}

impl<M: Message> IntoReply for M {
    fn into_reply(self) -> Reply {
        Reply::message(&self)
    }
}

/// A handler's error, sent to the client as the response status. Use codes from
/// [`LogicError::FIRST_APP_CODE`] up for your own errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("code {code}: {message}")]
pub struct LogicError {
    /// The status the client sees.
    pub code: u32,
    /// Text the client sees; keep internal details out of it.
    pub message: String,
}

impl LogicError {
    /// The first code free for applications (below it are the gateway's own codes).
    pub const FIRST_APP_CODE: u32 = 1000;

    /// An application error.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The request payload did not decode.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(proto::client::v1::ErrorCode::BadRequest as u32, message)
    }

    /// The route needs a logged-in user.
    pub fn login_required() -> Self {
        Self::new(
            proto::client::v1::ErrorCode::LoginRequired as u32,
            "login required",
        )
    }

    /// Something went wrong on the server side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(proto::client::v1::ErrorCode::Internal as u32, message)
    }
}

/// A push a gateway keeps for a session and delivers if the node it is left for is gone (see
/// [`Reply::will`] and [`crate::Sdk::bind_with_wills`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// One will per key in a session.
    pub key: String,
    /// The push's route.
    pub route: u32,
    /// The push's payload.
    pub payload: Bytes,
}

impl Will {
    pub(crate) fn to_proto(&self) -> pb::Will {
        pb::Will {
            key: self.key.clone(),
            route: self.route,
            payload: self.payload.clone(),
        }
    }
}
