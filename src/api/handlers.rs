//! The API handlers.

use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{error_response, ApiState};
use crate::fanout::Draft;
use crate::fanout::FrameEncoder;
use crate::forward::PublishError;
use crate::gateway::starling::{wire_member_list, StarlingEncoder};
use crate::protocol::{CloseCode, ErrorCode, RoomName};
use crate::service::{PublishOrigin, ServiceError};
use crate::telemetry;
use tracing::Instrument;

pub fn authorized(state: &ApiState, header: Option<&str>) -> bool {
    let Some((scheme, key)) = header.and_then(|h| h.split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && crate::auth::api_key_matches(key.trim(), &state.api_key)
}

pub fn readyz(state: std::sync::Arc<ApiState>) -> Response {
    let gateway = &state.gateway;
    let ready = gateway.service.replicator().is_ready() && !gateway.is_draining();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({"ready": ready, "draining": gateway.is_draining()});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

pub fn metrics(state: std::sync::Arc<ApiState>) -> Response {
    state.gateway.metrics.record_scrape(&scrape(&state));
    let text = state.metrics.render();
    warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
}

/// Reads the values `/metrics` shows as gauges at scrape time.
fn scrape(state: &ApiState) -> telemetry::Scrape {
    let (queued_frames, queued_bytes) = state.gateway.sessions.queued();
    let mut scrape = telemetry::Scrape { queued_frames, queued_bytes, ..Default::default() };
    if let Some((group, membership)) = &state.cluster {
        let metrics = group.metrics().borrow().clone();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let names: std::collections::HashMap<_, _> =
            metrics.membership_config.membership().nodes().map(|(id, n)| (*id, n.name.clone())).collect();
        let follower_lag = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != metrics.id)
            .map(|(id, matched)| {
                let name = names.get(id).cloned().unwrap_or_else(|| id.to_string());
                (name, last_log_index.saturating_sub(matched.map_or(0, |m| m.index)))
            })
            .collect();
        scrape.raft = Some(telemetry::RaftScrape {
            term: metrics.current_term,
            is_leader: metrics.current_leader == Some(metrics.id),
            last_log_index,
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            follower_lag,
        });
        scrape.gossip_live_nodes = Some(membership.live_members().len());
    }
    if let Some(links) = &state.links {
        scrape.links = links.link_scrape();
        scrape.peer_drops = links.drop_counts();
        scrape.peer_rejected = links.rejection_counts(state.gateway.service.hub().refused_deliveries());
    }
    scrape.raft_entries_rejected = state.gateway.service.replicator().shared().rejected_entries();
    scrape
}

fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
}

/// The HTTP answer to a refusal of the room service.
fn service_error_response(error: &ServiceError) -> Response {
    let (status, code) = match error {
        ServiceError::UnknownNamespace(_)
        | ServiceError::PresenceOff(_)
        | ServiceError::ServerPublishesOnly(_)
        | ServiceError::TooManyRooms { .. }
        | ServiceError::RoomFull { .. } => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
        ServiceError::DataTooLarge { .. } | ServiceError::MetaTooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge)
        }
        ServiceError::NotJoined => (StatusCode::BAD_REQUEST, ErrorCode::NotJoined),
        error if error.retryable() => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
    };
    error_response(status, code, &error.to_string())
}

fn parse_room(room: &str) -> Result<RoomName, String> {
    RoomName::parse(room).map_err(|e| e.to_string())
}

/// `POST /api/publish`. A W3C `traceparent` header makes the publish part
/// of the caller's trace.
pub async fn publish(state: &ApiState, body: &[u8], traceparent: Option<&str>) -> Response {
    let received_at = Instant::now();
    #[derive(Deserialize)]
    struct Publish<'a> {
        room: String,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let request: Publish<'_> = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return bad_request(&format!("body must be {{\"room\",\"data\"}}: {error}")),
    };
    let Some(data) = request.data.filter(|d| d.get() != "null") else {
        return bad_request("missing field `data`");
    };
    let room = match parse_room(&request.room) {
        Ok(room) => room,
        Err(message) => return bad_request(&message),
    };
    let draft =
        Draft { publisher: None, event: None, data: bytes::Bytes::copy_from_slice(data.get().as_bytes()) };
    let service = &state.gateway.service;
    let span = telemetry::publish_span(&room, None, traceparent);
    let published = service.publish(&room, draft, PublishOrigin::Server, received_at).instrument(span).await;
    let (epoch, offset) = match published {
        Ok(position) => (position.epoch, position.offset),
        // A room with no members has no sequence: nothing is delivered,
        // and epoch 0 says so.
        Err(ServiceError::Publish(PublishError::NoMembers)) => (0, 0),
        Err(error) => return service_error_response(&error),
    };
    warp::reply::json(&serde_json::json!({"offset": offset, "epoch": epoch})).into_response()
}

pub async fn presence(state: &ApiState, room: &str) -> Response {
    let room = match parse_room(&percent_decode(room)) {
        Ok(room) => room,
        Err(message) => return bad_request(&message),
    };
    match state.gateway.service.presence(&room).await {
        Ok(members) => {
            warp::reply::json(&serde_json::json!({ "members": wire_member_list(&members) })).into_response()
        }
        Err(error) => service_error_response(&error),
    }
}

/// `GET /api/rooms/{room}`: where the room's stream stands on this node,
/// its owner, and its members (a linearizable read) when the namespace
/// lists them. A room with no members has epoch 0 and no owner.
pub async fn room(state: &ApiState, room: &str) -> Response {
    let room = match parse_room(&percent_decode(room)) {
        Ok(room) => room,
        Err(message) => return bad_request(&message),
    };
    let service = &state.gateway.service;
    let presence = match service.namespace(&room) {
        Ok(namespace) => namespace.presence,
        Err(error) => return service_error_response(&error),
    };
    let members = match service.replicator().presence(&room).await {
        Ok(snapshot) => snapshot.map(|s| s.members).unwrap_or_default(),
        Err(error) => return service_error_response(&ServiceError::Unavailable(error)),
    };
    let hub = service.hub();
    let (owner, position) = match (hub.owner_of(&room), hub.history(&room, None, 0)) {
        (Some((owner, _)), Some(page)) => (Some(owner), page.position),
        _ => (None, crate::fanout::Position { epoch: 0, offset: 0 }),
    };
    let mut body = serde_json::json!({
        "room": room.as_str(),
        "epoch": position.epoch,
        "offset": position.offset,
        "owner": owner.as_deref(),
    });
    if presence {
        body["members"] = serde_json::json!(wire_member_list(&members));
    }
    warp::reply::json(&body).into_response()
}

/// `GET /api/rooms/{room}/history?since_epoch=E&since_offset=N&limit=L`:
/// the messages this node holds after the position (all of them, or none
/// with `recovered: false`), or without a position the most recent; at
/// most `limit` (default and maximum: the namespace's `history_size`).
pub fn history(state: &ApiState, room: &str, query: &std::collections::HashMap<String, String>) -> Response {
    let room = match parse_room(&percent_decode(room)) {
        Ok(room) => room,
        Err(message) => return bad_request(&message),
    };
    let service = &state.gateway.service;
    let history_size = match service.namespace(&room) {
        Ok(namespace) if namespace.history_size > 0 => namespace.history_size,
        Ok(_) => {
            let message = format!("history is off in namespace `{}` (history_size = 0)", room.namespace());
            return error_response(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &message);
        }
        Err(error) => return service_error_response(&error),
    };
    // The first parameter that is not a number, if any.
    let number = |key: &'static str| -> Result<Option<u64>, &'static str> {
        query.get(key).map(|text| text.parse::<u64>().map_err(|_| key)).transpose()
    };
    let (since_epoch, since_offset, limit) =
        match (number("since_epoch"), number("since_offset"), number("limit")) {
            (Ok(epoch), Ok(offset), Ok(limit)) => (epoch, offset, limit),
            (Err(key), _, _) | (_, Err(key), _) | (_, _, Err(key)) => {
                return bad_request(&format!("`{key}` must be a non-negative integer"))
            }
        };
    let since = match (since_epoch, since_offset) {
        (Some(epoch), Some(offset)) => Some(crate::fanout::Position { epoch, offset }),
        (None, None) => None,
        _ => return bad_request("give both `since_epoch` and `since_offset`, or neither"),
    };
    let limit = limit.map_or(history_size, |l| (l as usize).min(history_size));
    let page =
        state.gateway.service.hub().history(&room, since, limit).unwrap_or(crate::fanout::HistoryPage {
            position: crate::fanout::Position { epoch: 0, offset: 0 },
            recovered: since.is_none(),
            messages: Vec::new(),
        });
    #[derive(serde::Serialize)]
    struct Page {
        epoch: u64,
        offset: u64,
        recovered: bool,
        messages: Vec<Box<RawValue>>,
    }
    let messages = page
        .messages
        .iter()
        .filter_map(|message| StarlingEncoder.message(message))
        .filter_map(|frame| RawValue::from_string(frame.as_str().to_owned()).ok())
        .collect();
    let body = Page {
        epoch: page.position.epoch,
        offset: page.position.offset,
        recovered: page.recovered,
        messages,
    };
    warp::reply::json(&body).into_response()
}

pub fn cluster(state: &ApiState) -> Response {
    if let Some((group, membership)) = &state.cluster {
        return warp::reply::json(&crate::cluster::view(group, membership)).into_response();
    }
    warp::reply::json(&single_node_view(state)).into_response()
}

/// `DELETE /api/cluster/nodes/{name}`: removes a dead node from the Raft
/// group for good, from any node (a follower asks the leader).
pub async fn remove_node(state: &ApiState, name: &str) -> Response {
    use crate::cluster::RemovalRefusal;
    let (Some((group, membership)), Some(links)) = (&state.cluster, &state.links) else {
        return error_response(
            StatusCode::CONFLICT,
            ErrorCode::BadRequest,
            "this node is not part of a cluster",
        );
    };
    let name = percent_decode(name);
    match crate::cluster::remove_node(group, membership, links, &name).await {
        Ok(removed) => {
            tracing::info!(node = %removed.node, was_voter = removed.was_voter, "node removed from the group");
            warp::reply::json(&removed).into_response()
        }
        Err(refusal) => {
            let (status, code) = match &refusal {
                RemovalRefusal::NotMember(_) => (StatusCode::NOT_FOUND, ErrorCode::BadRequest),
                RemovalRefusal::Alive(_)
                | RemovalRefusal::LeaderOrLastVoter(_)
                | RemovalRefusal::LeaderTooOld { .. } => (StatusCode::CONFLICT, ErrorCode::BadRequest),
                RemovalRefusal::NoLeader | RemovalRefusal::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
                }
            };
            let mut response = error_response(status, code, &refusal.to_string());
            if refusal.retryable() {
                response.headers_mut().insert("retry-after", warp::http::HeaderValue::from_static("1"));
            }
            response
        }
    }
}

/// `GET /api/cluster`'s body on a single node (no Raft group): the node
/// leads itself.
pub fn single_node_view(state: &ApiState) -> serde_json::Value {
    let gateway = &state.gateway;
    serde_json::json!({
        "leader": &*gateway.node,
        "term": 0,
        "nodes": [{
            "name": &*gateway.node,
            "state": if gateway.is_draining() { "draining" } else { "alive" },
            "role": "leader",
            "connections": gateway.connection_count(),
            "voter": true,
            "lag": 0,
        }],
    })
}

pub fn disconnect(state: &ApiState, body: &[u8]) -> Response {
    #[derive(Deserialize)]
    struct Disconnect {
        user: String,
    }
    let request: Disconnect = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return bad_request(&format!("body must be {{\"user\"}}: {error}")),
    };
    let disconnected = state.gateway.sessions.close_user(&request.user, CloseCode::Normal);
    warp::reply::json(&serde_json::json!({ "disconnected": disconnected })).into_response()
}

/// Decodes `%XX` escapes in a path segment (room names may contain `/`, `#`, ...).
pub(crate) fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(super::percent_decode("chat%3Alobby"), "chat:lobby");
        assert_eq!(super::percent_decode("chat:a%2Fb"), "chat:a/b");
        assert_eq!(super::percent_decode("bad%zz"), "bad%zz");
    }
}
