//! `starling-cluster`: gossip membership, Raft and node-to-node links.
//!
//! This crate replicates opaque commands and tracks which nodes are alive;
//! it knows nothing about rooms and must never depend on the `starling`
//! crate.
//!
//! # Layout
//!
//! - [`membership`]: chitchat gossip behind a typed `ClusterMember` and an
//!   Add/Update/Remove change stream; sealed with the cluster's gossip key.
//! - [`raft`]: openraft types, the durable redb log, the state machine over an
//!   application `Applier`.
//! - [`transport`]: node-to-node links (TCP and in-memory) behind one trait.
//! - `faults` (feature `faults`, tests only): link cuts for in-process tests
//!   (wrappers of the real transports).
//! - [`codec`]: the one encoding of node-to-node data (bincode).

#![forbid(unsafe_code)]

pub mod codec;
#[cfg(feature = "faults")]
pub mod faults;
pub mod membership;
pub mod raft;
pub mod transport;
