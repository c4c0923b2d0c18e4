//! How much an authenticated gossip datagram could make chitchat inflate.
//!
//! Owns a walk of chitchat 0.13's wire format (envelope header, V0 and V1
//! digests, delta block streams) that reads only lengths and block tags, so a
//! plaintext whose compressed blocks could inflate past [`MAX_INFLATED_LEN`]
//! is refused before chitchat decompresses anything. Must not decompress,
//! allocate per item or decide anything but "within the bound or not": full
//! parsing stays chitchat's.
//!
//! The format, as chitchat 0.13 writes it (`message_serialize.rs`,
//! `digest.rs`, `delta.rs`, `serialize.rs`; integers little-endian):
//!
//! - header: magic `u16` 45_139, protocol version `u8` (0 or 1), message type
//!   `u8` (0 Syn, 1 SynAck, 2 Ack, 3 BadCluster);
//! - Syn: digest, then the cluster id (`u16` length + bytes);
//!   SynAck: digest, then delta; Ack: delta; BadCluster: nothing;
//! - digest V0: `u16` count of (chitchat id, 24-byte node digest); digest V1:
//!   a block stream of the same entries;
//! - chitchat id: node id (`u16` length + bytes), generation `u64`, IP version
//!   `u8` (4 or 6) with 4 or 16 bytes, port `u16`;
//! - delta: a block stream; block stream: blocks, each a tag `u8` (0 end,
//!   1 zstd-compressed, 2 stored) and, for 1 and 2, a `u16` length and that
//!   many bytes.
//!
//! chitchat's `deserialize_stream` decompresses each compressed block into a
//! buffer of `u16::MAX` bytes (a larger block fails), so a compressed block
//! inflates to at most 65,535 bytes whatever its frames say. That is the
//! bound counted here: no zstd header is trusted.

/// The most a datagram may inflate to, counting every compressed block at the
/// 65,535 bytes chitchat allows it. That is 128 compressed blocks: chitchat
/// writes blocks of at most 16,384 bytes before compression, so honest gossip
/// reaches this bound only if a whole 64 KB datagram compresses better than
/// 32:1. For one datagram chitchat then holds at most this much decompressed
/// data, plus the items it decodes from it.
pub(super) const MAX_INFLATED_LEN: usize = 8 << 20;

/// What chitchat inflates one compressed block to, at most.
const MAX_BLOCK_INFLATED_LEN: usize = u16::MAX as usize;

const CHITCHAT_MAGIC: u16 = 45_139;
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
const BAD_CLUSTER: u8 = 3;
const DIGEST_V0: u8 = 0;
const DIGEST_V1: u8 = 1;
const END_OF_BLOCKS: u8 = 0;
const COMPRESSED_BLOCK: u8 = 1;
const STORED_BLOCK: u8 = 2;
/// Heartbeat, last GC version and max version, each a `u64`.
const NODE_DIGEST_LEN: usize = 24;

/// Why a plaintext is refused before chitchat sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum InflationError {
    #[error("not a chitchat message (magic number)")]
    NotChitchat,
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    #[error("unknown block tag {0}")]
    UnknownBlockTag(u8),
    #[error("unknown ip version {0}")]
    UnknownIpVersion(u8),
    #[error("truncated message")]
    Truncated,
    #[error("could inflate past {MAX_INFLATED_LEN} bytes")]
    TooLarge,
}

/// The most chitchat could inflate `plaintext` to, if that is at most
/// [`MAX_INFLATED_LEN`]; an error if it is more or the structure is broken.
pub(super) fn inflation_bound(plaintext: &[u8]) -> Result<usize, InflationError> {
    let mut walk = Walk { rest: plaintext, inflated: 0 };
    if walk.u16()? != CHITCHAT_MAGIC {
        return Err(InflationError::NotChitchat);
    }
    let version = walk.u8()?;
    if version != DIGEST_V0 && version != DIGEST_V1 {
        return Err(InflationError::UnknownVersion(version));
    }
    match walk.u8()? {
        SYN => walk.digest(version)?,
        SYN_ACK => {
            walk.digest(version)?;
            walk.block_stream()?;
        }
        ACK => walk.block_stream()?,
        BAD_CLUSTER => {}
        other => return Err(InflationError::UnknownMessageType(other)),
    }
    Ok(walk.inflated)
}

/// A cursor over the plaintext that adds up what its blocks may inflate to.
struct Walk<'a> {
    rest: &'a [u8],
    inflated: usize,
}

impl Walk<'_> {
    fn skip(&mut self, len: usize) -> Result<(), InflationError> {
        self.rest = self.rest.get(len..).ok_or(InflationError::Truncated)?;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, InflationError> {
        let (&byte, rest) = self.rest.split_first().ok_or(InflationError::Truncated)?;
        self.rest = rest;
        Ok(byte)
    }

    fn u16(&mut self) -> Result<u16, InflationError> {
        let bytes = self.rest.get(..2).ok_or(InflationError::Truncated)?;
        let value = u16::from_le_bytes([bytes[0], bytes[1]]);
        self.rest = &self.rest[2..];
        Ok(value)
    }

    fn count_inflated(&mut self, len: usize) -> Result<(), InflationError> {
        self.inflated += len;
        if self.inflated > MAX_INFLATED_LEN {
            return Err(InflationError::TooLarge);
        }
        Ok(())
    }

    fn digest(&mut self, version: u8) -> Result<(), InflationError> {
        if version == DIGEST_V1 {
            return self.block_stream();
        }
        for _ in 0..self.u16()? {
            self.chitchat_id()?;
            self.skip(NODE_DIGEST_LEN)?;
        }
        Ok(())
    }

    fn chitchat_id(&mut self) -> Result<(), InflationError> {
        let node_id_len = self.u16()?;
        self.skip(usize::from(node_id_len) + 8)?;
        let ip_len = match self.u8()? {
            4 => 4,
            6 => 16,
            other => return Err(InflationError::UnknownIpVersion(other)),
        };
        self.skip(ip_len + 2)
    }

    fn block_stream(&mut self) -> Result<(), InflationError> {
        loop {
            match self.u8()? {
                END_OF_BLOCKS => return Ok(()),
                COMPRESSED_BLOCK => {
                    let len = self.u16()?;
                    self.skip(usize::from(len))?;
                    self.count_inflated(MAX_BLOCK_INFLATED_LEN)?;
                }
                STORED_BLOCK => {
                    let len = usize::from(self.u16()?);
                    self.skip(len)?;
                    self.count_inflated(len)?;
                }
                other => return Err(InflationError::UnknownBlockTag(other)),
            }
        }
    }
}

/// Hand-built chitchat messages, for the tests of this module and of the
/// sealed transport.
#[cfg(test)]
pub(super) mod samples {
    use super::*;

    /// A zstd frame (RFC 8878) that inflates to `u16::MAX` zero bytes: a
    /// single-segment header with a 2-byte content size, then one RLE block.
    pub(crate) const ZSTD_FRAME_OF_65535_ZEROS: [u8; 11] = [
        0x28, 0xb5, 0x2f, 0xfd, // magic number
        0x60, // frame header descriptor: 2-byte content size, single segment
        0xff, 0xfe, // content size - 256 = 65,279
        0xfb, 0xff, 0x07, // block header: last block, RLE, 65,535 bytes
        0x00, // the repeated byte
    ];

    /// An Ack whose delta is `blocks` compressed blocks of
    /// [`ZSTD_FRAME_OF_65535_ZEROS`].
    pub(crate) fn ack_of_compressed_blocks(blocks: usize) -> Vec<u8> {
        let mut message = header(DIGEST_V0, ACK);
        for _ in 0..blocks {
            message.push(COMPRESSED_BLOCK);
            message.extend((ZSTD_FRAME_OF_65535_ZEROS.len() as u16).to_le_bytes());
            message.extend(ZSTD_FRAME_OF_65535_ZEROS);
        }
        message.push(END_OF_BLOCKS);
        message
    }

    /// The largest such Ack that still fits `max_len` bytes: a decompression
    /// bomb inflating to about 300 MB for 64 KB.
    pub(crate) fn decompression_bomb(max_len: usize) -> Vec<u8> {
        let block_len = 1 + 2 + ZSTD_FRAME_OF_65535_ZEROS.len();
        let blocks = (max_len - header(DIGEST_V0, ACK).len() - 1) / block_len;
        ack_of_compressed_blocks(blocks)
    }

    pub(crate) fn header(version: u8, message_type: u8) -> Vec<u8> {
        let mut message = CHITCHAT_MAGIC.to_le_bytes().to_vec();
        message.extend([version, message_type]);
        message
    }

    /// A V0 Syn with an empty digest.
    pub(crate) fn syn_v0(cluster_id: &str) -> Vec<u8> {
        let mut message = header(DIGEST_V0, SYN);
        message.extend(0u16.to_le_bytes());
        message.extend((cluster_id.len() as u16).to_le_bytes());
        message.extend(cluster_id.as_bytes());
        message
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;

    #[test]
    fn the_sample_zstd_frame_inflates_to_65535_zeros() {
        let inflated = zstd::bulk::decompress(&ZSTD_FRAME_OF_65535_ZEROS, 1 << 20).unwrap();
        assert_eq!(inflated, vec![0u8; 65_535]);
    }

    #[test]
    fn a_64_kb_decompression_bomb_is_refused() {
        let bomb = decompression_bomb(65_467);
        assert!(bomb.len() <= 65_467 && bomb.len() > 65_400, "{}", bomb.len());
        let blocks = (bomb.len() - 5) / 14;
        assert!(blocks * 65_535 > 300_000_000, "the sample bomb inflates to {} bytes", blocks * 65_535);
        assert_eq!(inflation_bound(&bomb), Err(InflationError::TooLarge));
    }

    #[test]
    fn compressed_blocks_count_at_65535_bytes_up_to_the_limit() {
        let most_blocks = MAX_INFLATED_LEN / MAX_BLOCK_INFLATED_LEN;
        assert_eq!(most_blocks, 128);
        assert_eq!(inflation_bound(&ack_of_compressed_blocks(most_blocks)), Ok(most_blocks * 65_535));
        assert_eq!(
            inflation_bound(&ack_of_compressed_blocks(most_blocks + 1)),
            Err(InflationError::TooLarge)
        );
    }

    #[test]
    fn bad_cluster_syn_and_stored_blocks_are_walked() {
        assert_eq!(inflation_bound(&header(DIGEST_V0, BAD_CLUSTER)), Ok(0));
        assert_eq!(inflation_bound(&syn_v0("cluster")), Ok(0));
        let mut syn_ack = header(DIGEST_V1, SYN_ACK);
        syn_ack.extend([STORED_BLOCK, 3, 0, 1, 2, 3, END_OF_BLOCKS]); // V1 digest
        syn_ack.extend([COMPRESSED_BLOCK, 2, 0, 9, 9, STORED_BLOCK, 1, 0, 7, END_OF_BLOCKS]); // delta
        assert_eq!(inflation_bound(&syn_ack), Ok(3 + 65_535 + 1));
    }

    #[test]
    fn v0_digest_entries_are_skipped_by_their_lengths() {
        let mut syn = header(DIGEST_V0, SYN);
        syn.extend(2u16.to_le_bytes());
        for (node_id, ip) in [("a", &[4u8, 127, 0, 0, 1][..]), ("node-b", &[6u8; 17][..])] {
            syn.extend((node_id.len() as u16).to_le_bytes());
            syn.extend(node_id.as_bytes());
            syn.extend(7u64.to_le_bytes());
            syn.extend(ip);
            syn.extend(7901u16.to_le_bytes());
            syn.extend([0u8; NODE_DIGEST_LEN]);
        }
        syn.extend(1u16.to_le_bytes());
        syn.push(b'c');
        assert_eq!(inflation_bound(&syn), Ok(0));
        let ip_version_at = 2 + 2 + 2 + 2 + 1 + 8;
        syn[ip_version_at] = 5;
        assert_eq!(inflation_bound(&syn), Err(InflationError::UnknownIpVersion(5)));
    }

    #[test]
    fn broken_structures_are_refused() {
        assert_eq!(inflation_bound(&[]), Err(InflationError::Truncated));
        assert_eq!(inflation_bound(&[0, 0, 0, 0]), Err(InflationError::NotChitchat));
        assert_eq!(inflation_bound(&header(2, ACK)), Err(InflationError::UnknownVersion(2)));
        assert_eq!(inflation_bound(&header(DIGEST_V0, 9)), Err(InflationError::UnknownMessageType(9)));
        assert_eq!(inflation_bound(&header(DIGEST_V0, ACK)), Err(InflationError::Truncated));
        let mut bad_tag = header(DIGEST_V0, ACK);
        bad_tag.push(3);
        assert_eq!(inflation_bound(&bad_tag), Err(InflationError::UnknownBlockTag(3)));
        let mut short_block = header(DIGEST_V0, ACK);
        short_block.extend([COMPRESSED_BLOCK, 10, 0, 1]);
        assert_eq!(inflation_bound(&short_block), Err(InflationError::Truncated));
    }
}
