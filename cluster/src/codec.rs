//! The one place node-to-node data is encoded: bincode 2 (serde mode) with
//! the standard configuration. The Raft log on disk and every peer frame use
//! it, so the format can be changed here and nowhere else.

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

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Decodes exactly one value; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
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
}
