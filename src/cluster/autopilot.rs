//! The autopilot's executor: follows gossip, and every tick (and at once
//! when a node departs or this node becomes the leader) gathers an
//! [`Observation`] (gossip, Raft metrics, peer links, the room table), asks
//! the [`Planner`] what to do and does it (openraft `initialize`,
//! `add_learner`, `change_membership`, `EvictNode` proposals, the role in
//! gossip), reporting outcomes back to the planner.
//!
//! It must not decide anything itself: every rule lives in `planner`, where
//! it is unit-tested. What it owns is the I/O, the tick and stopping on
//! cancellation even while a proposal waits for a quorum.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use starling_cluster::membership::{ClusterChange, Membership};
use starling_cluster::raft::{NodeId, PeerNode, RaftGroup};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::planner::{Action, LiveNode, Observation, Planner, PlannerConfig, RaftMembership, VoterChange};
use crate::forward::PeerLinks;
use crate::replicate::Replicator;
use crate::rooms::RoomCommand;
use crate::telemetry::RecentEvents;

/// How often the autopilot reconciles.
const TICK: Duration = Duration::from_millis(300);

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
    /// Where nodes coming and going are listed for the admin dashboard.
    pub events: Arc<RecentEvents>,
}

impl Autopilot {
    /// Runs until `stop`: follows gossip, forms the group, adds learners
    /// and promotes voters, and evicts dead incarnations.
    pub async fn run(self, stop: CancellationToken) {
        let mut planner = Planner::new(PlannerConfig {
            name: self.name.clone(),
            incarnation: self.incarnation,
            bootstrap_expect: self.bootstrap_expect,
            voters: self.voters,
            replace_dead_voter_after: self.replace_dead_voter_after,
        });
        let mut changes = self.membership.subscribe();
        let mut tick = tokio::time::interval(TICK);
        let mut raft = self.group.metrics();
        let mut leading = false;
        let mut gone = self.links.gone_events();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                change = changes.recv() => match change {
                    Some(ClusterChange::Add(member)) => {
                        self.events.record("node_up", &member.name, member.incarnation, String::new());
                        self.links.set_peer(&member.name, &member.peer_addr.to_string());
                        planner.node_up(&member.name, member.incarnation);
                    }
                    Some(ClusterChange::Update(member)) => {
                        self.links.set_peer(&member.name, &member.peer_addr.to_string());
                        planner.node_up(&member.name, member.incarnation);
                        continue;
                    }
                    Some(ClusterChange::Remove(member)) => {
                        info!(node = %member.name, incarnation = member.incarnation, "node left or died");
                        let replaced = self.membership.live_members().iter().any(|m| m.name == member.name);
                        if !replaced {
                            self.links.remove_peer(&member.name);
                        }
                        // Evicted now, not a tick later.
                        planner.node_gone(&member.name, member.incarnation);
                        let detail = if replaced { "restarted" } else { "left or died" };
                        self.events.record("node_down", &member.name, member.incarnation, detail.into());
                    }
                    None => return,
                },
                _ = tick.tick() => {}
                // A new leader evicts the dead at once, not a tick later: after
                // a kill of the leader, the dead node's rooms wait for this.
                _ = leadership_gained(&mut raft, &mut leading, self.group.id()) => tick.reset(),
                // A gone process: evicted (by a leader) or its leadership
                // ended (by its voters) at once.
                _ = found_gone(&mut gone) => tick.reset(),
            }
            // Proposals can wait for a quorum; stopping must not.
            let reconcile = async {
                let observation = self.observe().await;
                for action in planner.tick(&observation) {
                    self.carry_out(action, &mut planner).await;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = reconcile => {}
            }
        }
    }

    /// What the planner looks at, read now.
    async fn observe(&self) -> Observation {
        let initialized = self.group.raft().is_initialized().await.unwrap_or(true);
        let (is_leader, leader, raft) = {
            let metrics = self.group.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let raft = RaftMembership {
                voters: membership.voter_ids().collect(),
                learners: membership.learner_ids().collect(),
                addresses: membership.nodes().map(|(id, node)| (*id, node.peer_addr.clone())).collect(),
            };
            (metrics.current_leader == Some(self.group.id()), metrics.current_leader, raft)
        };
        let live = self
            .membership
            .live_members()
            .into_iter()
            .map(|m| {
                let itself = m.name == self.name && m.incarnation == self.incarnation;
                LiveNode {
                    authenticated: !itself && self.links.is_authenticated(&m),
                    peer_addr: m.peer_addr.to_string(),
                    name: m.name,
                    incarnation: m.incarnation,
                    role: m.role,
                }
            })
            .collect();
        let live_incarnations =
            self.membership.live_incarnations().into_iter().map(|m| (m.name, m.incarnation)).collect();
        // Walking the table is only worth it where it is used.
        let hosting = if is_leader {
            self.replicator
                .node_incarnations()
                .into_iter()
                .map(|(node, inc)| (node.to_string(), inc))
                .collect()
        } else {
            Default::default()
        };
        let gone = self.links.gone().into_iter().collect();
        Observation {
            initialized,
            is_leader,
            leader_known: leader.is_some(),
            leader,
            live,
            live_incarnations,
            raft,
            hosting,
            gone,
            now: Instant::now(),
        }
    }

    async fn carry_out(&self, action: Action, planner: &mut Planner) {
        match action {
            Action::Initialize { founders } => {
                info!(nodes = ?founders.values().map(|n| n.name.as_str()).collect::<Vec<_>>(), "forming the raft group");
                if let Err(error) = self.group.initialize(founders).await {
                    warn!(%error, "forming the raft group failed");
                }
            }
            Action::WaitForFounderLinks { unverified } => {
                debug!(?unverified, "waiting for authenticated links to every founder");
            }
            Action::EvictPreviousSelf { incarnation } => {
                let command = RoomCommand::EvictNode { node: self.name.as_str().into(), incarnation };
                if self.replicator.propose(command).await.is_ok() {
                    planner.previous_self_evicted();
                }
            }
            Action::Evict { node, incarnation } => {
                let command = RoomCommand::EvictNode { node: node.as_str().into(), incarnation };
                match self.replicator.propose(command).await {
                    Ok(effects) => {
                        info!(%node, incarnation, left = effects.len(), "evicted members of a departed node");
                        planner.evicted(&node, incarnation);
                    }
                    Err(error) => debug!(%node, %error, "eviction not committed yet"),
                }
            }
            Action::SetNodeAddress { id, node } => {
                info!(node = %node.name, addr = %node.peer_addr, "updating a node's peer address");
                let update = ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
                if let Err(error) = self.group.raft().change_membership(update, false).await {
                    debug!(%error, "address update failed");
                }
            }
            Action::AddLearner { id, node } => {
                info!(node = %node.name, "adding node to the raft group as a learner");
                if let Err(error) = self.group.raft().add_learner(id, node, false).await {
                    debug!(%error, "add learner failed");
                }
            }
            Action::ChangeVoters { voters, change } => {
                match change {
                    VoterChange::Promote { learner } => info!(learner, "promoting a learner to voter"),
                    VoterChange::Replace { dead, learner } => {
                        info!(dead, learner, "replacing a dead voter with a live learner")
                    }
                }
                if let Err(error) = self.group.raft().change_membership(voters, false).await {
                    debug!(%error, "membership change failed");
                }
            }
            Action::Elect { gone_leader, again_after } => {
                info!(gone_leader, "the leader's process is gone: starting an election now");
                let group = Arc::clone(&self.group);
                tokio::spawn(async move {
                    let _ = group.raft().trigger().elect().await;
                    let Some(after) = again_after else { return };
                    tokio::time::sleep(after).await;
                    let leader = group.metrics().borrow().current_leader;
                    if leader.is_none() || leader == Some(gone_leader) {
                        let _ = group.raft().trigger().elect().await;
                    }
                });
            }
            Action::PublishRole(role) => {
                self.membership.set_role(role.as_str()).await;
                self.membership.set_connections((self.connections)() as u64).await;
            }
        }
    }
}

/// Returns when this node becomes the Raft leader (`leading` remembers
/// whether it was at the last look); never, once the group has stopped.
async fn leadership_gained(
    raft: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, PeerNode>>,
    leading: &mut bool,
    me: NodeId,
) {
    loop {
        let now = raft.borrow_and_update().current_leader == Some(me);
        let gained = now && !*leading;
        *leading = now;
        if gained {
            return;
        }
        if raft.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Returns when a peer link finds a peer's process gone; never without
/// such signals.
async fn found_gone(gone: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let changed = match gone {
        Some(events) => events.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}
