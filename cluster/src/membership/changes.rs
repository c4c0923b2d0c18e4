//! Membership changes: `ClusterChange` and the per-subscriber change stream.
//!
//! Owns the rule that turns two successive sets of live members into
//! Add/Update/Remove changes (`diff_members`, pure), and the stream that
//! applies it to chitchat's live-node watch. Must not decide liveness (that
//! is chitchat's failure detector) nor write gossip state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chitchat::{ChitchatId, NodeState};
use tokio::sync::watch;

use super::member::{members_by_name, ClusterMember};

/// A change in the set of live members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterChange {
    /// A member (name and incarnation) became live.
    Add(ClusterMember),
    /// A live member changed its role, connection count or addresses.
    Update(ClusterMember),
    /// A member is no longer live: it died, left, or was replaced by a newer
    /// incarnation (then an `Add` of the new incarnation follows immediately).
    Remove(ClusterMember),
}

impl ClusterChange {
    /// The member the change is about (the old incarnation for a `Remove`).
    pub fn member(&self) -> &ClusterMember {
        match self {
            ClusterChange::Add(member) | ClusterChange::Update(member) | ClusterChange::Remove(member) => {
                member
            }
        }
    }
}

/// The changes that lead from `previous` to `next` (both keyed by name), in name order.
///
/// A different incarnation under the same name is `Remove(old)` then `Add(new)`;
/// the same incarnation with any other field changed is `Update(new)`.
pub(super) fn diff_members(
    previous: &BTreeMap<String, ClusterMember>,
    next: &BTreeMap<String, ClusterMember>,
) -> Vec<ClusterChange> {
    let names: BTreeSet<&String> = previous.keys().chain(next.keys()).collect();
    let mut changes = Vec::new();
    for name in names {
        match (previous.get(name), next.get(name)) {
            (Some(old), None) => changes.push(ClusterChange::Remove(old.clone())),
            (None, Some(new)) => changes.push(ClusterChange::Add(new.clone())),
            (Some(old), Some(new)) if old.incarnation != new.incarnation => {
                changes.push(ClusterChange::Remove(old.clone()));
                changes.push(ClusterChange::Add(new.clone()));
            }
            (Some(old), Some(new)) if old != new => changes.push(ClusterChange::Update(new.clone())),
            _ => {}
        }
    }
    changes
}

/// The changes seen by one subscriber: first an `Add` for every member live when
/// it subscribed (itself included), then every change after that.
///
/// Each stream diffs chitchat's live-node watch against what it has already
/// reported, so it never lags or drops a change, however slowly it is read;
/// states that come and go between two reads are merged (an `Update` may
/// cover several updates, a node that flapped between reads shows nothing).
pub struct ClusterChangeStream {
    /// Chitchat's live nodes, refreshed after each gossip round.
    live_nodes_rx: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    /// What this subscriber has been told so far (after the pending changes).
    reported: BTreeMap<String, ClusterMember>,
    /// Changes computed but not yet returned by `recv`.
    pending: VecDeque<ClusterChange>,
}

impl ClusterChangeStream {
    pub(super) fn new(mut live_nodes_rx: watch::Receiver<BTreeMap<ChitchatId, NodeState>>) -> Self {
        let live = members_by_name(&live_nodes_rx.borrow_and_update());
        let pending = diff_members(&BTreeMap::new(), &live).into();
        ClusterChangeStream { live_nodes_rx, reported: live, pending }
    }

    /// The next change, or `None` once membership has shut down.
    ///
    /// Cancel-safe: dropping the future (in a `select!`) loses no change.
    pub async fn recv(&mut self) -> Option<ClusterChange> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some(change);
            }
            if self.live_nodes_rx.changed().await.is_err() {
                return None;
            }
            let live = members_by_name(&self.live_nodes_rx.borrow_and_update());
            self.pending.extend(diff_members(&self.reported, &live));
            self.reported = live;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, incarnation: u64) -> ClusterMember {
        ClusterMember {
            name: name.to_string(),
            incarnation,
            peer_addr: "127.0.0.1:7801".parse().unwrap(),
            client_addr: "127.0.0.1:7601".parse().unwrap(),
            api_addr: "127.0.0.1:7701".parse().unwrap(),
            gossip_addr: "127.0.0.1:7901".parse().unwrap(),
            role: "ready".to_string(),
            connections: 0,
        }
    }

    fn by_name(members: impl IntoIterator<Item = ClusterMember>) -> BTreeMap<String, ClusterMember> {
        members.into_iter().map(|member| (member.name.clone(), member)).collect()
    }

    #[test]
    fn new_names_are_added_and_missing_names_removed() {
        let changes = diff_members(
            &by_name([member("a", 1), member("b", 1)]),
            &by_name([member("b", 1), member("c", 1)]),
        );
        assert_eq!(changes, vec![ClusterChange::Remove(member("a", 1)), ClusterChange::Add(member("c", 1))]);
    }

    #[test]
    fn changed_fields_of_the_same_incarnation_are_an_update() {
        let busy = ClusterMember { connections: 5, role: "draining".to_string(), ..member("a", 1) };
        let changes = diff_members(&by_name([member("a", 1)]), &by_name([busy.clone()]));
        assert_eq!(changes, vec![ClusterChange::Update(busy)]);
    }

    #[test]
    fn unchanged_members_produce_no_change() {
        let members = by_name([member("a", 1), member("b", 2)]);
        assert_eq!(diff_members(&members, &members), vec![]);
    }

    #[test]
    fn restarted_node_is_removed_then_added() {
        let restarted = ClusterMember { connections: 3, ..member("a", 2) };
        let changes = diff_members(&by_name([member("a", 1)]), &by_name([restarted.clone()]));
        assert_eq!(changes, vec![ClusterChange::Remove(member("a", 1)), ClusterChange::Add(restarted)]);
    }

    #[test]
    fn old_incarnation_dying_after_its_successor_was_added_changes_nothing() {
        // Chitchat lists both incarnations until the old one is declared dead;
        // `members_by_name` keeps the newest, so the old one's death is silent.
        let both_live = crate::membership::member::latest_incarnations([member("a", 1), member("a", 2)]);
        let only_new = by_name([member("a", 2)]);
        assert_eq!(diff_members(&both_live, &only_new), vec![]);
    }
}
