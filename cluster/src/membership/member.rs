//! `ClusterMember`: what one node tells the others about itself through gossip.
//!
//! Owns the gossip key names and how each field is encoded in chitchat's
//! key-value state; no other file knows them. Must not touch the network or
//! hold state: it only converts between `ClusterMember` and chitchat types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;

use chitchat::{ChitchatId, NodeState};
use tracing::debug;

// The name, the incarnation and the gossip address travel in the `ChitchatId`;
// everything else is a key in the node's own key-value state.
const PEER_ADDR_KEY: &str = "starling.peer_addr";
const CLIENT_ADDR_KEY: &str = "starling.client_addr";
const API_ADDR_KEY: &str = "starling.api_addr";
const ROLE_KEY: &str = "starling.role";
const CONNECTIONS_KEY: &str = "starling.connections";

/// One node of the cluster as seen through gossip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMember {
    /// The node's name (`node.name`), unique in the cluster and stable across restarts.
    pub name: String,
    /// Distinguishes successive runs of the same node; it must grow on every restart
    /// (boot time in milliseconds is the usual choice).
    pub incarnation: u64,
    /// Node-to-node links (Raft and forwarding).
    pub peer_addr: SocketAddr,
    /// Client WebSocket listener.
    pub client_addr: SocketAddr,
    /// HTTP API, health and metrics listener.
    pub api_addr: SocketAddr,
    /// The address peers gossip with (advertised, which may differ from the bind address).
    pub gossip_addr: SocketAddr,
    /// Free-form role such as `"ready"` or `"draining"`, owned by the node.
    pub role: String,
    /// Client connections currently open on the node.
    pub connections: u64,
}

impl ClusterMember {
    /// The chitchat identity of this member: a restarted node is a new incarnation.
    pub(super) fn chitchat_id(&self) -> ChitchatId {
        ChitchatId::new(self.name.as_str(), self.incarnation, self.gossip_addr)
    }

    /// The key-values this member publishes about itself when gossip starts.
    pub(super) fn key_values(&self) -> Vec<(String, String)> {
        vec![
            (PEER_ADDR_KEY.to_string(), self.peer_addr.to_string()),
            (CLIENT_ADDR_KEY.to_string(), self.client_addr.to_string()),
            (API_ADDR_KEY.to_string(), self.api_addr.to_string()),
            (ROLE_KEY.to_string(), self.role.clone()),
            (CONNECTIONS_KEY.to_string(), self.connections.to_string()),
        ]
    }

    /// Reads a member from a node's gossip state, or `None` (with a debug log) when a key
    /// is missing or unparsable, for instance while its state is still arriving.
    pub(super) fn from_node_state(node_state: &NodeState) -> Option<ClusterMember> {
        let chitchat_id = node_state.chitchat_id();
        Some(ClusterMember {
            name: chitchat_id.node_id.to_string(),
            incarnation: chitchat_id.generation_id,
            peer_addr: parse_key(node_state, PEER_ADDR_KEY)?,
            client_addr: parse_key(node_state, CLIENT_ADDR_KEY)?,
            api_addr: parse_key(node_state, API_ADDR_KEY)?,
            gossip_addr: chitchat_id.gossip_advertise_addr,
            role: parse_key(node_state, ROLE_KEY)?,
            connections: parse_key(node_state, CONNECTIONS_KEY)?,
        })
    }
}

/// Publishes a new role in the node's own gossip state.
pub(super) fn set_role(own_state: &mut NodeState, role: &str) {
    own_state.set(ROLE_KEY, role);
}

/// Publishes a new connection count in the node's own gossip state.
pub(super) fn set_connections(own_state: &mut NodeState, connections: u64) {
    own_state.set(CONNECTIONS_KEY, connections);
}

/// The parsable members among chitchat's live nodes, one per name.
///
/// Right after a restart both incarnations of a node can be live for a few
/// seconds; the highest incarnation is the one that counts.
pub(super) fn members_by_name(
    live_nodes: &BTreeMap<ChitchatId, NodeState>,
) -> BTreeMap<String, ClusterMember> {
    latest_incarnations(live_nodes.values().filter_map(ClusterMember::from_node_state))
}

/// Keeps the highest incarnation of each name.
pub(super) fn latest_incarnations(
    members: impl IntoIterator<Item = ClusterMember>,
) -> BTreeMap<String, ClusterMember> {
    let mut by_name: BTreeMap<String, ClusterMember> = BTreeMap::new();
    for member in members {
        let is_newer = by_name.get(&member.name).is_none_or(|known| known.incarnation < member.incarnation);
        if is_newer {
            by_name.insert(member.name.clone(), member);
        }
    }
    by_name
}

fn parse_key<T: FromStr>(node_state: &NodeState, key: &'static str) -> Option<T> {
    let chitchat_id = node_state.chitchat_id();
    let Some(raw) = node_state.get(key) else {
        debug!(
            node = %chitchat_id.node_id,
            incarnation = chitchat_id.generation_id,
            key,
            "skipping gossip node: key missing"
        );
        return None;
    };
    match raw.parse() {
        Ok(value) => Some(value),
        Err(_) => {
            debug!(
                node = %chitchat_id.node_id,
                incarnation = chitchat_id.generation_id,
                key,
                value = raw,
                "skipping gossip node: key unparsable"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `NodeState::for_test` is node `test-node`, generation 0, gossiping on 127.0.0.1:7280.
    fn test_node_member() -> ClusterMember {
        ClusterMember {
            name: "test-node".to_string(),
            incarnation: 0,
            peer_addr: "127.0.0.1:7801".parse().unwrap(),
            client_addr: "127.0.0.1:7601".parse().unwrap(),
            api_addr: "127.0.0.1:7701".parse().unwrap(),
            gossip_addr: "127.0.0.1:7280".parse().unwrap(),
            role: "ready".to_string(),
            connections: 12,
        }
    }

    fn member(name: &str, incarnation: u64) -> ClusterMember {
        ClusterMember { name: name.to_string(), incarnation, ..test_node_member() }
    }

    #[test]
    fn member_survives_a_round_trip_through_gossip_keys() {
        let member = test_node_member();
        let mut node_state = NodeState::for_test();
        for (key, value) in member.key_values() {
            node_state.set(key, value);
        }
        assert_eq!(ClusterMember::from_node_state(&node_state), Some(member));
    }

    #[test]
    fn role_and_connections_updates_are_read_back() {
        let mut node_state = NodeState::for_test();
        for (key, value) in test_node_member().key_values() {
            node_state.set(key, value);
        }
        set_role(&mut node_state, "draining");
        set_connections(&mut node_state, 7);
        let read_back = ClusterMember::from_node_state(&node_state).unwrap();
        assert_eq!((read_back.role.as_str(), read_back.connections), ("draining", 7));
    }

    #[test]
    fn node_with_a_missing_key_is_skipped() {
        let mut node_state = NodeState::for_test();
        for (key, value) in test_node_member().key_values() {
            if key != CLIENT_ADDR_KEY {
                node_state.set(key, value);
            }
        }
        assert_eq!(ClusterMember::from_node_state(&node_state), None);
    }

    #[test]
    fn node_with_an_unparsable_key_is_skipped() {
        let mut node_state = NodeState::for_test();
        for (key, value) in test_node_member().key_values() {
            node_state.set(key, value);
        }
        node_state.set(CONNECTIONS_KEY, "many");
        assert_eq!(ClusterMember::from_node_state(&node_state), None);
    }

    #[test]
    fn highest_incarnation_of_a_name_wins() {
        let by_name = latest_incarnations([member("a", 2), member("b", 1), member("a", 5), member("a", 3)]);
        let kept: Vec<(&str, u64)> = by_name.values().map(|m| (m.name.as_str(), m.incarnation)).collect();
        assert_eq!(kept, vec![("a", 5), ("b", 1)]);
    }
}
