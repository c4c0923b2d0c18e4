//! Starling: a clustered real-time WebSocket server with no external broker.
//!
//! # Layout
//!
//! - [`config`]: typed configuration, defaults, env overrides, validation.
//! - [`protocol`]: the client wire contract v1 (frames, error and close codes); no I/O.
//! - [`rooms`]: the pure room/presence state machine, `apply(command) -> effects`.
//! - [`replicate`]: the one place room commands are ordered and applied;
//!   applied effects go out through the `EffectsObserver` trait.
//! - [`fanout`]: protocol-neutral sequencing, local fan-out, outbound queues,
//!   the session registry.
//! - [`forward`]: publish routing to a room's owner node, and deliveries from it.
//! - [`service`]: the protocol-neutral room service (join, leave, publish,
//!   presence, the join point); every room policy is checked there.
//! - [`cluster`]: gossip, Raft and peer links for a node, and the autopilot.
//! - [`gateway`]: client WebSocket listener, admission, one adapter per wire
//!   protocol (`gateway::starling`).
//! - [`webhooks`]: Pusher webhooks, each event sent by exactly one node.
//! - [`api`]: HTTP server API, health, readiness, metrics, admin dashboard, demo page.
//! - [`auth`]: JWT verification, Origin allow-list, API key.
//! - [`telemetry`]: logging and metrics (and reading them back), recent cluster events.
//! - [`certs`]: `starling cert`: the cluster CA, node certificates, the gossip key.
//! - [`tls`]: PEM certificates and keys, rustls configurations.
//! - [`node`]: the composition root that builds and stops all of the above.
//!
//! Dependencies point one way (`tests/module_graph.rs` checks it):
//! `node` -> `gateway`, `api` -> `service` -> `forward` -> `fanout` ->
//! `replicate` -> `rooms` -> `protocol`; `cluster` wires `forward`,
//! `fanout` and `replicate` to the `starling-cluster` crate; `gateway` ->
//! `webhooks` -> `replicate`; `protocol`,
//! `rooms` and `config` do no I/O.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod fanout;
pub mod forward;
pub mod gateway;
pub mod node;
pub mod protocol;
pub mod replicate;
pub mod rooms;
pub mod service;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
pub mod webhooks;

pub use config::Config;
pub use node::{Node, NodeStats};
