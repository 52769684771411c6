//! Which failed gRPC calls a peer certainly did not process, and sending those again: refused
//! by the peer's GOAWAY or with `REFUSED_STREAM`, or never sent because the connection closed.

use std::{error::Error, future::Future, time::Duration};

use tokio::time::{Instant, error::Elapsed};
use tracing::debug;

use crate::metrics;

/// Attempts [`retrying_unprocessed`] makes at most. The first retry may still meet the
/// connection a GOAWAY closed (hyper notices a dead connection only when the next call comes,
/// and fails that call unsent); the second goes out on a new connection.
pub const MAX_ATTEMPTS: u32 = 3;

/// Whether the peer certainly did not process the gRPC call that failed with `status`, so
/// sending it again (to it or to another node) cannot run it twice. True when the call never
/// reached the peer or the peer refused it unread:
/// - the connection could not be established;
/// - the connection closed before the call was written to it;
/// - the peer's GOAWAY left the call unanswered: the call came after the last one the peer said
///   it would process (RFC 9113 §6.8: "can be safely retried"), or after the GOAWAY itself;
/// - the peer reset the call with `REFUSED_STREAM` (RFC 9113 §8.7: "not processed").
///
/// False for everything else, including a connection that broke while the peer held the call
/// and any status the peer answered (a handler's `UNAVAILABLE` too): the peer may have acted.
pub fn unprocessed(status: &tonic::Status) -> bool {
    causes(status).any(|cause| cause.is::<tonic::ConnectError>() || turned_away(cause))
}

/// The peer, or the connection to it, turned the call away unsent or unread: the last three
/// cases of [`unprocessed`]. Worth sending again at once; a connection that could not be
/// established is not (the peer is unreachable now, and the caller should hear so).
fn turned_away(cause: &(dyn Error + 'static)) -> bool {
    // hyper's HTTP/2 client says "canceled" only of a request it never handed to the
    // connection ("connection closed", "connection was not ready").
    if cause
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_canceled)
    {
        return true;
    }
    // h2 fails a call with the peer's GOAWAY only when its stream id is above the GOAWAY's last
    // stream id, or when it was opened after it; calls below it fail with the broken connection.
    cause.downcast_ref::<h2::Error>().is_some_and(|error| {
        error.is_remote()
            && (error.is_go_away() || error.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// The errors behind a failed call's status, outermost first.
fn causes(status: &tonic::Status) -> impl Iterator<Item = &(dyn Error + 'static)> {
    std::iter::successors(status.source(), |&cause| cause.source())
}

/// [`tokio::time::timeout`] for a gRPC call that is made again, within the same `timeout`,
/// when the peer turned it away unread or the connection closed before it went out (the
/// [`unprocessed`] failures except a connection that could not be established; at most
/// [`MAX_ATTEMPTS`] in all). `attempt` makes one call, given the time left (for the call's
/// `grpc-timeout`); the result reads as `tokio::time::timeout`'s: `Err(Elapsed)` when no
/// attempt finished in time, else the last attempt's result.
pub async fn retrying_unprocessed<T, F, Fut>(
    timeout: Duration,
    mut attempt: F,
) -> Result<Result<T, tonic::Status>, Elapsed>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + timeout;
    tokio::time::timeout_at(deadline, async move {
        let mut attempts = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match attempt(left).await {
                Err(status) if attempts < MAX_ATTEMPTS && causes(&status).any(turned_away) => {
                    attempts += 1;
                    debug!(%status, attempt = attempts, "the peer did not process the call; sending it again");
                    metrics::record_retry();
                }
                result => return result,
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_never_connected_was_not_processed() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert!(unprocessed(&status));
    }

    #[test]
    fn an_answer_from_the_peer_may_have_been_acted_on() {
        for status in [
            tonic::Status::unavailable("the handler is overloaded"),
            tonic::Status::resource_exhausted("too many requests"),
            tonic::Status::internal("boom"),
            tonic::Status::cancelled("the peer gave up"),
        ] {
            assert!(!unprocessed(&status), "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_call_that_could_not_connect_or_was_answered_is_made_once() {
        let refused = || {
            let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))))
        };
        let answered = || tonic::Status::unavailable("the handler is overloaded");
        for failure in [refused, answered] {
            let mut attempts = 0;
            let result = retrying_unprocessed(Duration::from_secs(1), |_| {
                attempts += 1;
                std::future::ready(Err::<(), _>(failure()))
            })
            .await;
            assert!(matches!(result, Ok(Err(_))));
            assert_eq!(attempts, 1, "{:?}", failure());
        }
    }

    #[test]
    fn a_broken_connection_may_have_carried_the_call() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed");
        let status = tonic::Status::from_error(Box::new(broken));
        assert!(!unprocessed(&status));
    }
}
