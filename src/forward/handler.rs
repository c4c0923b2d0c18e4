//! Serves application messages from peers: forwarded publishes (this node
//! owns the room) and deliveries (another node owns it).

use std::sync::Arc;

use starling_cluster::codec;
use starling_cluster::transport::{BoxFuture, PeerHandler, PeerIdentity};
use tracing::{debug, Instrument};

use super::links::NodeDirectory;
use super::wire::{AppAnswer, AppMessage, OwnerRefusal};
use crate::fanout::{instant_from_unix_micros, FrameSender, Hub, Published, SequenceError};
use crate::protocol::ConnId;
use crate::replicate::SharedTable;
use crate::telemetry;

pub struct AppHandler {
    pub hub: Arc<Hub>,
    pub shared: Arc<SharedTable>,
    /// Who is a member (only members may forward publishes).
    pub group: Arc<dyn NodeDirectory>,
}

impl PeerHandler for AppHandler {
    fn request(
        &self,
        from: &PeerIdentity,
        body: Vec<u8>,
        trace: Option<String>,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        let (hub, shared, group, peer) =
            (Arc::clone(&self.hub), Arc::clone(&self.shared), Arc::clone(&self.group), from.clone());
        Box::pin(async move {
            let AppMessage::Publish { room, draft, min_index, published_us } =
                codec::decode::<AppMessage>(&body).map_err(|e| e.to_string())?
            else {
                return Err(format!("unexpected request from {}", peer.name));
            };
            // Only a member forwards publishes, and only its own clients'.
            let own_tag = ConnId::tag_of(&peer.name, peer.incarnation);
            let senders_own = draft.publisher.as_ref().is_none_or(|p| p.conn.incarnation_tag() == own_tag);
            if !group.is_member(&peer) || !senders_own {
                group.record_refusal();
                debug!(peer = %peer.name, "refusing a forwarded publish");
                let refused: Result<crate::fanout::Position, _> = Err(OwnerRefusal::NotAuthorized);
                return codec::encode(&AppAnswer::Published(refused)).map_err(|e| e.to_string());
            }
            let published_at = instant_from_unix_micros(published_us);
            let span = telemetry::remote_sequence_span(room.as_str(), &peer.name, trace.as_deref());
            let result = async {
                shared.wait_applied(min_index).await.map_err(|_| OwnerRefusal::Behind)?;
                // Published on another node: its latency counts as cross-node.
                let published = Published { at: published_at, cross_node: true };
                hub.sequence(&room, draft, published).map_err(|error| match error {
                    SequenceError::NoRoom => OwnerRefusal::NoMembers,
                    SequenceError::OffsetsExhausted => OwnerRefusal::OffsetsExhausted,
                    SequenceError::NotOwner { owner, .. } => {
                        OwnerRefusal::NotOwner { owner: owner.to_string() }
                    }
                })
            }
            .instrument(span)
            .await;
            codec::encode(&AppAnswer::Published(result)).map_err(|e| e.to_string())
        })
    }

    fn one_way(&self, from: &PeerIdentity, body: Vec<u8>, trace: Option<String>) {
        match codec::decode::<AppMessage>(&body) {
            Ok(AppMessage::Deliver(message)) => {
                let _span =
                    telemetry::deliver_span(message.room.as_str(), &from.name, trace.as_deref()).entered();
                let published_at = instant_from_unix_micros(message.published_us);
                let sender = FrameSender { node: &from.name, incarnation: from.incarnation };
                let position = message.position;
                if self.hub.deliver(sender, message, published_at).is_err() {
                    debug!(peer = %from.name, epoch = position.epoch, offset = position.offset,
                        "delivery from a node that does not own the room refused");
                }
            }
            Ok(_) => debug!(peer = %from.name, "unexpected one-way message"),
            Err(error) => debug!(peer = %from.name, %error, "undecodable one-way message"),
        }
    }
}
