//! The frames on a link and their length-prefixed encoding.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec;

/// The peer protocol this node speaks: bumped on any change to what goes
/// over a link ([`Frame`], Raft's messages, room commands and snapshots,
/// application messages). A node also speaks the previous version
/// ([`OLDEST_PROTOCOL_VERSION`]), so a rolling upgrade needs no full stop.
/// Version 3: the handshake carries the node's incarnation (boot time), and
/// links run over mutual TLS unless the cluster is configured insecure.
/// Version 4: application messages carry structured room messages (room,
/// epoch, offset, publisher, event, data, publish time), not client text.
/// Version 7: room commands gain `HooksDelivered` and table snapshots the
/// webhook outbox; `CloseUser` (a Pusher app's `terminate_connections`).
/// Version 8: the application message `RemoveNode` (a follower asks the
/// leader to remove a dead node); links negotiate their version (N-1).
pub const PROTOCOL_VERSION: u32 = 8;

/// The oldest peer protocol this node still speaks (N-1). A link runs at
/// the version its dialer's hello names; a node sends a peer nothing that
/// peer's version lacks (see `PeerTransport::peer_version`).
pub const OLDEST_PROTOCOL_VERSION: u32 = PROTOCOL_VERSION - 1;

/// Whether this node speaks peer protocol `version`.
pub fn speaks(version: u32) -> bool {
    (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// What an acceptor answers a hello of a version it does not speak (the
/// same words as version 7's, which a dialer recognises to try an older one).
pub fn version_refusal(version: u32) -> String {
    format!("peer protocol version {version} is not supported")
}

/// The largest frame accepted, in bytes (a Raft snapshot chunk fits).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The dialer's first frame. With TLS, `node` must be a name the
    /// dialer's certificate is valid for.
    Hello {
        version: u32,
        cluster_id: String,
        node: String,
        incarnation: u64,
    },
    /// The acceptor's answer when the hello matches (same rule for `node`).
    Accepted {
        node: String,
        incarnation: u64,
    },
    /// The acceptor's answer when it does not; the link is closed after it.
    /// The reason never repeats what the acceptor expected.
    Refused {
        reason: String,
    },
    Request {
        id: u64,
        traceparent: Option<String>,
        body: Vec<u8>,
    },
    Response {
        id: u64,
        body: Result<Vec<u8>, String>,
    },
    OneWay {
        traceparent: Option<String>,
        body: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("codec: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// Appends `frame`, length-prefixed, to `out` (nothing is appended on error).
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let bytes = codec::encode(frame)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Writes one frame with a single write (one TLS record, one packet where it fits).
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> Result<(), FrameError> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// The largest first frame (the hello) accepted from an unauthenticated peer.
pub const MAX_HELLO_BYTES: usize = 4096;

pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Frame, FrameError> {
    read_frame_limited(reader, MAX_FRAME_BYTES).await
}

/// Reads one frame of at most `max` bytes (the hello is read with a small
/// limit, so a stranger cannot make the node allocate a large buffer).
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Frame, FrameError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    reader.read_exact(&mut bytes).await?;
    decode_frame(&bytes, max)
}

/// Decodes a frame's bytes; a frame read with a small limit is decoded
/// with the small claim limit too.
pub fn decode_frame(bytes: &[u8], max: usize) -> Result<Frame, FrameError> {
    if max <= codec::MAX_SMALL_DECODE_BYTES {
        return Ok(codec::decode_small(bytes)?);
    }
    Ok(codec::decode(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_lengths_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let frame = Frame::Request { id: 9, traceparent: None, body: vec![1, 2, 3] };
        write_frame(&mut a, &frame).await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), frame);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(FrameError::TooLarge(_))));
    }
}
