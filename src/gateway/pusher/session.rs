//! One Pusher protocol 7 connection: `connection_established`, subscribe
//! and unsubscribe with channel authorisation, presence per user, client
//! events, sign-in, pings, and Pusher's close codes. The writer is the
//! gateway's, as for every protocol.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::{interval_at, sleep_until, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use super::encode::{self, user_info};
use super::{auth, limits, socket_id, App, Channel, ChannelKind, MAX_USER_ID_BYTES};
use crate::fanout::{OutFrame, Outbound, Recover, RoomMessage, SessionEntry};
use crate::gateway::limits::TokenBucket;
use crate::gateway::writer::write_loop;
use crate::gateway::{deadline_after, Gateway, Registration};
use crate::protocol::{CloseCode, ConnId};
use crate::rooms::MemberRecord;
use crate::service::{ConnectionRooms, ServiceError};
use crate::telemetry;

/// Pusher's close codes: 4000-4099 the client must not reconnect,
/// 4100-4199 it backs off, 4200-4299 it reconnects at once.
pub mod close {
    pub const APP_UNKNOWN: u16 = 4001;
    pub const OVER_QUOTA: u16 = 4004;
    pub const BAD_VERSION: u16 = 4006;
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    pub const NO_PROTOCOL: u16 = 4008;
    /// `terminate_connections`: the app's server closed the user's connections.
    pub const TERMINATED: u16 = 4009;
    pub const OVER_CAPACITY: u16 = 4100;
    pub const RECONNECT: u16 = 4200;
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    pub const RATE_LIMITED: u16 = 4301;
}

/// The close frame of a session's close, in Pusher's ranges: a node that
/// drains or was evicted says "reconnect now" (4200), so pusher-js comes
/// back at once on another node.
fn close_frame(code: CloseCode) -> CloseFrame {
    let (code, reason) = match code {
        CloseCode::Normal => (1000, "normal closure"),
        CloseCode::Restarting => (close::RECONNECT, "node restarting: reconnect"),
        CloseCode::HeartbeatTimeout => (close::PONG_NOT_RECEIVED, "pong reply not received"),
        CloseCode::Overloaded | CloseCode::SlowConsumer => (close::OVER_CAPACITY, code.reason()),
        CloseCode::RateLimited => (close::RATE_LIMITED, "rate limit exceeded"),
        CloseCode::TooLarge => (1009, "message too large"),
        CloseCode::Terminated => (close::TERMINATED, "You got disconnected by the app."),
        CloseCode::TokenExpired | CloseCode::Internal => (code.code(), code.reason()),
    };
    CloseFrame { code: WsCloseCode::from(code), reason: reason.into() }
}

/// What the upgrade request said: the app of its key, and whether its
/// `protocol` parameter is one this server speaks.
#[derive(Debug)]
pub struct PusherRequest {
    pub key: String,
    pub app: Option<Arc<App>>,
    pub protocol: Option<String>,
}

/// The protocol versions served (pusher-js 8 speaks 7).
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

impl PusherRequest {
    /// Why the connection is refused at once, with the close code.
    fn refusal(&self) -> Option<(u16, String)> {
        let Some(protocol) = &self.protocol else {
            return Some((close::NO_PROTOCOL, "No protocol version supplied".into()));
        };
        let Ok(version) = protocol.parse::<u32>() else {
            return Some((close::BAD_VERSION, "Invalid version string format".into()));
        };
        if !PROTOCOLS.contains(&version) {
            return Some((close::UNSUPPORTED_PROTOCOL, format!("Unsupported protocol version {version}")));
        }
        if self.app.is_none() {
            return Some((close::APP_UNKNOWN, format!("App key {} not in this cluster", self.key)));
        }
        None
    }
}

/// Runs a Pusher session to its end (see the Starling session's `run`).
pub async fn run<S, R>(
    gateway: Arc<Gateway>,
    conn: ConnId,
    request: PusherRequest,
    mut sink: S,
    mut stream: R,
    shutdown: CancellationToken,
) where
    S: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let close_timeout = Duration::from_millis(gateway.config.websocket.close_timeout_ms);
    let refused = request.refusal().or_else(|| match &request.app {
        Some(app) if app.try_connect_now() => None,
        _ => Some((close::OVER_QUOTA, "Application is over its connection quota".into())),
    });
    let (Some(app), None) = (request.app, refused.clone()) else {
        let (code, message) = refused.unwrap_or((close::APP_UNKNOWN, String::new()));
        debug!(%conn, code, %message, "pusher connection refused");
        let frame = CloseFrame { code: WsCloseCode::from(code), reason: message.clone().into() };
        let _ = tokio::time::timeout(close_timeout, async {
            sink.send(Message::text(encode::error(Some(code), &message))).await?;
            sink.send(Message::Close(Some(frame))).await
        })
        .await;
        return;
    };
    let app_connection = AppConnectionGuard(Arc::clone(&app));
    let socket = socket_id(conn);
    let limits = &gateway.config.limits;
    let entry = Arc::new(SessionEntry {
        conn,
        user: Arc::from(socket.as_str()),
        outbound: Outbound::new(limits.outbound_queue_messages, limits.outbound_queue_bytes),
        encoder: Arc::clone(&gateway.pusher.encoder),
    });
    let span = info_span!("pusher_session", conn = %conn, app = %app.config.id);
    let lifecycle = telemetry::connection_span(conn, &entry.user);
    async move {
        let registration = Registration::new(&gateway, &entry);
        debug!("connected");
        let activity_timeout = gateway.config.websocket.heartbeat_ms.div_ceil(1000).max(1);
        #[derive(serde::Serialize)]
        struct Established<'a> {
            socket_id: &'a str,
            activity_timeout: u64,
        }
        let established = Established { socket_id: &socket, activity_timeout };
        let text = encode::connection_event_with_string_data("pusher:connection_established", &established);
        let _ = entry.outbound.push(OutFrame::control(text));

        let mut session = Session::new(Arc::clone(&gateway), Arc::clone(&entry), app, socket);
        let writer = write_loop(sink, &entry.outbound, &gateway, close_timeout, close_frame);
        tokio::pin!(writer);
        let peer_closed = {
            let reader = session.read_loop(&mut stream);
            tokio::select! {
                _ = &mut writer => false,
                _ = shutdown.cancelled() => false,
                end = reader => {
                    entry.outbound.close(end.close_code());
                    let _ = tokio::time::timeout(close_timeout, &mut writer).await;
                    end == ReaderEnd::PeerClosed
                }
            }
        };
        if let Some(code) = entry.outbound.closing() {
            lifecycle.record("close_code", u16::from(close_frame(code).code));
        }
        if !peer_closed && !shutdown.is_cancelled() {
            let _ = tokio::time::timeout(close_timeout, async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        let stopping = || shutdown.is_cancelled() || gateway.is_draining();
        session.rooms.leave_all(stopping).await;
        drop(registration);
        drop(app_connection);
        drop(lifecycle);
        debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// Holds one of the app's connection slots (taken by `try_connect_now`).
struct AppConnectionGuard(Arc<App>);

impl Drop for AppConnectionGuard {
    fn drop(&mut self) {
        self.0.release_connection();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderEnd {
    PeerClosed,
    Gone,
    Close(CloseCode),
}

impl ReaderEnd {
    fn close_code(self) -> CloseCode {
        match self {
            ReaderEnd::PeerClosed | ReaderEnd::Gone => CloseCode::Normal,
            ReaderEnd::Close(code) => code,
        }
    }
}

/// A frame from the client: `{"event","data","channel"}`.
#[derive(Deserialize)]
struct Incoming<'a> {
    event: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    channel: Option<String>,
}

#[derive(Deserialize)]
struct Subscribe {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct Unsubscribe {
    channel: String,
}

#[derive(Deserialize)]
struct Signin {
    auth: String,
    user_data: String,
}

/// A subscription's presence data: `user_id` (a string or a number) and
/// an optional `user_info`.
#[derive(Deserialize)]
struct ChannelData {
    user_id: serde_json::Value,
    #[serde(default)]
    user_info: Option<Box<RawValue>>,
}

/// How long a subscription keeps retrying a membership change the cluster
/// cannot order yet (a leader election), before it reports the failure.
const SUBSCRIBE_PATIENCE: Duration = Duration::from_secs(5);

struct Session {
    gateway: Arc<Gateway>,
    entry: Arc<SessionEntry>,
    app: Arc<App>,
    socket: String,
    rooms: ConnectionRooms,
    request_bucket: TokenBucket,
    client_event_bucket: TokenBucket,
    strikes: u32,
    /// The user id of a `pusher:signin`, for channels joined afterwards.
    signed_in: Option<Arc<str>>,
}

impl Session {
    fn new(gateway: Arc<Gateway>, entry: Arc<SessionEntry>, app: Arc<App>, socket: String) -> Session {
        let limits = &gateway.config.limits;
        let now = Instant::now();
        let rooms = ConnectionRooms::in_space(
            Arc::clone(&gateway.service),
            app.space.clone(),
            entry.conn,
            Arc::clone(&entry.user),
        );
        let client_rate = app.config.client_events_per_second;
        Session {
            request_bucket: TokenBucket::new(limits.requests_per_second, limits.request_burst, now),
            client_event_bucket: TokenBucket::new(client_rate, client_rate.ceil().max(1.0) as u32, now),
            gateway,
            entry,
            app,
            socket,
            rooms,
            strikes: 0,
            signed_in: None,
        }
    }

    fn send(&self, text: String) {
        let _ = self.entry.outbound.push(OutFrame::control(text));
    }

    fn send_error(&self, code: Option<u16>, message: &str) {
        self.send(encode::error(code, message));
    }

    async fn read_loop<R>(&mut self, stream: &mut R) -> ReaderEnd
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let ws = &self.gateway.config.websocket;
        let heartbeat = Duration::from_millis(ws.heartbeat_ms);
        let patience = heartbeat + Duration::from_millis(ws.heartbeat_timeout_ms);
        let mut pings = interval_at(deadline_after(heartbeat), heartbeat);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut alive_until = deadline_after(patience);
        loop {
            let message = tokio::select! {
                _ = sleep_until(alive_until) => return ReaderEnd::Close(CloseCode::HeartbeatTimeout),
                _ = pings.tick() => {
                    self.send(encode::connection_event("pusher:ping", &serde_json::json!({})));
                    continue;
                }
                message = stream.next() => message,
            };
            let message = match message {
                None => return ReaderEnd::Gone,
                Some(Ok(message)) => message,
                Some(Err(WsError::Capacity(error))) => {
                    debug!(%error, "frame over the size limit");
                    return ReaderEnd::Close(CloseCode::TooLarge);
                }
                Some(Err(error)) => {
                    debug!(%error, "read failed");
                    return ReaderEnd::Gone;
                }
            };
            alive_until = deadline_after(patience);
            if !matches!(message, Message::Close(_) | Message::Frame(_)) {
                if let Some(code) = self.rate_limit() {
                    return ReaderEnd::Close(code);
                }
            }
            match message {
                Message::Text(text) => self.handle_text(&text).await,
                Message::Binary(_) => {
                    self.send_error(None, "binary frames are not supported; send JSON text")
                }
                Message::Close(_) => return ReaderEnd::PeerClosed,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Takes a request token; `Some` when refusals in a row reached the
    /// limit and the connection must close. A refused frame is dropped
    /// with a `pusher:error` (4301).
    fn rate_limit(&mut self) -> Option<CloseCode> {
        if self.request_bucket.take(Instant::now()).is_ok() {
            self.strikes = 0;
            return None;
        }
        self.strikes += 1;
        self.gateway.metrics.rate_limited.increment(1);
        if self.strikes >= self.gateway.config.limits.rate_limited_close_after {
            return Some(CloseCode::RateLimited);
        }
        self.send_error(Some(close::RATE_LIMITED), "Rate limit exceeded: frame dropped");
        None
    }

    async fn handle_text(&mut self, text: &str) {
        let incoming: Incoming<'_> = match serde_json::from_str(text) {
            Ok(incoming) => incoming,
            Err(error) => {
                return self
                    .send_error(None, &format!("frames must be {{\"event\",\"data\"}} JSON: {error}"));
            }
        };
        let data = incoming.data.map(RawValue::get).unwrap_or("{}");
        match incoming.event.as_str() {
            "pusher:ping" => self.send(encode::connection_event("pusher:pong", &serde_json::json!({}))),
            "pusher:pong" => {}
            "pusher:subscribe" => match parse_data::<Subscribe>(data) {
                Ok(request) => self.subscribe(request).await,
                Err(message) => self.send_error(None, &format!("pusher:subscribe: {message}")),
            },
            "pusher:unsubscribe" => match parse_data::<Unsubscribe>(data) {
                Ok(request) => self.unsubscribe(&request.channel).await,
                Err(message) => self.send_error(None, &format!("pusher:unsubscribe: {message}")),
            },
            "pusher:signin" => match parse_data::<Signin>(data) {
                Ok(request) => self.signin(request),
                Err(message) => self.send_error(None, &format!("pusher:signin: {message}")),
            },
            event if event.starts_with("client-") => {
                let channel = incoming.channel.unwrap_or_default();
                self.client_event(event, &channel, incoming.data).await
            }
            event => self.send_error(None, &format!("unsupported event `{event}`")),
        }
    }

    async fn subscribe(&mut self, request: Subscribe) {
        let channel_name = request.channel.as_str();
        let fail = |kind: &str, message: &str, status: u16| {
            encode::subscription_error(channel_name, kind, message, status)
        };
        let (channel, room) =
            match Channel::parse(channel_name).and_then(|c| Ok((c, self.app.room(channel_name)?))) {
                Ok(found) => found,
                Err(error) => return self.send(fail("InvalidChannel", &error.to_string(), 400)),
            };
        let channel_data = request.channel_data.as_deref().filter(|_| channel.kind == ChannelKind::Presence);
        if channel.needs_auth() {
            let auth = request.auth.as_deref().unwrap_or_default();
            if !auth::channel_auth_ok(&self.app.config, &self.socket, channel_name, channel_data, auth) {
                let message =
                    format!("Invalid signature for channel {channel_name}: check the app key and secret");
                return self.send(fail("AuthError", &message, 401));
            }
        }
        let (user, meta) = match (channel.kind, channel_data) {
            (ChannelKind::Presence, None) => {
                return self.send(fail("AuthError", "presence channels need channel_data", 401));
            }
            (ChannelKind::Presence, Some(data)) => match presence_member(data) {
                Ok(member) => member,
                Err(message) => return self.send(fail("AuthError", message, 401)),
            },
            _ => (self.signed_in.clone().unwrap_or_else(|| Arc::clone(&self.entry.user)), "{}".to_string()),
        };
        let within_limits =
            limits::check_subscription(&self.app.config, &self.rooms, &room, channel, &user, &meta);
        if let Err(refusal) = within_limits {
            return self.send(fail("LimitReached", &refusal.to_string(), refusal.status()));
        }
        let deadline = Instant::now() + SUBSCRIBE_PATIENCE;
        let mut wait = Duration::from_millis(50);
        let joined = loop {
            let recover = channel.cache.then_some(Recover::Last);
            match self.rooms.join_as(&room, Arc::clone(&user), meta.clone(), recover).await {
                Err(error) if error.retryable() && Instant::now() + wait < deadline => {
                    debug!(%error, channel = channel_name, "subscription not ordered yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                result => break result,
            }
        };
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(error) => {
                let status = if error.retryable() { 503 } else { 400 };
                return self.send(fail(error_kind(&error), &error.to_string(), status));
            }
        };
        if channel.kind == ChannelKind::Presence {
            // `terminate_connections` of this user reaches this connection.
            self.gateway.sessions.act_as(self.app.namespace(), &user, self.entry.conn);
        }
        let service = Arc::clone(self.rooms.service());
        service.join_point(&room, outcome.epoch, |snapshot, position| {
            let text = match channel.kind {
                ChannelKind::Presence => {
                    let members = snapshot.map(|s| s.members).unwrap_or_default();
                    encode::internal(
                        "pusher_internal:subscription_succeeded",
                        channel_name,
                        &presence_data(&members),
                    )
                }
                _ => encode::internal(
                    "pusher_internal:subscription_succeeded",
                    channel_name,
                    &serde_json::json!({}),
                ),
            };
            self.send(text);
            if let Some(last) = outcome.last.as_ref().filter(|last| last.at == position) {
                self.replay_cached(channel_name, last.message.as_ref());
            }
        });
    }

    /// Sends a new subscriber of a cache channel its last event, right
    /// after `subscription_succeeded`, or `pusher:cache_miss` when there is
    /// none. Called at the join point, and only when no live event reached
    /// the subscriber since it became one (that event is newer).
    fn replay_cached(&self, channel: &str, message: Option<&RoomMessage>) {
        let Some(message) = message else {
            self.send(encode::cache_miss(channel));
            // Sent by this node, the only one that saw the miss.
            self.gateway.pusher.webhooks.cache_miss(self.app.namespace(), channel);
            return;
        };
        if let Some(text) = self.entry.encoder.message(message) {
            let _ = self.entry.outbound.push(OutFrame { text, published: None });
        }
    }

    async fn unsubscribe(&mut self, channel: &str) {
        let Ok(room) = self.app.room(channel) else {
            return;
        };
        match self.rooms.leave(&room).await {
            Ok(()) | Err(ServiceError::NotJoined) => {}
            Err(error) => self.send_error(None, &format!("could not unsubscribe from {channel}: {error}")),
        }
    }

    fn signin(&mut self, request: Signin) {
        if !auth::signin_auth_ok(&self.app.config, &self.socket, &request.user_data, &request.auth) {
            return self.send_error(Some(4009), "Invalid signature for pusher:signin");
        }
        #[derive(Deserialize)]
        struct UserData {
            id: serde_json::Value,
        }
        let id = serde_json::from_str::<UserData>(&request.user_data).ok().and_then(|u| user_id_text(&u.id));
        let Some(id) = id else {
            return self.send_error(Some(4009), "user_data must be a JSON object with an `id`");
        };
        self.signed_in = Some(Arc::from(id.as_str()));
        self.gateway.sessions.act_as(self.app.namespace(), &id, self.entry.conn);
        #[derive(serde::Serialize)]
        struct Success<'a> {
            user_data: &'a str,
        }
        self.send(encode::connection_event(
            "pusher:signin_success",
            &Success { user_data: &request.user_data },
        ));
    }

    async fn client_event(&mut self, event: &str, channel_name: &str, data: Option<&RawValue>) {
        let app = &self.app.config;
        if !app.enable_client_messages {
            return self
                .send_error(None, "To send client events, enable_client_messages must be on for this app");
        }
        let Ok(channel) = Channel::parse(channel_name) else {
            return self
                .send_error(None, &format!("client event on an invalid channel name {channel_name:?}"));
        };
        if !channel.allows_client_events() {
            return self.send_error(None, "Client events are only allowed on private and presence channels");
        }
        if event.len() > app.max_event_name_bytes {
            let message = format!("Event names are at most {} characters", app.max_event_name_bytes);
            return self.send_error(None, &message);
        }
        let Ok(room) = self.app.room(channel_name) else {
            return;
        };
        if !self.rooms.contains(&room) {
            return self.send_error(
                None,
                &format!("Client event on {channel_name}, which this connection is not subscribed to"),
            );
        }
        if self.client_event_bucket.take(Instant::now()).is_err() {
            self.gateway.metrics.rate_limited.increment(1);
            return self.send_error(Some(close::RATE_LIMITED), "Client event rejected due to rate limit");
        }
        let data = data.map_or("{}", RawValue::get);
        let bytes = bytes::Bytes::copy_from_slice(data.as_bytes());
        let received_at = Instant::now();
        let span = telemetry::publish_span(&room, Some(self.entry.conn), None);
        let published = self
            .rooms
            .publish(&room, Some(Arc::from(event)), bytes, received_at, None)
            .instrument(span)
            .await;
        match published {
            Ok(_) | Err(ServiceError::Publish(crate::forward::PublishError::NoMembers)) => {}
            Err(error) => return self.send_error(None, &format!("client event not sent: {error}")),
        }
        let user_id = (channel.kind == ChannelKind::Presence).then(|| self.rooms.user_in(&room).to_string());
        // Pusher's webhook carries `data` as a string: a string as itself,
        // anything else as its JSON text.
        let data_text = serde_json::from_str::<String>(data).unwrap_or_else(|_| data.to_string());
        self.gateway.pusher.webhooks.client_event(
            self.app.namespace(),
            channel_name,
            event,
            &data_text,
            &self.socket,
            user_id.as_deref(),
        );
    }
}

/// The data of a `pusher:*` request: a JSON object, or a string of one
/// (some clients send it so).
fn parse_data<T: for<'de> Deserialize<'de>>(data: &str) -> Result<T, String> {
    let object = match serde_json::from_str::<String>(data) {
        Ok(inner) => serde_json::from_str(&inner),
        Err(_) => serde_json::from_str(data),
    };
    object.map_err(|e| e.to_string())
}

/// A presence subscription's member: its user id and the meta stored with
/// it (`{"user_id","user_info"}`).
fn presence_member(channel_data: &str) -> Result<(Arc<str>, String), &'static str> {
    let data: ChannelData =
        serde_json::from_str(channel_data).map_err(|_| "channel_data must be JSON with a user_id")?;
    let user = user_id_text(&data.user_id).ok_or("user_id must be a non-empty string or a number")?;
    if user.len() > MAX_USER_ID_BYTES {
        return Err("user_id is longer than 128 characters");
    }
    #[derive(serde::Serialize)]
    struct Meta<'a> {
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_info: Option<&'a RawValue>,
    }
    let meta = serde_json::to_string(&Meta { user_id: &user, user_info: data.user_info.as_deref() })
        .map_err(|_| "channel_data is not valid JSON")?;
    Ok((Arc::from(user.as_str()), meta))
}

/// A user id as text: a non-empty string, or a number as written.
fn user_id_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// `subscription_succeeded`'s presence data: each user once, with the
/// `user_info` of its first connection.
fn presence_data(members: &[Arc<MemberRecord>]) -> serde_json::Value {
    let mut ids: Vec<&str> = Vec::new();
    let mut hash = serde_json::Map::new();
    for member in members {
        if hash.contains_key(&*member.user) {
            continue;
        }
        let info = user_info(&member.meta)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or(serde_json::Value::Null);
        ids.push(&member.user);
        hash.insert(member.user.to_string(), info);
    }
    serde_json::json!({"presence": {"count": ids.len(), "ids": ids, "hash": hash}})
}

fn error_kind(error: &ServiceError) -> &'static str {
    match error {
        ServiceError::TooManyRooms { .. } => "LimitReached",
        ServiceError::RoomFull { .. } => "LimitReached",
        _ if error.retryable() => "Unavailable",
        _ => "Error",
    }
}
