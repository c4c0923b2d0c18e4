//! JWT verification (and minting, for `starling token` and tests).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// The claims Starling reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, shown as `user` in presence.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Glob patterns of rooms the user may join, e.g. `chat:*`. Absent: none.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Shown in presence as the member's `meta`; wins over a join's `meta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    /// A string or an array of strings (RFC 7519); checked by the verifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

impl Claims {
    /// Whether the token lets its holder into `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.iter().any(|pattern| super::glob_match(pattern, room))
    }
}

/// Why a token was refused. The text is safe to show to the client: it
/// never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("auth is not configured: {0}")]
    Config(String),
}

/// The longest user id accepted in `sub`.
const MAX_SUB_BYTES: usize = 128;

/// Verifies tokens against the configured key, algorithms, audience and issuer.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("algorithms", &self.validation.algorithms).finish()
    }
}

/// The algorithms accepted with this config, or why they do not fit its key.
pub fn algorithms_for(auth: &AuthConfig) -> Result<Vec<Algorithm>, String> {
    let hmac = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    let public = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
    ];
    let uses_public_key = auth.jwt_public_key_pem.is_some();
    if auth.jwt_algorithms.is_empty() {
        return Ok(match &auth.jwt_public_key_pem {
            None => vec![Algorithm::HS256],
            // The key's own type decides: ES256 for an EC key, else RS256.
            Some(pem) if DecodingKey::from_ec_pem(pem.as_bytes()).is_ok() => vec![Algorithm::ES256],
            Some(_) => vec![Algorithm::RS256],
        });
    }
    let mut algorithms = Vec::new();
    for name in &auth.jwt_algorithms {
        let algorithm: Algorithm =
            name.parse().map_err(|_| format!("unknown or unsupported algorithm `{name}`"))?;
        let fits = if uses_public_key { public.contains(&algorithm) } else { hmac.contains(&algorithm) };
        if !fits {
            let kind = if uses_public_key { "a public key" } else { "a shared secret" };
            return Err(format!("algorithm `{name}` does not work with {kind}"));
        }
        algorithms.push(algorithm);
    }
    if algorithms.iter().any(|a| a.family() != algorithms[0].family()) {
        return Err("all algorithms must be of one family (RS/PS or ES)".into());
    }
    Ok(algorithms)
}

impl JwtVerifier {
    pub fn new(auth: &AuthConfig) -> Result<JwtVerifier, AuthError> {
        let algorithms = algorithms_for(auth).map_err(AuthError::Config)?;
        let key = match (&auth.jwt_hs256_secret, &auth.jwt_public_key_pem) {
            (Some(secret), None) => DecodingKey::from_secret(secret.as_bytes()),
            (None, Some(pem)) => {
                let pem = pem.as_bytes();
                let key = if algorithms[0].family() == jsonwebtoken::AlgorithmFamily::Ec {
                    DecodingKey::from_ec_pem(pem)
                } else {
                    DecodingKey::from_rsa_pem(pem)
                };
                key.map_err(|e| AuthError::Config(format!("jwt_public_key_pem: {e}")))?
            }
            _ => return Err(AuthError::Config("exactly one token key must be set".into())),
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = auth.jwt_leeway_secs;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &auth.jwt_audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &auth.jwt_issuer {
            validation.set_issuer(&[issuer]);
        }
        Ok(JwtVerifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
                |error| match error.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        AuthError::Invalid("algorithm not allowed")
                    }
                    ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
                    ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
                    ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("missing required claim"),
                    _ => AuthError::Invalid("malformed token"),
                },
            )?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUB_BYTES {
            return Err(AuthError::Invalid("sub must be 1 to 128 bytes"));
        }
        Ok(claims)
    }
}

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub sub: String,
    pub rooms: Vec<String>,
    pub ttl: Duration,
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Signs an HS256 token with `secret`.
pub fn mint_token(secret: &str, request: &MintRequest) -> Result<String, AuthError> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: request.sub.clone(),
        exp: now + request.ttl.as_secs().max(1),
        rooms: request.rooms.clone(),
        meta: request.meta.clone(),
        aud: request.audience.clone().map(serde_json::Value::String),
        iss: request.issuer.clone(),
    };
    sign_claims(secret, &claims)
}

/// Signs any claims with HS256 (tests use it for expired or odd tokens).
pub fn sign_claims(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| AuthError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> AuthConfig {
        AuthConfig { jwt_hs256_secret: Some(SECRET.into()), ..AuthConfig::default() }
    }

    fn request(ttl: u64) -> MintRequest {
        MintRequest {
            sub: "alice".into(),
            rooms: vec!["chat:*".into()],
            ttl: Duration::from_secs(ttl),
            meta: None,
            audience: None,
            issuer: None,
        }
    }

    #[test]
    fn a_minted_token_verifies_and_grants_its_rooms() {
        let verifier = JwtVerifier::new(&auth()).unwrap();
        let claims = verifier.verify(&mint_token(SECRET, &request(60)).unwrap()).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!(claims.may_join("chat:lobby"));
        assert!(!claims.may_join("admin:x"));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let verifier = JwtVerifier::new(&auth()).unwrap();
        let other = mint_token("another-secret-another-secret-xx", &request(60)).unwrap();
        assert_eq!(verifier.verify(&other).unwrap_err(), AuthError::Invalid("bad signature"));
        assert_eq!(verifier.verify("").unwrap_err(), AuthError::Missing);
        assert_eq!(verifier.verify("a.b.c").unwrap_err(), AuthError::Invalid("malformed token"));
        // alg: none, with an empty signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(verifier.verify(none).unwrap_err(), AuthError::Invalid(_)));
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let mut config = auth();
        config.jwt_audience = Some("starling".into());
        let verifier = JwtVerifier::new(&config).unwrap();
        let mut wrong = request(60);
        wrong.audience = Some("someone-else".into());
        let token = mint_token(SECRET, &wrong).unwrap();
        assert_eq!(verifier.verify(&token).unwrap_err(), AuthError::Invalid("wrong audience"));
        let mut right = request(60);
        right.audience = Some("starling".into());
        assert!(verifier.verify(&mint_token(SECRET, &right).unwrap()).is_ok());
        // An array `aud` containing ours is accepted too.
        let claims = Claims {
            sub: "alice".into(),
            exp: jsonwebtoken::get_current_timestamp() + 60,
            rooms: vec![],
            meta: None,
            aud: Some(serde_json::json!(["other", "starling"])),
            iss: None,
        };
        assert!(verifier.verify(&sign_claims(SECRET, &claims).unwrap()).is_ok());
    }

    #[test]
    fn algorithm_lists_must_fit_the_key() {
        let mut config = auth();
        config.jwt_algorithms = vec!["RS256".into()];
        assert!(algorithms_for(&config).unwrap_err().contains("shared secret"));
        config.jwt_algorithms = vec!["none".into()];
        assert!(algorithms_for(&config).is_err());
        config.jwt_algorithms = vec!["HS512".into()];
        assert_eq!(algorithms_for(&config).unwrap(), vec![Algorithm::HS512]);
        let mut public = AuthConfig { jwt_public_key_pem: Some("x".into()), ..AuthConfig::default() };
        public.jwt_algorithms = vec!["RS256".into(), "PS256".into()];
        assert!(algorithms_for(&public).is_ok(), "RS and PS are one family");
        public.jwt_algorithms = vec!["RS256".into(), "ES256".into()];
        assert!(algorithms_for(&public).is_err());
    }
}
