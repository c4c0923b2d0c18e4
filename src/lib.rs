//! Starling: a clustered real-time WebSocket server with no external broker.
//!
//! # Layout
//!
//! - [`config`]: typed configuration, defaults, env overrides, validation.
//! - [`protocol`]: the client wire contract v1 (frames, error and close codes); no I/O.
//! - [`rooms`]: the pure room/presence state machine, `apply(command) -> effects`.
//! - [`replicate`]: the one place room commands are ordered and applied.
//! - [`cluster`]: gossip, Raft and peer links for a node, and the autopilot.
//! - [`forward`]: publish routing to a room's owner node, and deliveries from it.
//! - [`gateway`]: client WebSocket listener, admission, sessions, fan-out.
//! - [`api`]: HTTP server API, health, readiness, metrics, demo page (warp).
//! - [`auth`]: JWT verification, Origin allow-list, API key.
//! - [`telemetry`]: logging and metrics.
//! - [`certs`]: `starling cert`: the cluster CA, node certificates, the gossip key.
//! - [`tls`]: PEM certificates and keys, rustls configurations.
//! - [`node`]: the composition root that builds and stops all of the above.
//!
//! Dependencies point one way: `node` uses everything; `gateway` and `api`
//! use `protocol`, `rooms`, `auth` and `replicate`; `rooms` uses only ids
//! from `protocol`; `protocol`, `rooms` and `config` do no I/O.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod forward;
pub mod gateway;
pub mod node;
pub mod protocol;
pub mod replicate;
pub mod rooms;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use node::{Node, NodeStats};
