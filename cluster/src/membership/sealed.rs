//! Sealed gossip: chitchat over UDP, every datagram authenticated and
//! encrypted with the cluster's gossip key (ARCHITECTURE.md section 5).
//!
//! Owns the datagram format, the [`SealedUdpTransport`] that chitchat opens
//! instead of its plain `UdpTransport`, and the [`GossipStats`] it counts
//! into. A datagram is
//!
//! ```text
//! nonce (24 random bytes) | XChaCha20-Poly1305 ciphertext of one chitchat envelope | tag (16 bytes)
//! ```
//!
//! with associated data `starling-gossip-v1`, a zero byte and the cluster id,
//! so the same key used by two clusters does not mix them. On receipt a
//! datagram that fails authentication (or is too short to carry a tag) is
//! dropped before chitchat decompresses or parses any of it; an authenticated
//! one whose compressed blocks could inflate past 8 MiB, or that chitchat
//! cannot parse, is dropped too. Each drop is counted and logged at `debug`
//! only, so a flood does not flood the logs (chitchat itself warns about an
//! authenticated datagram it cannot parse: only a key holder can cause that).
//! Must not know about membership or the `metrics` crate: the node reads the
//! counters at scrape time.
//!
//! chitchat encodes and decodes the envelopes, on a loopback socket of its
//! own (see `envelope_codec`): no unauthenticated byte ever reaches it from
//! the network.
//!
//! # Layout
//!
//! - `key`: `GossipKey`, parsed from and written as base64.
//! - `inflation`: the bound on what an authenticated plaintext may inflate to.
//! - `envelope_codec`: chitchat's envelope encoding, reached through loopback
//!   because chitchat 0.13 keeps it private.

mod envelope_codec;
mod inflation;
mod key;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use tracing::{debug, warn};

use self::envelope_codec::{Decoded, EnvelopeCodec, MAX_ENCODED_LEN};
pub use self::key::{GossipKey, GossipKeyError};

/// Prefix of the associated data; the cluster id follows it.
const DOMAIN: &[u8] = b"starling-gossip-v1\0";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The largest datagram sent: chitchat's own budget, the IPv4 UDP payload limit.
const MAX_DATAGRAM_LEN: usize = MAX_ENCODED_LEN;
/// The largest envelope that still fits one datagram once sealed.
const MAX_PLAINTEXT_LEN: usize = MAX_DATAGRAM_LEN - NONCE_LEN - TAG_LEN;
/// Receive buffer: any UDP payload fits, so nothing is silently truncated.
const RECV_BUF_LEN: usize = u16::MAX as usize + 1;
/// An oversize envelope is logged at `warn` at most this often (`debug` otherwise).
const OVERSIZE_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Counters of one node's sealed gossip, read by the node at scrape time.
#[derive(Debug, Default)]
pub struct GossipStats {
    /// Datagrams that failed authentication or were too short to be sealed:
    /// a wrong key or cluster id, a forgery, corruption, plain chitchat. Also
    /// datagrams a local process sent straight to the loopback codec socket.
    pub rejected_unauthenticated: AtomicU64,
    /// Authenticated datagrams that are not a chitchat envelope chitchat
    /// accepts, or whose compressed blocks could inflate past 8 MiB.
    pub rejected_malformed: AtomicU64,
    /// Envelopes this node did not send because, sealed, they would not fit
    /// one UDP datagram (65,507 bytes); a `warn` at most once a minute says so.
    ///
    /// What bounds them: chitchat budgets a SynAck or an Ack to 65,507 bytes
    /// including its header, and sealing adds 40, so only a reply within 40
    /// bytes of that budget is dropped. A reply's delta comes near the budget
    /// only when the peer lacks more state than one datagram holds (it is then
    /// cut there), and a Syn (a digest of every node, about 50 bytes per node
    /// before compression) is not budgeted by chitchat at all: either takes a
    /// cluster of many hundreds of Starling nodes. chitchat has no setting to
    /// lower its budget, so such an envelope is dropped, not cut, and the same
    /// drop may repeat each round until the state changes. A Syn over 65,507
    /// bytes, which chitchat's codec socket cannot even send, is counted too.
    pub dropped_oversize: AtomicU64,
}

/// chitchat's gossip transport over UDP with every datagram sealed under the
/// cluster's [`GossipKey`]; nodes of one cluster must all use it, with the
/// same key and cluster id.
pub struct SealedUdpTransport {
    sealer: Arc<Sealer>,
    stats: Arc<GossipStats>,
}

impl SealedUdpTransport {
    /// `cluster_id` must be the membership's cluster id; it is authenticated
    /// with every datagram. Sockets opened count into `stats`.
    pub fn new(key: GossipKey, cluster_id: &str, stats: Arc<GossipStats>) -> SealedUdpTransport {
        SealedUdpTransport { sealer: Arc::new(Sealer::new(&key, cluster_id)), stats }
    }
}

impl std::fmt::Debug for SealedUdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedUdpTransport").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket =
            SealedSocket::open(listen_addr, Arc::clone(&self.sealer), Arc::clone(&self.stats)).await?;
        Ok(Box::new(socket))
    }
}

/// XChaCha20-Poly1305 under the gossip key, bound to one cluster id.
struct Sealer {
    cipher: XChaCha20Poly1305,
    /// [`DOMAIN`] followed by the cluster id.
    associated_data: Vec<u8>,
}

/// The plaintext does not fit one datagram once sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {0}-byte envelope does not fit one datagram once sealed")]
struct TooLargeToSeal(usize);

impl Sealer {
    fn new(key: &GossipKey, cluster_id: &str) -> Sealer {
        let associated_data = [DOMAIN, cluster_id.as_bytes()].concat();
        Sealer { cipher: XChaCha20Poly1305::new(key.as_bytes().into()), associated_data }
    }

    /// Replaces `sealed` with the datagram carrying `plaintext`.
    fn seal(&self, plaintext: &[u8], sealed: &mut Vec<u8>) -> Result<(), TooLargeToSeal> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(TooLargeToSeal(plaintext.len()));
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        sealed.clear();
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached((&nonce).into(), &self.associated_data, &mut sealed[NONCE_LEN..])
            // The cipher only refuses plaintexts of hundreds of gigabytes.
            .map_err(|_| TooLargeToSeal(plaintext.len()))?;
        sealed.extend_from_slice(&tag);
        Ok(())
    }

    /// The plaintext of `datagram`, decrypted in place, if it is authentic.
    fn open<'a>(&self, datagram: &'a mut [u8]) -> Option<&'a [u8]> {
        if datagram.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, rest) = datagram.split_at_mut(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let nonce = <[u8; NONCE_LEN]>::try_from(&*nonce).ok()?;
        let tag = <[u8; TAG_LEN]>::try_from(&*tag).ok()?;
        self.cipher
            .decrypt_in_place_detached((&nonce).into(), &self.associated_data, ciphertext, (&tag).into())
            .ok()?;
        Some(ciphertext)
    }
}

/// One node's sealed gossip socket.
struct SealedSocket {
    /// The gossip socket peers reach.
    socket: tokio::net::UdpSocket,
    sealer: Arc<Sealer>,
    stats: Arc<GossipStats>,
    /// Turns envelopes into plaintexts and back, in chitchat's format.
    codec: EnvelopeCodec,
    /// Reused for every datagram received.
    recv_buf: Box<[u8]>,
    /// Reused for every envelope sent: its plaintext, then its datagram.
    plaintext_buf: Vec<u8>,
    sealed_buf: Vec<u8>,
    /// When an oversize envelope was last logged at `warn`.
    oversize_warned_at: Option<Instant>,
}

/// What woke `recv` up.
enum Event {
    Decoded(Decoded),
    Datagram(std::io::Result<(usize, SocketAddr)>),
}

impl SealedSocket {
    async fn open(
        listen_addr: SocketAddr,
        sealer: Arc<Sealer>,
        stats: Arc<GossipStats>,
    ) -> anyhow::Result<Self> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        Ok(SealedSocket {
            socket,
            sealer,
            stats,
            codec: EnvelopeCodec::open().await?,
            recv_buf: vec![0; RECV_BUF_LEN].into_boxed_slice(),
            plaintext_buf: Vec::with_capacity(MAX_ENCODED_LEN + 1),
            sealed_buf: Vec::with_capacity(MAX_DATAGRAM_LEN),
            oversize_warned_at: None,
        })
    }

    /// Opens the datagram of `len` bytes in `recv_buf` and, if it is
    /// authentic and within the inflation bound, hands it to chitchat's codec.
    async fn admit(&mut self, len: usize, from: SocketAddr) {
        let Some(plaintext) = self.sealer.open(&mut self.recv_buf[..len]) else {
            self.stats.rejected_unauthenticated.fetch_add(1, Ordering::Relaxed);
            debug!(from = %from, len, "gossip datagram failed authentication");
            return;
        };
        if let Err(error) = inflation::inflation_bound(plaintext) {
            self.stats.rejected_malformed.fetch_add(1, Ordering::Relaxed);
            debug!(from = %from, len, error = %error, "authenticated gossip datagram refused");
            return;
        }
        if let Err(error) = self.codec.submit(plaintext, from, len).await {
            // Lost like any UDP datagram; only a failing loopback gets here.
            debug!(from = %from, error = %error, "gossip datagram lost on loopback");
        }
    }

    fn count_oversize(&mut self, to: SocketAddr, error: &anyhow::Error) -> SendOutcome {
        self.stats.dropped_oversize.fetch_add(1, Ordering::Relaxed);
        let warned_recently = self.oversize_warned_at.is_some_and(|at| at.elapsed() < OVERSIZE_WARN_INTERVAL);
        if warned_recently {
            debug!(to = %to, error = %error, "gossip envelope too large to seal, not sent");
        } else {
            self.oversize_warned_at = Some(Instant::now());
            warn!(to = %to, error = %error, "gossip envelope too large to seal, not sent");
        }
        SendOutcome { num_bytes_sent: 0 }
    }
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket.local_addr().context("failed to get UDP socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        if let Err(error) = self.codec.encode(envelope, &mut self.plaintext_buf).await {
            // In practice only an envelope over 65,507 bytes fails to encode.
            return Ok(self.count_oversize(to, &error));
        }
        if let Err(error) = self.sealer.seal(&self.plaintext_buf, &mut self.sealed_buf) {
            return Ok(self.count_oversize(to, &error.into()));
        }
        let num_bytes_sent = self
            .socket
            .send_to(&self.sealed_buf, to)
            .await
            .context("failed to send chitchat message to peer")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel-safe as chitchat needs (it drops this future at every gossip
    /// tick): a cancellation loses at most the one datagram being handed to
    /// the codec, as the network may, and the codec keeps what it decoded.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let event = tokio::select! {
                biased;
                decoded = self.codec.next_decoded() => Event::Decoded(decoded?),
                received = self.socket.recv_from(&mut self.recv_buf) => Event::Datagram(received),
            };
            match event {
                Event::Decoded(Decoded::Envelope(outcome)) => return Ok(outcome),
                Event::Decoded(Decoded::Refused { from }) => {
                    self.stats.rejected_malformed.fetch_add(1, Ordering::Relaxed);
                    debug!(from = %from, "authenticated gossip datagram is not a chitchat message");
                }
                Event::Decoded(Decoded::Foreign { from }) => {
                    self.stats.rejected_unauthenticated.fetch_add(1, Ordering::Relaxed);
                    debug!(from = %from, "datagram sent straight to the gossip codec socket dropped");
                }
                Event::Datagram(Ok((len, from))) => self.admit(len, from).await,
                Event::Datagram(Err(error)) if is_transient(&error) => {
                    debug!(error = %error, "transient gossip recv error");
                }
                Event::Datagram(Err(error)) => return Err(error).context("fatal UDP recv error"),
            }
        }
    }
}

/// The receive errors chitchat's own UDP socket also treats as transient.
fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.kind(), ErrorKind::OutOfMemory | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chitchat::{ChitchatMessage, ProtocolVersion};

    use super::inflation::samples;
    use super::*;

    const CLUSTER_ID: &str = "starling-test";
    const DEADLINE: Duration = Duration::from_secs(10);

    fn sealer(key: &GossipKey) -> Sealer {
        Sealer::new(key, CLUSTER_ID)
    }

    fn sealed(sealer: &Sealer, plaintext: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::new();
        sealer.seal(plaintext, &mut datagram).unwrap();
        datagram
    }

    fn opens(sealer: &Sealer, datagram: &[u8]) -> Option<Vec<u8>> {
        sealer.open(&mut datagram.to_vec()).map(<[u8]>::to_vec)
    }

    fn syn(cluster_id: &str) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn { cluster_id: cluster_id.to_string(), digest: Default::default() },
        }
    }

    async fn open_socket(key: &GossipKey) -> (SealedSocket, Arc<GossipStats>) {
        let stats = Arc::new(GossipStats::default());
        let transport = SealedUdpTransport::new(key.clone(), CLUSTER_ID, Arc::clone(&stats));
        let socket = SealedSocket::open("127.0.0.1:0".parse().unwrap(), transport.sealer, Arc::clone(&stats));
        (socket.await.unwrap(), stats)
    }

    async fn recv(socket: &mut SealedSocket) -> RecvOutcome {
        tokio::time::timeout(DEADLINE, socket.recv()).await.expect("an envelope within the deadline").unwrap()
    }

    /// Peak resident memory of this process in KiB (Linux), for bounding what
    /// a datagram made the process allocate.
    fn peak_rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    #[test]
    fn sealed_datagrams_open_to_their_plaintext_and_differ_each_time() {
        let sealer = sealer(&GossipKey::generate());
        let first = sealed(&sealer, b"chitchat envelope");
        assert_eq!(first.len(), b"chitchat envelope".len() + NONCE_LEN + TAG_LEN);
        assert_eq!(opens(&sealer, &first).as_deref(), Some(&b"chitchat envelope"[..]));
        let second = sealed(&sealer, b"chitchat envelope");
        assert_ne!(first, second, "a fresh nonce every time");
        assert_eq!(opens(&sealer, &sealed(&sealer, b"")).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let sealer = sealer(&GossipKey::generate());
        let datagram = sealed(&sealer, b"join me");
        for bit in 0..datagram.len() * 8 {
            let mut flipped = datagram.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(opens(&sealer, &flipped), None, "bit {bit} flipped");
        }
    }

    #[test]
    fn truncated_and_too_short_datagrams_are_rejected() {
        let sealer = sealer(&GossipKey::generate());
        let datagram = sealed(&sealer, b"join me");
        for len in 0..datagram.len() {
            assert_eq!(opens(&sealer, &datagram[..len]), None, "truncated to {len} bytes");
        }
        let mut extended = datagram.clone();
        extended.push(0);
        assert_eq!(opens(&sealer, &extended), None);
    }

    #[test]
    fn another_key_or_cluster_id_does_not_open_a_datagram() {
        let key = GossipKey::generate();
        let datagram = sealed(&sealer(&key), b"join me");
        assert_eq!(opens(&sealer(&GossipKey::generate()), &datagram), None);
        assert_eq!(opens(&Sealer::new(&key, "another-cluster"), &datagram), None);
        assert_eq!(opens(&Sealer::new(&key, &format!("{CLUSTER_ID}x")), &datagram), None);
        assert!(opens(&sealer(&key), &datagram).is_some());
    }

    #[test]
    fn plaintexts_are_sealed_up_to_the_udp_payload_limit() {
        let sealer = sealer(&GossipKey::generate());
        let mut datagram = Vec::new();
        sealer.seal(&vec![1; MAX_PLAINTEXT_LEN], &mut datagram).unwrap();
        assert_eq!(datagram.len(), 65_507);
        assert_eq!(sealer.seal(&vec![1; MAX_PLAINTEXT_LEN + 1], &mut datagram), Err(TooLargeToSeal(65_468)));
    }

    #[tokio::test]
    async fn envelopes_travel_sealed_between_sockets() {
        let key = GossipKey::generate();
        let (mut a, _) = open_socket(&key).await;
        let (mut b, stats_b) = open_socket(&key).await;
        let sent = a.send(b.local_addr().unwrap(), syn(CLUSTER_ID)).await.unwrap();
        let received = recv(&mut b).await;
        assert_eq!(received.envelope, syn(CLUSTER_ID));
        assert_eq!(received.from_addr, a.local_addr().unwrap());
        assert_eq!(received.num_bytes_received, sent.num_bytes_sent);
        // V0 Syn: header 4, empty digest 2, cluster id 2 + 13; sealing adds 40.
        assert_eq!(sent.num_bytes_sent, 4 + 2 + 2 + CLUSTER_ID.len() + 40);
        assert_eq!(stats_b.rejected_unauthenticated.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn envelopes_too_large_to_seal_are_dropped_and_counted() {
        let key = GossipKey::generate();
        let (mut a, stats_a) = open_socket(&key).await;
        let (mut b, _) = open_socket(&key).await;
        let to = b.local_addr().unwrap();
        // A V0 Syn takes 8 bytes besides its cluster id.
        let largest = "x".repeat(MAX_PLAINTEXT_LEN - 8);
        for too_large in [MAX_PLAINTEXT_LEN - 7, usize::from(u16::MAX)] {
            let outcome = a.send(to, syn(&"x".repeat(too_large))).await.unwrap();
            assert_eq!(outcome.num_bytes_sent, 0, "a {too_large}-byte cluster id");
        }
        assert_eq!(stats_a.dropped_oversize.load(Ordering::Relaxed), 2);
        assert_eq!(a.send(to, syn(&largest)).await.unwrap().num_bytes_sent, 65_507);
        let received = recv(&mut b).await;
        assert_eq!((received.envelope, received.num_bytes_received), (syn(&largest), 65_507));
    }

    #[tokio::test]
    async fn authenticated_bombs_and_malformed_plaintexts_are_dropped_before_chitchat_inflates_them() {
        let key = GossipKey::generate();
        let (mut node, stats) = open_socket(&key).await;
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = node.local_addr().unwrap();
        let peak_before = peak_rss_kib();

        let sealer = sealer(&key);
        let bomb = samples::decompression_bomb(MAX_PLAINTEXT_LEN);
        // Stored block with an unknown delta operation: only chitchat's own parsing refuses it.
        let mut bad_op = samples::header(0, 2);
        bad_op.extend([2, 1, 0, 9, 0]);
        for plaintext in [&bomb[..], b"junk", &bad_op, &bomb] {
            peer.send_to(&sealed(&sealer, plaintext), to).await.unwrap();
        }
        let (mut valid, _) = open_socket(&key).await;
        valid.send(to, syn("after the bombs")).await.unwrap();

        let received = recv(&mut node).await;
        assert_eq!(received.envelope, syn("after the bombs"));
        assert_eq!(received.from_addr, valid.local_addr().unwrap());
        assert_eq!(stats.rejected_malformed.load(Ordering::Relaxed), 4);
        assert_eq!(stats.rejected_unauthenticated.load(Ordering::Relaxed), 0);
        if let (Some(before), Some(after)) = (peak_before, peak_rss_kib()) {
            // Each bomb inflates to over 300 MB inside chitchat.
            assert!(after - before < 64 * 1024, "peak RSS grew by {} KiB", after - before);
        }
    }

    #[tokio::test]
    async fn unsealed_chitchat_and_datagrams_to_the_codec_socket_are_counted_unauthenticated() {
        let key = GossipKey::generate();
        let (mut node, stats) = open_socket(&key).await;
        let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = node.local_addr().unwrap();
        stranger.send_to(&samples::syn_v0(CLUSTER_ID), to).await.unwrap();
        stranger
            .send_to(&sealed(&super::Sealer::new(&GossipKey::generate(), CLUSTER_ID), b"x"), to)
            .await
            .unwrap();
        stranger.send_to(&samples::syn_v0(CLUSTER_ID), node.codec.codec_addr()).await.unwrap();
        let (mut valid, _) = open_socket(&key).await;
        // Sent last: once it is received, everything before it has been handled.
        valid.send(to, syn("valid")).await.unwrap();
        assert_eq!(recv(&mut node).await.envelope, syn("valid"));
        assert_eq!(stats.rejected_unauthenticated.load(Ordering::Relaxed), 3);
        assert_eq!(stats.rejected_malformed.load(Ordering::Relaxed), 0);
    }
}
