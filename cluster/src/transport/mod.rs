//! Node-to-node links: request/response and one-way messages between named
//! nodes, with a versioned handshake, bounded queues and reconnects.
//!
//! Bodies are bytes encoded by the layer above (Raft RPCs, forwarded
//! publishes); this module moves them and must not look inside. There is one
//! [`PeerTransport`] trait with a TCP implementation ([`TcpTransport`]) and
//! an in-memory one ([`MemoryNetwork`]) whose links tests can cut and heal.

mod frame;
mod memory;
mod tcp;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use frame::{
    decode_frame, speaks, version_refusal, Frame, MAX_FRAME_BYTES, MAX_HELLO_BYTES, OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
pub use memory::{MemoryNetwork, MemoryTransport};
pub use tcp::{TcpTransport, TcpTransportConfig};
pub use tls::{certificate_names, PeerTls, PeerTlsError};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a message did not get through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No link to the peer right now (connecting, refused, cut).
    #[error("peer {0} is unreachable")]
    Unreachable(String),
    /// The peer's send queue is full; the message was dropped and counted.
    #[error("send queue to {0} is full")]
    QueueFull(String),
    #[error("no response from {0} in time")]
    Timeout(String),
    /// The peer's handler answered with an error.
    #[error("peer {peer} failed the request: {message}")]
    Remote { peer: String, message: String },
    #[error("transport is shut down")]
    Closed,
}

/// Who is on the other end of a link, as its handshake said. With TLS the
/// name is bound to the peer's certificate (signed by the cluster CA, valid
/// for that name); the incarnation is the peer's boot generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub name: String,
    pub incarnation: u64,
}

/// What a node does with messages from its peers.
pub trait PeerHandler: Send + Sync + 'static {
    /// Answers a request from `from`; an `Err` reaches the caller as
    /// [`TransportError::Remote`].
    /// `trace` is the W3C `traceparent` the frame carried, if any.
    fn request(
        &self,
        from: &PeerIdentity,
        body: Vec<u8>,
        trace: Option<String>,
    ) -> BoxFuture<Result<Vec<u8>, String>>;
    /// Takes a one-way message from `from`.
    fn one_way(&self, from: &PeerIdentity, body: Vec<u8>, trace: Option<String>);
}

/// Sending to peers, by peer address. `trace` is a W3C `traceparent`
/// carried in the frame beside the body, so a trace follows the message to
/// the peer (None: the message is not part of a sampled trace).
pub trait PeerTransport: Send + Sync + 'static {
    /// Sends a request and waits (at most `timeout`) for the response.
    fn request(
        &self,
        to: &str,
        body: Vec<u8>,
        trace: Option<String>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, TransportError>>;
    /// Queues a one-way message; never waits. While the link is (re)connecting
    /// messages wait in its bounded queue; those queued when a link breaks
    /// are dropped.
    fn send(&self, to: &str, body: Vec<u8>, trace: Option<String>) -> Result<(), TransportError>;
    /// Opens the link to `to` ahead of the first message (a no-op where
    /// there is nothing to open).
    fn warm(&self, _to: &str) {}
    /// The state of every outbound link, for metrics (empty where links
    /// have no state).
    fn link_stats(&self) -> Vec<LinkStats> {
        Vec::new()
    }
    /// Counters of the whole transport, for metrics.
    fn stats(&self) -> Option<Arc<TransportStats>> {
        None
    }
    /// Who answered the handshake of the link to `addr`, while it is up
    /// (where links have no handshake: whoever is registered there).
    fn peer_identity(&self, addr: &str) -> Option<PeerIdentity>;
    /// The peer protocol version the link to `addr` runs at, while it is
    /// up: [`PROTOCOL_VERSION`], or the previous one for a peer that speaks
    /// only that. A message a version introduced goes only to peers whose
    /// link runs at that version or later.
    fn peer_version(&self, addr: &str) -> Option<u32> {
        self.peer_identity(addr).map(|_| PROTOCOL_VERSION)
    }
    /// The peer that last answered at `addr`, when its link broke and the
    /// address then refused a new connection: its process is gone. `None`
    /// while the link is up, or could be, or where links have no state.
    fn gone(&self, _addr: &str) -> Option<PeerIdentity> {
        None
    }
    /// Changes each time a link finds its peer's process gone (see
    /// [`PeerTransport::gone`]), so that the gone can be acted on at once;
    /// `None` where links have no state.
    fn gone_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// One outbound link as metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStats {
    /// The peer address the link dials.
    pub addr: String,
    pub connected: bool,
    /// Frames waiting in the link's queue.
    pub queued: usize,
    /// Frames written to the link since it was created.
    pub sent: u64,
}

/// Counts a transport keeps for metrics.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub dropped_queue_full: std::sync::atomic::AtomicU64,
    /// Frames that were queued when their link broke, dropped unsent.
    pub dropped_link_lost: std::sync::atomic::AtomicU64,
    pub handshakes_refused: std::sync::atomic::AtomicU64,
    pub connects: std::sync::atomic::AtomicU64,
    /// Inbound connections that failed the TLS handshake (no or a foreign
    /// certificate, plain TCP, garbage).
    pub rejected_tls: std::sync::atomic::AtomicU64,
    /// Handshakes refused after TLS: a bad or late hello, another version
    /// or cluster id, a name the certificate is not valid for.
    pub rejected_handshake: std::sync::atomic::AtomicU64,
}

/// The handler shared by all links of one node.
pub type SharedHandler = Arc<dyn PeerHandler>;
