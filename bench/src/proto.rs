//! One load-generator connection speaking Starling's wire contract v1, the
//! Socket.IO v4 wire protocol (Engine.IO v4, WebSocket transport only) or the
//! Pusher Channels protocol 7 (frames in [`crate::pusher`]), so that the same
//! client code measures every kind of server.
//!
//! Benchmark messages carry `{"bench":[t,s,k],"p":"..."}` as their data: `t`
//! is the *scheduled* send time in microseconds since the Unix epoch, `s` the
//! publisher's sequence number in its room and `k` the step of the run. The
//! receiving side finds the marker without parsing the whole frame (also
//! when a server passes the data on as a JSON string, escaped).
//!
//! Pusher has no request ids: a subscription is answered per channel
//! (`subscription_succeeded` or `subscription_error`), and an unsubscribe
//! not at all, so a leave is followed by a `pusher:ping` whose `pusher:pong`
//! stands for its answer (the server reads a connection's frames in order).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::pusher;

/// Which wire protocol a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Starling's wire contract v1 (also spoken by the raw ceiling server).
    Starling,
    /// Socket.IO v4 over a WebSocket (`/socket.io/?EIO=4&transport=websocket`).
    Socketio,
    /// Pusher Channels protocol 7 (`/app/{key}?protocol=7`).
    Pusher,
}

pub type Socket = WebSocketStream<TcpStream>;

/// How long connecting (TCP, upgrade, welcome) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection received, once pings are answered.
#[derive(Debug)]
pub enum Incoming {
    /// A benchmark message: scheduled time (µs since epoch), sequence, step.
    Delivery { t: u64, s: u64, k: u64 },
    /// The answer to request `id`.
    Reply { id: u64, ok: bool, text: String },
    /// An error reply to a request sent without an id (a refused publish,
    /// e.g. `unavailable` while a room's owner moves; Pusher's
    /// `pusher:error`, e.g. a client event over the rate): the sender was told.
    Refused,
    /// Pusher: a subscription's answer, for its channel.
    Subscription { channel: String, ok: bool },
    /// Pusher: the `pusher:pong` to our `pusher:ping`.
    Pong,
    /// Anything else (presence events, the Socket.IO connect answer, ...).
    Other,
}

/// A connected client.
pub struct Conn {
    pub ws: Socket,
    protocol: Protocol,
    next_id: u64,
    /// Pusher: the credentials that authorise this connection's subscriptions.
    pusher: Option<pusher::Session>,
}

/// Source addresses rotate over 127.0.0.2..=127.0.0.51 for loopback targets,
/// so tens of thousands of connections (and connect churn leaving sockets in
/// TIME_WAIT) do not exhaust one address's ephemeral ports.
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

async fn tcp_connect(host_port: &str) -> anyhow::Result<TcpStream> {
    let target: SocketAddr = tokio::net::lookup_host(host_port)
        .await?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("no IPv4 address for {host_port}"))?;
    let socket = TcpSocket::new_v4()?;
    if target.ip().is_loopback() {
        let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 50;
        socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n as u8)), 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn host_port(url: &str) -> anyhow::Result<&str> {
    let rest = url.split_once("://").map(|(_, r)| r).context("url without scheme")?;
    Ok(rest.split(['/', '?']).next().unwrap_or(rest))
}

impl Conn {
    /// Connects and waits until the server is ready for requests: Starling's
    /// `welcome`, or Socket.IO's open packet and namespace connect answer.
    /// `url` is the WebSocket URL without token (`ws://h:p/ws`) for Starling,
    /// the bare origin (`ws://h:p`) for Socket.IO, `ws://h:p/app/{key}` for
    /// Pusher. `credential` is the JWT for Starling, the app secret for Pusher
    /// (channel authorisations are signed here), unused for Socket.IO.
    pub async fn connect(protocol: Protocol, url: &str, token: &str) -> anyhow::Result<Conn> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(protocol, url, token))
            .await
            .context("connect timed out")?
    }

    async fn connect_inner(protocol: Protocol, url: &str, token: &str) -> anyhow::Result<Conn> {
        let full = match protocol {
            Protocol::Starling => format!("{url}?token={token}"),
            Protocol::Socketio => {
                format!("{}/socket.io/?EIO=4&transport=websocket", url.trim_end_matches('/'))
            }
            Protocol::Pusher => pusher::connect_url(url),
        };
        let stream = tcp_connect(host_port(url)?).await?;
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(full, stream, Some(config))
            .await
            .context("websocket upgrade failed")?;
        let mut conn = Conn { ws, protocol, next_id: 0, pusher: None };
        match protocol {
            Protocol::Starling => match conn.ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"welcome""#) => {}
                other => bail!("expected welcome, got {other:?}"),
            },
            Protocol::Socketio => {
                match conn.ws.next().await {
                    Some(Ok(Message::Text(text))) if text.starts_with('0') => {}
                    other => bail!("expected an Engine.IO open packet, got {other:?}"),
                }
                conn.ws.send(Message::text("40")).await?;
                loop {
                    match conn.ws.next().await {
                        Some(Ok(Message::Text(text))) if text.starts_with("40") => break,
                        Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                            conn.ws.send(Message::text("3")).await?
                        }
                        Some(Ok(Message::Text(text))) if text.starts_with("44") => {
                            bail!("socket.io connect refused: {text}")
                        }
                        Some(Ok(_)) => {}
                        other => bail!("expected a Socket.IO connect answer, got {other:?}"),
                    }
                }
            }
            Protocol::Pusher => match conn.ws.next().await {
                Some(Ok(Message::Text(text))) => match pusher::classify(&text) {
                    pusher::Frame::Established { socket_id } => {
                        let key = pusher::app_key(url)?.to_string();
                        conn.pusher = Some(pusher::Session { key, secret: token.to_string(), socket_id });
                    }
                    _ => bail!("expected pusher:connection_established, got {text}"),
                },
                other => bail!("expected pusher:connection_established, got {other:?}"),
            },
        }
        Ok(conn)
    }

    fn request_frame(&mut self, event: &str, room: &str) -> (u64, String) {
        self.next_id += 1;
        let id = self.next_id;
        let room = serde_json::to_string(room).expect("a string serialises");
        let frame = match self.protocol {
            Protocol::Starling => format!(r#"{{"type":"{event}","id":{id},"room":{room}}}"#),
            Protocol::Socketio => format!(r#"42{id}["{event}",{room}]"#),
            Protocol::Pusher => unreachable!("Pusher requests have no ids"),
        };
        (id, frame)
    }

    /// Pusher: subscribe (answered per channel) or unsubscribe (then a ping,
    /// whose pong stands for the answer).
    async fn pusher_request(&mut self, event: &str, room: &str) -> anyhow::Result<bool> {
        let session = self.pusher.as_ref().context("a Pusher connection has a session")?;
        let channel = pusher::channel(room);
        match event {
            "join" => self.ws.send(Message::text(pusher::subscribe_frame(session, &channel))).await?,
            "leave" => {
                self.ws.send(Message::text(pusher::unsubscribe_frame(&channel))).await?;
                self.ws.send(Message::text(pusher::PING)).await?;
            }
            other => bail!("no Pusher request for {other}"),
        }
        loop {
            match self.next().await {
                Some(Ok(Incoming::Subscription { channel: got, ok }))
                    if event == "join" && got == channel =>
                {
                    return Ok(ok)
                }
                // Sockudo answers a refused subscription with a channel-less
                // `pusher:error` (4009) instead of `pusher:subscription_error`.
                Some(Ok(Incoming::Refused)) if event == "join" => return Ok(false),
                Some(Ok(Incoming::Pong)) if event == "leave" => return Ok(true),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => bail!("connection ended while waiting for the {event} answer"),
            }
        }
    }

    /// Sends a join or leave (`event`) and waits for its answer, returning
    /// whether the server accepted it. Deliveries meanwhile are dropped.
    pub async fn request(&mut self, event: &str, room: &str) -> anyhow::Result<bool> {
        if self.protocol == Protocol::Pusher {
            return self.pusher_request(event, room).await;
        }
        let (id, frame) = self.request_frame(event, room);
        self.ws.send(Message::text(frame)).await?;
        loop {
            match self.next().await {
                Some(Ok(Incoming::Reply { id: got, ok, .. })) if got == id => return Ok(ok),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => bail!("connection ended while waiting for the {event} reply"),
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.request("join", room).await?, "join {room} refused");
        Ok(())
    }

    /// The next meaningful frame; heartbeats are answered on the way.
    /// `None` when the connection ended.
    pub async fn next(&mut self) -> Option<anyhow::Result<Incoming>> {
        loop {
            let text = match self.ws.next().await? {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(e) => return Some(Err(e.into())),
            };
            if let Some(delivery) = parse_delivery(&text) {
                return Some(Ok(delivery));
            }
            let pong = match self.protocol {
                Protocol::Starling if text.as_str() == r#"{"type":"ping"}"# => r#"{"type":"pong"}"#,
                Protocol::Socketio if text.as_str() == "2" => "3",
                Protocol::Pusher => match pusher::classify(&text) {
                    pusher::Frame::Ping => pusher::PONG,
                    pusher::Frame::Pong => return Some(Ok(Incoming::Pong)),
                    pusher::Frame::Subscription { channel, ok } => {
                        return Some(Ok(Incoming::Subscription { channel, ok }))
                    }
                    pusher::Frame::Error => return Some(Ok(Incoming::Refused)),
                    pusher::Frame::Established { .. } | pusher::Frame::Other => {
                        return Some(Ok(Incoming::Other))
                    }
                },
                _ => return Some(Ok(parse_other(self.protocol, &text))),
            };
            if let Err(e) = self.ws.send(Message::text(pong)).await {
                return Some(Err(e.into()));
            }
        }
    }

    /// Closes politely and waits (briefly) for the server's close.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// The frame that publishes `data` (already JSON) to `room`, fire-and-forget.
pub fn publish_frame(protocol: Protocol, room: &str, data: &str) -> String {
    match protocol {
        Protocol::Starling => format!(r#"{{"type":"publish","room":"{room}","data":{data}}}"#),
        Protocol::Socketio => format!(r#"42["publish","{room}",{data}]"#),
        Protocol::Pusher => pusher::client_event_frame(&pusher::channel(room), data),
    }
}

/// Benchmark data for one message, padded with `padding`.
pub fn bench_data(t_us: u64, seq: u64, step: u64, padding: &str) -> String {
    format!(r#"{{"bench":[{t_us},{seq},{step}],"p":"{padding}"}}"#)
}

const MARKER: &str = r#""bench":["#;
/// The marker inside data a server passed on as a JSON string.
const ESCAPED_MARKER: &str = r#"\"bench\":["#;

/// Finds the `"bench":[t,s,k]` marker of a delivered message, if any.
pub fn parse_delivery(text: &str) -> Option<Incoming> {
    let at = match text.find(MARKER) {
        Some(at) => at + MARKER.len(),
        None => text.find(ESCAPED_MARKER)? + ESCAPED_MARKER.len(),
    };
    let mut numbers = text[at..].split([',', ']']).take(3).map(|n| n.trim().parse::<u64>());
    let (Some(Ok(t)), Some(Ok(s)), Some(Ok(k))) = (numbers.next(), numbers.next(), numbers.next()) else {
        return None;
    };
    Some(Incoming::Delivery { t, s, k })
}

#[derive(Deserialize)]
struct StarlingReply {
    #[serde(rename = "type")]
    kind: String,
    id: Option<u64>,
    ok: Option<bool>,
}

fn parse_other(protocol: Protocol, text: &str) -> Incoming {
    match protocol {
        Protocol::Starling => match serde_json::from_str::<StarlingReply>(text) {
            Ok(StarlingReply { kind, id: Some(id), ok: Some(ok) }) if kind == "reply" => {
                Incoming::Reply { id, ok, text: text.to_string() }
            }
            Ok(StarlingReply { kind, id: None, ok: Some(false) }) if kind == "reply" => Incoming::Refused,
            _ => Incoming::Other,
        },
        // An ack is `43<id>[args]`; the peers answer `{"ok":true}` or `{"ok":false,...}`.
        Protocol::Socketio => match text.strip_prefix("43") {
            Some(rest) => {
                let digits = rest.chars().take_while(char::is_ascii_digit).count();
                match rest[..digits].parse() {
                    Ok(id) => {
                        Incoming::Reply { id, ok: rest.contains(r#""ok":true"#), text: text.to_string() }
                    }
                    Err(_) => Incoming::Other,
                }
            }
            None => Incoming::Other,
        },
        Protocol::Pusher => Incoming::Other,
    }
}

/// Microseconds since the Unix epoch: stamps compare across processes.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_micros()
        as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The marker is found in every protocol's message frames (Pusher's
    /// also when the server passes the data on as a string) and carries
    /// the three numbers exactly.
    #[test]
    fn deliveries_parse_in_every_protocol() {
        let data = bench_data(1_700_000_000_123_456, 42, 3, "xx");
        let starling = format!(r#"{{"type":"message","room":"chat:a","offset":43,"epoch":1,"data":{data}}}"#);
        let socketio = format!(r#"42["message","chat:a",{data}]"#);
        let pusher = format!(r#"{{"event":"client-bench","channel":"private-a","data":{data}}}"#);
        let pusher_string_data = format!(
            r#"{{"event":"client-bench","channel":"private-a","data":{}}}"#,
            serde_json::to_string(&data).unwrap()
        );
        for text in [starling, socketio, pusher, pusher_string_data] {
            match parse_delivery(&text) {
                Some(Incoming::Delivery { t, s, k }) => assert_eq!((t, s, k), (1_700_000_000_123_456, 42, 3)),
                other => panic!("no delivery in {text}: {other:?}"),
            }
        }
        assert!(parse_delivery(r#"{"type":"reply","id":1,"ok":true,"result":{}}"#).is_none());
    }

    /// Replies are matched by id and their outcome is read correctly.
    #[test]
    fn replies_parse_in_both_protocols() {
        let ok = parse_other(Protocol::Socketio, r#"4317[{"ok":true}]"#);
        assert!(matches!(ok, Incoming::Reply { id: 17, ok: true, .. }), "{ok:?}");
        let refused = parse_other(
            Protocol::Starling,
            r#"{"type":"reply","id":5,"ok":false,"error":{"code":"forbidden"}}"#,
        );
        assert!(matches!(refused, Incoming::Reply { id: 5, ok: false, .. }), "{refused:?}");
    }
}
