//! The HTTP side of a node (warp, on `listen.api`): the server API, health,
//! readiness, Prometheus metrics, the admin dashboard and its JSON
//! endpoints, and in dev mode the demo page.
//!
//! Handlers translate HTTP into calls on the gateway, hub and replicator and
//! back; they hold no state of their own, except the admin dashboard's
//! recent readings of counters, kept only to turn them into rates. Every error body is
//! `{"error":{"code","message"}}` with a code from the wire contract.

mod admin;
mod demo;
mod handlers;
mod pusher;
mod server;
mod stats;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::gateway::Gateway;
use crate::protocol::ErrorCode;
use crate::telemetry::MetricsHandle;

pub use admin::{AdminState, DEFAULT_ROOM_LIMIT, MAX_ROOM_LIMIT};
pub use server::serve;

/// What the handlers need.
pub struct ApiState {
    pub gateway: Arc<Gateway>,
    pub metrics: MetricsHandle,
    pub api_key: String,
    /// The token secret, present only when the demo page is on (dev mode),
    /// to mint tokens for the demo page.
    pub demo_secret: Option<String>,
    /// The bound client listener, for the demo page's WebSocket URL.
    pub client_addr: std::net::SocketAddr,
    /// Whether the listeners speak TLS (`wss://`, `https://`).
    pub tls: bool,
    /// In a cluster: the Raft group and gossip, for `/api/cluster`.
    pub cluster:
        Option<(Arc<starling_cluster::raft::RaftGroup>, Arc<starling_cluster::membership::Membership>)>,
    /// In a cluster: the peer links, for their metrics.
    pub links: Option<Arc<crate::forward::PeerLinks>>,
    /// What the admin dashboard's endpoints keep between requests.
    pub admin: AdminState,
}

/// All routes of the API listener.
pub fn routes(state: Arc<ApiState>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let body_limit = state.gateway.config.limits.max_message_bytes as u64 + 1024;
    let authorized = with_state.clone().and(warp::header::optional::<String>("authorization")).and_then(
        |state: Arc<ApiState>, header: Option<String>| async move {
            if handlers::authorized(&state, header.as_deref()) {
                Ok(state)
            } else {
                Err(warp::reject::custom(Unauthorized))
            }
        },
    );
    let json_body = warp::body::content_length_limit(body_limit).and(warp::body::bytes());

    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok".into_response());
    let readyz = warp::path!("readyz").and(warp::get()).and(with_state.clone()).map(handlers::readyz);
    let metrics = warp::path!("metrics").and(warp::get()).and(with_state.clone()).map(handlers::metrics);
    let publish = warp::path!("api" / "publish")
        .and(warp::post())
        .and(authorized.clone())
        .and(json_body)
        .and(warp::header::optional::<String>("traceparent"))
        .then(|state: Arc<ApiState>, body: Bytes, traceparent: Option<String>| async move {
            handlers::publish(&state, &body, traceparent.as_deref()).await
        });
    let presence = warp::path!("api" / "rooms" / String / "presence")
        .and(warp::get())
        .and(authorized.clone())
        .then(|room: String, state: Arc<ApiState>| async move { handlers::presence(&state, &room).await });
    let room = warp::path!("api" / "rooms" / String)
        .and(warp::get())
        .and(authorized.clone())
        .then(|room: String, state: Arc<ApiState>| async move { handlers::room(&state, &room).await });
    let history = warp::path!("api" / "rooms" / String / "history")
        .and(warp::get())
        .and(authorized.clone())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .map(|room: String, state: Arc<ApiState>, query: std::collections::HashMap<String, String>| {
            handlers::history(&state, &room, &query)
        });
    let cluster = warp::path!("api" / "cluster")
        .and(warp::get())
        .and(authorized.clone())
        .map(|state: Arc<ApiState>| handlers::cluster(&state));
    let remove_node = warp::path!("api" / "cluster" / "nodes" / String)
        .and(warp::delete())
        .and(authorized.clone())
        .then(|name: String, state: Arc<ApiState>| async move { handlers::remove_node(&state, &name).await });
    let room_list = warp::path!("api" / "rooms")
        .and(warp::get())
        .and(authorized.clone())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .map(|state: Arc<ApiState>, query: std::collections::HashMap<String, String>| {
            admin::rooms(&state, &query)
        });
    let stats = warp::path!("api" / "stats")
        .and(warp::get())
        .and(authorized.clone())
        .map(|state: Arc<ApiState>| stats::stats(&state));
    // Public: the page holds no data; it asks for the key and sends it only
    // in the `Authorization` header of its requests to the endpoints above.
    let admin_page = warp::path!("admin").and(warp::get()).map(admin::page);
    let disconnect = warp::path!("api" / "disconnect")
        .and(warp::post())
        .and(authorized)
        .and(json_body)
        .map(|state: Arc<ApiState>, body: Bytes| handlers::disconnect(&state, &body));
    // Pusher's HTTP API: signed per app (not the API key); a batch holds
    // up to 10 events of up to the largest app limit each.
    let largest_app_message =
        state.gateway.config.apps.iter().map(|a| a.max_message_bytes).max().unwrap_or(0);
    let pusher_body_limit = (largest_app_message as u64 * 10 + 16 * 1024).max(body_limit);
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let pusher_get = warp::path("apps")
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::path::tail())
        .and(warp::path::full())
        .and(raw_query)
        .then(|state: Arc<ApiState>, tail: warp::path::Tail, full: warp::path::FullPath, query: String| async move {
            pusher::serve(&state, &warp::http::Method::GET, full.as_str(), tail.as_str(), &query, &[]).await
        });
    let pusher_post = warp::path("apps")
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::path::tail())
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::body::content_length_limit(pusher_body_limit))
        .and(warp::body::bytes())
        .then(
            |state: Arc<ApiState>,
             tail: warp::path::Tail,
             full: warp::path::FullPath,
             query: String,
             body: Bytes| async move {
                pusher::serve(&state, &warp::http::Method::POST, full.as_str(), tail.as_str(), &query, &body)
                    .await
            },
        );
    let demo_page = warp::path::end()
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::header::optional::<String>("host"))
        .and_then(|state: Arc<ApiState>, host: Option<String>| async move {
            demo::page(&state, host.as_deref()).ok_or_else(warp::reject::not_found)
        });
    let demo_client = warp::path!("starling.js").and(warp::get()).and(with_state.clone()).and_then(
        |state: Arc<ApiState>| async move { demo::client_js(&state).ok_or_else(warp::reject::not_found) },
    );
    let demo_token = warp::path!("dev" / "token")
        .and(warp::get())
        .and(with_state)
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and_then(|state: Arc<ApiState>, query: std::collections::HashMap<String, String>| async move {
            demo::token(&state, query.get("user").map(String::as_str)).ok_or_else(warp::reject::not_found)
        });

    // Each route is boxed before it joins the chain: a deep chain of
    // nested `Or` types made rustc take half an hour on this crate.
    let mut routes = healthz.boxed();
    for route in [
        readyz.boxed(),
        metrics.boxed(),
        publish.boxed(),
        presence.boxed(),
        room.boxed(),
        history.boxed(),
        cluster.boxed(),
        remove_node.boxed(),
        room_list.boxed(),
        stats.boxed(),
        admin_page.boxed(),
        disconnect.boxed(),
        pusher_get.boxed(),
        pusher_post.boxed(),
        demo_page.boxed(),
        demo_client.boxed(),
        demo_token.boxed(),
    ] {
        routes = routes.or(route).unify().boxed();
    }
    routes.recover(recover).unify()
}

#[derive(Debug)]
struct Unauthorized;
impl warp::reject::Reject for Unauthorized {}

/// Builds the JSON error response of the API.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code.as_str(), "message": message}});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let response = if rejection.find::<Unauthorized>().is_some() {
        error_response(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong API key")
    } else if rejection.is_not_found() {
        error_response(StatusCode::NOT_FOUND, ErrorCode::BadRequest, "no such endpoint")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        error_response(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, "request body too large")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        error_response(StatusCode::LENGTH_REQUIRED, ErrorCode::BadRequest, "Content-Length is required")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_response(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadRequest, "method not allowed")
    } else {
        error_response(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "bad request")
    };
    Ok(response)
}
