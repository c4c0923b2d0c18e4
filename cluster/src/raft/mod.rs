//! Raft for the cluster (openraft 0.9): the type configuration, a durable
//! log in redb, and a state machine that applies opaque commands through an
//! [`Applier`] supplied by the application.
//!
//! This module owns the replicated log and its storage; it must not know
//! what a command means. The application encodes its commands to bytes,
//! proposes them, and decodes the responses its `Applier` produced.

mod group;
// openraft's storage traits fix the error type (`StorageError`, large);
// the helpers that build it follow the traits.
#[allow(clippy::result_large_err)]
mod log_store;
mod network;
#[allow(clippy::result_large_err)]
mod state_machine;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use group::{
    AcceptAll, GroupConfig, GroupError, ProposalValidator, ProposeError, RaftGroup, RemoveMemberError,
};
pub use log_store::LogStore;
pub use network::{PeerAnswer, PeerMessage, ProposeRefusal};
pub use state_machine::{Applier, StateMachine};

/// A command as the log carries it: bytes only the application understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<u8>);

/// What applying one command returned, as bytes of the application's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Vec<u8>);

/// A Raft member as the log records it: its name and peer address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    pub peer_addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

openraft::declare_raft_types!(
    /// The Raft types of a Starling cluster.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = PeerNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

/// The stable Raft id of a node: a hash of its name, so a node keeps its
/// identity across restarts without a separate id to configure.
pub fn node_id(name: &str) -> NodeId {
    // FNV-1a, 64 bit: stable across builds and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_ids_are_stable_hashes_of_names() {
        assert_eq!(super::node_id("node-1"), super::node_id("node-1"));
        assert_ne!(super::node_id("node-1"), super::node_id("node-2"));
        // Pinned: changing the hash would change every node's Raft identity.
        assert_eq!(super::node_id(""), 0xcbf2_9ce4_8422_2325);
    }
}
