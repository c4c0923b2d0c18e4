//! chitchat's own envelope codec, reached through loopback.
//!
//! chitchat 0.13 keeps `ChitchatEnvelope::serialize` and `deserialize`
//! crate-private, and `Digest` (inside Syn and SynAck) has no public
//! constructor or encoding, so no code outside chitchat can turn an envelope
//! into bytes or bytes into an envelope. Its public `UdpSocket` can: it
//! encodes what it sends and decodes what it receives. This module owns one
//! such socket on 127.0.0.1 and two plain sockets around it, so the sealed
//! transport can encode and decode in chitchat's exact format. It must not
//! see the network, keys or counters; if chitchat ever exposes its codec,
//! this module becomes two function calls.
//!
//! Decoding: a start marker, the plaintext, then an end marker go to the
//! codec socket from `decode_tx`. Markers are Syns to a cluster id made of a
//! random tag (and, for the end marker, the real sender and the datagram
//! length). An envelope between the two markers is delivered with the end
//! marker's sender; markers alone mean chitchat refused the plaintext (it
//! drops those with a warning of its own). The start marker makes a
//! submission cut short (a cancelled `recv`) lose only itself.
//!
//! Exposure: anything that reaches the codec socket from another source was
//! sent to that loopback port by a process of this host (or network
//! namespace). chitchat decodes it, with the decompression that implies, and
//! warns about it if it cannot, but it is never delivered: gossip state
//! cannot be injected that way, only the cost of a decode imposed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use chitchat::transport::{RecvOutcome, Socket, UdpSocket as ChitchatUdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage};

/// The largest datagram chitchat's socket sends or receives (chitchat's
/// `MAX_UDP_DATAGRAM_PAYLOAD_SIZE`, the IPv4 UDP payload limit).
pub(super) const MAX_ENCODED_LEN: usize = 65_507;

/// How long an encoded envelope may take to come back over loopback, where it
/// is queued before `send_to` returns; reached only if loopback is broken.
const ENCODE_TIMEOUT: Duration = Duration::from_secs(1);

const MARKER_PREFIX: &str = "starling-codec-marker";

/// What the codec socket produced.
#[derive(Debug)]
pub(super) enum Decoded {
    /// A plaintext chitchat accepted, with the sender and length of the sealed datagram.
    Envelope(RecvOutcome),
    /// chitchat refused the plaintext received from `from`.
    Refused { from: SocketAddr },
    /// A local process sent a datagram straight to the codec socket.
    Foreign { from: SocketAddr },
}

pub(super) struct EnvelopeCodec {
    /// chitchat's socket: the only public code that encodes and decodes envelopes.
    codec: ChitchatUdpSocket,
    codec_addr: SocketAddr,
    /// Receives what `codec` encodes; connected to it, so nothing else arrives.
    encoded_rx: tokio::net::UdpSocket,
    encoded_rx_addr: SocketAddr,
    /// The one source whose datagrams `codec` decodes for delivery.
    decode_tx: tokio::net::UdpSocket,
    decode_tx_addr: SocketAddr,
    /// Random per codec, so no peer can forge a marker.
    marker_tag: u128,
    /// A decoded envelope whose marker has not been read yet.
    held: Option<ChitchatEnvelope>,
}

impl EnvelopeCodec {
    pub(super) async fn open() -> anyhow::Result<EnvelopeCodec> {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = ChitchatUdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let encoded_rx = bind_loopback(loopback).await?;
        encoded_rx.connect(codec_addr).await.context("cannot connect the gossip codec socket")?;
        let decode_tx = bind_loopback(loopback).await?;
        decode_tx.connect(codec_addr).await.context("cannot connect the gossip codec socket")?;
        Ok(EnvelopeCodec {
            codec,
            codec_addr,
            encoded_rx_addr: encoded_rx.local_addr()?,
            encoded_rx,
            decode_tx_addr: decode_tx.local_addr()?,
            decode_tx,
            marker_tag: rand::random(),
            held: None,
        })
    }

    /// The loopback address chitchat's codec socket listens on.
    #[cfg(test)]
    pub(super) fn codec_addr(&self) -> SocketAddr {
        self.codec_addr
    }

    /// Replaces `buf` with `envelope` in chitchat's wire format. Fails if
    /// chitchat cannot send it in one datagram (over [`MAX_ENCODED_LEN`]).
    pub(super) async fn encode(
        &mut self,
        envelope: ChitchatEnvelope,
        buf: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        buf.clear();
        buf.resize(MAX_ENCODED_LEN + 1, 0);
        // A leftover from an encode cancelled midway must not be taken for this one.
        while self.encoded_rx.try_recv(buf).is_ok() {}
        let encoded = async {
            self.codec.send(self.encoded_rx_addr, envelope).await?;
            self.encoded_rx.recv(buf).await.context("cannot read the encoded envelope")
        };
        let len = tokio::time::timeout(ENCODE_TIMEOUT, encoded)
            .await
            .context("encoded envelope did not come back over loopback")??;
        buf.truncate(len);
        Ok(())
    }

    /// Hands `plaintext` (at most [`MAX_ENCODED_LEN`] bytes), received in a
    /// datagram of `num_bytes_received` bytes from `from`, to chitchat; the
    /// outcome comes out of [`Self::next_decoded`].
    pub(super) async fn submit(
        &mut self,
        plaintext: &[u8],
        from: SocketAddr,
        num_bytes_received: usize,
    ) -> anyhow::Result<()> {
        let start = marker_message(self.marker_tag, None);
        let end = marker_message(self.marker_tag, Some((num_bytes_received, from)));
        for datagram in [&start[..], plaintext, &end[..]] {
            self.decode_tx.send(datagram).await.context("cannot hand a plaintext to the gossip codec")?;
        }
        Ok(())
    }

    /// The next result of decoding. Cancel-safe: what was read is kept.
    pub(super) async fn next_decoded(&mut self) -> anyhow::Result<Decoded> {
        loop {
            let RecvOutcome { from_addr, envelope, .. } = self.codec.recv().await?;
            if from_addr != self.decode_tx_addr {
                return Ok(Decoded::Foreign { from: from_addr });
            }
            match parse_marker(self.marker_tag, &envelope) {
                Some(Marker::Start) => self.held = None,
                Some(Marker::End { num_bytes_received, from }) => {
                    return Ok(match self.held.take() {
                        Some(envelope) => {
                            Decoded::Envelope(RecvOutcome { from_addr: from, envelope, num_bytes_received })
                        }
                        None => Decoded::Refused { from },
                    });
                }
                // Its end marker, sent right behind it, is already queued.
                None => self.held = Some(envelope),
            }
        }
    }
}

impl std::fmt::Debug for EnvelopeCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeCodec").field("codec_addr", &self.codec_addr).finish_non_exhaustive()
    }
}

async fn bind_loopback(addr: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    tokio::net::UdpSocket::bind(addr).await.context("cannot bind the gossip codec socket on loopback")
}

/// A marker around a plaintext submitted for decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Start,
    End { num_bytes_received: usize, from: SocketAddr },
}

/// A Syn (V0, empty digest) to the cluster id `{MARKER_PREFIX} {tag} start`
/// or `{MARKER_PREFIX} {tag} {num_bytes_received} {from}` (`end` given).
fn marker_message(tag: u128, end: Option<(usize, SocketAddr)>) -> Vec<u8> {
    const CHITCHAT_MAGIC: u16 = 45_139;
    const PROTOCOL_V0: u8 = 0;
    const SYN: u8 = 0;
    let cluster_id = match end {
        None => format!("{MARKER_PREFIX} {tag:032x} start"),
        Some((num_bytes_received, from)) => format!("{MARKER_PREFIX} {tag:032x} {num_bytes_received} {from}"),
    };
    let mut message = CHITCHAT_MAGIC.to_le_bytes().to_vec();
    message.extend([PROTOCOL_V0, SYN]);
    message.extend(0u16.to_le_bytes()); // digest: no nodes
    message.extend((cluster_id.len() as u16).to_le_bytes());
    message.extend(cluster_id.as_bytes());
    message
}

/// The marker of this codec `envelope` is, if it is one.
fn parse_marker(tag: u128, envelope: &ChitchatEnvelope) -> Option<Marker> {
    let ChitchatMessage::Syn { cluster_id, .. } = &envelope.message else {
        return None;
    };
    let mut fields = cluster_id.strip_prefix(MARKER_PREFIX)?.split(' ').skip(1);
    if fields.next()? != format!("{tag:032x}") {
        return None;
    }
    let num_bytes_received = match fields.next()? {
        "start" => return Some(Marker::Start),
        len => len.parse().ok()?,
    };
    let from = fields.next()?.parse().ok()?;
    Some(Marker::End { num_bytes_received, from })
}

#[cfg(test)]
mod tests {
    use chitchat::ProtocolVersion;

    use super::*;

    fn syn(cluster_id: &str) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V1,
            message: ChitchatMessage::Syn { cluster_id: cluster_id.to_string(), digest: Default::default() },
        }
    }

    async fn next_decoded(codec: &mut EnvelopeCodec) -> Decoded {
        tokio::time::timeout(Duration::from_secs(5), codec.next_decoded()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn envelopes_round_trip_with_their_real_sender() {
        let mut codec = EnvelopeCodec::open().await.unwrap();
        let mut encoded = Vec::new();
        codec.encode(syn("cluster-a"), &mut encoded).await.unwrap();
        let from: SocketAddr = "[2001:db8::1]:7901".parse().unwrap();
        codec.submit(&encoded, from, 1_234).await.unwrap();
        let Decoded::Envelope(outcome) = next_decoded(&mut codec).await else { panic!("not decoded") };
        assert_eq!(
            outcome,
            RecvOutcome { from_addr: from, envelope: syn("cluster-a"), num_bytes_received: 1_234 }
        );
    }

    #[tokio::test]
    async fn a_plaintext_chitchat_refuses_is_reported_with_its_sender() {
        let mut codec = EnvelopeCodec::open().await.unwrap();
        let from: SocketAddr = "10.0.0.7:7901".parse().unwrap();
        codec.submit(b"not chitchat", from, 40).await.unwrap();
        assert!(
            matches!(next_decoded(&mut codec).await, Decoded::Refused { from: refused } if refused == from)
        );
        let mut encoded = Vec::new();
        codec.encode(syn("after"), &mut encoded).await.unwrap();
        codec.submit(&encoded, from, 50).await.unwrap();
        assert!(
            matches!(next_decoded(&mut codec).await, Decoded::Envelope(outcome) if outcome.envelope == syn("after"))
        );
    }

    #[tokio::test]
    async fn datagrams_sent_straight_to_the_codec_socket_are_not_delivered() {
        let mut codec = EnvelopeCodec::open().await.unwrap();
        let local = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut encoded = Vec::new();
        codec.encode(syn("forged"), &mut encoded).await.unwrap();
        local.send_to(&encoded, codec.codec_addr()).await.unwrap();
        // Even a copy of a marker is not taken for one from another source.
        let marker = marker_message(codec.marker_tag, Some((1, "10.0.0.1:1".parse().unwrap())));
        local.send_to(&marker, codec.codec_addr()).await.unwrap();
        for _ in 0..2 {
            let decoded = next_decoded(&mut codec).await;
            assert!(
                matches!(decoded, Decoded::Foreign { from } if from == local.local_addr().unwrap()),
                "{decoded:?}"
            );
        }
    }

    #[test]
    fn markers_of_another_codec_or_a_plain_syn_are_not_markers() {
        let from: SocketAddr = "10.0.0.7:7901".parse().unwrap();
        let marker = |tag, end| {
            let bytes = marker_message(tag, end);
            ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::Syn {
                    cluster_id: String::from_utf8(bytes[8..].to_vec()).unwrap(),
                    digest: Default::default(),
                },
            }
        };
        assert_eq!(parse_marker(7, &marker(7, None)), Some(Marker::Start));
        let scoped: SocketAddr = "[fe80::1%3]:7901".parse().unwrap();
        let scoped_end = Marker::End { num_bytes_received: 1, from: scoped };
        assert_eq!(parse_marker(7, &marker(7, Some((1, scoped)))), Some(scoped_end));
        let end = Marker::End { num_bytes_received: 12, from };
        assert_eq!(parse_marker(7, &marker(7, Some((12, from)))), Some(end));
        assert_eq!(parse_marker(7, &marker(8, Some((12, from)))), None);
        assert_eq!(parse_marker(7, &syn("starling")), None);
    }

    #[tokio::test]
    async fn a_submission_cut_short_loses_only_itself() {
        let mut codec = EnvelopeCodec::open().await.unwrap();
        let second: SocketAddr = "10.0.0.2:2".parse().unwrap();
        let mut encoded = Vec::new();
        codec.encode(syn("first"), &mut encoded).await.unwrap();
        // The first plaintext arrives without its end marker; the second is refused by chitchat.
        codec.decode_tx.send(&marker_message(codec.marker_tag, None)).await.unwrap();
        codec.decode_tx.send(&encoded).await.unwrap();
        codec.submit(b"junk", second, 10).await.unwrap();
        assert!(matches!(next_decoded(&mut codec).await, Decoded::Refused { from } if from == second));
    }
}
