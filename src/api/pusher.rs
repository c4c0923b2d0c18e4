//! Pusher's HTTP API (`/apps/{id}/...`), signed as Pusher's server SDKs
//! sign it: trigger events, batches of events, and read which channels are
//! occupied and who is in a presence channel. An app's API reaches only
//! its own channels.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::Instrument;
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::handlers::percent_decode;
use super::ApiState;
use crate::fanout::{Draft, Publisher};
use crate::forward::PublishError;
use crate::gateway::pusher::auth::{check_api_request, SignedRequest};
use crate::gateway::pusher::{
    channel_of, parse_socket_id, App, Channel, ChannelError, ChannelKind, MAX_USER_ID_BYTES,
};
use crate::protocol::RoomName;
use crate::service::{PublishOrigin, ServiceError};
use crate::telemetry;

/// Errors are plain text, as Pusher's API has them.
fn text(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(message.to_string(), status).into_response()
}

fn json(value: &impl Serialize) -> Response {
    warp::reply::json(value).into_response()
}

/// Serves one request under `/apps/`: `tail` is the path after it, `path`
/// the whole path (signed), `query` the raw query string.
pub async fn serve(
    state: &ApiState,
    method: &Method,
    path: &str,
    tail: &str,
    query: &str,
    body: &[u8],
) -> Response {
    let segments: Vec<String> = tail.split('/').map(percent_decode).collect();
    let Some(app) = segments.first().and_then(|id| state.gateway.pusher.by_id(id)).cloned() else {
        return text(StatusCode::NOT_FOUND, "Unknown app id");
    };
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let request = SignedRequest { method: method.as_str(), path, query: &pairs, body };
    if let Err(error) = check_api_request(&app.config, &request, now) {
        return text(StatusCode::UNAUTHORIZED, &error.to_string());
    }
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let rest: Vec<&str> = segments[1..].iter().map(String::as_str).collect();
    match (method, rest.as_slice()) {
        (&Method::POST, ["events"]) => events(state, &app, body).await,
        (&Method::POST, ["batch_events"]) => batch_events(state, &app, body).await,
        (&Method::GET, ["channels"]) => channels(state, &app, param("filter_by_prefix"), param("info")).await,
        (&Method::GET, ["channels", name]) => channel(state, &app, name, param("info")).await,
        (&Method::GET, ["channels", name, "users"]) => users(state, &app, name).await,
        (&Method::POST, ["users", user, "terminate_connections"]) => terminate(state, &app, user).await,
        _ => text(StatusCode::NOT_FOUND, "No such endpoint"),
    }
}

/// `POST /apps/{id}/users/{user}/terminate_connections`: closes every
/// connection of the user (its sign-in or presence user id) on every node,
/// with 4009, so that pusher-js does not reconnect. `{}` once every node
/// answered; 503 when one did not (its connections may stay open; retry).
async fn terminate(state: &ApiState, app: &Arc<App>, user: &str) -> Response {
    if user.is_empty() || user.len() > MAX_USER_ID_BYTES {
        return text(StatusCode::BAD_REQUEST, "user ids are 1 to 128 characters");
    }
    let (closed, missed) = state.gateway.service.close_user_in(&app.space, user).await;
    tracing::info!(app = %app.config.id, closed, "terminated a user's connections");
    if !missed.is_empty() {
        let message = format!("Nodes {} did not answer; retry", missed.join(", "));
        return text(StatusCode::SERVICE_UNAVAILABLE, &message);
    }
    json(&serde_json::json!({}))
}

/// One event as the API takes it.
#[derive(Deserialize)]
struct Event<'a> {
    name: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    /// `user_count,subscription_count`: the channels' counts after the event.
    #[serde(default)]
    info: Option<String>,
}

/// `POST /apps/{id}/events`: `{name, data, channels | channel, socket_id?,
/// info?}`; with `info`, `{"channels": {name: {user_count?, subscription_count?}}}`.
async fn events(state: &ApiState, app: &Arc<App>, body: &[u8]) -> Response {
    let event: Event<'_> = match serde_json::from_slice(body) {
        Ok(event) => event,
        Err(error) => return text(StatusCode::BAD_REQUEST, &format!("Invalid JSON body: {error}")),
    };
    let wanted = match wanted_info(event.info.as_deref()) {
        Ok(wanted) => wanted,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    let channels = match trigger(state, app, event).await {
        Ok(channels) => channels,
        Err((status, message)) => return text(status, &message),
    };
    if wanted == (false, false) {
        return json(&serde_json::json!({}));
    }
    let mut infos = BTreeMap::new();
    for channel in &channels {
        match channel_info(state, app, channel, wanted).await {
            Ok(info) => infos.insert(channel.as_str(), info),
            Err(response) => return response,
        };
    }
    json(&serde_json::json!({ "channels": infos }))
}

/// The counts `wanted` asks for of an app's channel, as of a linearizable
/// read (`user_count` only for presence channels, as Pusher has it).
async fn channel_info(
    state: &ApiState,
    app: &Arc<App>,
    channel: &str,
    (user_count, subscription_count): (bool, bool),
) -> Result<ChannelInfo, Response> {
    let bad = |e: ChannelError| text(StatusCode::BAD_REQUEST, &format!("Invalid channel {channel:?}: {e}"));
    let (room, kind) = (app.room(channel).map_err(bad)?, Channel::parse(channel).map_err(bad)?.kind);
    let members = state.gateway.service.presence_in(&app.space, &room).await.map_err(unavailable)?;
    let users: std::collections::HashSet<&str> = members.iter().map(|m| &*m.user).collect();
    Ok(ChannelInfo {
        user_count: (user_count && kind == ChannelKind::Presence).then_some(users.len()),
        subscription_count: subscription_count.then_some(members.len()),
    })
}

/// `POST /apps/{id}/batch_events`: `{batch: [{name, data, channel, socket_id?}]}`.
async fn batch_events(state: &ApiState, app: &Arc<App>, body: &[u8]) -> Response {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        batch: Vec<Event<'a>>,
    }
    let batch: Batch<'_> = match serde_json::from_slice(body) {
        Ok(batch) => batch,
        Err(error) => return text(StatusCode::BAD_REQUEST, &format!("Invalid JSON body: {error}")),
    };
    let max_batch = app.config.max_event_batch_size;
    if batch.batch.len() > max_batch {
        return text(StatusCode::BAD_REQUEST, &format!("Batch too large: at most {max_batch} events"));
    }
    let mut wanted = Vec::with_capacity(batch.batch.len());
    for event in &batch.batch {
        match wanted_info(event.info.as_deref()) {
            Ok(info) => wanted.push(info),
            Err(message) => return text(StatusCode::BAD_REQUEST, &message),
        }
    }
    let mut triggered = Vec::with_capacity(batch.batch.len());
    for event in batch.batch {
        match trigger(state, app, event).await {
            Ok(channels) => triggered.push(channels),
            Err((status, message)) => return text(status, &message),
        }
    }
    if wanted.iter().all(|w| *w == (false, false)) {
        return json(&serde_json::json!({"batch": []}));
    }
    // With `info`: one object per event, the counts of its channel.
    let mut infos = Vec::with_capacity(triggered.len());
    for (channels, wanted) in triggered.iter().zip(wanted) {
        let info = match channels.first() {
            Some(channel) if wanted != (false, false) => {
                match channel_info(state, app, channel, wanted).await {
                    Ok(info) => info,
                    Err(response) => return response,
                }
            }
            _ => ChannelInfo::default(),
        };
        infos.push(info);
    }
    json(&serde_json::json!({ "batch": infos }))
}

/// Why an event was refused: the status and text of the answer.
type Refusal = (StatusCode, String);

/// Publishes one event to each of its channels, in order, and returns the
/// channels. A channel with no subscribers takes the event and delivers it
/// to nobody.
async fn trigger(state: &ApiState, app: &Arc<App>, event: Event<'_>) -> Result<Vec<String>, Refusal> {
    let received_at = Instant::now();
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let limits = &app.config;
    if event.name.is_empty() || event.name.len() > limits.max_event_name_bytes {
        return Err(bad(format!("Event name must be 1 to {} characters", limits.max_event_name_bytes)));
    }
    let channels: Vec<String> = match (event.channels, event.channel) {
        (Some(channels), None) => channels,
        (None, Some(channel)) => vec![channel],
        _ => return Err(bad("Give `channels` (a list) or `channel`, not both".into())),
    };
    if channels.is_empty() || channels.len() > limits.max_event_channels_at_once {
        return Err(bad(format!("An event goes to 1 to {} channels", limits.max_event_channels_at_once)));
    }
    if event.data.get().len() > app.config.max_message_bytes {
        let message = format!("Event data is over the app's limit of {} bytes", app.config.max_message_bytes);
        return Err((StatusCode::PAYLOAD_TOO_LARGE, message));
    }
    // `socket_id`: the connection that caused the event, which does not get it.
    let excluded = match event.socket_id.as_deref() {
        None => None,
        Some(text) => Some(parse_socket_id(text).ok_or_else(|| bad(format!("Invalid socket_id {text:?}")))?),
    };
    let rooms = channels
        .iter()
        .map(|channel| app.room(channel).map_err(|e| bad(format!("Invalid channel {channel:?}: {e}"))))
        .collect::<Result<Vec<RoomName>, Refusal>>()?;
    let service = &state.gateway.service;
    let event_name: Arc<str> = Arc::from(event.name.as_str());
    let data = bytes::Bytes::copy_from_slice(event.data.get().as_bytes());
    for room in rooms {
        let publisher = excluded.map(|conn| Publisher { user: Arc::from(""), conn, idem: None });
        let draft = Draft { publisher, event: Some(Arc::clone(&event_name)), data: data.clone() };
        let span = telemetry::publish_span(&room, None, None);
        let published = service
            .publish_in(&app.space, &room, draft, PublishOrigin::Server, received_at)
            .instrument(span)
            .await;
        match published {
            Ok(_) | Err(ServiceError::Publish(PublishError::NoMembers)) => {}
            Err(error) if error.retryable() => {
                let message = format!("Event not delivered to {}: {error}; retry", channel_of(&room));
                return Err((StatusCode::SERVICE_UNAVAILABLE, message));
            }
            Err(error) => return Err(bad(format!("Event refused on {}: {error}", channel_of(&room)))),
        }
    }
    Ok(channels)
}

/// Which of `user_count` and `subscription_count` the `info` parameter asks for.
fn wanted_info(info: Option<&str>) -> Result<(bool, bool), String> {
    let mut wanted = (false, false);
    for attribute in info.unwrap_or("").split(',').filter(|a| !a.is_empty()) {
        match attribute {
            "user_count" => wanted.0 = true,
            "subscription_count" => wanted.1 = true,
            other => return Err(format!("Unsupported info attribute {other:?}")),
        }
    }
    Ok(wanted)
}

#[derive(Serialize, Default)]
struct ChannelInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_count: Option<usize>,
}

fn unavailable(error: impl std::fmt::Display) -> Response {
    text(StatusCode::SERVICE_UNAVAILABLE, &format!("Cluster cannot answer now: {error}; retry"))
}

/// `GET /apps/{id}/channels`: the occupied channels, optionally those
/// whose name starts with `filter_by_prefix`; `info=user_count` needs the
/// prefix to be `presence-`.
async fn channels(state: &ApiState, app: &Arc<App>, prefix: Option<&str>, info: Option<&str>) -> Response {
    let (user_count, subscription_count) = match wanted_info(info) {
        Ok(wanted) => wanted,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    let prefix = prefix.unwrap_or("");
    if user_count && !prefix.starts_with("presence-") {
        return text(StatusCode::BAD_REQUEST, "info=user_count needs filter_by_prefix=presence-");
    }
    let counts = match state.gateway.service.replicator().room_counts(app.namespace()).await {
        Ok(counts) => counts,
        Err(error) => return unavailable(error),
    };
    let channels: BTreeMap<&str, ChannelInfo> = counts
        .iter()
        .filter(|count| channel_of(&count.room).starts_with(prefix))
        .map(|count| {
            let info = ChannelInfo {
                user_count: user_count.then_some(count.users),
                subscription_count: subscription_count.then_some(count.connections),
            };
            (channel_of(&count.room), info)
        })
        .collect();
    json(&serde_json::json!({ "channels": channels }))
}

/// `GET /apps/{id}/channels/{channel}`: whether it is occupied, and the
/// counts `info` asks for (`user_count` on presence channels only).
async fn channel(state: &ApiState, app: &Arc<App>, channel: &str, info: Option<&str>) -> Response {
    let (user_count, subscription_count) = match wanted_info(info) {
        Ok(wanted) => wanted,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    let (room, kind) = match app.room(channel).and_then(|room| Ok((room, Channel::parse(channel)?.kind))) {
        Ok(found) => found,
        Err(error) => return text(StatusCode::BAD_REQUEST, &format!("Invalid channel {channel:?}: {error}")),
    };
    if user_count && kind != ChannelKind::Presence {
        return text(StatusCode::BAD_REQUEST, "user_count is only available on presence channels");
    }
    let members = match state.gateway.service.presence_in(&app.space, &room).await {
        Ok(members) => members,
        Err(error) => return unavailable(error),
    };
    let users: std::collections::HashSet<&str> = members.iter().map(|m| &*m.user).collect();
    #[derive(Serialize)]
    struct Reply {
        occupied: bool,
        #[serde(flatten)]
        info: ChannelInfo,
    }
    let info = ChannelInfo {
        user_count: user_count.then_some(users.len()),
        subscription_count: subscription_count.then_some(members.len()),
    };
    json(&Reply { occupied: !members.is_empty(), info })
}

/// `GET /apps/{id}/channels/{channel}/users`: a presence channel's users,
/// each once.
async fn users(state: &ApiState, app: &Arc<App>, channel: &str) -> Response {
    let room = match app.room(channel) {
        Ok(room) => room,
        Err(error) => return text(StatusCode::BAD_REQUEST, &format!("Invalid channel {channel:?}: {error}")),
    };
    if Channel::parse(channel).map(|c| c.kind) != Ok(ChannelKind::Presence) {
        return text(StatusCode::BAD_REQUEST, "Users are only listed for presence channels");
    }
    let members = match state.gateway.service.presence_in(&app.space, &room).await {
        Ok(members) => members,
        Err(error) => return unavailable(error),
    };
    let mut seen = std::collections::HashSet::new();
    let users: Vec<serde_json::Value> = members
        .iter()
        .filter(|m| seen.insert(Arc::clone(&m.user)))
        .map(|m| serde_json::json!({ "id": &*m.user }))
        .collect();
    json(&serde_json::json!({ "users": users }))
}
