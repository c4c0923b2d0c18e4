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
}

/// An application message wrapped for the peer transport.
pub(super) fn wrap(message: &AppMessageOut<'_>) -> Result<Vec<u8>, codec::CodecError> {
    let inner = codec::encode(message)?;
    codec::encode(&PeerMessage::App(inner))
}
