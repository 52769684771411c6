//! Raft's messages between regular nodes, carried by the mesh (so they travel on the pooled,
//! credentialed channel every node already has to every peer), JSON-encoded.
//!
//! An append (replication or heartbeat) also carries how long ago the leader last heard from
//! a majority. A follower that accepts it knows when the cluster's majority was last in touch
//! with it, through the leader: that is the lease the fence reads (see `lib.rs`).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use mesh::{HandlerError, Mesh, MeshError, NodeId};
use openraft::{
    Raft, RaftNetwork, RaftNetworkFactory,
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::RPCOption,
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;

use crate::{
    Member,
    types::{NodeNum, TypeConfig},
};

/// Mesh command: a Raft append (replication and heartbeats).
pub(crate) const RAFT_APPEND: u32 = 0x1301;
/// Mesh command: a Raft vote request.
pub(crate) const RAFT_VOTE: u32 = 0x1302;
/// Mesh command: a Raft snapshot chunk.
pub(crate) const RAFT_SNAPSHOT: u32 = 0x1303;

/// An append as sent: the Raft request and the age of the leader's last majority
/// acknowledgement when it was sent.
#[derive(Serialize, serde::Deserialize)]
struct Append {
    rpc: AppendEntriesRequest<TypeConfig>,
    majority_ack_ms: Option<u64>,
}

/// How long ago this node, as leader, last heard from a majority (None when it is not leader).
pub(crate) type MajorityAck = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Opens a [`Peer`] per target.
pub(crate) struct Network {
    pub(crate) mesh: Mesh,
    pub(crate) majority_ack: MajorityAck,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeNum, node: &Member) -> Peer {
        Peer {
            mesh: self.mesh.clone(),
            node: NodeId::new(node.id.as_str()),
            target,
            majority_ack: self.majority_ack.clone(),
        }
    }
}

/// Raft's view of one peer.
pub(crate) struct Peer {
    mesh: Mesh,
    node: NodeId,
    target: NodeNum,
    majority_ack: MajorityAck,
}

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeNum, Member, RaftError<NodeNum, E>>>;

impl Peer {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        command: u32,
        request: &Req,
        option: &RPCOption,
    ) -> Rpc<Resp, E>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self
            .mesh
            .request_with_timeout(&self.node, command, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                MeshError::NodeUnknown(_) | MeshError::Timeout { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                other => RPCError::Network(NetworkError::new(&other)),
            })?;
        let answer: Result<Resp, RaftError<NodeNum, E>> =
            serde_json::from_slice(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeNum>> {
        let append = Append {
            rpc,
            majority_ack_ms: (self.majority_ack)(),
        };
        self.call(RAFT_APPEND, &append, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeNum>, InstallSnapshotError> {
        self.call(RAFT_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeNum>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeNum>> {
        self.call(RAFT_VOTE, &rpc, &option).await
    }
}

/// The three Raft messages' decoders, for the fuzz checks (`crate::fuzzing`): how many took
/// `bytes`.
pub(crate) fn fuzz_decode(bytes: &[u8]) -> usize {
    usize::from(serde_json::from_slice::<Append>(bytes).is_ok())
        + usize::from(serde_json::from_slice::<VoteRequest<NodeNum>>(bytes).is_ok())
        + usize::from(serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(bytes).is_ok())
}

fn bad_payload(e: &serde_json::Error) -> HandlerError {
    HandlerError::new(HandlerError::BAD_PAYLOAD, format!("bad raft message: {e}"))
}

/// A mesh reply as JSON.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, HandlerError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| HandlerError::new(HandlerError::INTERNAL, e.to_string()))
}

/// Registers the receiving side of the three Raft messages. `heard` is told when an accepted
/// append shows the majority in touch (the instant the leader last heard from it).
pub(crate) fn serve(
    mesh: &Mesh,
    raft: Raft<TypeConfig>,
    heard: Arc<dyn Fn(Instant) + Send + Sync>,
) {
    let append_raft = raft.clone();
    mesh.handle(RAFT_APPEND, move |_, payload| {
        let raft = append_raft.clone();
        let heard = heard.clone();
        async move {
            let received = Instant::now();
            let append: Append = serde_json::from_slice(&payload).map_err(|e| bad_payload(&e))?;
            let answer = raft.append_entries(append.rpc).await;
            let accepted = matches!(
                &answer,
                Ok(AppendEntriesResponse::Success
                    | AppendEntriesResponse::PartialSuccess(_)
                    | AppendEntriesResponse::Conflict)
            );
            if let (true, Some(age)) = (accepted, append.majority_ack_ms) {
                heard(
                    received
                        .checked_sub(Duration::from_millis(age))
                        .unwrap_or(received),
                );
            }
            encode(&answer)
        }
    });
    let vote_raft = raft.clone();
    mesh.handle(RAFT_VOTE, move |_, payload| {
        let raft = vote_raft.clone();
        async move {
            let rpc: VoteRequest<NodeNum> =
                serde_json::from_slice(&payload).map_err(|e| bad_payload(&e))?;
            encode(&raft.vote(rpc).await)
        }
    });
    mesh.handle(RAFT_SNAPSHOT, move |_, payload| {
        let raft = raft.clone();
        async move {
            let rpc: InstallSnapshotRequest<TypeConfig> =
                serde_json::from_slice(&payload).map_err(|e| bad_payload(&e))?;
            encode(&raft.install_snapshot(rpc).await)
        }
    });
}
