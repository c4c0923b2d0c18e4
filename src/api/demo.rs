//! The dev-mode demo page: a chat room with a live member list, the
//! JavaScript client it runs on (`clients/js/src/starling.js`, served as is),
//! and the token endpoint it uses. All answer 404 unless `api.demo` is on.

use std::time::Duration;

use warp::reply::Response;
use warp::Reply;

use super::ApiState;
use crate::auth::{mint_token, MintRequest};

const PAGE: &str = include_str!("demo.html");
/// The browser client, an ES module with no dependencies and no build step.
const CLIENT_JS: &str = include_str!("../../clients/js/src/starling.js");

/// `GET /`: the demo page. Its WebSocket URL is the client listener's
/// address; when that listener is bound to every interface (0.0.0.0 or ::)
/// the host comes from the request's `Host` header instead (only a plain
/// host name or address is taken from it).
pub fn page(state: &ApiState, host: Option<&str>) -> Option<Response> {
    state.gateway.config.api.demo.then(|| {
        let ws_url = ws_url(state.client_addr, host, state.tls);
        warp::reply::html(PAGE.replace("{{WS_URL}}", &ws_url)).into_response()
    })
}

fn ws_url(client: std::net::SocketAddr, host: Option<&str>, tls: bool) -> String {
    let scheme = if tls { "wss" } else { "ws" };
    let from_header = host
        .map(|h| match h.strip_prefix('[') {
            Some(v6) => v6.split(']').next().map(|a| format!("[{a}]")).unwrap_or_default(),
            None => h.split(':').next().unwrap_or_default().to_string(),
        })
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)));
    match from_header {
        Some(host) if client.ip().is_unspecified() => format!("{scheme}://{host}:{}/ws", client.port()),
        _ => format!("{scheme}://{client}/ws"),
    }
}

/// `GET /starling.js`: the JavaScript client the demo page imports.
pub fn client_js(state: &ApiState) -> Option<Response> {
    state.gateway.config.api.demo.then(|| {
        warp::reply::with_header(CLIENT_JS, "content-type", "text/javascript; charset=utf-8").into_response()
    })
}

/// The most characters of a demo user name: 32 characters of at most 4
/// UTF-8 bytes each stay within the 128 bytes a token's `sub` may have.
const MAX_NAME_CHARS: usize = 32;

/// `GET /dev/token?user=NAME`: a one-hour token for `chat:*`.
pub fn token(state: &ApiState, user: Option<&str>) -> Option<Response> {
    let secret = state.demo_secret.as_deref().filter(|_| state.gateway.config.api.demo)?;
    let request = MintRequest {
        sub: demo_user(user),
        rooms: vec!["chat:*".into()],
        ttl: Duration::from_secs(3600),
        meta: None,
        audience: state.gateway.config.auth.jwt_audience.clone(),
        issuer: state.gateway.config.auth.jwt_issuer.clone(),
    };
    let token = mint_token(secret, &request).ok()?;
    Some(warp::reply::json(&serde_json::json!({ "token": token })).into_response())
}

/// The user id for a requested demo name: the name as typed (spaces,
/// punctuation and any script included), trimmed, without control
/// characters (they could forge lines in a plain-text log) and cut to
/// [`MAX_NAME_CHARS`]; `guest` when nothing is left. The page reports any
/// change to the user.
fn demo_user(requested: Option<&str>) -> String {
    let user: String = requested
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_NAME_CHARS)
        .collect();
    match user.trim_end() {
        "" => "guest".to_string(),
        kept => kept.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{demo_user, ws_url};

    #[test]
    fn a_demo_name_is_kept_as_typed_within_the_sub_limit() {
        assert_eq!(demo_user(Some("Ann Lee")), "Ann Lee");
        assert_eq!(demo_user(Some("Zoë O'Brien-Smith")), "Zoë O'Brien-Smith");
        assert_eq!(demo_user(Some("  ann  ")), "ann");
        // Control characters go: a name cannot start a new log line.
        assert_eq!(demo_user(Some("ann\nlee\t")), "annlee");
        assert_eq!(demo_user(Some("")), "guest");
        assert_eq!(demo_user(Some(" \u{7} ")), "guest");
        assert_eq!(demo_user(None), "guest");
        // 32 characters at most, so at most 128 bytes: a token's `sub` limit.
        let long = "\u{1F600}".repeat(40);
        assert_eq!(demo_user(Some(&long)).chars().count(), 32);
        assert_eq!(demo_user(Some(&long)).len(), 128);
        // Cutting never leaves a trailing space.
        assert_eq!(demo_user(Some(&format!("{} tail", "a".repeat(31)))), "a".repeat(31));
    }

    #[test]
    fn the_page_points_at_a_reachable_client_listener() {
        let any = "0.0.0.0:7601".parse().unwrap();
        let local = "127.0.0.1:7601".parse().unwrap();
        assert_eq!(ws_url(local, Some("example.org:7701"), false), "ws://127.0.0.1:7601/ws");
        assert_eq!(ws_url(any, Some("example.org:7701"), false), "ws://example.org:7601/ws");
        assert_eq!(ws_url(any, Some("[::1]:7701"), false), "ws://[::1]:7601/ws");
        // Anything but a host name or address is not reflected into the page.
        assert_eq!(ws_url(any, Some("x\"><script>"), false), "ws://0.0.0.0:7601/ws");
        assert_eq!(ws_url(any, None, false), "ws://0.0.0.0:7601/ws");
        // An https page may only open wss:// sockets.
        assert_eq!(ws_url(local, None, true), "wss://127.0.0.1:7601/ws");
    }
}
