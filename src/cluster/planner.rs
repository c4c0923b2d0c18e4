//! The autopilot's decisions: from what this node observes of gossip, Raft
//! and the room table, which cluster changes to make now.
//!
//! Owns the rules (who forms the group, which node incarnations are
//! evicted, who becomes a learner or a voter, which address Raft records)
//! and the bookkeeping they need across ticks: incarnations waiting to be
//! evicted, voters missing from gossip and since when, whether this node's
//! predecessors were evicted. It must not do I/O, read a clock, log or
//! spawn tasks: `autopilot` gathers each [`Observation`], carries out the
//! [`Action`]s in order and reports their outcomes back as events
//! ([`Planner::evicted`], [`Planner::previous_self_evicted`]), as openraft's
//! engine and `rooms::RoomTable` do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use starling_cluster::raft::{node_id, NodeId, PeerNode};

/// What the planner is configured with; fixed for a node's lifetime.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// This node's name.
    pub name: String,
    /// This process's incarnation (boot time); earlier ones are its predecessors.
    pub incarnation: u64,
    /// Live nodes needed before the group is formed; the lowest-named ones
    /// become its first voters.
    pub bootstrap_expect: usize,
    /// Voters the group should have; further nodes stay learners.
    pub voters: usize,
    /// How long a voter may be missing from gossip before a live learner
    /// takes its seat.
    pub replace_dead_voter_after: Duration,
}

/// One live node as gossip shows it: the highest live incarnation of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    pub name: String,
    pub incarnation: u64,
    /// The role it publishes (`joining`, `leader`, `follower`, `candidate`).
    pub role: String,
    /// Its peer address as gossip announces it.
    pub peer_addr: String,
    /// Whether this node's link to `peer_addr` completed the handshake as
    /// `name` and `incarnation` (its name bound to its certificate). False
    /// for this node's own incarnation, which never dials itself.
    pub authenticated: bool,
}

/// The Raft membership as this node's metrics last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftMembership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// The peer address Raft records for every member, voter or learner.
    pub addresses: BTreeMap<NodeId, String>,
}

/// Everything the planner looks at in one tick.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Whether this node has Raft state (a group it formed or was added to).
    pub initialized: bool,
    pub is_leader: bool,
    /// Whether this node knows a leader (itself included).
    pub leader_known: bool,
    /// The leader this node follows, as Raft's metrics name it (kept while
    /// an election has not replaced it).
    pub leader: Option<NodeId>,
    /// Live nodes, one per name, this node included.
    pub live: Vec<LiveNode>,
    /// Every live (name, incarnation): several per name while a node
    /// restarts (or while another process claims its name).
    pub live_incarnations: BTreeSet<(String, u64)>,
    pub raft: RaftMembership,
    /// The (node, incarnation) pairs that host members in the room table.
    /// Only a leader uses it, so only a leader needs to read it.
    pub hosting: BTreeSet<(String, u64)>,
    /// Incarnations whose process is gone (their peer link broke and their
    /// address refuses connections), whatever gossip still says.
    pub gone: BTreeSet<(String, u64)>,
    pub now: Instant,
}

/// The role this node publishes in gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    /// No leader known (an election, no quorum, or no group yet).
    Candidate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        }
    }
}

/// Why the voter set changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoterChange {
    /// Fewer voters than wanted: a live learner becomes one.
    Promote { learner: NodeId },
    /// A voter missing from gossip for too long gives its seat to a live learner.
    Replace { dead: NodeId, learner: NodeId },
}

/// One thing the autopilot does, in the order the planner lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Form the Raft group with these founders as its voters.
    Initialize { founders: BTreeMap<NodeId, PeerNode> },
    /// Not forming the group yet: these founders have not answered an
    /// authenticated peer link as themselves.
    WaitForFounderLinks { unverified: Vec<String> },
    /// Propose `EvictNode(this node, incarnation)`: every member its earlier
    /// incarnations left in the table. Report success with
    /// [`Planner::previous_self_evicted`]; otherwise it is asked again.
    EvictPreviousSelf { incarnation: u64 },
    /// Propose `EvictNode(node, incarnation)`. Report a commit with
    /// [`Planner::evicted`]; otherwise it is asked again.
    Evict { node: String, incarnation: u64 },
    /// Raft must dial a known node at its new address.
    SetNodeAddress { id: NodeId, node: PeerNode },
    /// Add a live node missing from the group as a learner.
    AddLearner { id: NodeId, node: PeerNode },
    /// Make `voters` the voter set.
    ChangeVoters { voters: BTreeSet<NodeId>, change: VoterChange },
    /// Publish this role (and the connection count) in gossip.
    PublishRole(Role),
    /// The leader's process is gone: start an election now rather than
    /// after the election timeout and the other voters' leader lease (see
    /// [`Planner::elect_past_a_gone_leader`]); with `again_after`, start
    /// another one that long after, if no leader is known by then.
    Elect { gone_leader: NodeId, again_after: Option<Duration> },
}

/// How long after its first election the lowest surviving voter starts a
/// second one (see [`Planner::elect_past_a_gone_leader`]): time for the other
/// survivors to notice the gone process (a peer link redials within 75 ms)
/// and become candidates themselves.
pub const ELECT_AGAIN_AFTER: Duration = Duration::from_millis(150);

/// The autopilot's rules and bookkeeping; see the module doc.
#[derive(Debug)]
pub struct Planner {
    config: PlannerConfig,
    /// (node, incarnation) seen leaving or superseded, to evict once this
    /// node leads and until the eviction commits.
    departed: BTreeSet<(String, u64)>,
    /// Whether the members of this node's earlier incarnations are evicted.
    evicted_previous_self: bool,
    /// Voters missing from gossip, and since when.
    absent_since: BTreeMap<NodeId, Instant>,
    /// The gone leader an election was started against (once per leader).
    elected_past: Option<NodeId>,
}

impl Planner {
    pub fn new(config: PlannerConfig) -> Planner {
        Planner {
            config,
            departed: BTreeSet::new(),
            evicted_previous_self: false,
            absent_since: BTreeMap::new(),
            elected_past: None,
        }
    }

    /// Gossip reports (node, incarnation) live: back from a pause or a cut,
    /// it is not departed.
    pub fn node_up(&mut self, node: &str, incarnation: u64) {
        self.departed.remove(&(node.to_string(), incarnation));
    }

    /// Gossip reports (node, incarnation) gone (left or died).
    pub fn node_gone(&mut self, node: &str, incarnation: u64) {
        self.departed.insert((node.to_string(), incarnation));
    }

    /// An [`Action::Evict`] committed.
    pub fn evicted(&mut self, node: &str, incarnation: u64) {
        self.departed.remove(&(node.to_string(), incarnation));
    }

    /// The [`Action::EvictPreviousSelf`] committed.
    pub fn previous_self_evicted(&mut self) {
        self.evicted_previous_self = true;
    }

    /// What to do now, in order.
    pub fn tick(&mut self, observation: &Observation) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut live: Vec<&LiveNode> = observation.live.iter().collect();
        live.sort_by(|a, b| a.name.cmp(&b.name));
        if !observation.initialized {
            actions.extend(self.bootstrap(&live));
        }
        if !self.evicted_previous_self && observation.leader_known {
            actions
                .push(Action::EvictPreviousSelf { incarnation: self.config.incarnation.saturating_sub(1) });
        }
        if observation.is_leader {
            self.evict_departed(observation, &mut actions);
            self.grow(observation, &live, &mut actions);
        } else {
            actions.extend(self.elect_past_a_gone_leader(observation));
        }
        let role = if observation.is_leader {
            Role::Leader
        } else if observation.leader_known {
            Role::Follower
        } else {
            Role::Candidate
        };
        actions.push(Action::PublishRole(role));
        actions
    }

    /// The node with the lowest name among the first `bootstrap_expect`
    /// live nodes (sorted by name) forms the group, with them as voters;
    /// everyone else waits to be added.
    fn bootstrap(&self, live: &[&LiveNode]) -> Option<Action> {
        // A group already exists if anyone is in one: this node (with an
        // empty data dir) must be added by that group's leader instead.
        if live.iter().any(|m| m.role == "leader" || m.role == "follower") {
            return None;
        }
        let lowest = live.first()?;
        if live.len() < self.config.bootstrap_expect || lowest.name != self.config.name {
            return None;
        }
        let founders = &live[..self.config.bootstrap_expect];
        // Every founder must have answered a peer link as itself: gossip
        // alone does not put a node into the group.
        let unverified: Vec<String> =
            founders.iter().filter(|m| !self.may_join(m)).map(|m| m.name.clone()).collect();
        if !unverified.is_empty() {
            return Some(Action::WaitForFounderLinks { unverified });
        }
        let founders = founders.iter().map(|m| (node_id(&m.name), peer_node(m))).collect();
        Some(Action::Initialize { founders })
    }

    /// When the leader's process is gone (its peer link broke and its
    /// address refuses connections: nothing listens there, so no live
    /// leader is disturbed), every surviving voter starts an election at
    /// once, and the live one with the lowest id starts another
    /// `ELECT_AGAIN_AFTER` later. Waiting for openraft's own timers costs
    /// 0.8–1.6 s: a voter refuses every candidate for a leader lease (the
    /// maximum election timeout) after the leader's last heartbeat, so the
    /// first candidacy usually fails and the next waits another timeout. A
    /// voter that is itself a candidate has no lease, so the second
    /// election wins on the first round trip. Once per gone leader.
    fn elect_past_a_gone_leader(&mut self, observation: &Observation) -> Option<Action> {
        let leader = observation.leader?;
        if self.elected_past.is_some_and(|past| past != leader) {
            self.elected_past = None;
        }
        let me = node_id(&self.config.name);
        let leader_gone = observation.gone.iter().any(|(name, _)| node_id(name) == leader);
        if !leader_gone || !observation.raft.voters.contains(&me) || self.elected_past == Some(leader) {
            return None;
        }
        self.elected_past = Some(leader);
        let gone: BTreeSet<NodeId> = observation.gone.iter().map(|(name, _)| node_id(name)).collect();
        let lowest = observation.raft.voters.iter().filter(|v| !gone.contains(v)).min() == Some(&me);
        Some(Action::Elect { gone_leader: leader, again_after: lowest.then_some(ELECT_AGAIN_AFTER) })
    }

    /// Evicts every departed incarnation, and every incarnation in the table
    /// superseded by a newer live one (a restart noticed before its old
    /// incarnation timed out), retrying each until it commits.
    fn evict_departed(&mut self, observation: &Observation, actions: &mut Vec<Action>) {
        let mut departed = std::mem::take(&mut self.departed);
        // A live incarnation is superseded once a newer one of its name
        // answered a peer link as itself: gossip alone never evicts another
        // incarnation.
        let superseded = |node: &str, incarnation: u64| {
            observation
                .live
                .iter()
                .any(|m| m.name == node && m.incarnation > incarnation && self.vouches_for(m))
        };
        departed.extend(
            observation.hosting.iter().filter(|(node, incarnation)| superseded(node, *incarnation)).cloned(),
        );
        // Never evict an incarnation that gossip still sees alive (it came
        // back, or another process took its name) unless it is superseded.
        // A gone process is evicted at once, before gossip notices.
        departed.extend(observation.hosting.iter().filter(|h| observation.gone.contains(*h)).cloned());
        departed.retain(|(node, incarnation)| {
            let key = (node.clone(), *incarnation);
            superseded(node, *incarnation)
                || observation.gone.contains(&key)
                || !observation.live_incarnations.contains(&key)
        });
        actions.extend(
            departed
                .iter()
                .map(|(node, incarnation)| Action::Evict { node: node.clone(), incarnation: *incarnation }),
        );
        self.departed = departed;
    }

    /// Adds live nodes missing from the group as learners, moves known
    /// nodes' addresses, and changes at most one voter seat: a live learner
    /// is promoted while there are fewer voters than wanted, else it takes
    /// the seat of a voter missing from gossip for long enough.
    fn grow(&mut self, observation: &Observation, live: &[&LiveNode], actions: &mut Vec<Action>) {
        let raft = &observation.raft;
        let live_ids: BTreeSet<NodeId> = live.iter().map(|m| node_id(&m.name)).collect();
        self.absent_since.retain(|id, _| raft.voters.contains(id) && !live_ids.contains(id));
        for voter in raft.voters.iter().filter(|id| !live_ids.contains(id)) {
            self.absent_since.entry(*voter).or_insert(observation.now);
        }
        for member in live {
            // Gossip alone never adds a learner or moves a node's address:
            // the node must have answered a peer link at that address as
            // itself (its name bound to its certificate).
            if !self.may_join(member) {
                continue;
            }
            let id = node_id(&member.name);
            match raft.addresses.get(&id) {
                // A node back at a new address (a restart elsewhere): Raft
                // must dial the new one.
                Some(recorded) if *recorded != member.peer_addr => {
                    actions.push(Action::SetNodeAddress { id, node: peer_node(member) });
                }
                Some(_) => {}
                None => actions.push(Action::AddLearner { id, node: peer_node(member) }),
            }
        }
        let Some(learner) = raft.learners.iter().copied().find(|id| live_ids.contains(id)) else {
            return;
        };
        let mut voters = raft.voters.clone();
        let change = if voters.len() < self.config.voters {
            VoterChange::Promote { learner }
        } else {
            let after = self.config.replace_dead_voter_after;
            let dead = self
                .absent_since
                .iter()
                .find(|(_, since)| observation.now.saturating_duration_since(**since) >= after);
            let Some((&dead, _)) = dead else {
                return;
            };
            voters.remove(&dead);
            VoterChange::Replace { dead, learner }
        };
        voters.insert(learner);
        actions.push(Action::ChangeVoters { voters, change });
    }

    /// Whether `member` may be a founder, a learner or have its address
    /// recorded: it answered an authenticated link, or it bears this node's
    /// name.
    fn may_join(&self, member: &LiveNode) -> bool {
        member.name == self.config.name || member.authenticated
    }

    /// Whether `member` can supersede older incarnations of its name: it
    /// answered an authenticated link, or it is this very process.
    fn vouches_for(&self, member: &LiveNode) -> bool {
        member.authenticated
            || (member.name == self.config.name && member.incarnation == self.config.incarnation)
    }
}

fn peer_node(member: &LiveNode) -> PeerNode {
    PeerNode { name: member.name.clone(), peer_addr: member.peer_addr.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "node-a";
    const MY_INCARNATION: u64 = 100;
    const REPLACE_AFTER: Duration = Duration::from_secs(30);

    fn config(name: &str) -> PlannerConfig {
        PlannerConfig {
            name: name.into(),
            incarnation: MY_INCARNATION,
            bootstrap_expect: 3,
            voters: 3,
            replace_dead_voter_after: REPLACE_AFTER,
        }
    }

    /// A planner for `ME` whose predecessors are already evicted.
    fn settled() -> Planner {
        let mut planner = Planner::new(config(ME));
        planner.previous_self_evicted();
        planner
    }

    fn addr(name: &str) -> String {
        format!("{name}.internal:7801")
    }

    fn peer(name: &str) -> PeerNode {
        PeerNode { name: name.into(), peer_addr: addr(name) }
    }

    fn id(name: &str) -> NodeId {
        node_id(name)
    }

    fn ids(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|name| id(name)).collect()
    }

    /// Another node, live at its usual address, that answered an
    /// authenticated link.
    fn node(name: &str, incarnation: u64) -> LiveNode {
        LiveNode {
            name: name.into(),
            incarnation,
            role: "joining".into(),
            peer_addr: addr(name),
            authenticated: true,
        }
    }

    /// Another node that gossip lists but that never answered an
    /// authenticated link.
    fn stranger(name: &str, incarnation: u64) -> LiveNode {
        LiveNode { authenticated: false, ..node(name, incarnation) }
    }

    /// This process as gossip lists it (never dialled, so not authenticated).
    fn me() -> LiveNode {
        LiveNode { authenticated: false, ..node(ME, MY_INCARNATION) }
    }

    /// A node without a group or a leader, seeing `live` in gossip.
    fn fresh(now: Instant, live: Vec<LiveNode>) -> Observation {
        let live_incarnations = live.iter().map(|m| (m.name.clone(), m.incarnation)).collect();
        Observation {
            initialized: false,
            is_leader: false,
            leader_known: false,
            leader: None,
            live,
            live_incarnations,
            raft: RaftMembership::default(),
            hosting: BTreeSet::new(),
            gone: BTreeSet::new(),
            now,
        }
    }

    fn membership(voters: &[&str], learners: &[&str]) -> RaftMembership {
        RaftMembership {
            voters: ids(voters),
            learners: ids(learners),
            addresses: voters.iter().chain(learners).map(|name| (id(name), addr(name))).collect(),
        }
    }

    /// A member of a group with a leader elsewhere.
    fn following(now: Instant, live: Vec<LiveNode>, voters: &[&str], learners: &[&str]) -> Observation {
        Observation {
            initialized: true,
            leader_known: true,
            raft: membership(voters, learners),
            ..fresh(now, live)
        }
    }

    /// The leader of a group.
    fn leading(now: Instant, live: Vec<LiveNode>, voters: &[&str], learners: &[&str]) -> Observation {
        Observation { is_leader: true, ..following(now, live, voters, learners) }
    }

    fn founders(names: &[&str]) -> Action {
        Action::Initialize { founders: names.iter().map(|name| (id(name), peer(name))).collect() }
    }

    fn evict(node: &str, incarnation: u64) -> Action {
        Action::Evict { node: node.into(), incarnation }
    }

    const LEADER: Action = Action::PublishRole(Role::Leader);
    const FOLLOWER: Action = Action::PublishRole(Role::Follower);
    const CANDIDATE: Action = Action::PublishRole(Role::Candidate);

    #[test]
    fn only_the_lowest_named_node_forms_the_group_with_the_first_bootstrap_expect_live_nodes() {
        let now = Instant::now();
        let live = vec![node("node-d", 1), node("node-c", 1), me(), node("node-b", 1)];
        assert_eq!(
            Planner::new(config(ME)).tick(&fresh(now, live.clone())),
            vec![founders(&["node-a", "node-b", "node-c"]), CANDIDATE]
        );
        let as_b: Vec<LiveNode> =
            live.into_iter().map(|m| LiveNode { authenticated: m.name != "node-b", ..m }).collect();
        assert_eq!(Planner::new(config("node-b")).tick(&fresh(now, as_b)), vec![CANDIDATE]);
    }

    #[test]
    fn no_group_is_formed_before_bootstrap_expect_nodes_are_live() {
        let now = Instant::now();
        let mut planner = Planner::new(config(ME));
        assert_eq!(planner.tick(&fresh(now, vec![me(), node("node-b", 1)])), vec![CANDIDATE]);
        let live = vec![me(), node("node-b", 1), node("node-c", 1)];
        assert_eq!(
            planner.tick(&fresh(now, live)),
            vec![founders(&["node-a", "node-b", "node-c"]), CANDIDATE]
        );
    }

    #[test]
    fn the_group_waits_for_an_authenticated_link_to_every_founder_and_only_to_founders() {
        let now = Instant::now();
        let mut planner = Planner::new(config(ME));
        let live = vec![me(), node("node-b", 1), stranger("node-c", 1)];
        assert_eq!(
            planner.tick(&fresh(now, live)),
            vec![Action::WaitForFounderLinks { unverified: vec!["node-c".into()] }, CANDIDATE]
        );
        let live = vec![me(), node("node-b", 1), node("node-c", 1), stranger("node-d", 1)];
        assert_eq!(
            planner.tick(&fresh(now, live)),
            vec![founders(&["node-a", "node-b", "node-c"]), CANDIDATE]
        );
    }

    #[test]
    fn no_group_is_formed_while_gossip_shows_a_leader_or_a_follower() {
        let now = Instant::now();
        for role in ["leader", "follower"] {
            let in_a_group = LiveNode { role: role.into(), ..node("node-z", 1) };
            let live = vec![me(), node("node-b", 1), node("node-c", 1), in_a_group];
            assert_eq!(Planner::new(config(ME)).tick(&fresh(now, live)), vec![CANDIDATE], "{role}");
        }
        let candidate = LiveNode { role: "candidate".into(), ..node("node-z", 1) };
        let live = vec![me(), node("node-b", 1), node("node-c", 1), candidate];
        assert_eq!(
            Planner::new(config(ME)).tick(&fresh(now, live)),
            vec![founders(&["node-a", "node-b", "node-c"]), CANDIDATE]
        );
    }

    #[test]
    fn a_node_with_raft_state_never_forms_a_group() {
        let live = vec![me(), node("node-b", 1), node("node-c", 1)];
        let observation = Observation { initialized: true, ..fresh(Instant::now(), live) };
        assert_eq!(Planner::new(config(ME)).tick(&observation), vec![CANDIDATE]);
    }

    #[test]
    fn previous_self_is_evicted_once_a_leader_is_known_and_retried_until_committed() {
        let now = Instant::now();
        let mut planner = Planner::new(config(ME));
        let no_leader = Observation { initialized: true, ..fresh(now, vec![me()]) };
        assert_eq!(planner.tick(&no_leader), vec![CANDIDATE]);
        let observation = following(now, vec![me(), node("node-b", 1)], &[ME, "node-b"], &[]);
        let evict_previous = Action::EvictPreviousSelf { incarnation: MY_INCARNATION - 1 };
        assert_eq!(planner.tick(&observation), vec![evict_previous.clone(), FOLLOWER]);
        assert_eq!(planner.tick(&observation), vec![evict_previous, FOLLOWER]);
        planner.previous_self_evicted();
        assert_eq!(planner.tick(&observation), vec![FOLLOWER]);
    }

    #[test]
    fn followers_only_publish_their_role() {
        let now = Instant::now();
        let mut planner = settled();
        planner.node_gone("node-c", 7);
        let moved = LiveNode { peer_addr: "elsewhere:7801".into(), ..node("node-b", 2) };
        let live = vec![me(), moved, node("node-d", 1), node("node-e", 3), node("node-f", 1)];
        let mut observation = following(now, live, &[ME, "node-b", "node-c"], &["node-e", "node-f"]);
        observation.hosting = BTreeSet::from([("node-e".to_string(), 2)]);
        assert_eq!(planner.tick(&observation), vec![FOLLOWER]);
        observation.now = now + REPLACE_AFTER * 2;
        assert_eq!(planner.tick(&observation), vec![FOLLOWER]);
    }

    #[test]
    fn a_departed_incarnation_is_evicted_by_the_leader_and_retried_until_committed() {
        let now = Instant::now();
        let mut planner = settled();
        planner.node_gone("node-c", 7);
        let live = vec![me(), node("node-b", 1)];
        let observation = leading(now, live, &[ME, "node-b", "node-c"], &[]);
        assert_eq!(planner.tick(&observation), vec![evict("node-c", 7), LEADER]);
        assert_eq!(planner.tick(&observation), vec![evict("node-c", 7), LEADER]);
        planner.evicted("node-c", 7);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn a_member_hosting_incarnation_whose_process_is_gone_is_evicted_before_gossip_notices() {
        let now = Instant::now();
        let mut planner = settled();
        let mut observation =
            leading(now, vec![me(), node("node-b", 1), node("node-c", 7)], &[ME, "node-b", "node-c"], &[]);
        observation.hosting.insert(("node-c".into(), 7));
        assert_eq!(planner.tick(&observation), vec![LEADER], "gossip and the link see it alive");
        observation.gone.insert(("node-c".into(), 7));
        assert_eq!(planner.tick(&observation), vec![evict("node-c", 7), LEADER], "gossip still lists it");
        // A gone incarnation hosting no member needs no eviction.
        let mut planner = settled();
        observation.hosting.clear();
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn an_incarnation_gossip_reports_up_again_is_not_evicted() {
        let now = Instant::now();
        let mut planner = settled();
        planner.node_gone("node-c", 7);
        planner.node_up("node-c", 7);
        let observation = leading(now, vec![me(), node("node-b", 1)], &[ME, "node-b", "node-c"], &[]);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn an_incarnation_gossip_still_sees_alive_is_never_evicted_later() {
        let now = Instant::now();
        let mut planner = settled();
        planner.node_gone("node-c", 7);
        let mut observation = leading(now, vec![me(), node("node-b", 1)], &[ME, "node-b", "node-c"], &[]);
        observation.live_incarnations.insert(("node-c".into(), 7));
        assert_eq!(planner.tick(&observation), vec![LEADER]);
        observation.live_incarnations.remove(&("node-c".to_string(), 7));
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn an_old_incarnation_superseded_by_a_newer_authenticated_one_is_evicted_while_gossip_lists_it() {
        let now = Instant::now();
        let mut planner = settled();
        let live = vec![me(), node("node-b", 1), node("node-c", 8)];
        let mut observation = leading(now, live, &[ME, "node-b", "node-c"], &[]);
        observation.live_incarnations.insert(("node-c".into(), 7));
        observation.hosting =
            BTreeSet::from([(ME.to_string(), MY_INCARNATION), ("node-c".into(), 7), ("node-c".into(), 8)]);
        assert_eq!(planner.tick(&observation), vec![evict("node-c", 7), LEADER]);
        // Not committed, and the table no longer lists it: still retried.
        planner.node_up("node-c", 8);
        observation.hosting.clear();
        assert_eq!(planner.tick(&observation), vec![evict("node-c", 7), LEADER]);
        planner.evicted("node-c", 7);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn a_departed_incarnation_still_listed_alive_is_evicted_once_superseded() {
        let now = Instant::now();
        let mut planner = settled();
        planner.node_gone("node-c", 7);
        let mut observation =
            leading(now, vec![me(), node("node-b", 1), node("node-c", 8)], &[ME, "node-b"], &[]);
        observation.raft.addresses.insert(id("node-c"), addr("node-c"));
        observation.raft.learners.insert(id("node-c"));
        observation.live_incarnations.insert(("node-c".into(), 7));
        assert_eq!(
            planner.tick(&observation),
            vec![
                evict("node-c", 7),
                Action::ChangeVoters {
                    voters: ids(&[ME, "node-b", "node-c"]),
                    change: VoterChange::Promote { learner: id("node-c") }
                },
                LEADER
            ]
        );
    }

    #[test]
    fn an_unauthenticated_newer_incarnation_supersedes_nothing() {
        let now = Instant::now();
        let mut planner = settled();
        planner.node_gone("node-c", 7);
        let live = vec![me(), node("node-b", 1), stranger("node-c", 8)];
        let mut observation = leading(now, live, &[ME, "node-b", "node-c"], &[]);
        observation.live_incarnations.insert(("node-c".into(), 7));
        observation.hosting = BTreeSet::from([("node-c".into(), 7)]);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn this_process_supersedes_its_own_older_incarnations_without_dialling_itself() {
        let now = Instant::now();
        let mut planner = settled();
        let mut observation = leading(now, vec![me(), node("node-b", 1)], &[ME, "node-b"], &[]);
        observation.hosting = BTreeSet::from([(ME.to_string(), 90), (ME.to_string(), MY_INCARNATION)]);
        assert_eq!(planner.tick(&observation), vec![evict(ME, 90), LEADER]);
    }

    #[test]
    fn unauthenticated_live_nodes_are_never_added_as_learners_nor_have_their_address_changed() {
        let now = Instant::now();
        let mut planner = settled();
        let moved = LiveNode { peer_addr: "elsewhere:7801".into(), ..stranger("node-b", 2) };
        let live = vec![me(), moved, node("node-c", 1), stranger("node-d", 1)];
        let observation = leading(now, live, &[ME, "node-b", "node-c"], &[]);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn an_authenticated_live_node_missing_from_the_group_is_added_as_a_learner() {
        let now = Instant::now();
        let mut planner = settled();
        let live = vec![me(), node("node-b", 1), node("node-c", 1), node("node-d", 1)];
        let observation = leading(now, live, &[ME, "node-b", "node-c"], &[]);
        assert_eq!(
            planner.tick(&observation),
            vec![Action::AddLearner { id: id("node-d"), node: peer("node-d") }, LEADER]
        );
    }

    #[test]
    fn a_known_node_back_at_a_new_authenticated_address_gets_that_address_recorded() {
        let now = Instant::now();
        let mut planner = settled();
        let moved = LiveNode { peer_addr: "elsewhere:7801".into(), ..node("node-b", 2) };
        let observation = leading(now, vec![me(), moved, node("node-c", 1)], &[ME, "node-b", "node-c"], &[]);
        let node = PeerNode { name: "node-b".into(), peer_addr: "elsewhere:7801".into() };
        assert_eq!(
            planner.tick(&observation),
            vec![Action::SetNodeAddress { id: id("node-b"), node }, LEADER]
        );
    }

    #[test]
    fn one_live_learner_is_promoted_per_tick_while_voters_are_fewer_than_wanted() {
        let now = Instant::now();
        let mut planner = settled();
        let live = vec![me(), node("node-b", 1), node("node-c", 1)];
        let observation = leading(now, live, &[ME], &["node-b", "node-c", "node-gone"]);
        let first = id("node-b").min(id("node-c"));
        let mut voters = ids(&[ME]);
        voters.insert(first);
        let promote = Action::ChangeVoters { voters, change: VoterChange::Promote { learner: first } };
        assert_eq!(planner.tick(&observation), vec![promote, LEADER]);
    }

    #[test]
    fn only_live_learners_are_promoted() {
        let now = Instant::now();
        let mut planner = settled();
        let observation = leading(now, vec![me()], &[ME], &["node-gone"]);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn no_learner_is_promoted_once_the_wanted_voters_are_live() {
        let now = Instant::now();
        let mut planner = settled();
        let live = vec![me(), node("node-b", 1), node("node-c", 1), node("node-d", 1)];
        let observation = leading(now, live, &[ME, "node-b", "node-c"], &["node-d"]);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
    }

    #[test]
    fn a_voter_absent_for_less_than_replace_dead_voter_after_keeps_its_seat_then_a_live_learner_takes_it() {
        let start = Instant::now();
        let mut planner = settled();
        let live = vec![me(), node("node-b", 1), node("node-d", 1)];
        let mut observation = leading(start, live, &[ME, "node-b", "node-c"], &["node-d"]);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
        observation.now = start + REPLACE_AFTER - Duration::from_millis(1);
        assert_eq!(planner.tick(&observation), vec![LEADER]);
        observation.now = start + REPLACE_AFTER;
        let replace = Action::ChangeVoters {
            voters: ids(&[ME, "node-b", "node-d"]),
            change: VoterChange::Replace { dead: id("node-c"), learner: id("node-d") },
        };
        assert_eq!(planner.tick(&observation), vec![replace, LEADER]);
    }

    #[test]
    fn a_voter_seen_again_in_gossip_starts_its_absence_over() {
        let start = Instant::now();
        let mut planner = settled();
        let without_c = vec![me(), node("node-b", 1), node("node-d", 1)];
        let mut with_c = without_c.clone();
        with_c.push(node("node-c", 1));
        let voters = [ME, "node-b", "node-c"];
        assert_eq!(planner.tick(&leading(start, without_c.clone(), &voters, &["node-d"])), vec![LEADER]);
        let back = start + REPLACE_AFTER / 2;
        assert_eq!(planner.tick(&leading(back, with_c, &voters, &["node-d"])), vec![LEADER]);
        let gone_again = start + REPLACE_AFTER;
        assert_eq!(planner.tick(&leading(gone_again, without_c.clone(), &voters, &["node-d"])), vec![LEADER]);
        let later = gone_again + REPLACE_AFTER - Duration::from_millis(1);
        assert_eq!(planner.tick(&leading(later, without_c, &voters, &["node-d"])), vec![LEADER]);
    }

    #[test]
    fn a_dead_voter_keeps_its_seat_without_a_live_learner() {
        let start = Instant::now();
        let mut planner = settled();
        let voters = [ME, "node-b", "node-c"];
        let live = vec![me(), node("node-b", 1)];
        assert_eq!(planner.tick(&leading(start, live.clone(), &voters, &["node-gone"])), vec![LEADER]);
        let later = start + REPLACE_AFTER * 10;
        assert_eq!(planner.tick(&leading(later, live, &voters, &["node-gone"])), vec![LEADER]);
    }

    #[test]
    fn the_published_role_follows_raft() {
        let now = Instant::now();
        let mut planner = settled();
        assert_eq!(planner.tick(&fresh(now, vec![me()])), vec![CANDIDATE]);
        assert_eq!(planner.tick(&following(now, vec![me()], &[ME], &[])), vec![FOLLOWER]);
        assert_eq!(planner.tick(&leading(now, vec![me()], &[ME], &[])), vec![LEADER]);
    }

    #[test]
    fn voters_elect_at_once_when_the_leaders_process_is_gone_the_lowest_twice() {
        let now = Instant::now();
        let voters = ["node-0", ME, "node-z"];
        let live = vec![me(), node("node-z", 1)];
        let mut observation = following(now, live, &voters, &[]);
        observation.leader = Some(id("node-0"));
        // The leader's link is up (or merely silent): no election here.
        let mut planner = settled();
        assert_eq!(planner.tick(&observation), vec![FOLLOWER]);
        observation.gone.insert(("node-0".into(), 1));
        let lowest = id(ME) < id("node-z");
        let again_after = lowest.then_some(ELECT_AGAIN_AFTER);
        let elect = Action::Elect { gone_leader: id("node-0"), again_after };
        assert_eq!(planner.tick(&observation), vec![elect, FOLLOWER]);
        assert_eq!(planner.tick(&observation), vec![FOLLOWER], "once per gone leader");
        // A learner does not vote, so it does not stand.
        let mut learner = settled();
        let mut watching = following(now, vec![me()], &["node-0", "node-z", "node-y"], &[ME]);
        watching.leader = Some(id("node-0"));
        watching.gone.insert(("node-0".into(), 1));
        assert_eq!(learner.tick(&watching), vec![FOLLOWER]);
        // The next leader dies too: elect again.
        observation.leader = Some(id("node-z"));
        observation.gone.insert(("node-z".into(), 1));
        let only = Some(ELECT_AGAIN_AFTER);
        let elect = Action::Elect { gone_leader: id("node-z"), again_after: only };
        assert_eq!(planner.tick(&observation), vec![elect, FOLLOWER]);
    }
}
