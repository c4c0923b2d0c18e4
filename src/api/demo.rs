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

pub fn page(state: &ApiState) -> Option<Response> {
    state.gateway.config.api.demo.then(|| {
        let ws_url = format!("ws://{}/ws", state.client_addr);
        warp::reply::html(PAGE.replace("{{WS_URL}}", &ws_url)).into_response()
    })
}

/// `GET /starling.js`: the JavaScript client the demo page imports.
pub fn client_js(state: &ApiState) -> Option<Response> {
    state.gateway.config.api.demo.then(|| {
        warp::reply::with_header(CLIENT_JS, "content-type", "text/javascript; charset=utf-8").into_response()
    })
}

/// `GET /dev/token?user=NAME`: a one-hour token for `chat:*`.
pub fn token(state: &ApiState, user: Option<&str>) -> Option<Response> {
    let secret = state.demo_secret.as_deref().filter(|_| state.gateway.config.api.demo)?;
    let user: String = user
        .unwrap_or("guest")
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    let user = if user.is_empty() { "guest".to_string() } else { user };
    let request = MintRequest {
        sub: user,
        rooms: vec!["chat:*".into()],
        ttl: Duration::from_secs(3600),
        meta: None,
        audience: state.gateway.config.auth.jwt_audience.clone(),
        issuer: state.gateway.config.auth.jwt_issuer.clone(),
    };
    let token = mint_token(secret, &request).ok()?;
    Some(warp::reply::json(&serde_json::json!({ "token": token })).into_response())
}
