//! Pusher's signatures: HMAC-SHA256 in lowercase hex, keyed by the app's
//! secret, over channel authorisations, user sign-ins, API requests and
//! webhooks. Signatures are compared in constant time.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::config::AppConfig;

type HmacSha256 = Hmac<Sha256>;

/// `hex(HMAC-SHA256(secret, text))`.
pub fn sign(secret: &str, text: &str) -> String {
    crate::auth::hmac_sha256_hex(secret, text)
}

/// Whether `signature` (hex, any case) is `sign(secret, text)`.
pub fn verify(secret: &str, text: &str, signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(text.as_bytes());
    mac.verify_slice(&signature).is_ok()
}

/// Whether `auth` (`key:signature`) authorises `socket_id` on `channel`:
/// the signature is over `socket_id:channel`, with `:channel_data` for a
/// presence channel.
pub fn channel_auth_ok(
    app: &AppConfig,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    let text = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    key == app.key && verify(&app.secret, &text, signature)
}

/// Whether `auth` (`key:signature`) signs in `socket_id` as `user_data`:
/// the signature is over `socket_id::user::user_data`.
pub fn signin_auth_ok(app: &AppConfig, socket_id: &str, user_data: &str, auth: &str) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    key == app.key && verify(&app.secret, &format!("{socket_id}::user::{user_data}"), signature)
}

/// How far an API request's `auth_timestamp` may be from the server's clock.
pub const API_TIMESTAMP_WINDOW_SECS: u64 = 600;

/// Why a signed API request was refused (401, with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiAuthError {
    #[error("Missing parameter: {0}")]
    Missing(&'static str),
    #[error("Unknown auth_key")]
    UnknownKey,
    #[error("Unsupported auth_version: must be 1.0")]
    Version,
    #[error("Timestamp expired: given timestamp ({given}) not within {API_TIMESTAMP_WINDOW_SECS}s of server time ({now})")]
    Stale { given: String, now: u64 },
    #[error("Invalid body_md5: the MD5 of the body is {expected}")]
    BodyMd5 { expected: String },
    #[error("Invalid signature: expected HMAC-SHA256 hex digest of {signed:?}")]
    Signature { signed: String },
}

/// A request of the HTTP API as signed: its method, path, the query's
/// parameters (percent-decoded, in any order) and its body.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Checks an API request's signature as Pusher's server SDKs make it: the
/// HMAC of `METHOD\npath\nquery`, where the query is every parameter but
/// `auth_signature`, keys lowercased, sorted by key, `key=value` joined
/// by `&`; `body_md5` must be the body's MD5 when there is a body.
pub fn check_api_request(
    app: &AppConfig,
    request: &SignedRequest<'_>,
    now_unix: u64,
) -> Result<(), ApiAuthError> {
    let param = |name: &str| request.query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let key = param("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    let timestamp = param("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let version = param("auth_version").ok_or(ApiAuthError::Missing("auth_version"))?;
    let signature = param("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    if *key != app.key {
        return Err(ApiAuthError::UnknownKey);
    }
    if version != "1.0" {
        return Err(ApiAuthError::Version);
    }
    let fresh = timestamp.parse::<u64>().is_ok_and(|t| t.abs_diff(now_unix) <= API_TIMESTAMP_WINDOW_SECS);
    if !fresh {
        return Err(ApiAuthError::Stale { given: timestamp.clone(), now: now_unix });
    }
    if !request.body.is_empty() {
        let expected = hex::encode(Md5::digest(request.body));
        match param("body_md5") {
            Some(given) if given.eq_ignore_ascii_case(&expected) => {}
            _ => return Err(ApiAuthError::BodyMd5 { expected }),
        }
    }
    let mut pairs: Vec<(String, &str)> = request
        .query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let signed = format!("{}\n{}\n{}", request.method.to_ascii_uppercase(), request.path, query.join("&"));
    if !verify(&app.secret, &signed, signature) {
        return Err(ApiAuthError::Signature { signed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        query.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn app() -> AppConfig {
        AppConfig::with_defaults("app-1", "278d425bdf160c739803", "7ad3773142a6692b25b8")
    }

    /// The worked examples of Pusher's authentication docs.
    #[test]
    fn channel_signatures_match_pushers_documented_examples() {
        let app = app();
        let private = "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert!(channel_auth_ok(&app, "1234.1234", "private-foobar", None, private));
        assert!(!channel_auth_ok(&app, "1234.1235", "private-foobar", None, private), "another socket");
        assert!(!channel_auth_ok(&app, "1234.1234", "private-foobaz", None, private), "another channel");
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let presence =
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80";
        assert!(channel_auth_ok(&app, "1234.1234", "presence-foobar", Some(data), presence));
        assert!(!channel_auth_ok(&app, "1234.1234", "presence-foobar", Some("{}"), presence), "other data");
        assert!(!channel_auth_ok(&app, "1234.1234", "private-foobar", None, "no-colon"));
        assert!(!channel_auth_ok(&app, "1234.1234", "private-foobar", None, "278d425bdf160c739803:zz"));
    }

    #[test]
    fn an_api_request_is_checked_as_the_sdks_sign_it() {
        let app = app();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = hex::encode(Md5::digest(body));
        let unsigned =
            format!("auth_key={}&auth_timestamp=1353088179&auth_version=1.0&body_md5={md5}", app.key);
        let signature = sign(&app.secret, &format!("POST\n/apps/app-1/events\n{unsigned}"));
        let signed = pairs(&format!("{unsigned}&auth_signature={signature}"));
        let request = SignedRequest { method: "POST", path: "/apps/app-1/events", query: &signed, body };
        assert_eq!(check_api_request(&app, &request, 1353088179 + 599), Ok(()));
        assert!(matches!(
            check_api_request(&app, &request, 1353088179 + 601),
            Err(ApiAuthError::Stale { .. })
        ));
        let tampered = SignedRequest { body: b"{}", ..request };
        assert!(matches!(check_api_request(&app, &tampered, 1353088179), Err(ApiAuthError::BodyMd5 { .. })));
        let other_path = SignedRequest { path: "/apps/app-1/batch_events", ..request };
        assert!(matches!(
            check_api_request(&app, &other_path, 1353088179),
            Err(ApiAuthError::Signature { .. })
        ));
        let no_key = pairs("auth_timestamp=1&auth_version=1.0&auth_signature=00");
        let missing = SignedRequest { query: &no_key, ..request };
        assert_eq!(check_api_request(&app, &missing, 1), Err(ApiAuthError::Missing("auth_key")));
    }
}
