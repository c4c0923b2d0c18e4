//! The directory of peer nodes and the links to them: forwarding publishes
//! to a room's owner, and sending the owner's sequenced messages to every
//! other node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use starling_cluster::codec;
use starling_cluster::membership::GossipStats;
use starling_cluster::raft::{PeerAnswer, RaftGroup};
use starling_cluster::transport::{BoxFuture, PeerIdentity, PeerTransport, TransportError};
use tracing::debug;

use super::wire::{wrap, AppAnswer, AppMessageOut, RemovalRefusal, RemovedNode};
use super::PublishError;
use crate::fanout::{unix_micros, Draft, Hub, Position, RemoteFanout, RoomMessage};
use crate::protocol::RoomName;
use crate::replicate::SharedTable;
use crate::telemetry;

/// How long a forwarded publish may take.
/// Longer than the owner's catch-up wait (`replicate::CATCH_UP_TIMEOUT`, 3 s)
/// plus its wait for another node to hold the message (`REPLICATION_TIMEOUT`).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(6);

/// How long a node waits for another to close a user's connections.
const CLOSE_USER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a node waits for the leader to remove a node (its own
/// deadline, `cluster::removal`, is 5 s).
const REMOVE_NODE_TIMEOUT: Duration = Duration::from_secs(7);

/// The peer protocol version that introduced `RemoveNode`.
const REMOVE_NODE_SINCE: u32 = 8;

/// What a leader runs for a follower's request to remove a node (the
/// cluster module's; set once gossip runs).
pub trait NodeRemover: Send + Sync + 'static {
    fn remove_here(&self, name: String) -> BoxFuture<Result<RemovedNode, RemovalRefusal>>;
}

/// Who the nodes of the cluster are: the replicated Raft membership.
pub trait NodeDirectory: Send + Sync + 'static {
    /// Every node of the group (voters and learners, this one included):
    /// name and recorded peer address.
    fn nodes(&self) -> Vec<(String, String)>;
    /// Whether `peer` is a member of the group at the address it spoke from.
    fn is_member(&self, peer: &PeerIdentity) -> bool;
    /// Counts a peer request refused as unauthorized.
    fn record_refusal(&self);
    /// Peer requests refused as unauthorized so far.
    fn refused(&self) -> u64;
}

impl NodeDirectory for RaftGroup {
    fn nodes(&self) -> Vec<(String, String)> {
        let metrics = self.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(_, node)| (node.name.clone(), node.peer_addr.clone()))
            .collect()
    }

    fn is_member(&self, peer: &PeerIdentity) -> bool {
        RaftGroup::is_member(self, peer)
    }

    fn record_refusal(&self) {
        RaftGroup::record_refusal(self);
    }

    fn refused(&self) -> u64 {
        self.refused_unauthorized()
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
    group: Arc<dyn NodeDirectory>,
    /// Node name -> peer address, from gossip (overrides Raft's record).
    gossip_addrs: RwLock<HashMap<String, String>>,
    /// Gossip datagrams refused (set once gossip starts), for metrics.
    gossip_stats: std::sync::OnceLock<Arc<GossipStats>>,
    pub(super) shared: Arc<SharedTable>,
    /// This node's hub, for takeovers (set once at start; weak: the hub
    /// holds these links).
    pub(super) hub: std::sync::OnceLock<Weak<Hub>>,
    /// These links, to start takeover tasks from `&self`.
    pub(super) this: Weak<PeerLinks>,
    /// Removes nodes when this node leads (set once gossip runs).
    remover: std::sync::OnceLock<Arc<dyn NodeRemover>>,
}

impl PeerLinks {
    pub fn new(
        me: &str,
        transport: Arc<dyn PeerTransport>,
        group: Arc<dyn NodeDirectory>,
        shared: Arc<SharedTable>,
    ) -> Arc<PeerLinks> {
        Arc::new_cyclic(|this| PeerLinks {
            me: me.into(),
            transport,
            group,
            gossip_addrs: RwLock::default(),
            gossip_stats: std::sync::OnceLock::new(),
            shared,
            hub: std::sync::OnceLock::new(),
            this: this.clone(),
            remover: std::sync::OnceLock::new(),
        })
    }

    /// Connects the links and the hub both ways (once, at start): the hub
    /// sends through the links, takeovers settle rooms in the hub.
    pub fn attach(self: &Arc<Self>, hub: &Arc<Hub>) {
        let _ = self.hub.set(Arc::downgrade(hub));
        hub.set_remote(Arc::clone(self) as Arc<dyn RemoteFanout>);
    }

    /// Every other node of the group, with the address to reach it.
    pub(super) fn directory(&self) -> BTreeMap<String, String> {
        let mut nodes: BTreeMap<String, String> = self.group.nodes().into_iter().collect();
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

    /// Nodes of the group whose process is gone: their peer link broke and
    /// their address now refuses connections (faster than gossip, and
    /// never true of a paused or starved process, which keeps its socket).
    pub fn gone(&self) -> Vec<(String, u64)> {
        self.directory()
            .into_iter()
            .filter_map(|(name, addr)| self.transport.gone(&addr).filter(|peer| peer.name == name))
            .map(|peer| (peer.name, peer.incarnation))
            .collect()
    }

    /// Changes each time a peer's process is found gone (see [`PeerLinks::gone`]).
    pub fn gone_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.transport.gone_events()
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
        counts.push(("unauthorized", self.group.refused() + refused_deliveries));
        if let Some(gossip) = self.gossip_stats.get() {
            counts.push(("gossip_unauthenticated", gossip.rejected_unauthenticated.load(Relaxed)));
            counts.push(("gossip_malformed", gossip.rejected_malformed.load(Relaxed)));
        }
        counts
    }

    /// Connects what removes nodes when this node leads (once, when gossip starts).
    pub fn set_remover(&self, remover: Arc<dyn NodeRemover>) {
        let _ = self.remover.set(remover);
    }

    /// A follower's request to remove `name`, as the leader.
    pub(super) async fn remove_here(&self, name: String) -> Result<RemovedNode, RemovalRefusal> {
        match self.remover.get() {
            Some(remover) => remover.remove_here(name).await,
            None => Err(RemovalRefusal::Unavailable("the leader is still starting".into())),
        }
    }

    /// Asks `leader` to remove `name` from the group, over a link that
    /// runs peer protocol 8 or later (an older leader cannot take it).
    pub async fn ask_leader_to_remove(
        &self,
        leader: &str,
        name: &str,
    ) -> Result<RemovedNode, RemovalRefusal> {
        let addr = self
            .peer_addr(leader)
            .ok_or_else(|| RemovalRefusal::Unavailable(format!("no address for the leader {leader}")))?;
        match self.transport.peer_version(&addr) {
            None => return Err(RemovalRefusal::Unavailable(format!("no link to the leader {leader} yet"))),
            Some(version) if version < REMOVE_NODE_SINCE => {
                return Err(RemovalRefusal::LeaderTooOld { leader: leader.to_string(), version })
            }
            Some(_) => {}
        }
        match self.ask(&addr, &AppMessageOut::RemoveNode { node: name }, REMOVE_NODE_TIMEOUT).await {
            Ok(AppAnswer::Removed(result)) => result,
            Ok(_) => Err(RemovalRefusal::Unavailable(format!("bad answer from the leader {leader}"))),
            Err(error) => Err(RemovalRefusal::Unavailable(format!("asking the leader {leader}: {error}"))),
        }
    }

    /// Connects the gossip counters (once, when gossip starts).
    pub fn set_gossip_stats(&self, stats: Arc<GossipStats>) {
        let _ = self.gossip_stats.set(stats);
    }

    fn peer_addr(&self, name: &str) -> Option<String> {
        self.directory().remove(name)
    }

    /// Tells `owner` that this node holds `position` of `room`.
    pub(super) fn acknowledge(&self, owner: &str, room: &RoomName, position: Position) {
        let Some(addr) = self.peer_addr(owner) else { return };
        let Ok(body) = wrap(&AppMessageOut::Held { room, position }) else { return };
        if let Err(error) = self.transport.send(&addr, body, None) {
            debug!(peer = %owner, %error, "acknowledgement to the room owner dropped");
        }
    }

    /// Sends `message` to the peer at `addr` and decodes its application answer.
    pub(super) async fn ask(
        &self,
        addr: &str,
        message: &AppMessageOut<'_>,
        timeout: Duration,
    ) -> Result<AppAnswer, String> {
        let body = wrap(message).map_err(|e| e.to_string())?;
        let answer = self.transport.request(addr, body, None, timeout).await.map_err(|e| e.to_string())?;
        let PeerAnswer::App(bytes) = codec::decode::<PeerAnswer>(&answer).map_err(|e| e.to_string())? else {
            return Err("not an application answer".into());
        };
        codec::decode::<AppAnswer>(&bytes).map_err(|e| e.to_string())
    }

    /// Asks every other node to close its connections acting as `user` in
    /// `namespace`; returns how many they closed, and the nodes that did
    /// not answer in time.
    pub(super) async fn close_user(&self, namespace: &str, user: &str) -> (usize, Vec<String>) {
        let message = AppMessageOut::CloseUser { namespace, user };
        let asks = self.directory().into_iter().map(|(name, addr)| {
            let message = &message;
            async move { (name, self.ask(&addr, message, CLOSE_USER_TIMEOUT).await) }
        });
        let mut closed = 0;
        let mut missed = Vec::new();
        for (name, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(AppAnswer::Closed(count)) => closed += count as usize,
                Ok(_) => missed.push(name),
                Err(error) => {
                    debug!(peer = %name, %error, "close-user request failed");
                    missed.push(name);
                }
            }
        }
        (closed, missed)
    }

    pub(super) async fn forward_publish(
        &self,
        owner: &str,
        room: &RoomName,
        draft: &Draft,
        published_at: Instant,
    ) -> Result<Position, PublishError> {
        let unreachable = || PublishError::OwnerUnreachable { owner: owner.to_string() };
        let addr = self.peer_addr(owner).ok_or_else(unreachable)?;
        let message = AppMessageOut::Publish {
            room,
            draft,
            min_index: self.shared.applied_index(),
            published_us: unix_micros(published_at),
        };
        let body = wrap(&message).map_err(|e| PublishError::Refused(e.to_string()))?;
        let answer = self
            .transport
            .request(&addr, body, telemetry::current_traceparent(), FORWARD_TIMEOUT)
            .await
            .map_err(|error| match error {
                TransportError::Timeout(_) => PublishError::TimedOut,
                TransportError::Remote { message, .. } => PublishError::Refused(message),
                TransportError::Unreachable(_) | TransportError::QueueFull(_) | TransportError::Closed => {
                    unreachable()
                }
            })?;
        let bad_answer = |e: codec::CodecError| PublishError::Refused(format!("bad answer: {e}"));
        let PeerAnswer::App(bytes) = codec::decode::<PeerAnswer>(&answer).map_err(bad_answer)? else {
            return Err(PublishError::Refused("bad answer from the room owner".into()));
        };
        match codec::decode::<AppAnswer>(&bytes).map_err(bad_answer)? {
            AppAnswer::Published(result) => result.map_err(PublishError::from),
            _ => Err(PublishError::Refused("bad answer from the room owner".into())),
        }
    }
}

impl RemoteFanout for PeerLinks {
    fn deliver(&self, message: &RoomMessage) -> usize {
        let Ok(body) = wrap(&AppMessageOut::Deliver(message)) else { return 0 };
        let trace = telemetry::current_traceparent();
        // One copy per node; every node gets every message of the room, in
        // order (one link per peer), and keeps what its members need.
        let directory = self.directory();
        for (name, addr) in &directory {
            if let Err(error) = self.transport.send(addr, body.clone(), trace.clone()) {
                debug!(peer = %name, %error, "delivery to peer dropped");
            }
        }
        directory.len()
    }

    fn take_over(&self, room: &RoomName) {
        let (Some(links), Some(hub)) = (self.this.upgrade(), self.hub.get().and_then(Weak::upgrade)) else {
            return;
        };
        let room = room.clone();
        tokio::spawn(async move { links.settle_takeover(&hub, room).await });
    }
}
