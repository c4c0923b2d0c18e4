//! The client WebSocket gateway: listener, admission (path, Origin, token,
//! capacity) before any upgrade, one session per connection with bounded
//! outbound queues, and local fan-out.
//!
//! The gateway owns connections and what they are allowed to do. It must not
//! change room membership itself: every membership change goes through
//! `replicate`, and the hub only mirrors the applied result.

mod admission;
mod hub;
mod limits;
mod listener;
mod outbound;
mod pending;
mod session;
mod sessions;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use admission::{Admission, Rejection};
pub use hub::{
    wire_member, wire_member_list, DeliveryRefused, FrameSender, Hub, Position, RemoteFanout, SequenceError,
};
pub use listener::serve;
pub use outbound::{OutFrame, Outbound, Published, PushError};
pub use sessions::{SessionEntry, Sessions};

use crate::auth::{JwtVerifier, OriginPolicy};
use crate::config::{Config, NamespacePolicies};
use crate::forward::Router;
use crate::protocol::ConnId;
use crate::replicate::Replicator;
use crate::telemetry::Metrics;

/// Shared state of the client gateway.
pub struct Gateway {
    pub node: Arc<str>,
    pub incarnation: u64,
    /// High bits of every connection id minted here.
    conn_tag: u32,
    next_conn: AtomicU64,
    pub config: Arc<Config>,
    verifier: JwtVerifier,
    origins: OriginPolicy,
    pub namespaces: Arc<NamespacePolicies>,
    pub sessions: Arc<Sessions>,
    pub hub: Arc<Hub>,
    pub replicator: Arc<Replicator>,
    pub router: Arc<Router>,
    /// One permit per open connection (`limits.max_connections`).
    connection_permits: Arc<Semaphore>,
    /// One permit per TCP connection still in its handshake.
    handshake_permits: Arc<Semaphore>,
    /// The same, per client address (`limits.pending_handshakes_per_ip`).
    pending_per_address: Arc<pending::PendingPerAddress>,
    /// Set on shutdown: new upgrades get 503.
    draining: AtomicBool,
    pub metrics: Metrics,
}

/// What `Gateway::new` needs from the composition root.
pub struct GatewayParts {
    pub config: Arc<Config>,
    pub incarnation: u64,
    pub verifier: JwtVerifier,
    pub namespaces: Arc<NamespacePolicies>,
    pub sessions: Arc<Sessions>,
    pub hub: Arc<Hub>,
    pub replicator: Arc<Replicator>,
    pub router: Arc<Router>,
    pub metrics: Metrics,
}

impl Gateway {
    pub fn new(parts: GatewayParts) -> Gateway {
        let config = parts.config;
        Gateway {
            node: Arc::from(config.node.name.as_str()),
            incarnation: parts.incarnation,
            conn_tag: ConnId::tag_of(&config.node.name, parts.incarnation),
            next_conn: AtomicU64::new(1),
            origins: OriginPolicy::new(&config.auth.allowed_origins),
            connection_permits: Arc::new(Semaphore::new(config.limits.max_connections)),
            handshake_permits: Arc::new(Semaphore::new(config.limits.max_pending_handshakes)),
            pending_per_address: pending::PendingPerAddress::new(config.limits.pending_handshakes_per_ip),
            draining: AtomicBool::new(false),
            verifier: parts.verifier,
            namespaces: parts.namespaces,
            sessions: parts.sessions,
            hub: parts.hub,
            replicator: parts.replicator,
            router: parts.router,
            metrics: parts.metrics,
            config,
        }
    }

    fn mint_conn_id(&self) -> ConnId {
        ConnId::new(self.conn_tag, self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Refuses new upgrades from now on (HTTP 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Open client connections.
    pub fn connection_count(&self) -> usize {
        self.sessions.len()
    }
}

/// `now + duration`, capped at 30 years from now: a deadline further away
/// (a huge config value, a token that expires in a billion years) means
/// "never", and adding it to an `Instant` would overflow and panic.
pub(crate) fn deadline_after(duration: Duration) -> tokio::time::Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    tokio::time::Instant::now() + duration.min(FAR_FUTURE)
}
