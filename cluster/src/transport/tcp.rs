//! The TCP transport: one outbound link per peer address, kept open and
//! re-dialled with backoff; an accept loop serving requests from peers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::frame::{
    encode_frame, read_frame, read_frame_limited, speaks, version_refusal, write_frame, Frame,
    MAX_HELLO_BYTES, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use super::tls::{certificate_names, PeerTls};
use super::{
    BoxFuture, LinkStats, PeerIdentity, PeerTransport, SharedHandler, TransportError, TransportStats,
};

#[derive(Debug, Clone)]
pub struct TcpTransportConfig {
    /// Peers with another cluster id are refused at the handshake.
    pub cluster_id: String,
    /// This node's name, sent in the handshake.
    pub node: String,
    /// This node's incarnation (boot time), sent in the handshake so that
    /// peers know which incarnation of `node` a link speaks for.
    pub incarnation: u64,
    /// Mutual TLS on every link; `None` only for an insecure (loopback) cluster.
    pub tls: Option<PeerTls>,
    /// Frames waiting per outbound link; beyond it sends fail with `QueueFull`.
    pub queue_capacity: usize,
    /// Requests from one inbound link being handled at once; the link is
    /// not read further until one finishes.
    pub max_inbound_requests: usize,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl TcpTransportConfig {
    pub fn new(cluster_id: &str, node: &str) -> TcpTransportConfig {
        TcpTransportConfig {
            cluster_id: cluster_id.into(),
            node: node.into(),
            incarnation: 0,
            tls: None,
            queue_capacity: 4096,
            max_inbound_requests: 256,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Why a dial failed; `refused`: nothing listens at the address.
struct DialError {
    refused: bool,
    reason: String,
}

impl From<String> for DialError {
    fn from(reason: String) -> DialError {
        DialError { refused: false, reason }
    }
}

impl From<&str> for DialError {
    fn from(reason: &str) -> DialError {
        DialError { refused: false, reason: reason.into() }
    }
}

/// A link's byte stream: plain TCP or TLS over TCP.
trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerStream for T {}
type BoxStream = Box<dyn PeerStream>;

/// Bytes of frames written to a link in one write, at most (more frames
/// waiting are written in the next one).
const WRITE_BATCH_BYTES: usize = 64 << 10;

/// Inbound peer connections in their TLS handshake and hello at once, at most.
const MAX_PENDING_PEER_HANDSHAKES: usize = 64;

/// What a refused peer is told: never what this node expected.
const REFUSED: &str = "handshake refused";

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>>;

/// One outbound link to one peer address.
struct Link {
    queue_tx: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: AtomicU64,
    connected: AtomicBool,
    sent: AtomicU64,
    /// Who answered the handshake of the current connection (its name
    /// bound to its certificate when TLS is on).
    identity: Mutex<Option<PeerIdentity>>,
    /// The peer protocol version the current connection runs at.
    version: AtomicU32,
    /// Who answered last, once its connection broke and the address then
    /// refused a new connection: that process is gone (see `gone`).
    gone: Mutex<Option<PeerIdentity>>,
}

pub struct TcpTransport {
    config: TcpTransportConfig,
    links: Mutex<HashMap<String, Arc<Link>>>,
    pub stats: Arc<TransportStats>,
    shutdown: CancellationToken,
    /// Counts links that found their peer's process gone.
    gone_events: tokio::sync::watch::Sender<u64>,
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
            gone_events: tokio::sync::watch::Sender::new(0),
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
            identity: Mutex::default(),
            version: AtomicU32::new(PROTOCOL_VERSION),
            gone: Mutex::default(),
        });
        links.insert(addr.to_string(), Arc::clone(&link));
        tokio::spawn(Arc::clone(self).run_link(addr.to_string(), Arc::clone(&link), queue_rx));
        link
    }

    /// Dials `addr`, handshakes, and moves frames until the link breaks; then
    /// fails what was pending and dials again after a backoff.
    async fn run_link(self: Arc<Self>, addr: String, link: Arc<Link>, mut queue_rx: mpsc::Receiver<Frame>) {
        let mut backoff = self.config.backoff_min;
        // The peer of the last connection, until a new one is up.
        let mut last: Option<PeerIdentity> = None;
        loop {
            let connected = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                result = self.dial(&addr) => result,
            };
            let was_connected = connected.is_ok();
            match connected {
                Ok((stream, identity, version)) => {
                    backoff = self.config.backoff_min;
                    link.version.store(version, Ordering::SeqCst);
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    debug!(peer = %addr, node = %identity.name, version, "peer link up");
                    *lock(&link.gone) = None;
                    last = Some(identity.clone());
                    *lock(&link.identity) = Some(identity);
                    link.connected.store(true, Ordering::SeqCst);
                    self.pump(stream, &link, &mut queue_rx).await;
                    link.connected.store(false, Ordering::SeqCst);
                    *lock(&link.identity) = None;
                    debug!(peer = %addr, "peer link down");
                }
                Err(DialError { refused, reason }) => {
                    debug!(peer = %addr, %reason, "peer dial failed");
                    // The connection broke and nothing listens there any
                    // more: the process is gone (a paused or starved
                    // process keeps its socket; a partition times out).
                    if let (true, Some(peer)) = (refused, &last) {
                        let found = lock(&link.gone).replace(peer.clone()).is_none();
                        if found {
                            self.gone_events.send_modify(|count| *count += 1);
                        }
                    }
                }
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

    /// Dials `addr` at this node's peer protocol version and, if the peer
    /// refuses that version, at the previous one: a peer not yet upgraded
    /// (or already upgraded further) gets the newest version both speak.
    /// Every new connection starts from the newest again, so a link to a
    /// peer that was upgraded meanwhile comes back at its version.
    async fn dial(&self, addr: &str) -> Result<(BoxStream, PeerIdentity, u32), DialError> {
        let mut version = PROTOCOL_VERSION;
        loop {
            match self.dial_at(addr, version).await {
                Ok((stream, identity)) => return Ok((stream, identity, version)),
                Err(error)
                    if error.reason == version_refusal(version) && version > OLDEST_PROTOCOL_VERSION =>
                {
                    debug!(peer = %addr, version, "peer does not speak this peer protocol version; trying the previous one");
                    version -= 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn dial_at(&self, addr: &str, version: u32) -> Result<(BoxStream, PeerIdentity), DialError> {
        let timeout = self.config.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| DialError::from("connect timed out".to_string()))?
            .map_err(|e| DialError {
                refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let (mut stream, peer_cert): (BoxStream, _) = match &self.config.tls {
            Some(tls) => {
                let connect = tls.connector().connect(PeerTls::dial_server_name(), tcp);
                let stream = tokio::time::timeout(timeout, connect)
                    .await
                    .map_err(|_| "tls handshake timed out".to_string())?
                    .map_err(|e| format!("tls handshake failed: {e}"))?;
                let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                (Box::new(stream), cert)
            }
            None => (Box::new(tcp), None),
        };
        let hello = Frame::Hello {
            version,
            cluster_id: self.config.cluster_id.clone(),
            node: self.config.node.clone(),
            incarnation: self.config.incarnation,
        };
        write_frame(&mut stream, &hello).await.map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(timeout, read_frame_limited(&mut stream, MAX_HELLO_BYTES))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        match answer {
            Frame::Accepted { node, incarnation } => {
                if self.config.tls.is_some() && !peer_cert.is_some_and(|cert| certificate_names(&cert, &node))
                {
                    self.stats.rejected_handshake.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %addr, claimed = %node, "peer's certificate is not valid for the name it claims");
                    return Err("peer certificate does not match its name".into());
                }
                Ok((stream, PeerIdentity { name: node, incarnation }))
            }
            Frame::Refused { reason } => {
                self.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                if reason == version_refusal(version) && version > OLDEST_PROTOCOL_VERSION {
                    debug!(peer = %addr, %reason, "peer refused the handshake");
                } else {
                    warn!(peer = %addr, %reason, "peer refused the handshake");
                }
                Err(reason.into())
            }
            _ => Err("unexpected handshake answer".into()),
        }
    }

    async fn pump(&self, stream: BoxStream, link: &Link, queue_rx: &mut mpsc::Receiver<Frame>) {
        let (reader, mut writer) = tokio::io::split(stream);
        let write = write_batched(&mut writer, queue_rx, |frame, out| {
            if encode_frame(&frame, out).is_ok() {
                link.sent.fetch_add(1, Ordering::Relaxed);
            }
        });
        let read = async {
            let mut reader = BufReader::new(reader);
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

    /// Serves peers that dial this node until shutdown. At most
    /// `MAX_PENDING_PEER_HANDSHAKES` connections are in their handshake at
    /// once (each for at most `connect_timeout`); more are closed at once.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, handler: SharedHandler) {
        let pending = Arc::new(Semaphore::new(MAX_PENDING_PEER_HANDSHAKES));
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, remote)) = accepted else { continue };
            let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                self.stats.rejected_handshake.fetch_add(1, Ordering::Relaxed);
                debug!(%remote, "too many peer handshakes under way; closing");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (this, handler) = (Arc::clone(&self), Arc::clone(&handler));
            tokio::spawn(async move {
                if let Err(reason) = this.serve_connection(stream, handler, permit).await {
                    debug!(%remote, %reason, "inbound peer connection ended");
                }
            });
        }
    }

    /// Runs the acceptor's side of the handshake: TLS (client certificate
    /// required), then the hello, whose node name must be one the
    /// certificate is valid for. Returns the stream and who is on it.
    async fn accept_peer(&self, tcp: TcpStream) -> Result<(BoxStream, PeerIdentity), String> {
        let timeout = self.config.connect_timeout;
        let (mut stream, peer_cert): (BoxStream, _) = match &self.config.tls {
            Some(tls) => {
                let accepted = tokio::time::timeout(timeout, tls.acceptor().accept(tcp)).await;
                let stream = match accepted {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        self.stats.rejected_tls.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("tls handshake failed: {error}"));
                    }
                    Err(_) => {
                        self.stats.rejected_tls.fetch_add(1, Ordering::Relaxed);
                        return Err("tls handshake timed out".into());
                    }
                };
                let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                (Box::new(stream), cert)
            }
            None => (Box::new(tcp), None),
        };
        let hello = tokio::time::timeout(timeout, read_frame_limited(&mut stream, MAX_HELLO_BYTES)).await;
        let hello = match hello {
            Ok(Ok(hello)) => hello,
            Ok(Err(error)) => {
                self.stats.rejected_handshake.fetch_add(1, Ordering::Relaxed);
                return Err(format!("bad hello: {error}"));
            }
            Err(_) => {
                self.stats.rejected_handshake.fetch_add(1, Ordering::Relaxed);
                return Err("no hello in time".into());
            }
        };
        let Frame::Hello { version, cluster_id, node, incarnation } = hello else {
            self.stats.rejected_handshake.fetch_add(1, Ordering::Relaxed);
            return Err("first frame is not a hello".into());
        };
        let refusal = if !speaks(version) {
            Some(version_refusal(version))
        } else if cluster_id != self.config.cluster_id {
            Some("another cluster id".to_string())
        } else if self.config.tls.is_some() && !peer_cert.is_some_and(|cert| certificate_names(&cert, &node))
        {
            Some("certificate not valid for the claimed name".to_string())
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            self.stats.rejected_handshake.fetch_add(1, Ordering::Relaxed);
            warn!(claimed = %node, %reason, "refusing a peer");
            // The peer learns only the version rule, never the expected id or name.
            let told = if !speaks(version) { reason.clone() } else { REFUSED.to_string() };
            let _ = write_frame(&mut stream, &Frame::Refused { reason: told }).await;
            return Err(reason);
        }
        let accepted =
            Frame::Accepted { node: self.config.node.clone(), incarnation: self.config.incarnation };
        write_frame(&mut stream, &accepted).await.map_err(|e| e.to_string())?;
        Ok((stream, PeerIdentity { name: node, incarnation }))
    }

    async fn serve_connection(
        &self,
        tcp: TcpStream,
        handler: SharedHandler,
        handshake_permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), String> {
        let (stream, peer) = self.accept_peer(tcp).await?;
        drop(handshake_permit);
        info!(peer = %peer.name, incarnation = peer.incarnation, "peer connected");
        let (reader, mut writer) = tokio::io::split(stream);
        // Every response holds a permit until written: at most
        // `max_inbound_requests` are handled or waiting to be written.
        let permits = Arc::new(Semaphore::new(self.config.max_inbound_requests));
        // Never full: a sender holds one of as many permits as it has slots.
        let (response_tx, mut response_rx) =
            mpsc::channel::<(Frame, tokio::sync::OwnedSemaphorePermit)>(self.config.max_inbound_requests);
        let write = write_batched(&mut writer, &mut response_rx, |(frame, _permit), out| {
            let _ = encode_frame(&frame, out);
        });
        let read = async {
            let mut reader = BufReader::new(reader);
            loop {
                match read_frame(&mut reader).await {
                    Ok(Frame::Request { id, body, traceparent }) => {
                        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
                        let (handler, response_tx, from) =
                            (Arc::clone(&handler), response_tx.clone(), peer.clone());
                        tokio::spawn(async move {
                            let body = handler.request(&from, body, traceparent).await;
                            let _ = response_tx.send((Frame::Response { id, body }, permit)).await;
                        });
                    }
                    Ok(Frame::OneWay { body, traceparent }) => handler.one_way(&peer, body, traceparent),
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

/// Writes what `queue_rx` yields until it closes or a write fails; items
/// queued meanwhile go out in the same write (one TLS record, one syscall),
/// up to `WRITE_BATCH_BYTES`.
async fn write_batched<W: AsyncWrite + Unpin, T>(
    writer: &mut W,
    queue_rx: &mut mpsc::Receiver<T>,
    mut encode: impl FnMut(T, &mut Vec<u8>),
) {
    let mut out = Vec::with_capacity(WRITE_BATCH_BYTES);
    while let Some(first) = queue_rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            encode(item, &mut out);
            if out.len() < WRITE_BATCH_BYTES {
                next = queue_rx.try_recv().ok();
            }
        }
        if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        out.clear();
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

    fn gone_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.gone_events.subscribe())
    }

    fn gone(&self, addr: &str) -> Option<PeerIdentity> {
        let link = lock(&self.links).get(addr).cloned()?;
        let gone = lock(&link.gone).clone();
        gone
    }

    fn peer_identity(&self, addr: &str) -> Option<PeerIdentity> {
        let link = lock(&self.links).get(addr).cloned()?;
        if !link.connected.load(Ordering::SeqCst) {
            return None;
        }
        let identity = lock(&link.identity).clone();
        identity
    }

    fn peer_version(&self, addr: &str) -> Option<u32> {
        let link = lock(&self.links).get(addr).cloned()?;
        link.connected.load(Ordering::SeqCst).then(|| link.version.load(Ordering::SeqCst))
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
