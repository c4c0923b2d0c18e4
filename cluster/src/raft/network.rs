//! Raft RPCs over the peer transport, and the messages one node sends
//! another: Raft traffic, proposals forwarded to the leader, and opaque
//! application messages.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::{NodeId, PeerNode, TypeConfig};
use crate::codec;
use crate::transport::{PeerTransport, TransportError};

/// Everything one node sends another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerMessage {
    Vote(VoteRequest<NodeId>),
    Append(AppendEntriesRequest<TypeConfig>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command proposed on a follower, forwarded to the leader.
    Propose(Vec<u8>),
    /// Asks the leader for a read index (the log index a linearizable read
    /// must wait for).
    ReadIndex,
    /// The application's own messages (forwarded publishes, deliveries).
    App(Vec<u8>),
}

/// The answers to [`PeerMessage`]s.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerAnswer {
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The applied response, or why the proposal was not committed here.
    Propose(Result<Vec<u8>, ProposeRefusal>),
    ReadIndex(Result<u64, ProposeRefusal>),
    App(Vec<u8>),
}

/// Why a forwarded proposal was refused by the node it reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeRefusal {
    /// That node is not the leader (any more); it may know who is.
    NotLeader { leader: Option<PeerNode> },
    /// The proposal failed for another reason (shutting down, storage).
    Failed(String),
    /// The leader's validation refused the command (see `ProposalValidator`).
    Invalid(String),
}

/// Creates Raft clients on the peer transport.
#[derive(Clone)]
pub struct NetworkFactory {
    pub transport: Arc<dyn PeerTransport>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        PeerClient { transport: Arc::clone(&self.transport), target, addr: node.peer_addr.clone() }
    }
}

/// Raft's client for one peer.
pub struct PeerClient {
    transport: Arc<dyn PeerTransport>,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, PeerNode, E>>;

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        message: PeerMessage,
        timeout: Duration,
    ) -> RpcResult<PeerAnswer, E> {
        let body = codec::encode(&message).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self.transport.request(&self.addr, body, None, timeout).await.map_err(|e| match e {
            TransportError::Remote { .. } => RPCError::Network(NetworkError::new(&e)),
            other => RPCError::Unreachable(Unreachable::new(&other)),
        })?;
        codec::decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, PeerNode, E> {
        let error = std::io::Error::other("peer answered with the wrong message");
        RPCError::Network(NetworkError::new(&error))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        match self.call(PeerMessage::Append(rpc), option.hard_ttl()).await? {
            PeerAnswer::Append(Ok(response)) => Ok(response),
            PeerAnswer::Append(Err(error)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self.call(PeerMessage::Snapshot(rpc), option.hard_ttl()).await? {
            PeerAnswer::Snapshot(Ok(response)) => Ok(response),
            PeerAnswer::Snapshot(Err(error)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        match self.call(PeerMessage::Vote(rpc), option.hard_ttl()).await? {
            PeerAnswer::Vote(Ok(response)) => Ok(response),
            PeerAnswer::Vote(Err(error)) => Err(RPCError::RemoteError(RemoteError::new(self.target, error))),
            _ => Err(self.unexpected()),
        }
    }
}
