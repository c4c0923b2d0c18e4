//! Publish routing: a room's owner node sequences its messages. A publish
//! on the owner is sequenced at once; on another node it is forwarded to the
//! owner, which sequences it and sends the encoded frame once to every other
//! node; each node fans it out to its local members.
//!
//! This module owns the node-to-node application messages (forwarded
//! publishes, deliveries) and the directory of peer addresses. It must not
//! change membership; the hub decides nothing but order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use starling_cluster::codec;
use starling_cluster::membership::GossipStats;
use starling_cluster::raft::{PeerAnswer, PeerMessage, RaftGroup};
use starling_cluster::transport::{BoxFuture, PeerHandler, PeerIdentity, PeerTransport};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, Instrument};

use crate::gateway::{FrameSender, Hub, Position, Published, RemoteFanout, SequenceError};
use crate::protocol::{ConnId, MessageFrom, RoomName};
use crate::replicate::SharedTable;
use crate::telemetry;

/// Why a publish could not be sequenced. Retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// Application messages between nodes. `published_us` is when the
/// publisher's node accepted the message (wall clock, microseconds since
/// the Unix epoch), for the cross-node latency histogram.
#[derive(Debug, Serialize, Deserialize)]
enum AppMessage {
    /// To the owner: sequence this. `min_index` is the sender's applied log
    /// index; the owner first catches up to it, so it knows every member
    /// the sender knew of.
    Publish { room: String, data: String, from: Option<(String, ConnId)>, min_index: u64, published_us: u64 },
    /// From the owner: a sequenced frame.
    Deliver { room: String, epoch: u64, offset: u64, text: String, published_us: u64 },
}

/// `at` on the wall clock, in microseconds since the Unix epoch.
fn unix_micros(at: Instant) -> u64 {
    let wall = SystemTime::now().checked_sub(at.elapsed()).unwrap_or(UNIX_EPOCH);
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A wall-clock time from another node on this node's monotonic clock. A
/// time ahead of this node's clock (skew) counts as now.
fn instant_from_unix_micros(micros: u64) -> Instant {
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let age = Duration::from_micros(now_us.saturating_sub(micros));
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

#[derive(Debug, Serialize, Deserialize)]
enum AppAnswer {
    Published(Result<(u64, u64), String>),
}

/// How long a forwarded publish may take.
/// Longer than the owner's catch-up wait (`replicate::CATCH_UP_TIMEOUT`).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);

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

    /// Publishes `data` to `room`. `Ok(None)`: the room has no members.
    pub async fn publish(
        &self,
        room: &RoomName,
        data: &RawValue,
        from: Option<MessageFrom<'_>>,
        published_at: Instant,
    ) -> Result<Option<Position>, PublishError> {
        let sequenced = {
            // Named `sequence` only where it is: on the owner.
            let owner_here = telemetry::exporting() && self.hub.owns(room);
            let span = if owner_here { telemetry::sequence_span(room) } else { tracing::Span::none() };
            let _entered = span.entered();
            self.hub.sequence(room, data, from, Published { at: published_at, cross_node: false })
        };
        match sequenced {
            Ok(position) => Ok(Some(position)),
            Err(SequenceError::NoRoom) => Ok(None),
            Err(SequenceError::OffsetsExhausted) => Err(PublishError("room offsets exhausted".into())),
            Err(SequenceError::NotOwner { owner, .. }) => {
                let links =
                    self.links.as_ref().ok_or_else(|| PublishError("room owner is unknown".into()))?;
                let span = telemetry::forward_span(room, &owner);
                links.forward_publish(&owner, room, data, from, published_at).instrument(span).await.map(Some)
            }
        }
    }
}

/// The other nodes, their peer addresses, and the transport to reach them.
///
/// Who gets frames is decided by the replicated Raft membership (every
/// voter and learner): a node is in it before any of its members' joins
/// can commit, so no member's node is ever missed. Gossip only supplies a
/// fresher address when a node came back somewhere else.
pub struct PeerLinks {
    me: String,
    transport: Arc<dyn PeerTransport>,
    group: Arc<RaftGroup>,
    /// Node name -> peer address, from gossip (overrides Raft's record).
    gossip_addrs: RwLock<HashMap<String, String>>,
    /// Gossip datagrams refused (set once gossip starts), for metrics.
    gossip_stats: std::sync::OnceLock<Arc<GossipStats>>,
    shared: Arc<SharedTable>,
}

impl PeerLinks {
    pub fn new(
        me: &str,
        transport: Arc<dyn PeerTransport>,
        group: Arc<RaftGroup>,
        shared: Arc<SharedTable>,
    ) -> Arc<PeerLinks> {
        Arc::new(PeerLinks {
            me: me.into(),
            transport,
            group,
            gossip_addrs: RwLock::default(),
            gossip_stats: std::sync::OnceLock::new(),
            shared,
        })
    }

    /// Every other node of the group, with the address to reach it.
    fn directory(&self) -> BTreeMap<String, String> {
        let mut nodes: BTreeMap<String, String> = {
            let metrics = self.group.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(_, node)| (node.name.clone(), node.peer_addr.clone()))
                .collect()
        };
        let gossip = self.gossip_addrs.read().unwrap_or_else(|p| p.into_inner());
        for (name, addr) in gossip.iter() {
            // Gossip's address wins only once that address answered a peer
            // link as that node.
            if self.transport.peer_identity(addr).is_some_and(|peer| peer.name == *name) {
                nodes.insert(name.clone(), addr.clone());
            }
        }
        nodes.remove(&self.me);
        nodes
    }

    /// Whether `member`'s peer address answered a link handshake as that
    /// node and incarnation (with TLS: a certificate valid for its name).
    /// Opens the link if there is none yet, so a later call can say yes.
    pub fn is_authenticated(&self, member: &starling_cluster::membership::ClusterMember) -> bool {
        self.transport.warm(&member.peer_addr.to_string());
        self.transport
            .peer_identity(&member.peer_addr.to_string())
            .is_some_and(|peer| peer.name == member.name && peer.incarnation == member.incarnation)
    }

    /// Records the address gossip reports for a node (and opens the link).
    pub fn set_peer(&self, name: &str, peer_addr: &str) {
        if name != self.me {
            self.transport.warm(peer_addr);
            self.gossip_addrs
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.into(), peer_addr.into());
        }
    }

    /// Forgets gossip's address for a node (Raft's record still applies).
    pub fn remove_peer(&self, name: &str) {
        self.gossip_addrs.write().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// Every outbound link's state, labelled with the peer's name.
    pub fn link_scrape(&self) -> Vec<telemetry::LinkScrape> {
        let names: HashMap<String, String> =
            self.directory().into_iter().map(|(name, addr)| (addr, name)).collect();
        self.transport
            .link_stats()
            .into_iter()
            .map(|link| telemetry::LinkScrape {
                peer: names.get(&link.addr).cloned().unwrap_or(link.addr),
                connected: link.connected,
                queued: link.queued,
                sent: link.sent,
            })
            .collect()
    }

    /// Frames to peers dropped so far: (queue full, link lost).
    pub fn drop_counts(&self) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.transport
            .stats()
            .map(|s| (s.dropped_queue_full.load(Relaxed), s.dropped_link_lost.load(Relaxed)))
    }

    /// Peer input refused so far, by reason, for `starling_peer_rejected_total`;
    /// `refused_deliveries` (counted by the hub) are `unauthorized` too.
    pub fn rejection_counts(&self, refused_deliveries: u64) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut counts = Vec::new();
        if let Some(stats) = self.transport.stats() {
            counts.push(("tls", stats.rejected_tls.load(Relaxed)));
            counts.push(("handshake", stats.rejected_handshake.load(Relaxed)));
        }
        counts.push(("unauthorized", self.group.refused_unauthorized() + refused_deliveries));
        if let Some(gossip) = self.gossip_stats.get() {
            counts.push(("gossip_unauthenticated", gossip.rejected_unauthenticated.load(Relaxed)));
            counts.push(("gossip_malformed", gossip.rejected_malformed.load(Relaxed)));
        }
        counts
    }

    /// Connects the gossip counters (once, when gossip starts).
    pub fn set_gossip_stats(&self, stats: Arc<GossipStats>) {
        let _ = self.gossip_stats.set(stats);
    }

    fn peer_addr(&self, name: &str) -> Option<String> {
        self.directory().remove(name)
    }

    async fn forward_publish(
        &self,
        owner: &str,
        room: &RoomName,
        data: &RawValue,
        from: Option<MessageFrom<'_>>,
        published_at: Instant,
    ) -> Result<Position, PublishError> {
        let addr = self
            .peer_addr(owner)
            .ok_or_else(|| PublishError(format!("room owner {owner} is unreachable")))?;
        let message = AppMessage::Publish {
            room: room.to_string(),
            data: data.get().to_string(),
            from: from.map(|f| (f.user.to_string(), f.conn)),
            min_index: self.shared.applied_index(),
            published_us: unix_micros(published_at),
        };
        let body = wrap(&message).map_err(PublishError)?;
        let answer = self
            .transport
            .request(&addr, body, telemetry::current_traceparent(), FORWARD_TIMEOUT)
            .await
            .map_err(|e| PublishError(format!("forward to the room owner failed: {e}")))?;
        let answer: PeerAnswer = codec::decode(&answer).map_err(|e| PublishError(e.to_string()))?;
        let PeerAnswer::App(bytes) = answer else {
            return Err(PublishError("bad answer from the room owner".into()));
        };
        match codec::decode::<AppAnswer>(&bytes).map_err(|e| PublishError(e.to_string()))? {
            AppAnswer::Published(Ok((epoch, offset))) => Ok(Position { epoch, offset }),
            AppAnswer::Published(Err(reason)) => Err(PublishError(reason)),
        }
    }
}

fn wrap(message: &AppMessage) -> Result<Vec<u8>, String> {
    let inner = codec::encode(message).map_err(|e| e.to_string())?;
    codec::encode(&PeerMessage::App(inner)).map_err(|e| e.to_string())
}

impl RemoteFanout for PeerLinks {
    fn deliver(&self, room: &RoomName, position: Position, text: &Utf8Bytes, published_at: Instant) {
        let message = AppMessage::Deliver {
            room: room.to_string(),
            epoch: position.epoch,
            offset: position.offset,
            text: text.as_str().to_string(),
            published_us: unix_micros(published_at),
        };
        let Ok(body) = wrap(&message) else { return };
        let trace = telemetry::current_traceparent();
        // One copy per node; every node gets every frame of the room, in
        // order (one link per peer), and keeps what its members need.
        for (name, addr) in self.directory() {
            if let Err(error) = self.transport.send(&addr, body.clone(), trace.clone()) {
                debug!(peer = %name, %error, "delivery to peer dropped");
            }
        }
    }
}

/// Serves application messages from peers.
pub struct AppHandler {
    pub hub: Arc<Hub>,
    pub shared: Arc<SharedTable>,
    /// Who is a member (only members may forward publishes).
    pub group: Arc<RaftGroup>,
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
            let from = peer.name.clone();
            let AppMessage::Publish { room: room_name, data, from: sender, min_index, published_us } =
                codec::decode::<AppMessage>(&body).map_err(|e| e.to_string())?
            else {
                return Err(format!("unexpected request from {from}"));
            };
            // Only a member forwards publishes, and only its own clients'.
            let own_tag = ConnId::tag_of(&peer.name, peer.incarnation);
            let senders_own = sender.as_ref().is_none_or(|(_, conn)| conn.incarnation_tag() == own_tag);
            if !group.is_member(&peer) || !senders_own {
                group.record_refusal();
                debug!(peer = %from, "refusing a forwarded publish");
                return Err("not authorized".into());
            }
            let published_at = instant_from_unix_micros(published_us);
            let span = telemetry::remote_sequence_span(&room_name, &from, trace.as_deref());
            let room = room_name;
            let result = async {
                shared.wait_applied(min_index).await.map_err(|e| e.to_string())?;
                let room = RoomName::parse(&room).map_err(|e| e.to_string())?;
                let data: &RawValue = serde_json::from_str(&data).map_err(|e| e.to_string())?;
                let from = sender.as_ref().map(|(user, conn)| MessageFrom { user, conn: *conn });
                // Published on another node: its latency counts as cross-node.
                match hub.sequence(&room, data, from, Published { at: published_at, cross_node: true }) {
                    Ok(position) => Ok((position.epoch, position.offset)),
                    Err(SequenceError::NoRoom) => Err("room has no members".to_string()),
                    Err(SequenceError::OffsetsExhausted) => Err("room offsets exhausted".to_string()),
                    Err(SequenceError::NotOwner { owner, .. }) => Err(format!("room owner moved to {owner}")),
                }
            }
            .instrument(span)
            .await;
            codec::encode(&AppAnswer::Published(result)).map_err(|e| e.to_string())
        })
    }

    fn one_way(&self, from: &PeerIdentity, body: Vec<u8>, trace: Option<String>) {
        match codec::decode::<AppMessage>(&body) {
            Ok(AppMessage::Deliver { room, epoch, offset, text, published_us }) => {
                let _span = telemetry::deliver_span(&room, &from.name, trace.as_deref()).entered();
                let Ok(room) = RoomName::parse(&room) else {
                    debug!(peer = %from.name, "delivery for an invalid room name dropped");
                    return;
                };
                let published_at = instant_from_unix_micros(published_us);
                let sender = FrameSender { node: &from.name, incarnation: from.incarnation };
                let position = Position { epoch, offset };
                if self.hub.deliver(sender, &room, position, Utf8Bytes::from(text), published_at).is_err() {
                    debug!(peer = %from.name, room = %room, epoch, offset, "delivery from a node that does not own the room refused");
                }
            }
            Ok(_) => debug!(peer = %from.name, "unexpected one-way message"),
            Err(error) => debug!(peer = %from.name, %error, "undecodable one-way message"),
        }
    }
}
