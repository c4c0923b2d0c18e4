//! [`Session`]: a logical connection to a Starling cluster that survives
//! lost links. This module holds the handle callers use, its options, the
//! events it yields and its errors; the work happens in the driver task
//! (`crate::driver`), which the handle talks to over a channel. Nothing here
//! touches a socket.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::policy::CloseCause;
use crate::wire::{JoinResult, Member, Message, PublishResult, StreamPosition, Welcome};

/// A token provider: called before every connection attempt.
pub type TokenProvider =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// Where a session's token comes from.
#[derive(Clone)]
pub(crate) enum TokenSource {
    Fixed(String),
    Provider(TokenProvider),
}

impl TokenSource {
    pub(crate) async fn token(&self) -> Result<String, String> {
        match self {
            TokenSource::Fixed(token) => Ok(token.clone()),
            TokenSource::Provider(provider) => provider().await,
        }
    }
}

/// How a session connects and reconnects. Defaults are the JS client's.
#[derive(Clone)]
pub struct SessionOptions {
    pub(crate) urls: Vec<String>,
    pub(crate) token: TokenSource,
    pub(crate) origin: Option<String>,
    pub(crate) min_reconnect_delay: Duration,
    pub(crate) max_reconnect_delay: Duration,
    pub(crate) rate_limited_delay: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat_grace: Duration,
    pub(crate) queue_limit: usize,
    pub(crate) retry_publish: bool,
    pub(crate) resend_in_flight: bool,
    pub(crate) max_auth_failures: u32,
    pub(crate) max_joins_in_flight: usize,
}

impl fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token never appears in a debug print.
        f.debug_struct("SessionOptions")
            .field("urls", &self.urls)
            .field("min_reconnect_delay", &self.min_reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("request_timeout", &self.request_timeout)
            .field("queue_limit", &self.queue_limit)
            .finish_non_exhaustive()
    }
}

impl SessionOptions {
    /// The URLs to connect to (`ws://host:port/ws`), tried in turn: the
    /// session moves to the next one when a link fails (see the close-code
    /// table). At least one.
    pub fn new<I, S>(urls: I) -> SessionOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SessionOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            token: TokenSource::Fixed(String::new()),
            origin: None,
            min_reconnect_delay: Duration::from_millis(250),
            max_reconnect_delay: Duration::from_secs(10),
            rate_limited_delay: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            heartbeat_grace: Duration::from_secs(10),
            queue_limit: 100,
            retry_publish: true,
            resend_in_flight: false,
            max_auth_failures: 3,
            max_joins_in_flight: 10,
        }
    }

    /// More URLs to fail over to, after those given to `new`.
    pub fn fallback_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// A fixed token, sent as `Authorization: Bearer` on every connection.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenSource::Fixed(token.into());
        self
    }

    /// Asks `provider` for a token before every connection attempt (a
    /// token refused with 1008 or HTTP 401 is asked for again at once).
    pub fn token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token = TokenSource::Provider(Arc::new(move || Box::pin(provider())));
        self
    }

    /// Sends an `Origin` header, as a browser would.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Backoff bounds: attempt `n` waits uniform in `[0, min(max, min * 2^n)]`
    /// (default 250 ms and 10 s); reset by each `welcome`.
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.min_reconnect_delay = min;
        self.max_reconnect_delay = max.max(min);
        self
    }

    /// Least wait after close 4029, or the last `retry_after_ms` if longer (default 5 s).
    pub fn rate_limited_delay(mut self, delay: Duration) -> Self {
        self.rate_limited_delay = delay;
        self
    }

    /// Deadline of a request; for a publish, from the call to the reply,
    /// queue time and retries included (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// From starting a connection to its `welcome` (default 5 s); then the next URL is tried.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A link with no frame for `heartbeat_ms` + this is dropped (default 10 s).
    pub fn heartbeat_grace(mut self, grace: Duration) -> Self {
        self.heartbeat_grace = grace;
        self
    }

    /// Publishes held while not sent (default 100); over it the oldest is
    /// dropped with [`SessionError::QueueOverflow`].
    pub fn queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = limit;
        self
    }

    /// Re-send a publish answered `unavailable` or `rate_limited`, with
    /// the same `idem` key and in call order, within its deadline (default true).
    pub fn retry_publish(mut self, yes: bool) -> Self {
        self.retry_publish = yes;
        self
    }

    /// Re-send after a reconnect the publishes whose link dropped before
    /// their reply, instead of failing them with
    /// [`SessionError::Disconnected`] (default false: `idem` keys belong to
    /// a connection, so such a publish may be delivered twice).
    pub fn resend_in_flight(mut self, yes: bool) -> Self {
        self.resend_in_flight = yes;
        self
    }

    /// Consecutive 1008 / HTTP 401 before giving up (default 3).
    pub fn max_auth_failures(mut self, failures: u32) -> Self {
        self.max_auth_failures = failures;
        self
    }

    /// Joins awaiting their reply at once (default 10).
    pub fn max_joins_in_flight(mut self, joins: usize) -> Self {
        self.max_joins_in_flight = joins.max(1);
        self
    }
}

/// Everything a session's calls can fail with. `code()` is the wire
/// contract's error code or one of the client's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The server answered with an error reply (`forbidden`, `unavailable`, ...).
    #[error("{code}: {message}")]
    Server { code: String, message: String, retry_after_ms: Option<u64> },
    /// No reply within `request_timeout` (for a publish: since the call).
    #[error("no reply within the timeout")]
    Timeout,
    /// The link dropped before the reply: a publish may or may not have been delivered.
    #[error("the connection was lost before the reply")]
    Disconnected,
    /// Dropped from the full offline queue (`queue_limit`).
    #[error("dropped from the full offline queue")]
    QueueOverflow,
    /// The session is closed (by [`Session::close`] or a close code that stops it).
    #[error("the session is closed")]
    Closed,
    /// The room was left, or was never joined on this session.
    #[error("not in room {0}")]
    Left(String),
}

impl SessionError {
    /// `forbidden`, `unavailable`, ... or `timeout`, `disconnected`,
    /// `queue_overflow`, `closed`, `left`.
    pub fn code(&self) -> &str {
        match self {
            SessionError::Server { code, .. } => code,
            SessionError::Timeout => "timeout",
            SessionError::Disconnected => "disconnected",
            SessionError::QueueOverflow => "queue_overflow",
            SessionError::Closed => "closed",
            SessionError::Left(_) => "left",
        }
    }
}

/// What a session tells its caller, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A connection attempt starts.
    Connecting {
        url: String,
    },
    /// A `welcome` came: the session is connected; rooms are being re-joined.
    Connected {
        url: String,
        welcome: Welcome,
    },
    /// The link ended; the next attempt goes to `next_url` after `delay`.
    Disconnected {
        cause: CloseCause,
        reason: String,
        delay: Duration,
        next_url: String,
    },
    /// The session stopped for good (`cause` is `None` when the caller closed it).
    Closed {
        cause: Option<CloseCause>,
        reason: String,
    },
    /// The first join of `room` succeeded.
    Subscribed {
        room: String,
        position: StreamPosition,
        members: Option<Vec<Member>>,
    },
    /// `room` was joined again after a reconnect, with `since` the last
    /// position delivered. `recovered`: the server replayed every message
    /// after it (they follow this event as `Message`s, once each, in order).
    /// `missed`: messages may be missing (not recovered, and this
    /// connection does not continue exactly where the last one stopped).
    Resubscribed {
        room: String,
        recovered: bool,
        missed: bool,
        position: StreamPosition,
        previous: StreamPosition,
        members: Option<Vec<Member>>,
    },
    /// A re-join was refused (e.g. `forbidden`): the room is dropped.
    RoomFailed {
        room: String,
        error: SessionError,
    },
    Message(Message),
    Joined {
        room: String,
        member: Member,
    },
    Left {
        room: String,
        member: Member,
    },
}

/// The connection state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// A reconnect is scheduled.
    Disconnected,
    /// Stopped for good.
    Closed,
}

/// What [`Session::state`] reads.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub state: ConnectionState,
    pub welcome: Option<Welcome>,
}

/// What the handle asks the driver.
pub(crate) enum Command {
    Join { room: String, meta: Option<Value>, reply: oneshot::Sender<Result<JoinResult, SessionError>> },
    Leave { room: String, reply: oneshot::Sender<Result<(), SessionError>> },
    Publish { room: String, data: Value, reply: oneshot::Sender<Result<PublishResult, SessionError>> },
    Request { frame: Value, reply: oneshot::Sender<Result<Value, SessionError>> },
    Close,
}

/// The events of a session; drain it (or drop it: events are then discarded).
pub struct SessionEvents {
    rx: mpsc::UnboundedReceiver<SessionEvent>,
}

impl SessionEvents {
    /// The next event; `None` once the session's task has ended.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        self.rx.recv().await
    }
}

/// A reconnecting connection. Cloning shares it; when every clone is
/// dropped the session closes.
#[derive(Clone)]
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
}

impl Session {
    /// Starts connecting to the first URL (in a task of the current Tokio
    /// runtime) and returns at once.
    pub fn start(options: SessionOptions) -> (Session, SessionEvents) {
        assert!(!options.urls.is_empty(), "a session needs at least one URL");
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) =
            watch::channel(Status { state: ConnectionState::Connecting, welcome: None });
        crate::driver::spawn(options, commands_rx, events_tx, status_tx);
        (Session { commands: commands_tx, status: status_rx }, SessionEvents { rx: events_rx })
    }

    pub fn state(&self) -> ConnectionState {
        self.status.borrow().state
    }

    /// The `welcome` of the current connection.
    pub fn welcome(&self) -> Option<Welcome> {
        self.status.borrow().welcome.clone()
    }

    /// Joins `room` and keeps it joined: after every reconnect it is joined
    /// again with `since`. Returns the first join's result (at once when
    /// already joined); waits for a connection if there is none.
    pub async fn join(&self, room: &str, meta: Option<Value>) -> Result<JoinResult, SessionError> {
        self.ask(|reply| Command::Join { room: room.into(), meta, reply }).await
    }

    /// Leaves `room`: no more events, no re-join, its queued publishes fail with `left`.
    pub async fn leave(&self, room: &str) -> Result<(), SessionError> {
        self.ask(|reply| Command::Leave { room: room.into(), reply }).await
    }

    /// Publishes to a joined room, in call order with this session's other
    /// publishes to it; queued while the room is not joined.
    pub async fn publish(&self, room: &str, data: Value) -> Result<PublishResult, SessionError> {
        self.ask(|reply| Command::Publish { room: room.into(), data, reply }).await
    }

    /// Reads the members of any room the token allows.
    pub async fn presence(&self, room: &str) -> Result<Vec<Member>, SessionError> {
        #[derive(Deserialize)]
        struct Presence {
            members: Vec<Member>,
        }
        let result = self.request(json!({"type": "presence", "room": room})).await?;
        let presence: Presence = serde_json::from_value(result).map_err(|e| SessionError::Server {
            code: "internal".into(),
            message: format!("unreadable presence reply: {e}"),
            retry_after_ms: None,
        })?;
        Ok(presence.members)
    }

    /// Sends any request on the current connection and returns its
    /// `result`; `disconnected` when there is no connection.
    pub async fn request(&self, frame: Value) -> Result<Value, SessionError> {
        self.ask(|reply| Command::Request { frame, reply }).await
    }

    /// Closes for good: everything pending fails with `closed` at once.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, SessionError>>) -> Command,
    ) -> Result<T, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(command(tx)).map_err(|_| SessionError::Closed)?;
        rx.await.unwrap_or(Err(SessionError::Closed))
    }
}
