//! The cluster glue: starts gossip, the peer transport and the Raft group
//! for a node, and runs the autopilot that forms the group, adds nodes,
//! and evicts the members of dead or restarted node incarnations.
//!
//! This module decides *when* cluster-wide commands are proposed; what
//! they do is the room table's business, and how they are replicated is
//! `replicate`'s and the `starling-cluster` crate's. The autopilot's rules
//! live in `planner` (pure, unit-tested); `autopilot` observes and acts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use serde::Serialize;
#[cfg(feature = "faults")]
use starling_cluster::faults::{FaultyGossip, FaultyPeerTransport, LinkFaults};
use starling_cluster::membership::{
    ClusterMember, GossipStats, Membership, MembershipConfig, SealedUdpTransport, Transport, UdpTransport,
};
use starling_cluster::raft::{node_id, GroupConfig, RaftGroup};
use starling_cluster::transport::{PeerTransport, TcpTransport, TcpTransportConfig};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::fanout::Hub;
use crate::forward::{AppHandler, PeerLinks};
use crate::replicate::{CommandValidator, SharedTable, TableApplier};

mod autopilot;
mod planner;
mod removal;

pub use crate::forward::{RemovalRefusal, RemovedNode};
pub use autopilot::Autopilot;
pub use removal::remove_node;

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
        let links = PeerLinks::new(name, peer_transport, Arc::clone(&group) as _, Arc::clone(shared));
        links.attach(hub);
        let app = Arc::new(AppHandler {
            hub: Arc::clone(hub),
            shared: Arc::clone(shared),
            group: Arc::clone(&group) as _,
            links: Arc::clone(&links),
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
        let membership = Arc::new(membership);
        links.set_remover(Arc::new(removal::LeaderRemover {
            group: Arc::downgrade(&group),
            membership: Arc::downgrade(&membership),
        }));
        info!(peer = %peer_addr, gossip = %membership.gossip_addr(), "cluster member started");
        Ok(ClusterRuntime { group, membership, links, transport, peer_addr })
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

/// [`view`], plus the members of the Raft group that gossip does not see
/// alive, as `state: "down"` (role `unknown`, no connections): what an
/// operator needs to see after a node died, before it is replaced.
pub fn view_with_down(group: &RaftGroup, membership: &Membership) -> ClusterView {
    let mut view = view(group, membership);
    let metrics = group.metrics().borrow().clone();
    let raft = metrics.membership_config.membership();
    let last = metrics.last_log_index.unwrap_or(0);
    let mut down: Vec<ClusterNodeView> = raft
        .nodes()
        .filter(|(_, node)| !view.nodes.iter().any(|live| live.name == node.name))
        .map(|(id, node)| ClusterNodeView {
            name: node.name.clone(),
            state: "down",
            role: "unknown".into(),
            connections: 0,
            incarnation: 0,
            voter: raft.voter_ids().any(|voter| voter == *id),
            lag: metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .map(|matched| last.saturating_sub(matched.map_or(0, |m| m.index))),
        })
        .collect();
    down.sort_by(|a, b| a.name.cmp(&b.name));
    view.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    view.nodes.extend(down);
    view
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
