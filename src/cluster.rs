//! The cluster glue: starts gossip, the peer transport and the Raft group
//! for a node, and runs the autopilot that forms the group, adds nodes,
//! and evicts the members of dead or restarted node incarnations.
//!
//! This module decides *when* cluster-wide commands are proposed; what
//! they do is the room table's business, and how they are replicated is
//! `replicate`'s and the `starling-cluster` crate's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::Serialize;
#[cfg(feature = "faults")]
use starling_cluster::faults::{FaultyGossip, FaultyPeerTransport, LinkFaults};
use starling_cluster::membership::{
    ClusterChange, ClusterMember, GossipStats, Membership, MembershipConfig, SealedUdpTransport, Transport,
    UdpTransport,
};
use starling_cluster::raft::{node_id, GroupConfig, PeerNode, RaftGroup};
use starling_cluster::transport::{PeerTransport, TcpTransport, TcpTransportConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::forward::{AppHandler, PeerLinks};
use crate::gateway::Hub;
use crate::replicate::{CommandValidator, Replicator, SharedTable, TableApplier};
use crate::rooms::RoomCommand;

/// How often the autopilot reconciles.
const TICK: Duration = Duration::from_millis(300);

/// Link cuts a test injects into this node's peer links and gossip
/// (`Node::start_with_faults`). Without the `faults` feature (every release
/// build) there are none and the transports are used as they are.
#[derive(Default)]
pub struct InjectedFaults {
    #[cfg(feature = "faults")]
    pub links: Option<Arc<LinkFaults>>,
}

#[cfg(feature = "faults")]
impl InjectedFaults {
    fn peer_transport(&self, tcp: Arc<dyn PeerTransport>, me: SocketAddr) -> Arc<dyn PeerTransport> {
        match &self.links {
            Some(faults) => Arc::new(FaultyPeerTransport { inner: tcp, me, faults: Arc::clone(faults) }),
            None => tcp,
        }
    }

    fn gossip_transport(&self, udp: Box<dyn Transport>) -> Box<dyn Transport> {
        match &self.links {
            Some(faults) => Box::new(FaultyGossip { inner: udp, faults: Arc::clone(faults) }),
            None => udp,
        }
    }
}

#[cfg(not(feature = "faults"))]
impl InjectedFaults {
    fn peer_transport(&self, tcp: Arc<dyn PeerTransport>, _me: SocketAddr) -> Arc<dyn PeerTransport> {
        tcp
    }

    fn gossip_transport(&self, udp: Box<dyn Transport>) -> Box<dyn Transport> {
        udp
    }
}

/// A running cluster membership of this node.
pub struct ClusterRuntime {
    pub group: Arc<RaftGroup>,
    pub membership: Arc<Membership>,
    pub links: Arc<PeerLinks>,
    transport: Arc<TcpTransport>,
    peer_addr: SocketAddr,
}

/// Addresses this node announces.
pub struct Announce {
    pub client: SocketAddr,
    pub api: SocketAddr,
}

impl ClusterRuntime {
    /// Binds the peer listener, opens the Raft log, starts gossip.
    pub async fn start(
        config: &Config,
        incarnation: u64,
        hub: &Arc<Hub>,
        shared: &Arc<SharedTable>,
        announce: Announce,
        faults: InjectedFaults,
    ) -> anyhow::Result<ClusterRuntime> {
        let name = config.node.name.as_str();
        let cluster = &config.cluster;
        let security = config.cluster_security()?;
        if security.is_none() {
            warn!("cluster.insecure = true: peer links are not encrypted or authenticated and gossip is not sealed (loopback only)");
        }
        let peer_listener = TcpListener::bind(config.listen.peer)
            .await
            .with_context(|| format!("binding listen.peer {}", config.listen.peer))?;
        let peer_addr = peer_listener.local_addr()?;
        let mut transport_config = TcpTransportConfig::new(&cluster.id, name);
        transport_config.incarnation = incarnation;
        transport_config.tls = security.as_ref().map(|s| s.peer_tls.clone());
        let transport = TcpTransport::new(transport_config);
        let tcp: Arc<dyn PeerTransport> = Arc::new(Arc::clone(&transport));
        let peer_transport = faults.peer_transport(tcp, peer_addr);
        let mut group_config =
            GroupConfig::new(name, &peer_addr.to_string(), config.node.data_dir.join("raft.redb"));
        group_config.heartbeat_interval = Duration::from_millis(cluster.raft_heartbeat_ms);
        group_config.election_timeout_min = Duration::from_millis(cluster.election_timeout_min_ms);
        group_config.election_timeout_max = Duration::from_millis(cluster.election_timeout_max_ms);
        group_config.snapshot_every = cluster.snapshot_every;
        let applier = Box::new(TableApplier(Arc::clone(shared)));
        let group =
            RaftGroup::start(group_config, applier, Arc::new(CommandValidator), Arc::clone(&peer_transport))
                .await
                .context("starting raft")?;
        let links = PeerLinks::new(name, peer_transport, Arc::clone(&group), Arc::clone(shared));
        hub.set_remote(links.clone());
        let app = Arc::new(AppHandler {
            hub: Arc::clone(hub),
            shared: Arc::clone(shared),
            group: Arc::clone(&group),
        });
        // Not tracked: it ends with `transport.shutdown()`, the last step.
        tokio::spawn(Arc::clone(&transport).serve(peer_listener, group.handler(app)));

        let me = ClusterMember {
            name: name.to_string(),
            incarnation,
            peer_addr,
            client_addr: announce.client,
            api_addr: announce.api,
            gossip_addr: config.listen.gossip,
            role: "joining".into(),
            connections: 0,
        };
        let mut gossip = MembershipConfig::new(&cluster.id, me, config.listen.gossip, cluster.seeds.clone());
        gossip.gossip_interval = Duration::from_millis(cluster.gossip_interval_ms);
        let gossip_stats = Arc::new(GossipStats::default());
        let udp: Box<dyn Transport> = match &security {
            Some(security) => Box::new(SealedUdpTransport::new(
                security.gossip_key.clone(),
                &cluster.id,
                Arc::clone(&gossip_stats),
            )),
            None => Box::new(UdpTransport),
        };
        let membership = Membership::start(gossip, faults.gossip_transport(udp).as_ref())
            .await
            .context("starting gossip")?;
        links.set_gossip_stats(gossip_stats);
        info!(peer = %peer_addr, gossip = %membership.gossip_addr(), "cluster member started");
        Ok(ClusterRuntime { group, membership: Arc::new(membership), links, transport, peer_addr })
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        self.membership.gossip_addr()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// At the end of a drain: a leader removes itself from the voters, so it
    /// steps down with its log committed and the others elect among
    /// themselves; the autopilot adds it back as a learner (and promotes
    /// it) when it returns. Followers stay voters and simply stop.
    pub async fn leave_group(&self) {
        if !self.group.is_leader() {
            return;
        }
        let metrics = self.group.metrics().borrow().clone();
        let me = self.group.id();
        let voters: BTreeSet<u64> =
            metrics.membership_config.membership().voter_ids().filter(|id| *id != me).collect();
        if voters.is_empty() {
            return;
        }
        let started = Instant::now();
        // A change the autopilot started may still be under way: retry
        // until it is done, within the deadline.
        let leave = async {
            loop {
                match self.group.raft().change_membership(voters.clone(), false).await {
                    Ok(_) => return Ok(()),
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                        ChangeMembershipError::InProgress(_),
                    ))) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(error) => return Err(error),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(3), leave).await {
            Ok(Ok(())) => info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "left the voters; leadership handed over"
            ),
            Ok(Err(error)) => warn!(%error, "could not leave the voters"),
            Err(_) => warn!("leaving the voters timed out"),
        }
    }

    /// Stops gossip (peers see this node leave), Raft and the links.
    pub async fn shutdown(self) {
        self.group.shutdown().await;
        match Arc::try_unwrap(self.membership) {
            Ok(membership) => membership.shutdown().await,
            // Still shared (the API); gossip stops when the last handle drops.
            Err(_) => debug!("gossip handle still shared at shutdown"),
        }
        self.transport.shutdown();
    }
}

/// The `/api/cluster` view: live nodes from gossip, leader and term from
/// Raft, and (on the leader) each node's replication lag.
pub fn view(group: &RaftGroup, membership: &Membership) -> ClusterView {
    let metrics = group.metrics().borrow().clone();
    let lags: BTreeMap<u64, u64> = metrics
        .replication
        .as_ref()
        .map(|replication| {
            let last = metrics.last_log_index.unwrap_or(0);
            replication
                .iter()
                .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |m| m.index))))
                .collect()
        })
        .unwrap_or_default();
    let nodes = membership
        .live_members()
        .into_iter()
        .map(|m| ClusterNodeView {
            lag: lags.get(&node_id(&m.name)).copied(),
            voter: metrics.membership_config.membership().voter_ids().any(|id| id == node_id(&m.name)),
            name: m.name,
            state: "alive",
            role: m.role,
            connections: m.connections,
            incarnation: m.incarnation,
        })
        .collect();
    ClusterView { leader: group.leader_name(), term: metrics.current_term, nodes }
}

#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub leader: Option<String>,
    pub term: u64,
    pub nodes: Vec<ClusterNodeView>,
}

#[derive(Debug, Serialize)]
pub struct ClusterNodeView {
    pub name: String,
    pub state: &'static str,
    pub role: String,
    pub connections: u64,
    pub incarnation: u64,
    /// Whether the node votes in Raft (else it is a learner or not yet added).
    pub voter: bool,
    /// Log entries behind the leader (known on the leader only).
    pub lag: Option<u64>,
}

/// What the autopilot needs.
pub struct Autopilot {
    pub name: String,
    pub incarnation: u64,
    pub bootstrap_expect: usize,
    pub voters: usize,
    pub replace_dead_voter_after: Duration,
    pub group: Arc<RaftGroup>,
    pub membership: Arc<Membership>,
    pub links: Arc<PeerLinks>,
    pub replicator: Arc<Replicator>,
    /// Reports this node's open connections for gossip.
    pub connections: Arc<dyn Fn() -> usize + Send + Sync>,
}

impl Autopilot {
    /// Runs until `stop`: follows gossip, forms the group, adds learners
    /// and promotes voters, and evicts dead incarnations.
    pub async fn run(self, stop: CancellationToken) {
        let mut changes = self.membership.subscribe();
        let mut tick = tokio::time::interval(TICK);
        // (node, incarnation) seen leaving, to evict once a leader can.
        let mut departed: BTreeSet<(String, u64)> = BTreeSet::new();
        let mut evicted_previous_self = false;
        // Voters missing from gossip, and since when.
        let mut absent_since: BTreeMap<u64, Instant> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                change = changes.recv() => match change {
                    Some(ClusterChange::Add(member) | ClusterChange::Update(member)) => {
                        self.links.set_peer(&member.name, &member.peer_addr.to_string());
                        // Back from a pause or a cut: it is not departed.
                        departed.remove(&(member.name.clone(), member.incarnation));
                    }
                    Some(ClusterChange::Remove(member)) => {
                        info!(node = %member.name, incarnation = member.incarnation, "node left or died");
                        let replaced = self.membership.live_members().iter().any(|m| m.name == member.name);
                        if !replaced {
                            self.links.remove_peer(&member.name);
                        }
                        departed.insert((member.name, member.incarnation));
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    // Proposals can wait for a quorum; stopping must not.
                    let reconcile = async {
                        self.bootstrap_if_due().await;
                        if !evicted_previous_self {
                            evicted_previous_self = self.evict_previous_self().await;
                        }
                        if self.group.is_leader() {
                            self.evict_departed(&mut departed).await;
                            self.add_and_promote(&mut absent_since).await;
                        }
                        self.publish_state().await;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = reconcile => {}
                    }
                }
            }
        }
    }

    /// The node with the lowest name among the first `bootstrap_expect`
    /// live nodes initializes the group, once; everyone else waits.
    async fn bootstrap_if_due(&self) {
        let initialized = self.group.raft().is_initialized().await.unwrap_or(true);
        if initialized {
            return;
        }
        let mut live = self.membership.live_members();
        // A group already exists if anyone is in one: this node (with an
        // empty data dir) must be added by that group's leader instead.
        if live.iter().any(|m| m.role == "leader" || m.role == "follower") {
            return;
        }
        live.sort_by(|a, b| a.name.cmp(&b.name));
        if live.len() < self.bootstrap_expect || live[0].name != self.name {
            return;
        }
        // Every founder must have answered a peer link as itself: gossip
        // alone does not put a node into the group.
        let founders_verified = live
            .iter()
            .take(self.bootstrap_expect)
            .all(|m| m.name == self.name || self.links.is_authenticated(m));
        if !founders_verified {
            debug!("waiting for authenticated links to every founder");
            return;
        }
        let founders: BTreeMap<u64, PeerNode> = live
            .iter()
            .take(self.bootstrap_expect)
            .map(|m| {
                (node_id(&m.name), PeerNode { name: m.name.clone(), peer_addr: m.peer_addr.to_string() })
            })
            .collect();
        info!(nodes = ?founders.values().map(|n| n.name.as_str()).collect::<Vec<_>>(), "forming the raft group");
        if let Err(error) = self.group.initialize(founders).await {
            warn!(%error, "forming the raft group failed");
        }
    }

    /// After a restart, removes whatever members this node's earlier
    /// incarnations left in the table.
    async fn evict_previous_self(&self) -> bool {
        if !self.replicator.is_ready() {
            return false;
        }
        let command = RoomCommand::EvictNode {
            node: self.name.as_str().into(),
            incarnation: self.incarnation.saturating_sub(1),
        };
        self.replicator.propose(command).await.is_ok()
    }

    async fn evict_departed(&self, departed: &mut BTreeSet<(String, u64)>) {
        // Also any incarnation superseded by a newer live one (a restart
        // noticed before its old incarnation timed out). A live incarnation is superseded once a newer one of its name
        // answered a peer link as itself: gossip alone never evicts another
        // incarnation.
        let live = self.membership.live_members();
        let superseded = |node: &str, incarnation: u64| {
            live.iter()
                .any(|m| m.name == node && m.incarnation > incarnation && self.links.is_authenticated(m))
        };
        for (node, incarnation) in self.replicator.node_incarnations() {
            if superseded(&node, incarnation) {
                departed.insert((node.to_string(), incarnation));
            }
        }
        // Never evict an incarnation that gossip still sees alive (it came
        // back, or another process took its name) unless it is superseded.
        let alive = self.membership.live_incarnations();
        departed.retain(|(node, incarnation)| {
            superseded(node, *incarnation)
                || !alive.iter().any(|m| m.name == *node && m.incarnation == *incarnation)
        });
        let pending: Vec<_> = departed.iter().cloned().collect();
        for (node, incarnation) in pending {
            let command = RoomCommand::EvictNode { node: node.as_str().into(), incarnation };
            match self.replicator.propose(command).await {
                Ok(effects) => {
                    info!(%node, incarnation, left = effects.len(), "evicted members of a departed node");
                    departed.remove(&(node, incarnation));
                }
                Err(error) => debug!(%node, %error, "eviction not committed yet"),
            }
        }
    }

    /// Adds live nodes missing from the group as learners and promotes
    /// learners while there are fewer voters than wanted.
    async fn add_and_promote(&self, absent_since: &mut BTreeMap<u64, Instant>) {
        let metrics = self.group.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let known: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        let live: BTreeSet<u64> = self.membership.live_members().iter().map(|m| node_id(&m.name)).collect();
        let now = Instant::now();
        absent_since.retain(|id, _| voters.contains(id) && !live.contains(id));
        for voter in voters.iter().filter(|id| !live.contains(id)) {
            absent_since.entry(*voter).or_insert(now);
        }
        for member in self.membership.live_members() {
            let id = node_id(&member.name);
            let node = PeerNode { name: member.name.clone(), peer_addr: member.peer_addr.to_string() };
            // Gossip alone never adds a learner or moves a node's address:
            // the node must have answered a peer link at that address as
            // itself (its name bound to its certificate).
            if member.name != self.name && !self.links.is_authenticated(&member) {
                continue;
            }
            if known.contains(&id) {
                // A node back at a new address (a restart elsewhere): Raft
                // must dial the new one.
                if membership.get_node(&id).is_some_and(|recorded| recorded.peer_addr != node.peer_addr) {
                    info!(node = %member.name, addr = %node.peer_addr, "updating a node's peer address");
                    let update = ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
                    if let Err(error) = self.group.raft().change_membership(update, false).await {
                        debug!(%error, "address update failed");
                    }
                }
                continue;
            }
            info!(node = %member.name, "adding node to the raft group as a learner");
            if let Err(error) = self.group.raft().add_learner(id, node, false).await {
                debug!(%error, "add learner failed");
            }
        }
        let learners: Vec<u64> = membership.learner_ids().collect();
        let Some(learner) = learners.into_iter().find(|id| live.contains(id)) else {
            return;
        };
        if voters.len() < self.voters {
            voters.insert(learner);
            info!(learner, "promoting a learner to voter");
        } else {
            // A voter dead for long enough gives its seat to a live learner.
            let dead = absent_since
                .iter()
                .find(|(_, since)| now.duration_since(**since) >= self.replace_dead_voter_after);
            let Some((&dead, _)) = dead else {
                return;
            };
            voters.remove(&dead);
            voters.insert(learner);
            info!(dead, learner, "replacing a dead voter with a live learner");
        }
        if let Err(error) = self.group.raft().change_membership(voters, false).await {
            debug!(%error, "membership change failed");
        }
    }

    async fn publish_state(&self) {
        let role = if self.group.is_leader() {
            "leader"
        } else if self.group.metrics().borrow().current_leader.is_some() {
            "follower"
        } else {
            "candidate"
        };
        self.membership.set_role(role).await;
        self.membership.set_connections((self.connections)() as u64).await;
    }
}
