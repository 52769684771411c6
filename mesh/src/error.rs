//! Errors of mesh calls, as the caller sees them.

use std::time::Duration;

use crate::node::NodeId;

/// Why a mesh call to one node failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MeshError {
    /// The node is not a member of the cluster: never seen, left, or declared dead.
    #[error("node {0} is not a member of the cluster")]
    NodeUnknown(NodeId),
    /// No reply (or acknowledgement) came within the time allowed.
    #[error("node {node} did not answer within {after:?}")]
    Timeout {
        /// The node asked.
        node: NodeId,
        /// The time allowed.
        after: Duration,
    },
    /// The node has no handler registered for the command.
    #[error("node {node} has no handler for command {command:#06x}")]
    NoHandler {
        /// The node asked.
        node: NodeId,
        /// The command sent.
        command: u32,
    },
    /// A handler on the node returned an error.
    #[error("handler on node {node} failed with code {code}: {message}")]
    Handler {
        /// The node asked.
        node: NodeId,
        /// The handler's error code.
        code: u32,
        /// The handler's error text.
        message: String,
    },
    /// The node rejected our cluster credential.
    #[error("node {0} rejected the cluster credential")]
    Unauthenticated(NodeId),
    /// The connection to the node failed.
    #[error("transport to node {node} failed: {message}")]
    Transport {
        /// The node asked.
        node: NodeId,
        /// What the transport said.
        message: String,
    },
    /// The node's reply does not decode as the expected message.
    #[error("cannot decode the reply of node {node}: {message}")]
    Decode {
        /// The node asked.
        node: NodeId,
        /// What the decoder said.
        message: String,
    },
    /// An unreliable message is larger than one datagram can carry.
    #[error("payload of {size} bytes exceeds the unreliable message limit of {max} bytes")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl MeshError {
    /// The node gave no answer (no reply in time, or the connection failed): it may be slow,
    /// cut off or gone. Any other error is an answer.
    pub fn is_no_answer(&self) -> bool {
        matches!(
            self,
            MeshError::Timeout { .. } | MeshError::Transport { .. }
        )
    }

    /// Whether a reliable send should try the node again (the message may not have arrived).
    pub(crate) fn is_retryable(&self) -> bool {
        self.is_no_answer()
    }

    /// Short label for metrics.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            MeshError::NodeUnknown(_) => "node_unknown",
            MeshError::Timeout { .. } => "timeout",
            MeshError::NoHandler { .. } => "no_handler",
            MeshError::Handler { .. } => "handler_error",
            MeshError::Unauthenticated(_) => "unauthenticated",
            MeshError::Transport { .. } => "transport",
            MeshError::Decode { .. } => "decode",
            MeshError::TooLarge { .. } => "too_large",
        }
    }
}

/// The error a handler returns; the caller receives it as [`MeshError::Handler`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("code {code}: {message}")]
pub struct HandlerError {
    /// Application-defined code; never 0.
    pub code: u32,
    /// Human-readable text for logs (not for players).
    pub message: String,
}

impl HandlerError {
    /// The request payload did not decode as the handler's message type.
    pub const BAD_PAYLOAD: u32 = 1;
    /// The handler failed for a reason of its own.
    pub const INTERNAL: u32 = 2;

    /// An error with an application-defined code (0 becomes [`HandlerError::INTERNAL`]).
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        let code = if code == 0 { Self::INTERNAL } else { code };
        Self {
            code,
            message: message.into(),
        }
    }
}
