//! The checks made on the HTTP upgrade request, before any `101`: the path
//! picks the wire protocol, then drain, Origin, the protocol's own
//! authentication, and a connection slot.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request};
use tokio_tungstenite::tungstenite::http::{header, StatusCode};

use super::pusher::PusherRequest;
use super::Gateway;
use crate::auth::{AuthError, Claims};
use crate::protocol::ConnId;

/// A request that passed every check, holding its connection slot.
#[derive(Debug)]
pub struct Admission {
    pub conn: ConnId,
    pub protocol: Protocol,
    pub permit: OwnedSemaphorePermit,
}

/// The wire protocol a connection speaks, chosen by the upgrade's path,
/// with what its authentication established.
#[derive(Debug)]
pub enum Protocol {
    /// Starling's wire contract v1 at `/ws`, with the token's claims.
    Starling { claims: Claims },
    /// Pusher protocol 7 at `/app/{key}`: the app of the key and the
    /// requested protocol version, which the session checks (Pusher
    /// refuses a bad key or version with a close code after the upgrade).
    Pusher(PusherRequest),
}

/// The protocols by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Starling,
    Pusher { key: &'a str },
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/ws" => Some(Route::Starling),
        _ => {
            let key = path.strip_prefix("/app/")?;
            (!key.is_empty() && !key.contains('/')).then_some(Route::Pusher { key })
        }
    }
}

/// Why an upgrade was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 404: the path is not `/ws`.
    NotFound,
    /// 403: `Origin` is not allowed.
    ForbiddenOrigin,
    /// 401: missing, invalid or expired token.
    Unauthorized(AuthError),
    /// 503 with `Retry-After`: the node is full or draining.
    Unavailable { reason: &'static str, retry_after_secs: u32 },
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn into_response(self) -> ErrorResponse {
        let body = match &self {
            Rejection::NotFound => "not found: WebSocket endpoints are /ws and /app/{key}".to_string(),
            Rejection::ForbiddenOrigin => "origin not allowed".to_string(),
            Rejection::Unauthorized(error) => error.to_string(),
            Rejection::Unavailable { reason, .. } => reason.to_string(),
        };
        let mut response = ErrorResponse::new(Some(body));
        *response.status_mut() = self.status();
        if let Rejection::Unavailable { retry_after_secs, .. } = self {
            response.headers_mut().insert(header::RETRY_AFTER, retry_after_secs.into());
        }
        response
    }
}

impl Gateway {
    /// Decides whether `request` may be upgraded. Cheap checks come first;
    /// the connection slot is taken last, only for a valid token.
    pub fn admit(&self, request: &Request) -> Result<Admission, Rejection> {
        let route = route(request.uri().path()).ok_or(Rejection::NotFound)?;
        if self.is_draining() {
            return Err(Rejection::Unavailable { reason: "node is draining", retry_after_secs: 1 });
        }
        let origin = request.headers().get(header::ORIGIN).map(|v| v.to_str().unwrap_or("\u{0}"));
        if !self.origins.allows(origin) {
            return Err(Rejection::ForbiddenOrigin);
        }
        let protocol = match route {
            Route::Starling => {
                let token = token_of(request).ok_or(Rejection::Unauthorized(AuthError::Missing))?;
                let claims = self.verifier.verify(token).map_err(Rejection::Unauthorized)?;
                Protocol::Starling { claims }
            }
            Route::Pusher { key } => {
                let app = self.pusher.by_key(key).cloned();
                let protocol = query_param(request, "protocol").map(str::to_owned);
                Protocol::Pusher(PusherRequest { key: key.to_owned(), app, protocol })
            }
        };
        let permit = Arc::clone(&self.connection_permits)
            .try_acquire_owned()
            .map_err(|_| Rejection::Unavailable { reason: "node is full", retry_after_secs: 5 })?;
        Ok(Admission { conn: self.mint_conn_id(), protocol, permit })
    }
}

/// The token from `Authorization: Bearer ...`, else from `?token=...`.
fn token_of(request: &Request) -> Option<&str> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then_some(token.trim());
    }
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|token| !token.is_empty())
}

/// The value of query parameter `name`, as sent.
fn query_param<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// The request path with the query (which may carry a token) removed, for logs.
pub fn redacted_path(request: &Request) -> &str {
    request.uri().path()
}
