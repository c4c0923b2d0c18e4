//! One Starling-protocol connection (wire contract v1): the reader that
//! parses requests and answers them through the room service, heartbeats,
//! token expiry, rate limits, and cleanup. The writer is the gateway's.
//!
//! A session is generic over a `Sink` and a `Stream` of WebSocket messages,
//! so it does not care what carries them. The reader and the writer run in
//! one task joined by `select!`; when either ends, the other is stopped and
//! the connection's room memberships are removed through the service.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{Sink, Stream, StreamExt};
use serde_json::value::RawValue;
use tokio::time::{interval_at, sleep_until, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use super::encode::{encode_join_reply, encode_presence_reply, encode_publish_reply};
use super::errors::{error_body, ErrorContext};
use crate::auth::Claims;
use crate::fanout::{FrameEncoder, OutFrame, Outbound, Position, Recover, SessionEntry};
use crate::gateway::limits::TokenBucket;
use crate::gateway::writer::write_loop;
use crate::gateway::{deadline_after, Gateway, Registration};
use crate::protocol::{self, parse_request, CloseCode, ConnId, ErrorBody, ErrorCode, Request, RoomName};
use crate::service::ConnectionRooms;
use crate::telemetry;

/// The close frame of a close code, as wire contract v1 numbers them.
fn close_frame(code: CloseCode) -> CloseFrame {
    CloseFrame { code: WsCloseCode::from(code.code()), reason: code.reason().into() }
}

/// Runs a session to its end. `shutdown` is the node's hard stop: pending
/// writes are abandoned when it fires (draining closes sessions before that).
pub async fn run<S, R>(
    gateway: Arc<Gateway>,
    encoder: Arc<dyn FrameEncoder>,
    conn: ConnId,
    claims: Claims,
    sink: S,
    mut stream: R,
    shutdown: CancellationToken,
) where
    S: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let limits = &gateway.config.limits;
    let entry = Arc::new(SessionEntry {
        conn,
        user: Arc::from(claims.sub.as_str()),
        outbound: Outbound::new(limits.outbound_queue_messages, limits.outbound_queue_bytes),
        encoder,
    });
    // Log context only (every line carries conn and user). The exported
    // lifecycle span is separate and never entered, so tracing adds nothing
    // to each poll of the session.
    let span = info_span!("session", conn = %conn, user = %entry.user);
    let lifecycle = telemetry::connection_span(conn, &entry.user);
    async move {
        let registration = Registration::new(&gateway, &entry);
        debug!("connected");
        let welcome = protocol::encode_welcome(&protocol::Welcome {
            conn,
            node: &gateway.node,
            user: &entry.user,
            heartbeat_ms: gateway.config.websocket.heartbeat_ms,
        });
        let _ = entry.outbound.push(OutFrame::control(welcome));

        let mut session = Session::new(Arc::clone(&gateway), Arc::clone(&entry), claims);
        let close_timeout = Duration::from_millis(gateway.config.websocket.close_timeout_ms);
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
            lifecycle.record("close_code", code.code());
        }
        if !peer_closed && !shutdown.is_cancelled() {
            // Read until the client's close (or a timeout), so the socket is not
            // reset under a close frame the client has yet to read.
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
        drop(lifecycle);
        debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderEnd {
    /// The client sent a close frame.
    PeerClosed,
    /// The socket ended or failed without a close frame.
    Gone,
    /// The server decided to close with this code.
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

struct Session {
    gateway: Arc<Gateway>,
    entry: Arc<SessionEntry>,
    claims: Claims,
    rooms: ConnectionRooms,
    publish_bucket: TokenBucket,
    request_bucket: TokenBucket,
    /// Consecutive rate-limited requests.
    strikes: u32,
}

impl Session {
    fn new(gateway: Arc<Gateway>, entry: Arc<SessionEntry>, claims: Claims) -> Session {
        let limits = &gateway.config.limits;
        let now = Instant::now();
        let rooms = ConnectionRooms::new(Arc::clone(&gateway.service), entry.conn, Arc::clone(&entry.user));
        Session {
            publish_bucket: TokenBucket::new(limits.publish_per_second, limits.publish_burst, now),
            request_bucket: TokenBucket::new(limits.requests_per_second, limits.request_burst, now),
            gateway,
            entry,
            claims,
            rooms,
            strikes: 0,
        }
    }

    fn send(&self, text: String) {
        let _ = self.entry.outbound.push(OutFrame::control(text));
    }

    fn send_error(&self, id: Option<u64>, error: &ErrorBody) {
        self.gateway.metrics.error(error.code);
        self.send(protocol::encode_error_reply(id, error));
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
        let expires_at = token_deadline(self.claims.exp, self.gateway.config.auth.jwt_leeway_secs);
        loop {
            let message = tokio::select! {
                _ = sleep_until(expires_at) => return ReaderEnd::Close(CloseCode::TokenExpired),
                _ = sleep_until(alive_until) => return ReaderEnd::Close(CloseCode::HeartbeatTimeout),
                _ = pings.tick() => {
                    self.send(protocol::encode_ping().to_string());
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
            match message {
                Message::Text(text) => {
                    if let Some(code) = self.handle_text(&text).await {
                        return ReaderEnd::Close(code);
                    }
                }
                Message::Binary(_) => {
                    if let Some(code) = self.reject_binary() {
                        return ReaderEnd::Close(code);
                    }
                }
                Message::Close(_) => return ReaderEnd::PeerClosed,
                // Control frames cost a read (and a ping an automatic pong):
                // they take a request token like everything else.
                Message::Ping(_) | Message::Pong(_) => {
                    if let RateDecision::Close(code) = self.rate_limit(false, None) {
                        return ReaderEnd::Close(code);
                    }
                }
                Message::Frame(_) => {}
            }
        }
    }

    /// Takes a token for one request. On refusal it replies `rate_limited`
    /// (or asks for 4029 after too many refusals in a row).
    fn rate_limit(&mut self, publish: bool, id: Option<u64>) -> RateDecision {
        let bucket = if publish { &mut self.publish_bucket } else { &mut self.request_bucket };
        let Err(wait) = bucket.take(Instant::now()) else {
            self.strikes = 0;
            return RateDecision::Allowed;
        };
        self.strikes += 1;
        self.gateway.metrics.rate_limited.increment(1);
        if self.strikes >= self.gateway.config.limits.rate_limited_close_after {
            return RateDecision::Close(CloseCode::RateLimited);
        }
        let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let error = ErrorBody::new(ErrorCode::RateLimited, "too many requests").retry_after(millis);
        self.send_error(id, &error);
        RateDecision::Refused
    }

    fn reject_binary(&mut self) -> Option<CloseCode> {
        match self.rate_limit(false, None) {
            RateDecision::Close(code) => Some(code),
            RateDecision::Refused => None,
            RateDecision::Allowed => {
                let message = "binary frames are not supported; send JSON text";
                self.send_error(None, &ErrorBody::new(ErrorCode::BadRequest, message));
                None
            }
        }
    }

    /// Handles one text frame; returns a close code when the connection must end.
    async fn handle_text(&mut self, text: &str) -> Option<CloseCode> {
        let envelope = match parse_request(text) {
            Ok(envelope) => envelope,
            Err(error) => {
                return match self.rate_limit(false, error.id) {
                    RateDecision::Close(code) => Some(code),
                    RateDecision::Refused => None,
                    RateDecision::Allowed => {
                        self.send_error(error.id, &ErrorBody::new(ErrorCode::BadRequest, error.message));
                        None
                    }
                };
            }
        };
        let id = envelope.id;
        // A `pong` takes a request token too (it is never answered).
        let is_publish = matches!(envelope.request, Request::Publish { .. });
        match self.rate_limit(is_publish, id) {
            RateDecision::Close(code) => return Some(code),
            RateDecision::Refused => {
                // G9: a refused publish holds the room's later ones back.
                if let Request::Publish { room, idem, .. } = &envelope.request {
                    self.rooms.hold_back(room, idem.as_deref());
                }
                return None;
            }
            RateDecision::Allowed => {}
        }
        let result = match envelope.request {
            Request::Join { room, meta, since, rewind } => {
                let span = telemetry::join_span(&room, self.entry.conn);
                let recover = match (since, rewind) {
                    (Some(since), _) => {
                        Some(Recover::Since(Position { epoch: since.epoch, offset: since.offset }))
                    }
                    (None, Some(count)) => Some(Recover::Rewind(count as usize)),
                    (None, None) => None,
                };
                self.join(id, room, meta.as_deref(), recover).instrument(span).await
            }
            Request::Leave { room } => self.leave(id, &room).await,
            Request::Publish { room, data, traceparent, idem } => {
                let span = telemetry::publish_span(&room, Some(self.entry.conn), traceparent.as_deref());
                self.publish(id, &room, data, idem.as_deref()).instrument(span).await
            }
            Request::Presence { room } => self.presence(id, &room).await,
            Request::Pong => return None,
        };
        if let Err(error) = result {
            self.send_error(id, &error);
        }
        None
    }

    async fn join(
        &mut self,
        id: Option<u64>,
        room: RoomName,
        meta: Option<&RawValue>,
        recover: Option<Recover>,
    ) -> Result<(), ErrorBody> {
        let service = Arc::clone(self.rooms.service());
        let presence = service.namespace(&room).map_err(|e| error_body(e, ErrorContext::Join))?.presence;
        if !self.claims.may_join(room.as_str()) {
            return Err(ErrorBody::new(ErrorCode::Forbidden, "token does not allow this room"));
        }
        let meta = merged_meta(meta, self.claims.meta.as_ref());
        let joined =
            self.rooms.join(&room, meta, recover).await.map_err(|e| error_body(e, ErrorContext::Join))?;
        let Some(id) = id else {
            return Ok(());
        };
        // At the join point: every `joined`/`left` event and message queued
        // before the reply is in it, every later one comes after it.
        // `recovered` is in the reply only when the join asked for `since`.
        let recovered = matches!(recover, Some(Recover::Since(_))).then_some(joined.recovered);
        service.join_point(&room, joined.epoch, |snapshot, position| {
            let members = presence.then(|| snapshot.map(|s| s.members).unwrap_or_default());
            self.send(encode_join_reply(id, &room, position, members.as_deref(), recovered));
        });
        Ok(())
    }

    async fn leave(&mut self, id: Option<u64>, room: &RoomName) -> Result<(), ErrorBody> {
        self.rooms.leave(room).await.map_err(|e| error_body(e, ErrorContext::Leave))?;
        if let Some(id) = id {
            self.send(protocol::encode_ok_reply(id, &serde_json::json!({})));
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        id: Option<u64>,
        room: &RoomName,
        data: Box<RawValue>,
        idem: Option<&str>,
    ) -> Result<(), ErrorBody> {
        let received_at = Instant::now();
        let data = bytes::Bytes::from(String::from(Box::<str>::from(data)));
        let position = self
            .rooms
            .publish(room, None, data, received_at, idem)
            .await
            .map_err(|e| error_body(e, ErrorContext::Publish))?;
        if let Some(id) = id {
            self.send(encode_publish_reply(id, position));
        }
        Ok(())
    }

    async fn presence(&self, id: Option<u64>, room: &RoomName) -> Result<(), ErrorBody> {
        let service = self.rooms.service();
        service.check_presence(room).map_err(|e| error_body(e, ErrorContext::Presence))?;
        if !self.rooms.contains(room) && !self.claims.may_join(room.as_str()) {
            return Err(ErrorBody::new(ErrorCode::Forbidden, "token does not allow this room"));
        }
        let members = service.presence(room).await.map_err(|e| error_body(e, ErrorContext::Presence))?;
        if let Some(id) = id {
            self.send(encode_presence_reply(id, &members));
        }
        Ok(())
    }
}

enum RateDecision {
    Allowed,
    Refused,
    Close(CloseCode),
}

/// The member's `meta`: the join's object with the token's `meta` keys on
/// top (the token is the server's word, so it wins).
fn merged_meta(
    join: Option<&RawValue>,
    token: Option<&serde_json::Map<String, serde_json::Value>>,
) -> String {
    let mut meta: serde_json::Map<String, serde_json::Value> =
        join.and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or_default();
    if let Some(token) = token {
        meta.extend(token.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    serde_json::Value::Object(meta).to_string()
}

/// When a token with expiry `exp` stops being accepted (`exp + leeway`), as
/// a timer deadline. Any `exp` is fine: one far away means no timer fires.
fn token_deadline(exp: u64, leeway: u64) -> tokio::time::Instant {
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let remaining = exp.saturating_add(leeway).saturating_sub(now_unix);
    deadline_after(Duration::from_secs(remaining))
}
