//! Who may connect and what they may do: JWT verification, the Origin
//! allow-list, room permissions from token globs, and the API key.
//!
//! This module decides; it never touches sockets. The gateway asks it before
//! a WebSocket upgrade, the API asks it on every request. No token or key is
//! ever logged from here.

mod glob;
mod jwt;
mod origin;

pub use glob::glob_match;
pub use jwt::{algorithms_for, mint_token, sign_claims, AuthError, Claims, JwtVerifier, MintRequest};
pub use origin::OriginPolicy;

/// `hex(HMAC-SHA256(secret, text))`: Pusher's signature of channel
/// authorisations, API requests and webhooks.
pub fn hmac_sha256_hex(secret: &str, text: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Compares an offered API key with the configured one in constant time.
pub fn api_key_matches(offered: &str, expected: &str) -> bool {
    let (a, b) = (offered.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_keys_must_match_exactly() {
        assert!(super::api_key_matches("abc", "abc"));
        assert!(!super::api_key_matches("abd", "abc"));
        assert!(!super::api_key_matches("ab", "abc"));
    }
}
