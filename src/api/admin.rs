//! The admin dashboard: `GET /admin` (one static HTML page, public: it
//! shows nothing until the operator types the API key, which it keeps in
//! `sessionStorage` and sends only in `Authorization` headers) and
//! `GET /api/rooms?prefix=&limit=`, the room listing it reads. The node's
//! figures are in `stats`.
//!
//! Nothing here changes state; the listing reads the room table as applied
//! on this node, so an operator still sees it while there is no quorum.

use std::collections::HashMap;

use base64::Engine as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{error_response, ApiState};
use crate::protocol::{ErrorCode, RoomName};

const PAGE: &str = include_str!("admin.html");

/// Rooms listed when `limit` is not given.
pub const DEFAULT_ROOM_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_ROOM_LIMIT: usize = 1000;
/// The longest `prefix` accepted, in bytes.
const MAX_PREFIX_BYTES: usize = 256;
/// A room's message rate is measured over at least this long.
const RATE_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Rate samples of rooms not listed for this long are forgotten.
const RATE_FORGET_AFTER: Duration = Duration::from_secs(60);
/// At most this many rooms have rate samples (then they start over).
const MAX_RATE_SAMPLES: usize = 4 * MAX_ROOM_LIMIT;

/// What the dashboard's endpoints remember between requests.
#[derive(Default)]
pub struct AdminState {
    /// Per listed room: where its stream stood when last sampled, so a
    /// later listing can give messages per second.
    room_rates: Mutex<HashMap<RoomName, RateSample>>,
    /// Recent samples of this node's counters (see `stats`).
    pub(super) stats: super::stats::StatsHistory,
}

#[derive(Debug, Clone, Copy)]
struct RateSample {
    at: Instant,
    epoch: u64,
    offset: u64,
    /// Messages per second between the previous sample and this one.
    rate: Option<f64>,
}

/// `GET /admin`: the page, with a Content-Security-Policy that allows only
/// its own inline script and style and requests to this origin.
pub fn page() -> Response {
    static CSP: OnceLock<String> = OnceLock::new();
    let csp = CSP.get_or_init(|| {
        let script = inline_hash(PAGE, "<script>", "</script>");
        let style = inline_hash(PAGE, "<style>", "</style>");
        format!(
            "default-src 'none'; script-src '{script}'; style-src '{style}'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    });
    let reply = warp::reply::html(PAGE);
    let reply = warp::reply::with_header(reply, "content-security-policy", csp.as_str());
    let reply = warp::reply::with_header(reply, "x-content-type-options", "nosniff");
    let reply = warp::reply::with_header(reply, "referrer-policy", "no-referrer");
    warp::reply::with_header(reply, "cache-control", "no-store").into_response()
}

/// `sha256-BASE64` of the text between the first `open` and `close` tags.
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    let start = page.find(open).map_or(0, |i| i + open.len());
    let end = page[start..].find(close).map_or(page.len(), |i| start + i);
    let digest = Sha256::digest(&page.as_bytes()[start..end]);
    format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(digest))
}

/// The parameters of `GET /api/rooms`, checked.
#[derive(Debug, PartialEq, Eq)]
struct RoomQuery {
    prefix: String,
    limit: usize,
}

fn parse_room_query(query: &HashMap<String, String>) -> Result<RoomQuery, String> {
    if let Some(unknown) = query.keys().find(|k| !matches!(k.as_str(), "prefix" | "limit")) {
        return Err(format!("unknown parameter `{unknown}` (known: `prefix`, `limit`)"));
    }
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(format!("`prefix` is longer than {MAX_PREFIX_BYTES} bytes"));
    }
    let limit = match query.get("limit") {
        None => DEFAULT_ROOM_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=MAX_ROOM_LIMIT).contains(&limit) => limit,
            _ => return Err(format!("`limit` must be an integer from 1 to {MAX_ROOM_LIMIT}")),
        },
    };
    Ok(RoomQuery { prefix, limit })
}

#[derive(Serialize)]
struct RoomRow {
    room: String,
    members: usize,
    users: usize,
    owner: String,
    epoch: u64,
    /// The last offset of the epoch this node has seen.
    offset: Option<u64>,
    /// Messages per second since this room was last listed (at least a
    /// second before); `None` until then.
    messages_per_s: Option<f64>,
}

/// `GET /api/rooms?prefix=P&limit=N`: the cluster's rooms whose names start
/// with `P`, in name order, at most `N` (default 100, at most 1000), with
/// `total` matching and whether the list was cut.
pub fn rooms(state: &ApiState, query: &HashMap<String, String>) -> Response {
    let query = match parse_room_query(query) {
        Ok(query) => query,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &message),
    };
    let service = &state.gateway.service;
    let (summaries, total) = service.replicator().rooms_with_prefix(&query.prefix, query.limit);
    let now = Instant::now();
    let mut rates = state.admin.room_rates.lock().unwrap_or_else(|p| p.into_inner());
    let rows: Vec<RoomRow> = summaries
        .into_iter()
        .map(|summary| {
            // The stream's position as held here: after an owner change the
            // epoch continues, so it may differ from the table's.
            let position = service.hub().with_position(&summary.room, |p| p);
            let (epoch, offset) = position.map_or((summary.epoch, None), |p| (p.epoch, Some(p.offset)));
            let messages_per_s = offset.and_then(|offset| {
                let sample = RateSample { at: now, epoch, offset, rate: None };
                let kept = rates.entry(summary.room.clone()).or_insert(sample);
                let elapsed = now.duration_since(kept.at);
                if elapsed >= RATE_MIN_INTERVAL {
                    let rate = (kept.epoch == epoch && offset >= kept.offset)
                        .then(|| (offset - kept.offset) as f64 / elapsed.as_secs_f64());
                    *kept = RateSample { at: now, epoch, offset, rate };
                }
                kept.rate
            });
            RoomRow {
                room: summary.room.as_str().to_string(),
                members: summary.members,
                users: summary.users,
                owner: summary.owner.to_string(),
                epoch,
                offset,
                messages_per_s,
            }
        })
        .collect();
    rates.retain(|_, sample| now.duration_since(sample.at) < RATE_FORGET_AFTER);
    if rates.len() > MAX_RATE_SAMPLES {
        rates.clear();
    }
    drop(rates);
    let body = serde_json::json!({
        "node": &*state.gateway.node,
        "prefix": query.prefix,
        "limit": query.limit,
        "total": total,
        "truncated": total > rows.len(),
        "rooms": rows,
    });
    warp::reply::json(&body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn room_query_defaults_bounds_and_refusals() {
        assert_eq!(
            parse_room_query(&query(&[])),
            Ok(RoomQuery { prefix: String::new(), limit: DEFAULT_ROOM_LIMIT })
        );
        let given = parse_room_query(&query(&[("prefix", "chat:"), ("limit", "1000")]));
        assert_eq!(given, Ok(RoomQuery { prefix: "chat:".into(), limit: 1000 }));
        for bad in ["0", "1001", "-1", "ten", ""] {
            let refused = parse_room_query(&query(&[("limit", bad)])).unwrap_err();
            assert!(refused.contains("`limit`"), "{bad}: {refused}");
        }
        assert!(parse_room_query(&query(&[("limt", "5")])).unwrap_err().contains("unknown parameter `limt`"));
        let long = "x".repeat(MAX_PREFIX_BYTES + 1);
        assert!(parse_room_query(&query(&[("prefix", &long)])).is_err());
    }

    #[test]
    fn csp_hashes_are_base64_of_sha256() {
        // `echo -n 'a' | openssl dgst -sha256 -binary | base64`
        assert_eq!(
            inline_hash("<script>a</script>", "<script>", "</script>"),
            "sha256-ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs="
        );
    }
}
