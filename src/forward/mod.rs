//! Publish routing: a room's owner node sequences its messages. A publish
//! on the owner is sequenced at once; on another node it is forwarded to the
//! owner, which sequences it and sends the message once to every other
//! node; each node fans it out to its local members.
//!
//! This module owns the node-to-node application messages (forwarded
//! publishes, deliveries, a follower's request to remove a node, which it
//! carries to the leader's [`NodeRemover`]), the directory of peer
//! addresses, and the typed errors a publish can meet across nodes. It must
//! not change membership itself; the hub decides nothing but order.

mod handler;
mod links;
mod takeover;
mod wire;

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

pub use handler::AppHandler;
pub use links::{NodeDirectory, NodeRemover, PeerLinks};
pub use wire::{OwnerRefusal, RemovalRefusal, RemovedNode};

use crate::fanout::{Draft, Hub, Position, Published, SequenceError, Sequenced};
use crate::protocol::{CloseCode, RoomName};
use crate::telemetry;

/// Why a publish was not sequenced. [`PublishError::retryable`] says
/// whether the same publish may succeed if sent again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The room has no members anywhere (none yet, or they all left).
    #[error("room has no members")]
    NoMembers,
    /// The owner changed while the publish was on its way; the room's new
    /// owner is being learnt.
    #[error("room owner moved to {owner}")]
    OwnerMoved { owner: String },
    /// No link to the room's owner (it may be dying; a new owner follows).
    #[error("room owner {owner} is unreachable")]
    OwnerUnreachable { owner: String },
    /// The owner did not answer in time: the message may have been
    /// sequenced and delivered.
    #[error("no answer from the room owner in time; the message may have been delivered")]
    TimedOut,
    /// The owner is behind the log the publisher's node has applied.
    #[error("the room owner is catching up with the log")]
    OwnerBehind,
    /// The room's epoch used up its offsets (2^64 messages; never in practice).
    #[error("room offsets exhausted")]
    OffsetsExhausted,
    /// The message was sequenced but no other node confirmed holding it in
    /// time (a publish is acknowledged only once another node holds it):
    /// it may have been delivered.
    #[error("no other node confirmed holding the message in time; it may have been delivered")]
    NotReplicated,
    /// The room's new owner is still settling where the room stands.
    #[error("the room's new owner is taking it over")]
    TakingOver,
    /// The owner does not take publishes from this node (not a member of
    /// the group, or not its own connection's publish). Not retryable.
    #[error("the room owner does not accept publishes from this node")]
    NotAuthorized,
    /// The owner refused the request itself: a bug or a node that is not a
    /// member. Not retryable.
    #[error("the room owner refused the publish: {0}")]
    Refused(String),
}

impl PublishError {
    /// Whether sending the same publish again may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            PublishError::Refused(_) | PublishError::OffsetsExhausted | PublishError::NotAuthorized
        )
    }

    /// A short machine-readable reason, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::NoMembers => "no_members",
            PublishError::OwnerMoved { .. } => "owner_moved",
            PublishError::OwnerUnreachable { .. } => "owner_unreachable",
            PublishError::TimedOut => "timed_out",
            PublishError::OwnerBehind => "owner_behind",
            PublishError::OffsetsExhausted => "offsets_exhausted",
            PublishError::NotReplicated => "not_replicated",
            PublishError::TakingOver => "taking_over",
            PublishError::NotAuthorized => "not_authorized",
            PublishError::Refused(_) => "refused",
        }
    }
}

impl From<OwnerRefusal> for PublishError {
    fn from(refusal: OwnerRefusal) -> PublishError {
        match refusal {
            OwnerRefusal::NoMembers => PublishError::NoMembers,
            OwnerRefusal::NotOwner { owner } => PublishError::OwnerMoved { owner },
            OwnerRefusal::Behind => PublishError::OwnerBehind,
            OwnerRefusal::OffsetsExhausted => PublishError::OffsetsExhausted,
            OwnerRefusal::NotAuthorized => PublishError::NotAuthorized,
            OwnerRefusal::NotReplicated => PublishError::NotReplicated,
            OwnerRefusal::TakingOver => PublishError::TakingOver,
        }
    }
}

/// How long the owner waits for another node to confirm holding a message
/// before it answers the publish.
pub(crate) const REPLICATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until another node holds a sequenced message (G8).
async fn replicated(sequenced: Sequenced) -> Result<Position, PublishError> {
    sequenced.replicated(REPLICATION_TIMEOUT).await.map_err(|_| PublishError::NotReplicated)
}

/// Sequences or forwards publishes.
pub struct Router {
    hub: Arc<Hub>,
    links: Option<Arc<PeerLinks>>,
}

impl Router {
    pub fn local(hub: Arc<Hub>) -> Router {
        Router { hub, links: None }
    }

    pub fn cluster(hub: Arc<Hub>, links: Arc<PeerLinks>) -> Router {
        Router { hub, links: Some(links) }
    }

    /// Closes every connection acting as `user` in `namespace` on every
    /// node (see `Sessions::act_as`): returns how many were closed, and
    /// the nodes that did not answer (their connections may stay open).
    pub async fn close_user(&self, namespace: &str, user: &str) -> (usize, Vec<String>) {
        let here = self.hub.sessions().close_acting(namespace, user, CloseCode::Terminated);
        let Some(links) = &self.links else { return (here, Vec::new()) };
        let (there, missed) = links.close_user(namespace, user).await;
        (here + there, missed)
    }

    /// Publishes `draft` to `room`: sequenced here if this node owns the
    /// room, else forwarded to its owner.
    pub async fn publish(
        &self,
        room: &RoomName,
        draft: Draft,
        published_at: Instant,
    ) -> Result<Position, PublishError> {
        // Named `sequence` only where it is: on the owner.
        let owner_here = telemetry::exporting() && self.hub.owns(room);
        let span = if owner_here { telemetry::sequence_span(room) } else { tracing::Span::none() };
        let published = Published { at: published_at, cross_node: false };
        let sequenced = self.hub.sequence_when_ready(room, draft.clone(), published).instrument(span).await;
        match sequenced {
            Ok(sequenced) => replicated(sequenced).await,
            Err(SequenceError::NoRoom) => Err(PublishError::NoMembers),
            Err(SequenceError::OffsetsExhausted) => Err(PublishError::OffsetsExhausted),
            Err(SequenceError::TakingOver) => Err(PublishError::TakingOver),
            Err(SequenceError::NotOwner { owner, .. }) => {
                let Some(links) = &self.links else {
                    // A single node owns every room; another owner is an
                    // earlier incarnation whose eviction is under way.
                    return Err(PublishError::OwnerMoved { owner: owner.to_string() });
                };
                let span = telemetry::forward_span(room, &owner);
                links.forward_publish(&owner, room, &draft, published_at).instrument(span).await
            }
        }
    }
}

#[cfg(test)]
mod tests;
