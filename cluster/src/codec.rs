//! The one place node-to-node data is encoded: bincode 2 (serde mode) with
//! the standard configuration. The Raft log on disk and every peer frame use
//! it, so the format can be changed here and nowhere else.
//!
//! Every decode is bounded: bincode is told how many bytes the value may
//! claim (strings, byte buffers) before it allocates, so a length prefix of
//! 2^62 is an error, never an allocation; sequences are preallocated by
//! serde at most 1 MiB whatever they claim, and grow only with the bytes
//! actually present. The limit does not change the encoding.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("decode left {0} trailing bytes")]
    Trailing(usize),
}

/// The most memory one decode may claim: the largest peer frame.
pub const MAX_DECODE_BYTES: usize = 64 << 20;

/// The most memory a decode of unauthenticated input (a handshake) may claim.
pub const MAX_SMALL_DECODE_BYTES: usize = 64 << 10;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn limited<const LIMIT: usize>() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
> {
    bincode::config::standard().with_limit::<LIMIT>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Decodes exactly one value, claiming at most [`MAX_DECODE_BYTES`];
/// trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, limited::<MAX_DECODE_BYTES>())?;
    exactly(bytes, used)?;
    Ok(value)
}

/// Like [`decode`], claiming at most [`MAX_SMALL_DECODE_BYTES`]: for input
/// from a peer that has not authenticated yet.
pub fn decode_small<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, limited::<MAX_SMALL_DECODE_BYTES>())?;
    exactly(bytes, used)?;
    Ok(value)
}

fn exactly(bytes: &[u8], used: usize) -> Result<(), CodecError> {
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_trailing_bytes_are_refused() {
        let value = (7u64, "room".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&value).unwrap();
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes).unwrap(), value);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode::<(u64, String, Vec<u8>)>(&longer), Err(CodecError::Trailing(1))));
        assert!(decode::<(u64, String, Vec<u8>)>(&bytes[..2]).is_err());
    }

    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_allocation() {
        // A string claiming 2^62 bytes: varint tag 0xfd then a u64.
        let mut bytes = vec![0xfd];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(matches!(decode::<String>(&bytes), Err(CodecError::Decode(_))));
        // Within the big limit but over the small one.
        let mut bytes = vec![0xfc];
        bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(matches!(decode_small::<Vec<u8>>(&bytes), Err(CodecError::Decode(_))));
    }
}
