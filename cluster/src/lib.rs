//! `starling-cluster`: gossip membership, Raft and node-to-node links.
//!
//! Not implemented yet: this build runs single nodes only, and
//! `cluster.bootstrap_expect` must be 1. The crate exists so that the
//! workspace layout of `docs/architecture.md` is in place; it must never
//! depend on the `starling` crate (it replicates opaque commands).

#![forbid(unsafe_code)]
