//! An in-memory transport for tests: nodes in one process, with links that
//! can be cut (both ways or one way) and healed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BoxFuture, PeerIdentity, PeerTransport, SharedHandler, TransportError};

/// The in-memory network: every node's handler by address, and the cuts.
#[derive(Default)]
pub struct MemoryNetwork {
    nodes: Mutex<HashMap<String, (String, SharedHandler)>>,
    /// Directed cuts: (from address, to address).
    cuts: Mutex<HashSet<(String, String)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryNetwork {
    pub fn new() -> Arc<MemoryNetwork> {
        Arc::default()
    }

    /// Makes `name` reachable at `addr`.
    pub fn register(&self, addr: &str, name: &str, handler: SharedHandler) {
        lock(&self.nodes).insert(addr.into(), (name.into(), handler));
    }

    /// Takes the node at `addr` off the network (a crash).
    pub fn unregister(&self, addr: &str) {
        lock(&self.nodes).remove(addr);
    }

    pub fn transport(self: &Arc<Self>, addr: &str) -> MemoryTransport {
        MemoryTransport { network: Arc::clone(self), from: addr.into(), links: Arc::default() }
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: &str, b: &str) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Drops everything sent from `from` to `to` (responses included).
    pub fn cut_one_way(&self, from: &str, to: &str) {
        lock(&self.cuts).insert((from.into(), to.into()));
    }

    pub fn heal_all(&self) {
        lock(&self.cuts).clear();
    }

    fn is_cut(&self, from: &str, to: &str) -> bool {
        lock(&self.cuts).contains(&(from.to_string(), to.to_string()))
    }

    fn reach(&self, from: &str, to: &str) -> Option<(PeerIdentity, SharedHandler)> {
        if self.is_cut(from, to) {
            return None;
        }
        let sender = self.identity(from)?;
        let handler = lock(&self.nodes).get(to).map(|(_, handler)| Arc::clone(handler))?;
        Some((sender, handler))
    }

    /// In memory every node is incarnation 0.
    fn identity(&self, addr: &str) -> Option<PeerIdentity> {
        let name = lock(&self.nodes).get(addr).map(|(name, _)| name.clone())?;
        Some(PeerIdentity { name, incarnation: 0 })
    }
}

/// A one-way message on its way, with the handler it goes to.
type Queued = (PeerIdentity, SharedHandler, Vec<u8>, Option<String>);

/// One node's view of the in-memory network.
#[derive(Clone)]
pub struct MemoryTransport {
    network: Arc<MemoryNetwork>,
    from: String,
    /// One ordered queue per destination, as a real link is: one-way
    /// messages are handled later, in order, never inside `send` (so a
    /// handler that answers with a one-way message cannot re-enter the
    /// sender's locks).
    links: Arc<Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<Queued>>>>,
}

impl PeerTransport for MemoryTransport {
    fn request(
        &self,
        to: &str,
        body: Vec<u8>,
        trace: Option<String>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        let (network, from, to) = (Arc::clone(&self.network), self.from.clone(), to.to_string());
        Box::pin(async move {
            let Some((sender, handler)) = network.reach(&from, &to) else {
                return Err(TransportError::Unreachable(to));
            };
            let answer = tokio::time::timeout(timeout, handler.request(&sender, body, trace)).await;
            match answer {
                // The response travels back over the reverse direction.
                Ok(_) if network.is_cut(&to, &from) => Err(TransportError::Timeout(to)),
                Ok(Ok(body)) => Ok(body),
                Ok(Err(message)) => Err(TransportError::Remote { peer: to, message }),
                Err(_) => Err(TransportError::Timeout(to)),
            }
        })
    }

    fn send(&self, to: &str, body: Vec<u8>, trace: Option<String>) -> Result<(), TransportError> {
        let (sender, handler) =
            self.network.reach(&self.from, to).ok_or_else(|| TransportError::Unreachable(to.to_string()))?;
        let mut links = lock(&self.links);
        let link = links.entry(to.to_string()).or_insert_with(|| {
            let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<Queued>();
            tokio::spawn(async move {
                while let Some((sender, handler, body, trace)) = queued.recv().await {
                    handler.one_way(&sender, body, trace);
                }
            });
            queue
        });
        link.send((sender, handler, body, trace)).map_err(|_| TransportError::Closed)
    }

    fn peer_identity(&self, addr: &str) -> Option<PeerIdentity> {
        self.network.identity(addr)
    }
}
