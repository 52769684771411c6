//! Every answer the gateway gives a client by itself: one closed enum, each variant with its
//! client-visible code (docs/PROTOCOL.md) and a fixed text. Nothing else reaches a player from
//! the gateway: details go to the logs.

use wire::ErrorCode;

/// Why the gateway answered a frame itself instead of a logic server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Nothing in the cluster serves the route (asked after login).
    RouteNotFound,
    /// A route that is not public, before login (whether or not it exists).
    LoginRequired,
    /// The user is bound, for this route, to a node that has left the cluster or was declared
    /// dead; the binding is dropped.
    BoundNodeGone,
    /// Every server of the route is draining.
    NoNodeAvailable,
    /// The logic server did not answer within the request timeout.
    UpstreamTimeout,
    /// The logic server could not be reached (connection refused or reset).
    UpstreamUnreachable,
    /// The logic server's answer would make a frame over the client frame limit.
    ResponseTooLarge,
    /// A login as another user on a connection already logged in.
    AlreadyLoggedIn,
    /// The same user logged in again later, elsewhere: this login lost.
    LoggedInElsewhere,
    /// The logic server asked for something the gateway could not apply (a binding to a node
    /// that is not an online member); logged with details.
    Internal,
    /// Undecodable envelope.
    Undecodable,
    /// A WebSocket text message.
    TextMessage,
    /// An envelope kind a client may not send.
    UnexpectedKind,
    /// Message id 0 on a request (0 is reserved for answers to frames without a usable id).
    ReservedMessageId,
    /// Over the per-connection rate limit.
    RateLimited,
    /// The message id is already in flight.
    DuplicateMessageId,
    /// A frame over the frame limit (the connection closes after it).
    TooLarge,
}

impl Refusal {
    /// The client-visible code.
    pub(crate) fn code(self) -> ErrorCode {
        match self {
            Refusal::RouteNotFound => ErrorCode::RouteNotFound,
            Refusal::LoginRequired => ErrorCode::LoginRequired,
            Refusal::BoundNodeGone => ErrorCode::BoundNodeUnavailable,
            Refusal::NoNodeAvailable => ErrorCode::NoNodeAvailable,
            Refusal::UpstreamTimeout => ErrorCode::UpstreamTimeout,
            Refusal::UpstreamUnreachable => ErrorCode::UpstreamFailed,
            Refusal::ResponseTooLarge => ErrorCode::ResponseTooLarge,
            Refusal::AlreadyLoggedIn => ErrorCode::AlreadyLoggedIn,
            Refusal::LoggedInElsewhere => ErrorCode::LoggedInElsewhere,
            Refusal::Internal => ErrorCode::Internal,
            Refusal::Undecodable
            | Refusal::TextMessage
            | Refusal::UnexpectedKind
            | Refusal::ReservedMessageId => ErrorCode::BadRequest,
            Refusal::RateLimited => ErrorCode::RateLimited,
            Refusal::DuplicateMessageId => ErrorCode::DuplicateMessageId,
            Refusal::TooLarge => ErrorCode::TooLarge,
        }
    }

    /// The fixed text sent with the code.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Refusal::RouteNotFound => "no server handles this route",
            Refusal::LoginRequired => "log in first",
            Refusal::BoundNodeGone => "the server this user is bound to for this route is gone",
            Refusal::NoNodeAvailable => "every server for this route is draining",
            Refusal::UpstreamTimeout => "the server did not answer in time",
            Refusal::UpstreamUnreachable => "the server for this route could not be reached",
            Refusal::ResponseTooLarge => "the answer exceeds the frame size limit",
            Refusal::AlreadyLoggedIn => "this connection is logged in as another user",
            Refusal::LoggedInElsewhere => "the same user logged in again elsewhere",
            Refusal::Internal => "internal server error",
            Refusal::Undecodable => "undecodable envelope",
            Refusal::TextMessage => "text messages are not supported; send binary frames",
            Refusal::UnexpectedKind => "unexpected envelope kind",
            Refusal::ReservedMessageId => "message id 0 is reserved",
            Refusal::RateLimited => "too many requests",
            Refusal::DuplicateMessageId => "this message id is already in flight",
            Refusal::TooLarge => "frame exceeds the size limit",
        }
    }

    /// The fixed text for a gateway code a logic server answered with (a logic server's text
    /// for codes below 1000 is replaced: it may carry internal details). `None` for
    /// application codes, whose text the application chose for its players.
    pub(crate) fn text_for_code(status: u32) -> Option<&'static str> {
        if status == 0 || status >= 1000 {
            return None;
        }
        Some(match ErrorCode::try_from(status as i32) {
            Ok(ErrorCode::BadRequest) => "bad request",
            Ok(ErrorCode::LoginRequired) => Refusal::LoginRequired.text(),
            Ok(ErrorCode::RouteNotFound) => Refusal::RouteNotFound.text(),
            Ok(ErrorCode::Partitioned) => "the server is cut off from the majority of the cluster",
            _ => Refusal::Internal.text(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logic_server_texts_for_gateway_codes_are_replaced_and_application_texts_kept() {
        assert_eq!(
            Refusal::text_for_code(ErrorCode::BadRequest as u32),
            Some("bad request")
        );
        assert_eq!(
            Refusal::text_for_code(ErrorCode::Internal as u32),
            Some("internal server error")
        );
        assert_eq!(Refusal::text_for_code(999), Some("internal server error"));
        assert_eq!(Refusal::text_for_code(1000), None);
        assert_eq!(Refusal::text_for_code(0), None);
    }
}
