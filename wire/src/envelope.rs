//! Constructors for the envelopes both sides send, so neither spells out fields by hand.

use bytes::Bytes;
use prost::Message;
use proto::client::v1::{Envelope, ErrorCode, Kick, Kind, Offline, Resume};

/// A request.
pub fn request(msg_id: u32, route: u32, payload: Bytes) -> Envelope {
    Envelope {
        kind: Kind::Request as i32,
        route,
        msg_id,
        payload,
        ..Envelope::default()
    }
}

/// A successful response.
pub fn response(msg_id: u32, route: u32, status: u32, error: String, payload: Bytes) -> Envelope {
    Envelope {
        kind: Kind::Response as i32,
        route,
        msg_id,
        status,
        error,
        payload,
        ..Envelope::default()
    }
}

/// An error response from the gateway itself.
pub fn error(msg_id: u32, route: u32, code: ErrorCode, text: &str) -> Envelope {
    response(msg_id, route, code as u32, text.to_owned(), Bytes::new())
}

/// A server push.
pub fn push(seq: u64, route: u32, payload: Bytes) -> Envelope {
    Envelope {
        kind: Kind::Push as i32,
        route,
        seq,
        payload,
        ..Envelope::default()
    }
}

/// The frame length of a push of `payload_len` bytes on `route` with the largest possible seq:
/// what a push must fit in, computed without building it (no copy of the payload handle).
pub fn push_len(route: u32, payload_len: usize) -> usize {
    let head = push(u64::MAX, route, Bytes::new()).encoded_len();
    if payload_len == 0 {
        head
    } else {
        // The payload field: its tag (one byte for field 6), its length, its bytes.
        head + 1 + prost::length_delimiter_len(payload_len) + payload_len
    }
}

/// A heartbeat.
pub fn heartbeat() -> Envelope {
    Envelope {
        kind: Kind::Heartbeat as i32,
        ..Envelope::default()
    }
}

/// A kick: the connection closes after it.
pub fn kick(code: u32, reason: &str) -> Envelope {
    Envelope {
        kind: Kind::Kick as i32,
        kick: Some(Kick {
            code,
            reason: reason.to_owned(),
        }),
        ..Envelope::default()
    }
}

/// The gateway is going offline.
pub fn offline(grace_ms: u64) -> Envelope {
    Envelope {
        kind: Kind::Offline as i32,
        offline: Some(Offline { grace_ms }),
        ..Envelope::default()
    }
}

/// A resume of the session `token` names, by a client whose last push was `last_seq`.
pub fn resume(msg_id: u32, token: &str, last_seq: u64, user_id: &str) -> Envelope {
    Envelope {
        kind: Kind::Resume as i32,
        msg_id,
        resume: Some(Resume {
            token: token.to_owned(),
            last_seq,
            user_id: user_id.to_owned(),
        }),
        ..Envelope::default()
    }
}

/// The answer to a connection's first request (`msg_id`): connect to one of `addresses`.
pub fn redirect(msg_id: u32, route: u32, addresses: Vec<String>) -> Envelope {
    Envelope {
        kind: Kind::Redirect as i32,
        msg_id,
        route,
        status: ErrorCode::Redirected as u32,
        redirect: Some(proto::client::v1::Redirect {
            address: addresses.first().cloned().unwrap_or_default(),
            addresses,
        }),
        ..Envelope::default()
    }
}

/// A suggestion to move (answer with MIGRATE when convenient).
pub fn move_suggested() -> Envelope {
    Envelope {
        kind: Kind::MoveSuggested as i32,
        ..Envelope::default()
    }
}

/// A goodbye: the session ends now.
pub fn goodbye() -> Envelope {
    Envelope {
        kind: Kind::Goodbye as i32,
        ..Envelope::default()
    }
}

/// Encodes an envelope into one frame body.
pub fn encode(envelope: &Envelope) -> Bytes {
    Bytes::from(envelope.encode_to_vec())
}

/// The name of a status code for logs and metric labels (`app` for application codes).
pub fn code_name(status: u32) -> &'static str {
    match ErrorCode::try_from(status as i32) {
        Ok(code) => match code {
            ErrorCode::Ok => "ok",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::LoginRequired => "login_required",
            ErrorCode::BoundNodeUnavailable => "bound_node_unavailable",
            ErrorCode::NoNodeAvailable => "no_node_available",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ServerDraining => "server_draining",
            ErrorCode::Internal => "internal",
            ErrorCode::DuplicateMessageId => "duplicate_message_id",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::LoggedInElsewhere => "logged_in_elsewhere",
            ErrorCode::Kicked => "kicked",
            ErrorCode::AlreadyLoggedIn => "already_logged_in",
            ErrorCode::ResponseTooLarge => "response_too_large",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenReused => "token_reused",
            ErrorCode::TokenWrongUser => "token_wrong_user",
            ErrorCode::TokenWrongCluster => "token_wrong_cluster",
            ErrorCode::SessionGone => "session_gone",
            ErrorCode::MigrationUnavailable => "migration_unavailable",
            ErrorCode::GatewayFull => "gateway_full",
            ErrorCode::Redirected => "redirected",
            ErrorCode::Partitioned => "partitioned",
        },
        Err(_) => "app",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_len_is_the_length_of_the_push_frame() {
        for route in [0, 1, proto::route(10, 4), u32::MAX] {
            for size in [0, 1, 127, 128, 16_383, 16_384, 1 << 20] {
                let frame = push(u64::MAX, route, Bytes::from(vec![7u8; size]));
                assert_eq!(push_len(route, size), frame.encoded_len(), "{route} {size}");
            }
        }
    }
}
