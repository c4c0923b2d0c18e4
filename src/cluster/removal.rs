//! Removing a dead node from the group for good
//! (`DELETE /api/cluster/nodes/{name}`): its voter seat or learner place
//! goes, so the group stops counting it towards a majority.
//!
//! Only the leader changes Raft's membership: a request on another node is
//! sent to the leader over its peer link (the application message
//! `RemoveNode`, peer protocol 8), never to a leader whose link runs an
//! older version. A node that gossip sees alive is never removed: the
//! autopilot would add it back as a learner at once, and removing a live
//! voter is what a rolling restart must never do by accident.

use std::sync::Weak;
use std::time::Duration;

use starling_cluster::membership::Membership;
use starling_cluster::raft::{node_id, RaftGroup, RemoveMemberError};
use starling_cluster::transport::BoxFuture;

use crate::forward::{NodeRemover, PeerLinks, RemovalRefusal, RemovedNode};

/// How long a removal may wait for a quorum and for a membership change
/// already under way.
const REMOVAL_DEADLINE: Duration = Duration::from_secs(5);

/// Removes `name` from the group, from any node: here when this node
/// leads, else by asking the leader.
pub async fn remove_node(
    group: &RaftGroup,
    membership: &Membership,
    links: &PeerLinks,
    name: &str,
) -> Result<RemovedNode, RemovalRefusal> {
    if group.is_leader() {
        return remove_here(group, membership, name).await;
    }
    let leader = group.leader_name().ok_or(RemovalRefusal::NoLeader)?;
    links.ask_leader_to_remove(&leader, name).await
}

/// Removes `name` as the leader.
pub async fn remove_here(
    group: &RaftGroup,
    membership: &Membership,
    name: &str,
) -> Result<RemovedNode, RemovalRefusal> {
    if membership.live_members().iter().any(|m| m.name == name) {
        return Err(RemovalRefusal::Alive(name.to_string()));
    }
    let was_voter = group.remove_member(name, REMOVAL_DEADLINE).await.map_err(|error| match error {
        RemoveMemberError::NotMember => RemovalRefusal::NotMember(name.to_string()),
        RemoveMemberError::LastVoterOrLeader => RemovalRefusal::LeaderOrLastVoter(name.to_string()),
        RemoveMemberError::NotLeader => RemovalRefusal::Unavailable("the leader changed; retry".into()),
        RemoveMemberError::Failed(reason) => RemovalRefusal::Unavailable(reason),
    })?;
    let metrics = group.metrics().borrow().clone();
    let raft = metrics.membership_config.membership();
    // The metrics may trail the committed change by a moment.
    let names = |ids: Vec<u64>| -> Vec<String> {
        let mut names: Vec<String> = ids
            .iter()
            .filter(|id| **id != node_id(name))
            .filter_map(|id| raft.get_node(id))
            .map(|node| node.name.clone())
            .collect();
        names.sort();
        names
    };
    Ok(RemovedNode {
        node: name.to_string(),
        was_voter,
        voters: names(raft.voter_ids().collect()),
        learners: names(raft.learner_ids().collect()),
    })
}

/// What a leader runs for a follower's `RemoveNode` request. The peer
/// links own it, so it holds the group and gossip weakly: a node that
/// stops must drop both (a stopped node that still gossiped would be
/// seen alive).
pub struct LeaderRemover {
    pub group: Weak<RaftGroup>,
    pub membership: Weak<Membership>,
}

impl NodeRemover for LeaderRemover {
    fn remove_here(&self, name: String) -> BoxFuture<Result<RemovedNode, RemovalRefusal>> {
        let (group, membership) = (self.group.upgrade(), self.membership.upgrade());
        Box::pin(async move {
            let (Some(group), Some(membership)) = (group, membership) else {
                return Err(RemovalRefusal::Unavailable("this node is stopping".into()));
            };
            if !group.is_leader() {
                return Err(RemovalRefusal::Unavailable("the leader changed; retry".into()));
            }
            remove_here(&group, &membership, &name).await
        })
    }
}
