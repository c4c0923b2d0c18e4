//! Serves application messages from peers: forwarded publishes (this node
//! owns the room), deliveries and their acknowledgements, and a new
//! owner's questions while it takes a room over.

use std::sync::Arc;

use starling_cluster::codec;
use starling_cluster::transport::{BoxFuture, PeerHandler, PeerIdentity};
use tracing::{debug, Instrument};

use super::links::{NodeDirectory, PeerLinks};
use super::wire::{AppAnswer, AppMessage, OwnerRefusal};
use super::REPLICATION_TIMEOUT;
use crate::fanout::{instant_from_unix_micros, FrameSender, Hub, Published, SequenceError};
use crate::protocol::{CloseCode, ConnId};
use crate::replicate::SharedTable;
use crate::telemetry;

/// The most messages one takeover answer carries (a room's history is at
/// most `limits.outbound_queue_messages`, validated at start).
pub(super) const MAX_TAKEOVER_MESSAGES: usize = 100_000;

pub struct AppHandler {
    pub hub: Arc<Hub>,
    pub shared: Arc<SharedTable>,
    /// Who is a member (only members may forward publishes or ask).
    pub group: Arc<dyn NodeDirectory>,
    /// To acknowledge deliveries to the room's owner.
    pub links: Arc<PeerLinks>,
}

impl PeerHandler for AppHandler {
    fn request(
        &self,
        from: &PeerIdentity,
        body: Vec<u8>,
        trace: Option<String>,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        let (hub, shared, group, links, peer) = (
            Arc::clone(&self.hub),
            Arc::clone(&self.shared),
            Arc::clone(&self.group),
            Arc::clone(&self.links),
            from.clone(),
        );
        Box::pin(async move {
            let message = codec::decode::<AppMessage>(&body).map_err(|e| e.to_string())?;
            if !group.is_member(&peer) {
                group.record_refusal();
                debug!(peer = %peer.name, "refusing a request from a node outside the group");
                let answer = match message {
                    AppMessage::Publish { .. } => AppAnswer::Published(Err(OwnerRefusal::NotAuthorized)),
                    _ => return Err("not authorized".to_string()),
                };
                return codec::encode(&answer).map_err(|e| e.to_string());
            }
            let answer = match message {
                AppMessage::Publish { room, draft, min_index, published_us } => {
                    // Only a member's own clients' publishes.
                    let own_tag = ConnId::tag_of(&peer.name, peer.incarnation);
                    if draft.publisher.as_ref().is_some_and(|p| p.conn.incarnation_tag() != own_tag) {
                        group.record_refusal();
                        debug!(peer = %peer.name, "refusing a forwarded publish of another node's connection");
                        AppAnswer::Published(Err(OwnerRefusal::NotAuthorized))
                    } else {
                        let published_at = instant_from_unix_micros(published_us);
                        let span =
                            telemetry::remote_sequence_span(room.as_str(), &peer.name, trace.as_deref());
                        let result = async {
                            shared.wait_applied(min_index).await.map_err(|_| OwnerRefusal::Behind)?;
                            // Published on another node: its latency counts as cross-node.
                            let published = Published { at: published_at, cross_node: true };
                            let sequenced =
                                hub.sequence_when_ready(&room, draft, published).await.map_err(|error| {
                                    match error {
                                        SequenceError::NoRoom => OwnerRefusal::NoMembers,
                                        SequenceError::OffsetsExhausted => OwnerRefusal::OffsetsExhausted,
                                        SequenceError::TakingOver => OwnerRefusal::TakingOver,
                                        SequenceError::NotOwner { owner, .. } => {
                                            OwnerRefusal::NotOwner { owner: owner.to_string() }
                                        }
                                    }
                                })?;
                            sequenced
                                .replicated(REPLICATION_TIMEOUT)
                                .await
                                .map_err(|_| OwnerRefusal::NotReplicated)
                        }
                        .instrument(span)
                        .await;
                        AppAnswer::Published(result)
                    }
                }
                AppMessage::State { room, min_index } => {
                    // After the owner change applied here, this node takes
                    // no more deliveries from the previous owner: its state
                    // stays as answered until the new owner sends.
                    shared.wait_applied(min_index).await.map_err(|e| e.to_string())?;
                    AppAnswer::State(hub.room_state(&room))
                }
                AppMessage::Messages { room, epoch, after, min_index } => {
                    shared.wait_applied(min_index).await.map_err(|e| e.to_string())?;
                    AppAnswer::Messages(hub.messages_after(&room, epoch, after, MAX_TAKEOVER_MESSAGES))
                }
                AppMessage::CloseUser { namespace, user } => {
                    let closed = hub.sessions().close_acting(&namespace, &user, CloseCode::Terminated);
                    AppAnswer::Closed(closed as u64)
                }
                AppMessage::RemoveNode { node } => AppAnswer::Removed(links.remove_here(node).await),
                AppMessage::Deliver(_) | AppMessage::Held { .. } => {
                    return Err(format!("unexpected request from {}", peer.name));
                }
            };
            codec::encode(&answer).map_err(|e| e.to_string())
        })
    }

    fn one_way(&self, from: &PeerIdentity, body: Vec<u8>, trace: Option<String>) {
        match codec::decode::<AppMessage>(&body) {
            Ok(AppMessage::Deliver(message)) => {
                let _span =
                    telemetry::deliver_span(message.room.as_str(), &from.name, trace.as_deref()).entered();
                let published_at = instant_from_unix_micros(message.published_us);
                let sender = FrameSender { node: &from.name, incarnation: from.incarnation };
                let room = message.room.clone();
                let position = message.position;
                match self.hub.deliver(sender, message, published_at) {
                    Ok(Some(held)) => self.links.acknowledge(&from.name, &room, held),
                    Ok(None) => {}
                    Err(_) => debug!(peer = %from.name, epoch = position.epoch, offset = position.offset,
                        "delivery from a node that does not own the room refused"),
                }
            }
            Ok(AppMessage::Held { room, position }) => {
                if self.group.is_member(from) {
                    self.hub.acknowledged(&room, position);
                }
            }
            Ok(_) => debug!(peer = %from.name, "unexpected one-way message"),
            Err(error) => debug!(peer = %from.name, %error, "undecodable one-way message"),
        }
    }
}
