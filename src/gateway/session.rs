//! One client connection: the reader that handles requests, the writer that
//! drains the outbound queue, heartbeats, token expiry and cleanup.
//!
//! A session is generic over a `Sink` and a `Stream` of WebSocket messages,
//! so it does not care what carries them. The reader and the writer run in
//! one task joined by `select!`; when either ends, the other is stopped and
//! the connection's room memberships are removed through `replicate`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::{interval_at, sleep_until, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use super::admission::Admission;
use super::hub::{wire_member_list, Position};
use super::limits::TokenBucket;
use super::outbound::{BatchEnd, OutFrame, Outbound};
use super::sessions::SessionEntry;
use super::{deadline_after, Gateway};
use crate::auth::Claims;
use crate::config::PublishPolicy;
use crate::protocol::{
    self, parse_request, CloseCode, ConnId, ErrorBody, ErrorCode, MessageFrom, Request, RoomName,
};
use crate::replicate::ReplicateError;
use crate::rooms::{Effect, MemberRecord, RoomCommand, RoomSnapshot};
use crate::telemetry;

/// Runs a session to its end. `shutdown` is the node's hard stop: pending
/// writes are abandoned when it fires (draining closes sessions before that).
pub async fn run<S, R>(
    gateway: Arc<Gateway>,
    admission: Admission,
    sink: S,
    mut stream: R,
    shutdown: CancellationToken,
) where
    S: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let Admission { conn, claims, permit } = admission;
    let limits = &gateway.config.limits;
    let entry = Arc::new(SessionEntry {
        conn,
        user: Arc::from(claims.sub.as_str()),
        outbound: Outbound::new(limits.outbound_queue_messages, limits.outbound_queue_bytes),
    });
    // Log context only (every line carries conn and user). The exported
    // lifecycle span is separate and never entered, so tracing adds nothing
    // to each poll of the session.
    let span = info_span!("session", conn = %conn, user = %entry.user);
    let lifecycle = telemetry::connection_span(conn, &entry.user);
    async move {
        let registration = Registration::new(&gateway, &entry);
        if gateway.is_draining() {
            // Admitted just before the drain began, registered after the
            // drain listed the sessions to close: close it here.
            entry.outbound.close(CloseCode::Restarting);
        }
        gateway.metrics.connections_opened.increment(1);
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
        let writer = write_loop(sink, &entry.outbound, &gateway, close_timeout);
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
        session.leave_all(&shutdown).await;
        drop(registration);
        drop(permit);
        drop(lifecycle);
        debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// A session listed in `Sessions` and counted in the connections gauge.
/// Dropping it undoes both, at the end of the session or while unwinding
/// from a panic, so neither can leak.
struct Registration {
    gateway: Arc<Gateway>,
    conn: ConnId,
}

impl Registration {
    fn new(gateway: &Arc<Gateway>, entry: &Arc<SessionEntry>) -> Registration {
        gateway.sessions.insert(Arc::clone(entry));
        gateway.metrics.connections.increment(1.0);
        Registration { gateway: Arc::clone(gateway), conn: entry.conn }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.gateway.sessions.remove(self.conn);
        self.gateway.metrics.connections.decrement(1.0);
    }
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

/// What a request produced, before encoding.
enum Reply {
    /// The handler queued its reply itself (a join, whose reply must be
    /// queued atomically with the room's state).
    Sent,
    Empty,
    Published(Position),
    Presence(Vec<Arc<MemberRecord>>),
}

struct Session {
    gateway: Arc<Gateway>,
    entry: Arc<SessionEntry>,
    claims: Claims,
    /// Rooms this connection is in, as confirmed by applied joins.
    rooms: HashSet<RoomName>,
    publish_bucket: TokenBucket,
    request_bucket: TokenBucket,
    /// Consecutive rate-limited requests.
    strikes: u32,
    /// Whether a join was ever proposed (it may have committed even if the
    /// session ended before its reply).
    proposed_join: bool,
    /// The join proposal under way. It runs as its own task so that a
    /// session ending mid-join can wait for it before proposing its
    /// disconnect (otherwise the two could commit in either order).
    pending_join: Option<tokio::task::JoinHandle<Result<Vec<Effect>, ReplicateError>>>,
}

impl Session {
    fn new(gateway: Arc<Gateway>, entry: Arc<SessionEntry>, claims: Claims) -> Session {
        let limits = &gateway.config.limits;
        let now = Instant::now();
        Session {
            publish_bucket: TokenBucket::new(limits.publish_per_second, limits.publish_burst, now),
            request_bucket: TokenBucket::new(limits.requests_per_second, limits.request_burst, now),
            gateway,
            entry,
            claims,
            rooms: HashSet::new(),
            strikes: 0,
            proposed_join: false,
            pending_join: None,
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
            RateDecision::Refused => return None,
            RateDecision::Allowed => {}
        }
        let result = match envelope.request {
            Request::Join { room, meta } => {
                let span = telemetry::join_span(&room, self.entry.conn);
                self.join(id, room, meta.as_deref()).instrument(span).await
            }
            Request::Leave { room } => self.leave(room).await,
            Request::Publish { room, data, traceparent } => {
                let span = telemetry::publish_span(&room, Some(self.entry.conn), traceparent.as_deref());
                self.publish(&room, &data).instrument(span).await
            }
            Request::Presence { room } => self.presence(&room).await,
            Request::Pong => return None,
        };
        match result {
            Ok(reply) => {
                if let Some(text) = id.and_then(|id| encode_reply(id, &reply)) {
                    self.send(text);
                }
            }
            Err(error) => self.send_error(id, &error),
        }
        None
    }

    fn namespace(&self, room: &RoomName) -> Result<&crate::config::NamespaceConfig, ErrorBody> {
        self.gateway.namespaces.get(room.namespace()).ok_or_else(|| {
            ErrorBody::new(ErrorCode::Forbidden, format!("unknown namespace `{}`", room.namespace()))
        })
    }

    async fn join(
        &mut self,
        id: Option<u64>,
        room: RoomName,
        meta: Option<&RawValue>,
    ) -> Result<Reply, ErrorBody> {
        let namespace = self.namespace(&room)?;
        let (presence, max_members) = (namespace.presence, namespace.max_members);
        if !self.claims.may_join(room.as_str()) {
            return Err(ErrorBody::new(ErrorCode::Forbidden, "token does not allow this room"));
        }
        let limits = &self.gateway.config.limits;
        if !self.rooms.contains(&room) && self.rooms.len() >= limits.max_rooms_per_connection {
            let message = format!("at most {} rooms per connection", limits.max_rooms_per_connection);
            return Err(ErrorBody::new(ErrorCode::Forbidden, message));
        }
        let meta = merged_meta(meta, self.claims.meta.as_ref());
        if meta.len() > limits.max_meta_bytes {
            let message = format!("meta is over {} bytes", limits.max_meta_bytes);
            return Err(ErrorBody::new(ErrorCode::TooLarge, message));
        }
        let member = MemberRecord {
            user: Arc::clone(&self.entry.user),
            conn: self.entry.conn,
            node: Arc::clone(&self.gateway.node),
            incarnation: self.gateway.incarnation,
            meta: meta.into(),
        };
        let command = RoomCommand::Join { room: room.clone(), member, max_members };
        self.proposed_join = true;
        let replicator = Arc::clone(&self.gateway.replicator);
        let pending =
            self.pending_join.insert(tokio::spawn(async move { replicator.propose(command).await }));
        let proposed = pending.await;
        self.pending_join = None;
        let effects = proposed
            .unwrap_or_else(|_| Err(ReplicateError::Unavailable("join task failed".into())))
            .map_err(unavailable)?;
        let epoch = effects.iter().find_map(|effect| match effect {
            Effect::Joined { epoch, .. } | Effect::AlreadyJoined { epoch, .. } => Some(*epoch),
            _ => None,
        });
        let Some(epoch) = epoch else {
            let message = match effects.iter().find_map(|e| match e {
                Effect::Rejected { rejection, .. } => Some(*rejection),
                _ => None,
            }) {
                Some(crate::rooms::Rejection::RoomFull { max_members }) => {
                    format!("room is full ({max_members} members)")
                }
                None => "join was not applied".to_string(),
            };
            return Err(ErrorBody::new(ErrorCode::Forbidden, message));
        };
        self.rooms.insert(room.clone());
        self.gateway.metrics.joins.increment(1);
        let Some(id) = id else {
            return Ok(Reply::Sent);
        };
        // Under the table's apply lock and the room's sequencing lock: every
        // `joined`/`left` event and message queued before the reply is in it,
        // every later one comes after it.
        let (replicator, hub) = (&self.gateway.replicator, &self.gateway.hub);
        replicator.with_snapshot(&room, |snapshot| {
            let members = presence.then(|| snapshot.map(|s| s.members).unwrap_or_default());
            hub.with_position(&room, |position| {
                let position = position.unwrap_or(Position { epoch, offset: 0 });
                self.send(encode_join_reply(id, &room, position, members.as_deref()));
            })
        });
        Ok(Reply::Sent)
    }

    async fn leave(&mut self, room: RoomName) -> Result<Reply, ErrorBody> {
        if !self.rooms.contains(&room) {
            return Err(ErrorBody::new(ErrorCode::NotJoined, "not a member of this room"));
        }
        let command = RoomCommand::Leave { room: room.clone(), conn: self.entry.conn };
        self.gateway.replicator.propose(command).await.map_err(unavailable)?;
        self.rooms.remove(&room);
        self.gateway.metrics.leaves.increment(1);
        Ok(Reply::Empty)
    }

    async fn publish(&mut self, room: &RoomName, data: &RawValue) -> Result<Reply, ErrorBody> {
        let received_at = Instant::now();
        let namespace = self.namespace(room)?;
        if namespace.publish == PublishPolicy::Server {
            let message = format!("only the server publishes in namespace `{}`", room.namespace());
            return Err(ErrorBody::new(ErrorCode::Forbidden, message));
        }
        if data.get().len() > namespace.max_data_bytes {
            let message = format!("data is over {} bytes", namespace.max_data_bytes);
            return Err(ErrorBody::new(ErrorCode::TooLarge, message));
        }
        if !self.rooms.contains(room) {
            return Err(ErrorBody::new(ErrorCode::NotJoined, "join the room before publishing"));
        }
        let from = MessageFrom { user: &self.entry.user, conn: self.entry.conn };
        let published = self.gateway.router.publish(room, data, Some(from), received_at).await;
        match published {
            Ok(Some(position)) => Ok(Reply::Published(position)),
            Ok(None) => Err(ErrorBody::new(ErrorCode::Unavailable, "room is not ready").retry_after(100)),
            Err(error) => Err(ErrorBody::new(ErrorCode::Unavailable, error.0).retry_after(200)),
        }
    }

    async fn presence(&self, room: &RoomName) -> Result<Reply, ErrorBody> {
        let namespace = self.namespace(room)?;
        if !namespace.presence {
            let message = format!("presence is off in namespace `{}`", room.namespace());
            return Err(ErrorBody::new(ErrorCode::Forbidden, message));
        }
        if !self.rooms.contains(room) && !self.claims.may_join(room.as_str()) {
            return Err(ErrorBody::new(ErrorCode::Forbidden, "token does not allow this room"));
        }
        let snapshot = self.gateway.replicator.presence(room).await.map_err(unavailable)?;
        Ok(Reply::Presence(snapshot.map(|s: RoomSnapshot| s.members).unwrap_or_default()))
    }

    /// Removes the connection from every room it is in.
    /// Retried a few times (a cluster may be electing a leader); if it
    /// still fails the members stay until this node's incarnation is evicted.
    async fn leave_all(&mut self, shutdown: &CancellationToken) {
        if self.rooms.is_empty() && !self.proposed_join {
            return;
        }
        if let Some(join) = self.pending_join.take() {
            let _ = join.await;
        }
        for attempt in 1..=5u32 {
            let command = RoomCommand::ConnGone { conn: self.entry.conn };
            match self.gateway.replicator.propose(command).await {
                Ok(_) => {
                    self.rooms.clear();
                    return;
                }
                // A stopping node does not wait for a quorum: presence is
                // ephemeral, and its incarnation is evicted when it is gone.
                Err(error) if shutdown.is_cancelled() || self.gateway.is_draining() => {
                    debug!(%error, "node stopping; connection left in its rooms");
                    return;
                }
                Err(error) => {
                    debug!(%error, attempt, "could not remove the connection from its rooms yet");
                    tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                }
            }
        }
        warn!("gave up removing a closed connection from its rooms");
    }
}

enum RateDecision {
    Allowed,
    Refused,
    Close(CloseCode),
}

fn unavailable(error: ReplicateError) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, error.to_string()).retry_after(500)
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

fn encode_join_reply(
    id: u64,
    room: &RoomName,
    position: Position,
    members: Option<&[Arc<MemberRecord>]>,
) -> String {
    #[derive(Serialize)]
    struct JoinResult<'a> {
        room: &'a RoomName,
        epoch: u64,
        offset: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<protocol::Member<'a>>>,
    }
    let result = JoinResult {
        room,
        epoch: position.epoch,
        offset: position.offset,
        members: members.map(wire_member_list),
    };
    protocol::encode_ok_reply(id, &result)
}

/// The text of a reply, or `None` when the handler already sent it.
fn encode_reply(id: u64, reply: &Reply) -> Option<String> {
    #[derive(Serialize)]
    struct PublishResult {
        offset: u64,
        epoch: u64,
    }
    #[derive(Serialize)]
    struct PresenceResult<'a> {
        members: Vec<protocol::Member<'a>>,
    }
    let text = match reply {
        Reply::Sent => return None,
        Reply::Empty => protocol::encode_ok_reply(id, &serde_json::json!({})),
        Reply::Published(position) => {
            protocol::encode_ok_reply(id, &PublishResult { offset: position.offset, epoch: position.epoch })
        }
        Reply::Presence(members) => {
            protocol::encode_ok_reply(id, &PresenceResult { members: wire_member_list(members) })
        }
    };
    Some(text)
}

/// Writes queued frames until a close is asked for or the socket fails.
async fn write_loop<S>(mut sink: S, outbound: &Outbound, gateway: &Gateway, close_timeout: Duration)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let mut batch = VecDeque::new();
    loop {
        let end = outbound.next_batch(&mut batch).await;
        let oldest = batch.iter().find_map(|frame| frame.published);
        let written = {
            let write = write_batch(&mut sink, &mut batch);
            tokio::pin!(write);
            let mut close_seen = matches!(end, BatchEnd::Close(_));
            loop {
                tokio::select! {
                    result = &mut write => break result.is_ok(),
                    code = outbound.closed(), if !close_seen => {
                        if code == CloseCode::SlowConsumer {
                            // The client is not reading; this write may never finish.
                            break false;
                        }
                        close_seen = true;
                    }
                }
            }
        };
        batch.clear();
        if let Some(published) = oldest.filter(|_| written) {
            gateway.metrics.observe_delivery(published.at.elapsed(), published.cross_node);
        }
        let code = match (written, end) {
            (true, BatchEnd::Open) => continue,
            (true, BatchEnd::Close(code)) => code,
            (false, _) => match outbound.closing() {
                Some(CloseCode::SlowConsumer) => CloseCode::SlowConsumer,
                _ => return,
            },
        };
        gateway.metrics.closed(&gateway.node, code);
        let frame = CloseFrame { code: WsCloseCode::from(code.code()), reason: code.reason().into() };
        let _ = tokio::time::timeout(close_timeout, sink.send(Message::Close(Some(frame)))).await;
        return;
    }
}

async fn write_batch<S>(sink: &mut S, batch: &mut VecDeque<OutFrame>) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    for frame in batch.drain(..) {
        sink.feed(Message::Text(frame.text)).await?;
    }
    sink.flush().await
}

/// When a token with expiry `exp` stops being accepted (`exp + leeway`), as
/// a timer deadline. Any `exp` is fine: one far away means no timer fires.
fn token_deadline(exp: u64, leeway: u64) -> tokio::time::Instant {
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let remaining = exp.saturating_add(leeway).saturating_sub(now_unix);
    deadline_after(Duration::from_secs(remaining))
}
