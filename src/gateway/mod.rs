//! The client WebSocket gateway: listener, admission (path, Origin,
//! authentication, capacity) before any upgrade, and one adapter per wire
//! protocol (`starling/` at `/ws`, `pusher/` at `/app/{key}`) whose
//! sessions call the room service.
//!
//! The gateway owns connections and what they are allowed to do. It must not
//! change room membership or decide room policy itself: both are the room
//! service's (`service`), which every adapter and the HTTP API share.

mod admission;
mod limits;
mod listener;
mod pending;
pub mod pusher;
pub mod starling;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use admission::{Admission, Protocol, Rejection};
pub use listener::serve;

use crate::auth::{JwtVerifier, OriginPolicy};
use crate::config::Config;
use crate::fanout::{FrameEncoder, SessionEntry, Sessions};
use crate::protocol::{CloseCode, ConnId};
use crate::service::RoomService;
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
    pub sessions: Arc<Sessions>,
    pub service: Arc<RoomService>,
    /// The Starling protocol's frames, shared by its sessions.
    starling_encoder: Arc<dyn FrameEncoder>,
    /// The Pusher apps of `[[apps]]` and their protocol's encoder.
    pub pusher: Arc<pusher::PusherApps>,
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
    pub sessions: Arc<Sessions>,
    pub service: Arc<RoomService>,
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
            sessions: parts.sessions,
            service: parts.service,
            starling_encoder: Arc::new(starling::StarlingEncoder),
            pusher: Arc::new(pusher::PusherApps::new(&config.node.name, &config.apps)),
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

/// A session listed in `Sessions` and counted in the connections gauge.
/// Dropping it undoes both, at the end of the session or while unwinding
/// from a panic, so neither can leak.
pub(crate) struct Registration {
    gateway: Arc<Gateway>,
    conn: ConnId,
}

impl Registration {
    pub(crate) fn new(gateway: &Arc<Gateway>, entry: &Arc<SessionEntry>) -> Registration {
        gateway.sessions.insert(Arc::clone(entry));
        gateway.metrics.connections.increment(1.0);
        gateway.metrics.connections_opened.increment(1);
        if gateway.is_draining() {
            // Admitted just before the drain began, registered after the
            // drain listed the sessions to close: close it here.
            entry.outbound.close(CloseCode::Restarting);
        }
        Registration { gateway: Arc::clone(gateway), conn: entry.conn }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.gateway.sessions.remove(self.conn);
        self.gateway.metrics.connections.decrement(1.0);
    }
}

/// `now + duration`, capped at 30 years from now: a deadline further away
/// (a huge config value, a token that expires in a billion years) means
/// "never", and adding it to an `Instant` would overflow and panic.
pub(crate) fn deadline_after(duration: Duration) -> tokio::time::Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    tokio::time::Instant::now() + duration.min(FAR_FUTURE)
}
