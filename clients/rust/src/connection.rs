//! One connection, no reconnect: [`Client`] sends requests and awaits their
//! replies; [`Events`] yields everything else the server sends, in order,
//! ending with [`Event::Closed`]. The connection runs in its own task. Tests
//! use it to see exactly what one socket gets; applications that want to
//! survive a lost connection use [`crate::Session`]. This module also opens
//! sockets for the session ([`open`]); it never decides about reconnecting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use crate::wire::{JoinOptions, JoinResult, Member, Message, PublishResult, Welcome};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub(crate) url: String,
    pub(crate) token: Option<String>,
    token_in_query: bool,
    pub(crate) origin: Option<String>,
    auto_pong: bool,
    reply_timeout: Duration,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            url: url.into(),
            token: None,
            token_in_query: false,
            origin: None,
            auto_pong: true,
            reply_timeout: Duration::from_secs(10),
        }
    }

    /// Sends the token as `Authorization: Bearer`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sends the token as `?token=` instead of a header (as browsers must).
    pub fn token_in_query(mut self, yes: bool) -> Self {
        self.token_in_query = yes;
        self
    }

    /// Sends an `Origin` header, as a browser would.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Whether to answer server `ping` frames with `pong` (default true).
    pub fn auto_pong(mut self, yes: bool) -> Self {
        self.auto_pong = yes;
        self
    }

    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }
}

/// Everything that can go wrong, from connecting to a reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the upgrade with this HTTP status.
    #[error("connection refused with HTTP {status}: {body}")]
    Rejected { status: u16, body: String, retry_after: Option<String> },
    /// The server answered the request with an error reply.
    #[error("{code}: {message}")]
    Server { code: String, message: String, retry_after_ms: Option<u64> },
    #[error("no reply within the timeout")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("unexpected frame from server: {0}")]
    Protocol(String),
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

impl ClientError {
    /// The error code of a server error reply.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What the server sends besides replies to this client's requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(Message),
    Joined {
        room: String,
        member: Member,
    },
    Left {
        room: String,
        member: Member,
    },
    /// A server heartbeat (already answered when `auto_pong` is on).
    Ping,
    /// A reply whose `id` this client is not waiting for (or has none),
    /// e.g. the error reply to a malformed frame.
    UnmatchedReply(Value),
    /// The connection ended; `code` is the close code, if a close frame came.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// The event stream of one connection.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` after `Closed` has been yielded.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event that is not a `Ping`.
    pub async fn next_non_ping(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Some(Event::Ping) => continue,
                other => return other,
            }
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, ClientError>>>>>;

/// A connected client. Cloning shares the connection.
#[derive(Clone)]
pub struct Client {
    outgoing: mpsc::UnboundedSender<WsMessage>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    welcome: Arc<Welcome>,
    reply_timeout: Duration,
}

impl Client {
    /// Connects, waits for `welcome`, and starts the connection task.
    pub async fn connect(options: ConnectOptions) -> Result<(Client, Events), ClientError> {
        let (ws, welcome) = open(&options).await?;
        let (outgoing_tx, outgoing_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        tokio::spawn(run_connection(ws, outgoing_rx, events_tx, Arc::clone(&pending), options.auto_pong));
        let client = Client {
            outgoing: outgoing_tx,
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            welcome: Arc::new(welcome),
            reply_timeout: options.reply_timeout,
        };
        Ok((client, Events { rx: events_rx }))
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends `frame` with a fresh `id` and waits for its reply's `result`.
    pub async fn request(&self, mut frame: Value) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        if self.outgoing.send(WsMessage::text(frame.to_string())).is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(ClientError::Closed);
        }
        match tokio::time::timeout(self.reply_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                Err(ClientError::Timeout)
            }
        }
    }

    pub async fn join(&self, room: &str, meta: Option<Value>) -> Result<JoinResult, ClientError> {
        self.join_with(room, JoinOptions { meta, ..JoinOptions::default() }).await
    }

    /// Joins with recovery: messages asked for by `since` or `rewind`
    /// arrive as events before this returns.
    pub async fn join_with(&self, room: &str, options: JoinOptions) -> Result<JoinResult, ClientError> {
        let mut frame = json!({"type": "join", "room": room});
        if let Some(meta) = options.meta {
            frame["meta"] = meta;
        }
        if let Some(since) = options.since {
            frame["since"] = json!(since);
        }
        if let Some(rewind) = options.rewind {
            frame["rewind"] = json!(rewind);
        }
        parse(self.request(frame).await?)
    }

    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.request(json!({"type": "leave", "room": room})).await.map(|_| ())
    }

    pub async fn publish(&self, room: &str, data: Value) -> Result<PublishResult, ClientError> {
        parse(self.request(json!({"type": "publish", "room": room, "data": data})).await?)
    }

    pub async fn presence(&self, room: &str) -> Result<Vec<Member>, ClientError> {
        #[derive(Deserialize)]
        struct Presence {
            members: Vec<Member>,
        }
        let presence: Presence = parse(self.request(json!({"type": "presence", "room": room})).await?)?;
        Ok(presence.members)
    }

    /// Sends a frame as is, without waiting for anything (for tests of bad input).
    pub fn send_raw(&self, message: WsMessage) -> Result<(), ClientError> {
        self.outgoing.send(message).map_err(|_| ClientError::Closed)
    }

    /// Sends a close frame (1000).
    pub fn close(&self) {
        let _ = self.outgoing.send(WsMessage::Close(None));
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ClientError> {
    serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
}

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a socket and reads its `welcome`: an HTTP refusal is
/// [`ClientError::Rejected`] with its status; no `welcome` within the reply
/// timeout is [`ClientError::Timeout`].
pub(crate) async fn open(options: &ConnectOptions) -> Result<(Socket, Welcome), ClientError> {
    let url = match (&options.token, options.token_in_query) {
        (Some(token), true) => {
            let separator = if options.url.contains('?') { '&' } else { '?' };
            format!("{}{separator}token={token}", options.url)
        }
        _ => options.url.clone(),
    };
    let mut request = url.into_client_request()?;
    if let (Some(token), false) = (&options.token, options.token_in_query) {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        request.headers_mut().insert("authorization", value);
    }
    if let Some(origin) = &options.origin {
        let value = HeaderValue::from_str(origin).map_err(|e| ClientError::Protocol(e.to_string()))?;
        request.headers_mut().insert("origin", value);
    }
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0);
    let (mut ws, _) = match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let retry_after =
                response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body =
                response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            return Err(ClientError::Rejected { status, body, retry_after });
        }
        Err(error) => return Err(error.into()),
    };
    let first = tokio::time::timeout(options.reply_timeout, ws.next())
        .await
        .map_err(|_| ClientError::Timeout)?
        .ok_or(ClientError::Closed)??;
    let welcome: Welcome = match &first {
        WsMessage::Text(text) => {
            let value: Value =
                serde_json::from_str(text).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if value["type"] != "welcome" {
                return Err(ClientError::Protocol(text.to_string()));
            }
            serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))?
        }
        other => return Err(ClientError::Protocol(format!("{other:?}"))),
    };
    Ok((ws, welcome))
}

async fn run_connection(
    ws: Socket,
    mut outgoing: mpsc::UnboundedReceiver<WsMessage>,
    events: mpsc::UnboundedSender<Event>,
    pending: Pending,
    auto_pong: bool,
) {
    let (mut sink, mut stream) = ws.split();
    let (mut code, mut reason) = (None, String::new());
    let mut outgoing_open = true;
    loop {
        tokio::select! {
            message = outgoing.recv(), if outgoing_open => match message {
                Some(message) => {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                // Every `Client` clone is gone: close politely.
                None => {
                    outgoing_open = false;
                    let _ = sink.send(WsMessage::Close(None)).await;
                }
            },
            incoming = stream.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    if auto_pong && text.as_str() == r#"{"type":"ping"}"# {
                        let _ = sink.send(WsMessage::text(r#"{"type":"pong"}"#)).await;
                    }
                    dispatch(&text, &events, &pending);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    if let Some(frame) = frame {
                        code = Some(u16::from(frame.code));
                        reason = frame.reason.to_string();
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    for (_, waiter) in pending.lock().expect("pending lock").drain() {
        let _ = waiter.send(Err(ClientError::Closed));
    }
    let _ = events.send(Event::Closed { code, reason });
}

fn dispatch(text: &str, events: &mpsc::UnboundedSender<Event>, pending: &Pending) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let event = match value["type"].as_str() {
        Some("reply") => {
            let waiter =
                value["id"].as_u64().and_then(|id| pending.lock().expect("pending lock").remove(&id));
            let Some(waiter) = waiter else {
                let _ = events.send(Event::UnmatchedReply(value));
                return;
            };
            let result = if value["ok"] == json!(true) {
                Ok(value["result"].clone())
            } else {
                let error = &value["error"];
                Err(ClientError::Server {
                    code: error["code"].as_str().unwrap_or_default().to_string(),
                    message: error["message"].as_str().unwrap_or_default().to_string(),
                    retry_after_ms: error["retry_after_ms"].as_u64(),
                })
            };
            let _ = waiter.send(result);
            return;
        }
        Some("message") => match serde_json::from_value(value) {
            Ok(message) => Event::Message(message),
            Err(_) => return,
        },
        Some(kind @ ("joined" | "left")) => {
            let room = value["room"].as_str().unwrap_or_default().to_string();
            let Ok(member) = serde_json::from_value(value["member"].clone()) else {
                return;
            };
            if kind == "joined" {
                Event::Joined { room, member }
            } else {
                Event::Left { room, member }
            }
        }
        Some("ping") => Event::Ping,
        _ => return,
    };
    let _ = events.send(event);
}
