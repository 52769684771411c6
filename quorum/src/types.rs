//! The Raft type configuration: node numbers, the node data ([`crate::Member`]) and the
//! (empty) entries. The configuration lives in Raft's own membership entries.

use std::io::Cursor;

use sha2::{Digest, Sha256};

/// A node's number in Raft: derived from its node id, so every node computes the same one.
pub type NodeNum = u64;

/// What an entry asks of the state machine: nothing beyond being in the log (leaders append
/// one when elected; the configuration changes are Raft membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Noop;

/// The state machine's answer to an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Applied;

openraft::declare_raft_types!(
    /// Switchyard's Raft types.
    pub(crate) TypeConfig:
        D = Noop,
        R = Applied,
        NodeId = NodeNum,
        Node = crate::Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft number of the node with id `id`: the first 8 bytes of its SHA-256, never 0.
pub fn node_num(id: &str) -> NodeNum {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_numbers_are_stable_and_distinct() {
        assert_eq!(node_num("gateway-1"), node_num("gateway-1"));
        assert_ne!(node_num("gateway-1"), node_num("gateway-2"));
        assert_ne!(node_num(""), 0);
    }
}
