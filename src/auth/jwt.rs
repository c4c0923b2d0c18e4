//! JWT verification (and minting, for `starling token` and tests).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// The claims Starling reads from a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, shown as `user` in presence.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch. Required when
    /// `auth.max_token_ttl_s` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
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
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("auth is not configured: {0}")]
    Config(String),
}

/// The longest user id accepted in `sub`.
const MAX_SUB_BYTES: usize = 128;

/// Verifies tokens against the configured key, algorithms, audience and
/// issuer, then their time claims.
pub struct JwtVerifier {
    key: DecodingKey,
    /// Signature, algorithm, `aud` and `iss`; times are checked by `TimeRules`.
    validation: Validation,
    times: TimeRules,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("algorithms", &self.validation.algorithms).finish()
    }
}

/// The algorithms accepted with this config, or why they do not fit its key
/// (`AuthConfig::check_jwt_algorithms`, the check config validation makes).
pub fn algorithms_for(auth: &AuthConfig) -> Result<Vec<Algorithm>, String> {
    if auth.jwt_algorithms.is_empty() {
        return Ok(match &auth.jwt_public_key_pem {
            None => vec![Algorithm::HS256],
            // The key's own type decides: ES256 for an EC key, else RS256.
            Some(pem) if DecodingKey::from_ec_pem(pem.as_bytes()).is_ok() => vec![Algorithm::ES256],
            Some(_) => vec![Algorithm::RS256],
        });
    }
    auth.check_jwt_algorithms()?;
    auth.jwt_algorithms
        .iter()
        .map(|name| name.parse().map_err(|_| format!("unknown or unsupported algorithm `{name}`")))
        .collect()
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
        // Time claims are checked here, with checked arithmetic and their
        // own reasons (see `TimeRules`).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["sub"]);
        match &auth.jwt_audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &auth.jwt_issuer {
            validation.set_issuer(&[issuer]);
        }
        let times = TimeRules { leeway: auth.jwt_leeway_secs, max_ttl: auth.max_token_ttl_s };
        Ok(JwtVerifier { key, validation, times })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// [`JwtVerifier::verify`] with `now` (seconds since the Unix epoch) given.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::Invalid("algorithm not allowed")
            }
            ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
            ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
            ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("missing required claim"),
            _ => AuthError::Invalid("malformed token"),
        })?;
        let times = TokenTimes::read(&data.claims)?;
        self.times.check(&times, now)?;
        let claims: Claims = serde_json::from_value(serde_json::Value::Object(data.claims))
            .map_err(|_| AuthError::Invalid("malformed token"))?;
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUB_BYTES {
            return Err(AuthError::Invalid("sub must be 1 to 128 bytes"));
        }
        Ok(claims)
    }
}

/// The time claims of a token, each a whole number of seconds since the
/// Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenTimes {
    exp: u64,
    nbf: Option<u64>,
    iat: Option<u64>,
}

impl TokenTimes {
    /// Reads `exp` (required), `nbf` and `iat`. Anything but a whole number
    /// from 0 to 2^64-1 (a fraction, a negative or larger number, a string)
    /// is refused with the claim's name.
    fn read(claims: &serde_json::Map<String, serde_json::Value>) -> Result<TokenTimes, AuthError> {
        let read = |name: &str, format_error: &'static str| match claims.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or(AuthError::Invalid(format_error)),
        };
        let exp = read("exp", "exp must be a whole number of seconds")?
            .ok_or(AuthError::Invalid("missing required claim"))?;
        let nbf = read("nbf", "nbf must be a whole number of seconds")?;
        let iat = read("iat", "iat must be a whole number of seconds")?;
        Ok(TokenTimes { exp, nbf, iat })
    }
}

/// How time claims are judged: `leeway` seconds of clock skew either way,
/// and an optional longest lifetime. All arithmetic saturates.
#[derive(Debug, Clone, Copy)]
struct TimeRules {
    leeway: u64,
    max_ttl: Option<u64>,
}

impl TimeRules {
    fn check(&self, times: &TokenTimes, now: u64) -> Result<(), AuthError> {
        if times.exp.saturating_add(self.leeway) < now {
            return Err(AuthError::Expired);
        }
        let latest_valid_start = now.saturating_add(self.leeway);
        if times.nbf.is_some_and(|nbf| nbf > latest_valid_start) {
            return Err(AuthError::NotYetValid);
        }
        if times.iat.is_some_and(|iat| iat > latest_valid_start) {
            return Err(AuthError::Invalid("issued in the future"));
        }
        if let Some(max_ttl) = self.max_ttl {
            let iat = times.iat.ok_or(AuthError::Invalid("iat is required"))?;
            if times.exp.saturating_sub(iat) > max_ttl {
                return Err(AuthError::Invalid("lifetime (exp - iat) is over the maximum"));
            }
        }
        Ok(())
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
        exp: now.saturating_add(request.ttl.as_secs().max(1)),
        nbf: None,
        iat: Some(now),
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
    use crate::config::{JwtAlgorithmFamily, JWT_ALGORITHMS};

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
            aud: Some(serde_json::json!(["other", "starling"])),
            ..Claims::default()
        };
        assert!(verifier.verify(&sign_claims(SECRET, &claims).unwrap()).is_ok());
    }

    /// Signs any JSON as the claims, to try values `Claims` cannot hold.
    fn sign_json(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn nbf_and_iat_are_checked_with_the_leeway() {
        let mut config = auth();
        config.jwt_leeway_secs = 30;
        let verifier = JwtVerifier::new(&config).unwrap();
        let verify = |claims| verifier.verify_at(&sign_json(claims), NOW);
        let exp = NOW + 600;
        assert!(verify(serde_json::json!({"sub": "a", "exp": exp, "nbf": NOW + 30, "iat": NOW + 30})).is_ok());
        assert_eq!(
            verify(serde_json::json!({"sub": "a", "exp": exp, "nbf": NOW + 31})).unwrap_err(),
            AuthError::NotYetValid
        );
        assert_eq!(
            verify(serde_json::json!({"sub": "a", "exp": exp, "iat": NOW + 31})).unwrap_err(),
            AuthError::Invalid("issued in the future")
        );
        assert!(verify(serde_json::json!({"sub": "a", "exp": NOW - 30})).is_ok(), "within the leeway");
        assert_eq!(verify(serde_json::json!({"sub": "a", "exp": NOW - 31})).unwrap_err(), AuthError::Expired);
        assert_eq!(
            verify(serde_json::json!({"sub": "a"})).unwrap_err(),
            AuthError::Invalid("missing required claim")
        );
        assert_eq!(AuthError::NotYetValid.to_string(), "token not yet valid", "the 401 body a client sees");
    }

    #[test]
    fn a_maximum_lifetime_needs_iat_and_bounds_exp_minus_iat() {
        let mut config = auth();
        config.max_token_ttl_s = Some(3600);
        let verifier = JwtVerifier::new(&config).unwrap();
        let verify = |claims| verifier.verify_at(&sign_json(claims), NOW);
        assert!(verify(serde_json::json!({"sub": "a", "iat": NOW, "exp": NOW + 3600})).is_ok());
        assert_eq!(
            verify(serde_json::json!({"sub": "a", "iat": NOW, "exp": NOW + 3601})).unwrap_err(),
            AuthError::Invalid("lifetime (exp - iat) is over the maximum")
        );
        assert_eq!(
            verify(serde_json::json!({"sub": "a", "exp": NOW + 60})).unwrap_err(),
            AuthError::Invalid("iat is required")
        );
        // Minted tokens carry `iat`, so they pass when their ttl fits.
        let minted = mint_token(SECRET, &request(600)).unwrap();
        assert!(verifier.verify(&minted).is_ok());
    }

    #[test]
    fn extreme_time_claims_are_refused_or_accepted_without_overflow() {
        let mut config = auth();
        config.max_token_ttl_s = Some(60);
        config.jwt_leeway_secs = u64::MAX;
        let huge_leeway = JwtVerifier::new(&config).unwrap();
        let plain = JwtVerifier::new(&auth()).unwrap();
        let extremes = [
            serde_json::json!(u64::MAX),
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(i64::MIN),
            serde_json::json!(1.5),
            serde_json::json!(1e300),
            serde_json::json!(-1e300),
            serde_json::json!("1800000000"),
            serde_json::json!([1]),
            serde_json::from_str::<serde_json::Value>("18446744073709551616").unwrap(),
        ];
        for value in &extremes {
            for field in ["exp", "nbf", "iat"] {
                let mut claims = serde_json::json!({"sub": "a", "exp": NOW + 60, "iat": NOW});
                claims[field] = value.clone();
                let token = sign_json(claims);
                for verifier in [&plain, &huge_leeway] {
                    for now in [0, NOW, u64::MAX] {
                        // Any answer will do; it must not panic.
                        let _ = verifier.verify_at(&token, now);
                    }
                }
            }
        }
        let far = sign_json(serde_json::json!({"sub": "a", "exp": u64::MAX}));
        assert_eq!(plain.verify_at(&far, NOW).unwrap().exp, u64::MAX);
        let fraction = sign_json(serde_json::json!({"sub": "a", "exp": 1.5e9}));
        assert_eq!(
            plain.verify_at(&fraction, NOW).unwrap_err(),
            AuthError::Invalid("exp must be a whole number of seconds")
        );
        let negative = sign_json(serde_json::json!({"sub": "a", "exp": NOW + 60, "nbf": -1}));
        assert_eq!(
            plain.verify_at(&negative, NOW).unwrap_err(),
            AuthError::Invalid("nbf must be a whole number of seconds")
        );
        let ttl = sign_json(serde_json::json!({"sub": "a", "exp": u64::MAX, "iat": 0}));
        assert_eq!(
            huge_leeway.verify_at(&ttl, u64::MAX).unwrap_err(),
            AuthError::Invalid("lifetime (exp - iat) is over the maximum")
        );
    }

    #[test]
    fn config_algorithm_names_are_the_libraries_with_the_same_family() {
        for (name, family) in JWT_ALGORITHMS {
            let algorithm: Algorithm =
                name.parse().unwrap_or_else(|_| panic!("jsonwebtoken knows no `{name}`"));
            let expected = match family {
                JwtAlgorithmFamily::Hmac => jsonwebtoken::AlgorithmFamily::Hmac,
                JwtAlgorithmFamily::Rsa => jsonwebtoken::AlgorithmFamily::Rsa,
                JwtAlgorithmFamily::Ec => jsonwebtoken::AlgorithmFamily::Ec,
                JwtAlgorithmFamily::Ed => jsonwebtoken::AlgorithmFamily::Ed,
            };
            assert_eq!(algorithm.family(), expected, "{name}");
        }
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
