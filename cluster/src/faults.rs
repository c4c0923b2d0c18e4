//! Link faults for tests: cut, one-way cut and heal the peer links and the
//! gossip of nodes running in one process, through wrappers around the real
//! transports.
//!
//! Only the test harness builds these; a node started without faults uses
//! the plain TCP and UDP transports.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;

use crate::transport::{BoxFuture, PeerTransport, TransportError};

/// Directed cuts between addresses (peer and gossip addresses alike).
#[derive(Debug, Default)]
pub struct LinkFaults {
    cuts: Mutex<HashSet<(SocketAddr, SocketAddr)>>,
}

impl LinkFaults {
    pub fn new() -> Arc<LinkFaults> {
        Arc::default()
    }

    /// Drops everything `from` sends to `to`.
    pub fn cut_one_way(&self, from: SocketAddr, to: SocketAddr) {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner()).insert((from, to));
    }

    pub fn heal_all(&self) {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn is_cut(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner()).contains(&(from, to))
    }

    fn is_cut_str(&self, from: SocketAddr, to: &str) -> bool {
        to.parse().is_ok_and(|to| self.is_cut(from, to))
    }
}

/// A peer transport that honours the cuts of `faults` for messages from `me`.
pub struct FaultyPeerTransport {
    pub inner: Arc<dyn PeerTransport>,
    pub me: SocketAddr,
    pub faults: Arc<LinkFaults>,
}

impl PeerTransport for FaultyPeerTransport {
    fn request(
        &self,
        to: &str,
        body: Vec<u8>,
        trace: Option<String>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        if self.faults.is_cut_str(self.me, to) {
            let to = to.to_string();
            return Box::pin(async move { Err(TransportError::Unreachable(to)) });
        }
        let (faults, me, to) = (Arc::clone(&self.faults), self.me, to.to_string());
        let answer = self.inner.request(&to, body, trace, timeout);
        Box::pin(async move {
            let answer = answer.await;
            // The answer travels back over the reverse direction.
            if faults.is_cut_str(me, &to) || to.parse().is_ok_and(|addr| faults.is_cut(addr, me)) {
                return Err(TransportError::Timeout(to));
            }
            answer
        })
    }

    fn send(&self, to: &str, body: Vec<u8>, trace: Option<String>) -> Result<(), TransportError> {
        if self.faults.is_cut_str(self.me, to) {
            return Err(TransportError::Unreachable(to.to_string()));
        }
        self.inner.send(to, body, trace)
    }

    fn warm(&self, to: &str) {
        self.inner.warm(to);
    }

    fn link_stats(&self) -> Vec<crate::transport::LinkStats> {
        self.inner.link_stats()
    }

    fn stats(&self) -> Option<Arc<crate::transport::TransportStats>> {
        self.inner.stats()
    }

    fn gone(&self, addr: &str) -> Option<crate::transport::PeerIdentity> {
        self.inner.gone(addr)
    }

    fn peer_identity(&self, addr: &str) -> Option<crate::transport::PeerIdentity> {
        self.inner.peer_identity(addr)
    }

    fn peer_version(&self, addr: &str) -> Option<u32> {
        self.inner.peer_version(addr)
    }
}

/// A gossip transport whose sockets drop datagrams along cut links.
pub struct FaultyGossip {
    pub inner: Box<dyn Transport>,
    pub faults: Arc<LinkFaults>,
}

#[async_trait::async_trait]
impl Transport for FaultyGossip {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        let me = inner.local_addr()?;
        Ok(Box::new(FaultySocket { inner, me, faults: Arc::clone(&self.faults) }))
    }
}

struct FaultySocket {
    inner: Box<dyn Socket>,
    me: SocketAddr,
    faults: Arc<LinkFaults>,
}

#[async_trait::async_trait]
impl Socket for FaultySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.me)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        if self.faults.is_cut(self.me, to) {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = self.inner.recv().await?;
            if !self.faults.is_cut(outcome.from_addr, self.me) {
                return Ok(outcome);
            }
        }
    }
}
