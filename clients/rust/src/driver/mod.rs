//! The task behind a [`crate::Session`]: it owns the socket (one at a time),
//! the rooms, the outbox and the timers, and turns commands, frames and
//! timers into frames to send and events for the caller. Frames are handled
//! in wire order, so messages replayed before a join reply are seen before
//! it. Handlers never await: frames to send are collected and written after
//! each input, and a write that fails counts as a lost link. Decisions about
//! reconnecting are [`crate::policy`]'s; the driver only applies them.

mod commands;
mod joins;
mod publishes;
mod timers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::connection::{self, ClientError, ConnectOptions, Socket};
use crate::outbox::Outbox;
use crate::policy::{Backoff, CloseCause, Decision, Reconnector};
use crate::room::{Phase, Room};
use crate::session::{
    Command, ConnectionState, SessionError, SessionEvent, SessionOptions, Status, TokenSource,
};
use crate::wire::{JoinResult, Member, Message, PublishResult, Welcome};

type Reply<T> = oneshot::Sender<Result<T, SessionError>>;
/// An open socket past its `welcome`.
type Opened = (Socket, Welcome);
type Opening = JoinHandle<Result<Opened, ClientError>>;
/// How a connection attempt ended.
type OpenOutcome = Result<Result<Opened, ClientError>, tokio::task::JoinError>;

pub(crate) fn spawn(
    options: SessionOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<SessionEvent>,
    status: watch::Sender<Status>,
) {
    let backoff = Backoff {
        min_delay: options.min_reconnect_delay,
        max_delay: options.max_reconnect_delay,
        rate_limited_delay: options.rate_limited_delay,
        max_auth_failures: options.max_auth_failures,
    };
    let driver = Driver {
        reconnector: Reconnector::new(backoff, options.urls.len()),
        outbox: Outbox::new(options.queue_limit),
        options,
        commands,
        commands_open: true,
        events,
        status,
        link: None,
        opening: None,
        outgoing: Vec::new(),
        generation: 0,
        stopped: false,
        next_id: 1,
        pending: HashMap::new(),
        rooms: BTreeMap::new(),
        join_waiters: HashMap::new(),
        timers: BTreeMap::new(),
        timer_seq: 0,
        join_queue: VecDeque::new(),
        joins_in_flight: 0,
        joins_paused: false,
        last_retry_after: Duration::ZERO,
    };
    tokio::spawn(driver.run());
}

/// The socket of the current connection.
struct Link {
    ws: Socket,
    /// When the link counts as dead unless a frame arrives first.
    watchdog: Instant,
    heartbeat: Duration,
    /// A write failed: the link is lost once the current input is handled.
    broken: bool,
}

/// A request awaiting its reply on the current connection.
enum Pending {
    Join { room: String },
    Leave { reply: Reply<()> },
    Publish { seq: u64 },
    Request { reply: Reply<Value> },
}

#[derive(Debug, Clone)]
enum Timer {
    Reconnect { generation: u64 },
    RequestTimeout { id: u64 },
    JoinRetry { room: String, generation: u64 },
    JoinResume { generation: u64 },
    PublishRetry { room: String },
    PublishDeadline { seq: u64 },
}

enum Input {
    Frame(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Command(Option<Command>),
    Opened(Box<OpenOutcome>),
    Timer,
    Watchdog,
}

struct Driver {
    options: SessionOptions,
    reconnector: Reconnector,
    commands: mpsc::UnboundedReceiver<Command>,
    /// False once every `Session` handle is gone.
    commands_open: bool,
    events: mpsc::UnboundedSender<SessionEvent>,
    status: watch::Sender<Status>,
    link: Option<Link>,
    /// The connection attempt under way.
    opening: Option<Opening>,
    /// Frames to write after the current input, in order.
    outgoing: Vec<WsMessage>,
    /// Counts connections (attempts and teardowns): timers of an older one are ignored.
    generation: u64,
    stopped: bool,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    rooms: BTreeMap<String, Room>,
    /// Callers of `join` waiting for the room's first join reply.
    join_waiters: HashMap<String, Vec<Reply<JoinResult>>>,
    outbox: Outbox<Reply<PublishResult>>,
    /// Keyed by due time, then a sequence number (unique keys).
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    join_queue: VecDeque<String>,
    joins_in_flight: usize,
    /// A join was answered `rate_limited`: every join waits for `JoinResume`.
    joins_paused: bool,
    /// The last `retry_after_ms` of a `rate_limited` answer.
    last_retry_after: Duration,
}

impl Driver {
    async fn run(mut self) {
        self.open();
        while self.commands_open || !self.stopped {
            let input = self.next_input().await;
            self.handle(input);
            self.flush().await;
        }
    }

    async fn next_input(&mut self) -> Input {
        let next_timer = self.timers.keys().next().map(|(at, _)| *at);
        let watchdog = self.link.as_ref().map(|link| link.watchdog);
        let link = &mut self.link;
        let opening = &mut self.opening;
        let commands = &mut self.commands;
        let commands_open = self.commands_open;
        tokio::select! {
            frame = async { match link { Some(link) => link.ws.next().await, None => std::future::pending().await } } => Input::Frame(frame),
            opened = async { match opening { Some(task) => task.await, None => std::future::pending().await } } => Input::Opened(Box::new(opened)),
            command = async { if commands_open { commands.recv().await } else { std::future::pending().await } } => Input::Command(command),
            () = sleep_until(next_timer) => Input::Timer,
            () = sleep_until(watchdog) => Input::Watchdog,
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Frame(frame) => self.on_frame(frame),
            Input::Opened(opened) => {
                self.opening = None;
                self.on_opened(*opened);
            }
            Input::Command(Some(command)) => self.on_command(command),
            Input::Command(None) => {
                self.commands_open = false;
                self.stop(None, "every session handle was dropped", true);
            }
            Input::Timer => self.fire_timers(),
            Input::Watchdog => {
                self.lost(CloseCause::Code(4000), "heartbeat watchdog: no frame from the server", true)
            }
        }
    }

    /// Writes the frames collected while handling the last input.
    async fn flush(&mut self) {
        let Some(link) = self.link.as_mut() else {
            self.outgoing.clear();
            return;
        };
        if !self.outgoing.is_empty() && !link.broken {
            for frame in self.outgoing.drain(..) {
                if link.ws.feed(frame).await.is_err() {
                    link.broken = true;
                    break;
                }
            }
            if !link.broken && link.ws.flush().await.is_err() {
                link.broken = true;
            }
        }
        self.outgoing.clear();
        if link.broken {
            self.lost(CloseCause::Code(1006), "write failed", true);
        }
    }

    // --- connection ----------------------------------------------------------

    fn open(&mut self) {
        self.generation += 1;
        let url = self.options.urls[self.reconnector.url_index()].clone();
        self.set_state(ConnectionState::Connecting, None);
        self.emit(SessionEvent::Connecting { url: url.clone() });
        let (token, origin, limit) =
            (self.options.token.clone(), self.options.origin.clone(), self.options.connect_timeout);
        self.opening = Some(tokio::spawn(async move { open(url, token, origin, limit).await }));
    }

    fn on_opened(&mut self, opened: OpenOutcome) {
        let (ws, welcome) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(ClientError::Rejected { status, body, .. })) => {
                return self.lost(CloseCause::Http(status), &body, false);
            }
            Ok(Err(ClientError::Timeout)) => {
                return self.lost(CloseCause::Code(4000), "no welcome within the connect timeout", false);
            }
            Ok(Err(error)) => return self.lost(CloseCause::Code(1006), &error.to_string(), false),
            Err(error) => return self.lost(CloseCause::Code(1006), &error.to_string(), false),
        };
        let heartbeat = Duration::from_millis(welcome.heartbeat_ms) + self.options.heartbeat_grace;
        self.link = Some(Link { ws, watchdog: Instant::now() + heartbeat, heartbeat, broken: false });
        self.reconnector.connected();
        let url = self.options.urls[self.reconnector.url_index()].clone();
        self.set_state(ConnectionState::Connected, Some(welcome.clone()));
        self.emit(SessionEvent::Connected { url, welcome });
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            self.schedule_join(&name);
        }
    }

    fn on_frame(&mut self, frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) {
        if let Some(link) = self.link.as_mut() {
            link.watchdog = Instant::now() + link.heartbeat;
        }
        match frame {
            Some(Ok(WsMessage::Text(text))) => self.on_text(&text),
            Some(Ok(WsMessage::Close(close))) => {
                let (code, reason) =
                    close.map(|c| (u16::from(c.code), c.reason.to_string())).unwrap_or((1005, String::new()));
                self.lost(CloseCause::Code(code), &reason, true);
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => self.lost(CloseCause::Code(1006), &error.to_string(), true),
            None => self.lost(CloseCause::Code(1006), "connection lost", true),
        }
    }

    fn on_text(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else { return };
        match frame["type"].as_str() {
            Some("ping") => self.outgoing.push(WsMessage::text(r#"{"type":"pong"}"#)),
            Some("reply") => {
                let Some(id) = frame["id"].as_u64() else { return };
                let outcome = if frame["ok"] == json!(true) {
                    Ok(frame["result"].clone())
                } else {
                    let error = &frame["error"];
                    Err(SessionError::Server {
                        code: error["code"].as_str().unwrap_or("internal").to_string(),
                        message: error["message"].as_str().unwrap_or_default().to_string(),
                        retry_after_ms: error["retry_after_ms"].as_u64(),
                    })
                };
                self.on_reply(id, outcome);
            }
            Some("message") => {
                let Ok(message) = serde_json::from_value::<Message>(frame) else { return };
                let Some(room) = self.rooms.get_mut(&message.room) else { return };
                if let Some(event) = room.message(message) {
                    self.emit(event);
                }
            }
            Some(kind @ ("joined" | "left")) => {
                let room = frame["room"].as_str().unwrap_or_default().to_string();
                // Before the join reply these are already in its `members`.
                if self.rooms.get(&room).is_none_or(|r| r.phase != Phase::Joined) {
                    return;
                }
                let Ok(member) = serde_json::from_value::<Member>(frame["member"].clone()) else { return };
                self.emit(if kind == "joined" {
                    SessionEvent::Joined { room, member }
                } else {
                    SessionEvent::Left { room, member }
                });
            }
            // `welcome` came already; v1 changes additively: unknown frames are ignored.
            _ => {}
        }
    }

    /// The link ended with `cause`: stop, or tear down and schedule the next attempt.
    fn lost(&mut self, cause: CloseCause, reason: &str, opened: bool) {
        if self.stopped {
            return;
        }
        let random = rand::random::<f64>();
        match self.reconnector.lost(cause, opened, self.last_retry_after, random) {
            Decision::Stop { why } => {
                let reason = if reason.is_empty() { why } else { reason };
                self.stop(Some(cause), reason, false);
            }
            Decision::Retry { delay, url_index } => {
                self.teardown(|| SessionError::Disconnected);
                self.arm(delay, Timer::Reconnect { generation: self.generation });
                self.set_state(ConnectionState::Disconnected, None);
                let next_url = self.options.urls[url_index].clone();
                self.emit(SessionEvent::Disconnected { cause, reason: reason.to_string(), delay, next_url });
            }
        }
    }

    /// Drops the socket and every request in flight on it; rooms wait for the next connection.
    fn teardown(&mut self, error: impl Fn() -> SessionError) {
        self.generation += 1;
        self.link = None;
        if let Some(opening) = self.opening.take() {
            opening.abort();
        }
        self.outgoing.clear();
        self.join_queue.clear();
        self.joins_in_flight = 0;
        self.joins_paused = false;
        self.timers.retain(|_, timer| !matches!(timer, Timer::RequestTimeout { .. }));
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::Join { .. } => {}
                // A lost connection leaves every room, as the leave wanted.
                Pending::Leave { reply } => drop(reply.send(Ok(()))),
                Pending::Request { reply } => drop(reply.send(Err(error()))),
                Pending::Publish { seq } if self.options.resend_in_flight && !self.stopped => {
                    let dropped = self.outbox.requeue(seq);
                    fail_all(dropped, || SessionError::QueueOverflow);
                }
                Pending::Publish { seq } => {
                    if let Some(item) = self.outbox.take(seq) {
                        let _ = item.waiter.send(Err(error()));
                    }
                }
            }
        }
        self.rooms.values_mut().for_each(Room::disconnected);
    }

    /// Stops for good: everything pending is settled now.
    fn stop(&mut self, cause: Option<CloseCause>, reason: &str, by_client: bool) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let (true, Some(mut link)) = (by_client, self.link.take()) {
            tokio::spawn(async move { drop(link.ws.close(None).await) });
        }
        // Requests in flight: `closed` when the caller closed; `disconnected`
        // when the server ended the link (a publish may have been delivered).
        let error: fn() -> SessionError =
            if by_client { || SessionError::Closed } else { || SessionError::Disconnected };
        self.teardown(error);
        self.timers.clear();
        fail_all(self.outbox.take_all(), || SessionError::Closed);
        for (_, waiters) in self.join_waiters.drain() {
            waiters.into_iter().for_each(|w| drop(w.send(Err(SessionError::Closed))));
        }
        self.set_state(ConnectionState::Closed, None);
        self.emit(SessionEvent::Closed { cause, reason: reason.to_string() });
    }

    // --- requests and replies --------------------------------------------------

    fn send_request(&mut self, mut frame: Value, pending: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        // A publish has one deadline for its whole life (PublishDeadline).
        if !matches!(pending, Pending::Publish { .. }) {
            self.arm(self.options.request_timeout, Timer::RequestTimeout { id });
        }
        self.pending.insert(id, pending);
        self.outgoing.push(WsMessage::text(frame.to_string()));
        id
    }

    fn on_reply(&mut self, id: u64, outcome: Result<Value, SessionError>) {
        if let Err(SessionError::Server { code, retry_after_ms: Some(ms), .. }) = &outcome {
            if code == "rate_limited" {
                self.last_retry_after = Duration::from_millis(*ms);
            }
        }
        match self.pending.remove(&id) {
            Some(Pending::Join { room }) => self.on_join_reply(&room, outcome),
            Some(Pending::Leave { reply }) => {
                let outcome = match outcome {
                    Err(error) if error.code() == "not_joined" => Ok(()),
                    other => other.map(|_| ()),
                };
                let _ = reply.send(outcome);
            }
            Some(Pending::Publish { seq }) => self.on_publish_reply(seq, outcome),
            Some(Pending::Request { reply }) => drop(reply.send(outcome)),
            None => {}
        }
    }

    // --- output --------------------------------------------------------------------

    fn emit(&self, event: SessionEvent) {
        // A caller that dropped its event stream does not want them.
        let _ = self.events.send(event);
    }

    fn set_state(&self, state: ConnectionState, welcome: Option<Welcome>) {
        self.status.send_replace(Status { state, welcome });
    }
}

/// Opens one connection: a token from the source, then the socket and its `welcome`.
async fn open(
    url: String,
    token: TokenSource,
    origin: Option<String>,
    limit: Duration,
) -> Result<(Socket, Welcome), ClientError> {
    let attempt = async {
        let token = token.token().await.map_err(|e| ClientError::Protocol(format!("token provider: {e}")))?;
        let mut options = ConnectOptions::new(url).reply_timeout(limit);
        if !token.is_empty() {
            options = options.token(token);
        }
        if let Some(origin) = origin {
            options = options.origin(origin);
        }
        connection::open(&options).await
    };
    tokio::time::timeout(limit, attempt).await.unwrap_or(Err(ClientError::Timeout))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> Result<T, SessionError> {
    serde_json::from_value(value).map_err(|e| SessionError::Server {
        code: "internal".into(),
        message: format!("unreadable {what} reply: {e}"),
        retry_after_ms: None,
    })
}

fn retry_after(error: &SessionError) -> Option<Duration> {
    match error {
        SessionError::Server { retry_after_ms: Some(ms), .. } => Some(Duration::from_millis(*ms)),
        _ => None,
    }
}

fn fail_all<W>(items: Vec<crate::outbox::Item<Reply<W>>>, error: impl Fn() -> SessionError) {
    for item in items {
        let _ = item.waiter.send(Err(error()));
    }
}

fn refuse_closed(command: Command) {
    match command {
        Command::Join { reply, .. } => drop(reply.send(Err(SessionError::Closed))),
        Command::Leave { reply, .. } => drop(reply.send(Err(SessionError::Closed))),
        Command::Publish { reply, .. } => drop(reply.send(Err(SessionError::Closed))),
        Command::Request { reply, .. } => drop(reply.send(Err(SessionError::Closed))),
        Command::Close => {}
    }
}
