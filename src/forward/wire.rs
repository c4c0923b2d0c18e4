//! The application messages nodes send each other, and their answers.
//!
//! Messages are structured ([`RoomMessage`], [`Draft`]), never one client
//! protocol's text. Every byte from a peer goes through the bounded
//! `codec::decode`; room names and connection ids validate as they decode.

use serde::{Deserialize, Serialize};
use starling_cluster::codec;
use starling_cluster::raft::PeerMessage;

use crate::fanout::{Draft, Position, RoomMessage, RoomState};
use crate::protocol::RoomName;

/// Application messages between nodes, as received.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum AppMessage {
    /// To the owner: sequence this. `min_index` is the sender's applied log
    /// index; the owner first catches up to it, so it knows every member
    /// the sender knew of. `published_us`: when the publisher's node
    /// accepted it (wall clock, microseconds since the Unix epoch).
    Publish { room: RoomName, draft: Draft, min_index: u64, published_us: u64 },
    /// From the owner: a sequenced message.
    Deliver(RoomMessage),
    /// To the owner: this node holds the message at `position` of `room`.
    Held { room: RoomName, position: Position },
    /// From a room's new owner: where does the room stand here, once this
    /// node has applied the log up to `min_index` (the owner change)?
    State { room: RoomName, min_index: u64 },
    /// From a room's new owner: the messages of `epoch` after offset
    /// `after`, all of them up to the last this node saw.
    Messages { room: RoomName, epoch: u64, after: u64, min_index: u64 },
    /// Close every connection here acting as `user` in `namespace` (a
    /// Pusher app's `terminate_connections`). Peer protocol 7.
    CloseUser { namespace: String, user: String },
    /// To the leader: remove this dead node from the group for good
    /// (`DELETE /api/cluster/nodes/{name}` on a follower). Peer protocol 8:
    /// sent only over a link that runs version 8 or later.
    RemoveNode { node: String },
}

/// The same messages, borrowed, for sending: serializes exactly as
/// [`AppMessage`] (same variants in the same order), without a copy.
#[derive(Serialize)]
pub(super) enum AppMessageOut<'a> {
    Publish { room: &'a RoomName, draft: &'a Draft, min_index: u64, published_us: u64 },
    Deliver(&'a RoomMessage),
    Held { room: &'a RoomName, position: Position },
    State { room: &'a RoomName, min_index: u64 },
    Messages { room: &'a RoomName, epoch: u64, after: u64, min_index: u64 },
    CloseUser { namespace: &'a str, user: &'a str },
    RemoveNode { node: &'a str },
}

/// Why the owner did not sequence a forwarded publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerRefusal {
    /// The room has no members (it closed while the publish travelled).
    NoMembers,
    /// The room has another owner now.
    NotOwner { owner: String },
    /// The owner could not catch up with the sender's log in time.
    Behind,
    /// The room's epoch has used up its offsets.
    OffsetsExhausted,
    /// The sender is not a member of the group, or forwarded a publish of a
    /// connection that is not its own.
    NotAuthorized,
    /// The message was sequenced but no other node confirmed holding it in
    /// time; it may have been delivered.
    NotReplicated,
    /// The owner is still settling the room after taking it over.
    TakingOver,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum AppAnswer {
    Published(Result<Position, OwnerRefusal>),
    State(Option<RoomState>),
    Messages(Option<Vec<RoomMessage>>),
    /// How many connections a `CloseUser` closed.
    Closed(u64),
    /// What a `RemoveNode` did.
    Removed(Result<RemovedNode, RemovalRefusal>),
}

/// An application message wrapped for the peer transport.
pub(super) fn wrap(message: &AppMessageOut<'_>) -> Result<Vec<u8>, codec::CodecError> {
    let inner = codec::encode(message)?;
    codec::encode(&PeerMessage::App(inner))
}

/// What a removal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedNode {
    pub node: String,
    /// Whether it held a voter seat (else it was a learner).
    pub was_voter: bool,
    /// The group after the change, by name.
    pub voters: Vec<String>,
    pub learners: Vec<String>,
}

/// Why nothing was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemovalRefusal {
    #[error("{0} is not a member of the raft group")]
    NotMember(String),
    #[error("{0} is alive (gossip lists it): stop it first; a removed node that starts again joins as a new learner")]
    Alive(String),
    #[error("{0} is the leader or the last voter; stop it (SIGTERM hands leadership over) and remove it from another node")]
    LeaderOrLastVoter(String),
    #[error("no leader is known (an election, or no quorum)")]
    NoLeader,
    /// The leader's link runs an older peer protocol, which cannot carry
    /// the request: send it to the leader's own API.
    #[error("the leader {leader} speaks peer protocol {version}, which cannot take this request: send it to {leader}'s API")]
    LeaderTooOld { leader: String, version: u32 },
    /// Retryable: no quorum, a timeout, or the leader changed meanwhile.
    #[error("{0}")]
    Unavailable(String),
}

impl RemovalRefusal {
    /// Whether the same request may succeed later without any change.
    pub fn retryable(&self) -> bool {
        matches!(self, RemovalRefusal::NoLeader | RemovalRefusal::Unavailable(_))
    }
}
