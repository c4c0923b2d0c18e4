//! `GossipKey`: the cluster's symmetric gossip key and its text form.
//!
//! Owns parsing (standard base64 of exactly 32 bytes), generation and
//! formatting. Must never put the key, or any part of the text it was parsed
//! from, in an error message or a `Debug` output.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The 32-byte key that seals a cluster's gossip. Every node of a cluster
/// has the same one. `Debug` prints no part of it.
#[derive(Clone)]
pub struct GossipKey([u8; GossipKey::LEN]);

/// Why a text is not a gossip key. Messages never quote the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipKeyError {
    #[error("gossip key is empty")]
    Empty,
    #[error("gossip key is not standard base64")]
    NotBase64,
    #[error("gossip key must decode to {expected} bytes, not {actual}", expected = GossipKey::LEN)]
    WrongLength { actual: usize },
}

impl GossipKey {
    /// Key length in bytes.
    pub const LEN: usize = 32;

    /// Parses standard base64 (with padding) of exactly [`Self::LEN`] bytes;
    /// surrounding whitespace, such as a key file's final newline, is ignored.
    pub fn parse(text: &str) -> Result<GossipKey, GossipKeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(GossipKeyError::Empty);
        }
        // The decode error names the offending character: it is not passed on.
        let bytes = STANDARD.decode(text).map_err(|_| GossipKeyError::NotBase64)?;
        let key = <[u8; GossipKey::LEN]>::try_from(bytes.as_slice())
            .map_err(|_| GossipKeyError::WrongLength { actual: bytes.len() })?;
        Ok(GossipKey(key))
    }

    /// A new random key (from the thread-local CSPRNG, seeded by the OS).
    pub fn generate() -> GossipKey {
        GossipKey(rand::random())
    }

    /// The key as standard base64, the form [`Self::parse`] reads.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(super) fn as_bytes(&self) -> &[u8; GossipKey::LEN] {
        &self.0
    }
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_base64_and_differ() {
        let key = GossipKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(GossipKey::parse(&format!("  {text}\n")).unwrap().as_bytes(), key.as_bytes());
        assert_ne!(GossipKey::generate().as_bytes(), key.as_bytes());
    }

    #[test]
    fn wrong_lengths_are_refused_with_the_length_only() {
        let short = STANDARD.encode([7u8; 16]);
        assert_eq!(GossipKey::parse(&short).unwrap_err(), GossipKeyError::WrongLength { actual: 16 });
        let long = STANDARD.encode([7u8; 33]);
        let error = GossipKey::parse(&long).unwrap_err();
        assert_eq!(error.to_string(), "gossip key must decode to 32 bytes, not 33");
    }

    #[test]
    fn text_that_is_not_base64_is_refused_without_being_echoed() {
        for text in ["not a key!", "c2VjcmV0LWtleS1tYXRlcmlhbA", "abc$defg", "-_-_"] {
            let error = GossipKey::parse(text).unwrap_err();
            assert_eq!(error, GossipKeyError::NotBase64, "{text}");
            assert!(!error.to_string().contains(text));
        }
        assert_eq!(GossipKey::parse(" \n").unwrap_err().to_string(), "gossip key is empty");
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = GossipKey::parse(&STANDARD.encode([0xab; 32])).unwrap();
        assert_eq!(format!("{key:?}"), "GossipKey(<redacted>)");
        assert_eq!(format!("{key:#?}"), "GossipKey(<redacted>)");
    }
}
