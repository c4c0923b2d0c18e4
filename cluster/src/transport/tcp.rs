//! The TCP transport: one outbound link per peer address, kept open and
//! re-dialled with backoff; an accept loop serving requests from peers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::frame::{read_frame, read_frame_limited, write_frame, Frame, MAX_HELLO_BYTES, PROTOCOL_VERSION};
use super::{BoxFuture, LinkStats, PeerTransport, SharedHandler, TransportError, TransportStats};

#[derive(Debug, Clone)]
pub struct TcpTransportConfig {
    /// Peers with another cluster id are refused at the handshake.
    pub cluster_id: String,
    /// This node's name, sent in the handshake.
    pub node: String,
    /// Frames waiting per outbound link; beyond it sends fail with `QueueFull`.
    pub queue_capacity: usize,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl TcpTransportConfig {
    pub fn new(cluster_id: &str, node: &str) -> TcpTransportConfig {
        TcpTransportConfig {
            cluster_id: cluster_id.into(),
            node: node.into(),
            queue_capacity: 4096,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>>;

/// One outbound link to one peer address.
struct Link {
    queue_tx: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: AtomicU64,
    connected: AtomicBool,
    sent: AtomicU64,
}

pub struct TcpTransport {
    config: TcpTransportConfig,
    links: Mutex<HashMap<String, Arc<Link>>>,
    pub stats: Arc<TransportStats>,
    shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl TcpTransport {
    pub fn new(config: TcpTransportConfig) -> Arc<TcpTransport> {
        Arc::new(TcpTransport {
            config,
            links: Mutex::default(),
            stats: Arc::default(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Stops every link and the accept loop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Whether the outbound link to `addr` is up.
    pub fn is_connected(&self, addr: &str) -> bool {
        lock(&self.links).get(addr).is_some_and(|l| l.connected.load(Ordering::SeqCst))
    }

    fn link(self: &Arc<Self>, addr: &str) -> Arc<Link> {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(addr) {
            return Arc::clone(link);
        }
        let (queue_tx, queue_rx) = mpsc::channel(self.config.queue_capacity);
        let link = Arc::new(Link {
            queue_tx,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
        });
        links.insert(addr.to_string(), Arc::clone(&link));
        tokio::spawn(Arc::clone(self).run_link(addr.to_string(), Arc::clone(&link), queue_rx));
        link
    }

    /// Dials `addr`, handshakes, and moves frames until the link breaks; then
    /// fails what was pending and dials again after a backoff.
    async fn run_link(self: Arc<Self>, addr: String, link: Arc<Link>, mut queue_rx: mpsc::Receiver<Frame>) {
        let mut backoff = self.config.backoff_min;
        loop {
            let connected = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                result = self.dial(&addr) => result,
            };
            let was_connected = connected.is_ok();
            match connected {
                Ok(stream) => {
                    backoff = self.config.backoff_min;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    link.connected.store(true, Ordering::SeqCst);
                    debug!(peer = %addr, "peer link up");
                    self.pump(stream, &link, &mut queue_rx).await;
                    link.connected.store(false, Ordering::SeqCst);
                    debug!(peer = %addr, "peer link down");
                }
                Err(reason) => debug!(peer = %addr, %reason, "peer dial failed"),
            }
            for (_, waiter) in lock(&link.pending).drain() {
                let _ = waiter.send(Err("link lost".into()));
            }
            // What was queued when the link broke is dropped: requests have
            // failed already (Raft retries), and one-way frames to a peer
            // that went away would arrive out of context.
            if was_connected {
                while queue_rx.try_recv().is_ok() {
                    self.stats.dropped_link_lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff + jitter(backoff)) => {}
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    async fn dial(&self, addr: &str) -> Result<TcpStream, String> {
        let connect = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr));
        let mut stream =
            connect.await.map_err(|_| "connect timed out".to_string())?.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster_id: self.config.cluster_id.clone(),
            node: self.config.node.clone(),
        };
        write_frame(&mut stream, &hello).await.map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(self.config.connect_timeout, read_frame(&mut stream))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        match answer {
            Frame::Accepted { .. } => Ok(stream),
            Frame::Refused { reason } => {
                self.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %addr, %reason, "peer refused the handshake");
                Err(reason)
            }
            other => Err(format!("unexpected handshake answer {other:?}")),
        }
    }

    async fn pump(&self, stream: TcpStream, link: &Link, queue_rx: &mut mpsc::Receiver<Frame>) {
        let (mut reader, mut writer) = stream.into_split();
        let write = async {
            while let Some(frame) = queue_rx.recv().await {
                if write_frame(&mut writer, &frame).await.is_err() {
                    return;
                }
                link.sent.fetch_add(1, Ordering::Relaxed);
            }
        };
        let read = async {
            while let Ok(frame) = read_frame(&mut reader).await {
                if let Frame::Response { id, body } = frame {
                    if let Some(waiter) = lock(&link.pending).remove(&id) {
                        let _ = waiter.send(body);
                    }
                }
            }
        };
        tokio::select! {
            _ = write => {}
            _ = read => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Serves peers that dial this node until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, handler: SharedHandler) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, remote)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            let (this, handler) = (Arc::clone(&self), Arc::clone(&handler));
            tokio::spawn(async move {
                if let Err(reason) = this.serve_connection(stream, handler).await {
                    debug!(%remote, %reason, "inbound peer connection ended");
                }
            });
        }
    }

    async fn serve_connection(&self, mut stream: TcpStream, handler: SharedHandler) -> Result<(), String> {
        let hello = tokio::time::timeout(
            self.config.connect_timeout,
            read_frame_limited(&mut stream, MAX_HELLO_BYTES),
        )
        .await
        .map_err(|_| "no hello in time".to_string())?
        .map_err(|e| e.to_string())?;
        let Frame::Hello { version, cluster_id, node } = hello else {
            return Err("first frame is not a hello".into());
        };
        let refusal = if version != PROTOCOL_VERSION {
            Some(format!("protocol version {version} is not {PROTOCOL_VERSION}"))
        } else if cluster_id != self.config.cluster_id {
            Some(format!("cluster id `{cluster_id}` is not `{}`", self.config.cluster_id))
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %node, %reason, "refusing peer");
            let _ = write_frame(&mut stream, &Frame::Refused { reason: reason.clone() }).await;
            return Err(reason);
        }
        write_frame(&mut stream, &Frame::Accepted { node: self.config.node.clone() })
            .await
            .map_err(|e| e.to_string())?;
        info!(peer = %node, "peer connected");
        let (mut reader, mut writer) = stream.into_split();
        let (response_tx, mut response_rx) = mpsc::unbounded_channel::<Frame>();
        let write = async {
            while let Some(frame) = response_rx.recv().await {
                if write_frame(&mut writer, &frame).await.is_err() {
                    return;
                }
            }
        };
        let read = async {
            loop {
                match read_frame(&mut reader).await {
                    Ok(Frame::Request { id, body, traceparent }) => {
                        let (handler, response_tx, from) =
                            (Arc::clone(&handler), response_tx.clone(), node.clone());
                        tokio::spawn(async move {
                            let body = handler.request(&from, body, traceparent).await;
                            let _ = response_tx.send(Frame::Response { id, body });
                        });
                    }
                    Ok(Frame::OneWay { body, traceparent }) => handler.one_way(&node, body, traceparent),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        tokio::select! {
            _ = write => {}
            _ = read => {}
            _ = self.shutdown.cancelled() => {}
        }
        Ok(())
    }
}

fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::random::<f64>() * 0.5)
}

impl PeerTransport for Arc<TcpTransport> {
    fn warm(&self, to: &str) {
        self.link(to);
    }

    fn link_stats(&self) -> Vec<LinkStats> {
        lock(&self.links)
            .iter()
            .map(|(addr, link)| LinkStats {
                addr: addr.clone(),
                connected: link.connected.load(Ordering::SeqCst),
                queued: self.config.queue_capacity - link.queue_tx.capacity(),
                sent: link.sent.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn stats(&self) -> Option<Arc<TransportStats>> {
        Some(Arc::clone(&self.stats))
    }

    fn request(
        &self,
        to: &str,
        body: Vec<u8>,
        trace: Option<String>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        let link = self.link(to);
        let to = to.to_string();
        Box::pin(async move {
            if !link.connected.load(Ordering::SeqCst) {
                return Err(TransportError::Unreachable(to));
            }
            let id = link.next_id.fetch_add(1, Ordering::Relaxed);
            let (waiter_tx, waiter_rx) = oneshot::channel();
            lock(&link.pending).insert(id, waiter_tx);
            let frame = Frame::Request { id, traceparent: trace, body };
            if let Err(error) = link.queue_tx.try_send(frame) {
                lock(&link.pending).remove(&id);
                return Err(match error {
                    mpsc::error::TrySendError::Full(_) => TransportError::QueueFull(to),
                    mpsc::error::TrySendError::Closed(_) => TransportError::Closed,
                });
            }
            match tokio::time::timeout(timeout, waiter_rx).await {
                Ok(Ok(Ok(body))) => Ok(body),
                Ok(Ok(Err(message))) if message == "link lost" => Err(TransportError::Unreachable(to)),
                Ok(Ok(Err(message))) => Err(TransportError::Remote { peer: to, message }),
                Ok(Err(_)) => Err(TransportError::Unreachable(to)),
                Err(_) => {
                    lock(&link.pending).remove(&id);
                    Err(TransportError::Timeout(to))
                }
            }
        })
    }

    fn send(&self, to: &str, body: Vec<u8>, trace: Option<String>) -> Result<(), TransportError> {
        let link = self.link(to);
        link.queue_tx.try_send(Frame::OneWay { traceparent: trace, body }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                TransportError::QueueFull(to.to_string())
            }
            mpsc::error::TrySendError::Closed(_) => TransportError::Closed,
        })
    }
}
