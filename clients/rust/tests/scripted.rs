//! A `Session` against scripted WebSocket servers: for what a real node
//! cannot be made to do on demand (drop a link at a chosen frame, refuse a
//! publish with `unavailable`, close with a chosen code). Each server
//! accepts when the script says so and checks every frame the session sends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use starling_client::{CloseCause, Session, SessionError, SessionEvent, SessionEvents, SessionOptions};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// How long any wait in these tests may take.
const PATIENCE: Duration = Duration::from_secs(5);

struct Server {
    listener: TcpListener,
}

impl Server {
    async fn bind() -> Server {
        Server { listener: TcpListener::bind("127.0.0.1:0").await.unwrap() }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.listener.local_addr().unwrap())
    }

    /// Accepts the next connection and sends its `welcome`.
    async fn accept(&self, conn: &str) -> Peer {
        let (stream, _) = within(self.listener.accept()).await.unwrap();
        let mut authorization = None;
        // The callback's error type is tungstenite's (an HTTP response).
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            authorization = request.headers().get("authorization").map(|v| v.to_str().unwrap().to_string());
            Ok(response)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback).await.unwrap();
        let welcome =
            json!({"type": "welcome", "conn": conn, "node": "scripted", "user": "u", "heartbeat_ms": 25000});
        ws.send(WsMessage::text(welcome.to_string())).await.unwrap();
        Peer { ws, authorization }
    }
}

struct Peer {
    ws: WebSocketStream<tokio::net::TcpStream>,
    /// The `Authorization` header of the upgrade.
    authorization: Option<String>,
}

impl Peer {
    /// The next frame the session sent, as JSON (pongs skipped).
    async fn recv(&mut self) -> Value {
        loop {
            let frame = within(self.ws.next()).await.expect("socket ended").unwrap();
            if let WsMessage::Text(text) = frame {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] != "pong" {
                    return value;
                }
            }
        }
    }

    async fn send(&mut self, frame: Value) {
        self.ws.send(WsMessage::text(frame.to_string())).await.unwrap();
    }

    async fn reply(&mut self, request: &Value, result: Value) {
        self.send(json!({"type": "reply", "id": request["id"], "ok": true, "result": result})).await;
    }

    async fn refuse(&mut self, request: &Value, code: &str, retry_after_ms: u64) {
        let error = json!({"code": code, "message": "scripted", "retry_after_ms": retry_after_ms});
        self.send(json!({"type": "reply", "id": request["id"], "ok": false, "error": error})).await;
    }

    async fn message(&mut self, epoch: u64, offset: u64) {
        let frame =
            json!({"type": "message", "room": "chat:a", "epoch": epoch, "offset": offset, "data": offset});
        self.send(frame).await;
    }

    async fn close(mut self, code: u16) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: "scripted".into() };
        self.ws.close(Some(frame)).await.unwrap();
    }
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future).await.expect("timed out")
}

fn fast(urls: &[&Server]) -> SessionOptions {
    SessionOptions::new(urls.iter().map(|s| s.url()))
        .token("t")
        .reconnect_delay(Duration::from_millis(5), Duration::from_millis(20))
}

/// The next event that `pick` accepts, skipping others.
async fn next_matching<T>(events: &mut SessionEvents, mut pick: impl FnMut(SessionEvent) -> Option<T>) -> T {
    within(async {
        loop {
            if let Some(found) = pick(events.next().await.expect("events ended")) {
                return found;
            }
        }
    })
    .await
}

async fn next_offset(events: &mut SessionEvents) -> u64 {
    next_matching(events, |e| match e {
        SessionEvent::Message(m) => Some(m.offset),
        _ => None,
    })
    .await
}

/// Connects the session to `server`'s next connection and joins `chat:a` at (epoch, offset).
async fn joined(session: &Session, server: &Server, epoch: u64, offset: u64) -> Peer {
    let (result, peer) = tokio::join!(session.join("chat:a", None), async {
        let mut peer = server.accept("c1").await;
        let join = peer.recv().await;
        assert_eq!((join["type"].as_str(), join.get("since")), (Some("join"), None), "{join}");
        peer.reply(&join, json!({"room": "chat:a", "epoch": epoch, "offset": offset})).await;
        peer
    });
    result.expect("joined");
    peer
}

#[tokio::test]
async fn a_lost_link_moves_to_the_next_url_and_rejoins_with_since_the_last_message_delivered() {
    let (first, second) = (Server::bind().await, Server::bind().await);
    let (session, mut events) = Session::start(fast(&[&first, &second]));
    let mut peer = joined(&session, &first, 5, 2).await;
    peer.message(5, 3).await;
    peer.message(5, 4).await;
    assert_eq!((next_offset(&mut events).await, next_offset(&mut events).await), (3, 4));
    drop(peer); // the node dies: no close frame

    let mut peer = second.accept("c2").await;
    let join = peer.recv().await;
    assert_eq!(join["since"], json!({"epoch": 5, "offset": 4}), "since the last message delivered");
    // The replay comes before the reply.
    peer.message(5, 5).await;
    peer.reply(&join, json!({"room": "chat:a", "epoch": 5, "offset": 5, "recovered": true})).await;
    let (cause, next_url) = next_matching(&mut events, |e| match e {
        SessionEvent::Disconnected { cause, next_url, .. } => Some((cause, next_url)),
        _ => None,
    })
    .await;
    assert_eq!((cause, next_url), (CloseCause::Code(1006), second.url()));
    let resubscribed = next_matching(&mut events, |e| match e {
        SessionEvent::Resubscribed { recovered, missed, .. } => Some((recovered, missed)),
        SessionEvent::Message(m) => panic!("message {} before Resubscribed", m.offset),
        _ => None,
    })
    .await;
    assert_eq!(resubscribed, (true, false));
    assert_eq!(next_offset(&mut events).await, 5, "the replayed message, after Resubscribed");
    peer.message(5, 6).await;
    assert_eq!(next_offset(&mut events).await, 6);
}

#[tokio::test]
async fn publishes_refused_unavailable_are_retried_in_call_order_with_the_same_idem_keys() {
    let server = Server::bind().await;
    let (session, _events) = Session::start(fast(&[&server]));
    let mut peer = joined(&session, &server, 1, 0).await;
    let script = async {
        let sent: Vec<Value> = vec![peer.recv().await, peer.recv().await, peer.recv().await];
        let keys: Vec<&str> = sent.iter().map(|f| f["idem"].as_str().unwrap()).collect();
        assert_eq!(keys, ["p0", "p1", "p2"]);
        // The owner moved: the first is refused, and (G9) every later one.
        for frame in &sent {
            peer.refuse(frame, "unavailable", 10).await;
        }
        let retried: Vec<Value> = vec![peer.recv().await, peer.recv().await, peer.recv().await];
        let data: Vec<(&Value, &Value)> = retried.iter().map(|f| (&f["idem"], &f["data"])).collect();
        assert_eq!(data, [(&json!("p0"), &json!(0)), (&json!("p1"), &json!(1)), (&json!("p2"), &json!(2))]);
        for (n, frame) in retried.iter().enumerate() {
            peer.reply(frame, json!({"epoch": 1, "offset": n + 1})).await;
        }
    };
    let (a, b, c, ()) = tokio::join!(
        session.publish("chat:a", json!(0)),
        session.publish("chat:a", json!(1)),
        session.publish("chat:a", json!(2)),
        script
    );
    let offsets: Vec<u64> = [a, b, c].into_iter().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
}

#[tokio::test]
async fn publishes_made_while_disconnected_are_sent_after_the_rejoin_in_call_order() {
    let (first, second) = (Server::bind().await, Server::bind().await);
    let (session, mut events) = Session::start(fast(&[&first, &second]));
    let peer = joined(&session, &first, 3, 7).await;
    peer.close(1012).await;
    next_matching(&mut events, |e| matches!(e, SessionEvent::Disconnected { .. }).then_some(())).await;
    let script = async {
        // Commands are handled in order: once this request is refused for
        // want of a connection, both publishes are queued.
        let barrier = session.request(json!({"type": "presence", "room": "chat:a"})).await;
        assert_eq!(barrier, Err(SessionError::Disconnected));
        let mut peer = second.accept("c2").await;
        let join = peer.recv().await;
        assert_eq!(join["since"], json!({"epoch": 3, "offset": 7}));
        peer.reply(&join, json!({"room": "chat:a", "epoch": 3, "offset": 7, "recovered": true})).await;
        for n in 0..2 {
            let publish = peer.recv().await;
            assert_eq!((publish["type"].as_str(), &publish["data"]), (Some("publish"), &json!(n)));
            peer.reply(&publish, json!({"epoch": 3, "offset": 8 + n})).await;
        }
    };
    let (a, b, ()) =
        tokio::join!(session.publish("chat:a", json!(0)), session.publish("chat:a", json!(1)), script);
    assert_eq!((a.unwrap().offset, b.unwrap().offset), (8, 9));
}

#[tokio::test]
async fn close_1000_stops_the_session_for_good_and_fails_what_is_pending() {
    let server = Server::bind().await;
    let (session, mut events) = Session::start(fast(&[&server]));
    let peer = joined(&session, &server, 1, 0).await;
    peer.close(1000).await;
    let cause = next_matching(&mut events, |e| match e {
        SessionEvent::Closed { cause, .. } => Some(cause),
        SessionEvent::Disconnected { .. } => panic!("1000 must not reconnect"),
        _ => None,
    })
    .await;
    assert_eq!(cause, Some(CloseCause::Code(1000)));
    assert_eq!(session.publish("chat:a", json!(1)).await, Err(SessionError::Closed));
    assert_eq!(session.state(), starling_client::session::ConnectionState::Closed);
}

#[tokio::test]
async fn a_full_offline_queue_drops_the_oldest_publish() {
    let server = Server::bind().await;
    let (session, _events) = Session::start(fast(&[&server]).queue_limit(1));
    // The server accepts only once the join and both publishes are asked
    // for: they wait for the room, and the queue keeps one.
    let (joined, oldest, newest, ()) = tokio::join!(
        session.join("chat:a", None),
        session.publish("chat:a", json!(0)),
        session.publish("chat:a", json!(1)),
        async {
            let mut peer = server.accept("c1").await;
            let join = peer.recv().await;
            peer.reply(&join, json!({"room": "chat:a", "epoch": 1, "offset": 0})).await;
            let publish = peer.recv().await;
            assert_eq!(publish["data"], json!(1), "only the newest is sent");
            peer.reply(&publish, json!({"epoch": 1, "offset": 1})).await;
        }
    );
    joined.unwrap();
    assert_eq!(oldest, Err(SessionError::QueueOverflow));
    assert_eq!(newest.unwrap().offset, 1);
}

#[tokio::test]
async fn an_expired_token_is_asked_for_again_and_the_session_reconnects_at_once() {
    let server = Server::bind().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let options = fast(&[&server])
        .reconnect_delay(Duration::from_secs(30), Duration::from_secs(30))
        .token_provider(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(format!("token-{n}")) }
        });
    let (session, mut events) = Session::start(options);
    let peer = joined(&session, &server, 1, 0).await;
    assert_eq!(peer.authorization.as_deref(), Some("Bearer token-0"));
    peer.close(1008).await;
    // With a 30 s backoff, only the "reconnect at once" of 1008 gets here in time.
    let mut peer = server.accept("c2").await;
    assert_eq!(peer.authorization.as_deref(), Some("Bearer token-1"), "a fresh token");
    let join = peer.recv().await;
    assert_eq!(join["since"], json!({"epoch": 1, "offset": 0}));
    let delay = next_matching(&mut events, |e| match e {
        SessionEvent::Disconnected { cause: CloseCause::Code(1008), delay, .. } => Some(delay),
        _ => None,
    })
    .await;
    assert_eq!(delay, Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_rejoin_fails_the_room_and_its_publishes() {
    let (first, second) = (Server::bind().await, Server::bind().await);
    let (session, mut events) = Session::start(fast(&[&first, &second]));
    drop(joined(&session, &first, 1, 0).await);
    let mut peer = second.accept("c2").await;
    let join = peer.recv().await;
    peer.refuse(&join, "forbidden", 0).await;
    let (room, error) = next_matching(&mut events, |e| match e {
        SessionEvent::RoomFailed { room, error } => Some((room, error)),
        _ => None,
    })
    .await;
    assert_eq!((room.as_str(), error.code()), ("chat:a", "forbidden"));
    assert_eq!(session.publish("chat:a", json!(1)).await, Err(SessionError::Left("chat:a".into())));
}

#[tokio::test]
async fn a_room_left_is_not_joined_again_after_a_reconnect() {
    let (first, second) = (Server::bind().await, Server::bind().await);
    let (session, mut events) = Session::start(fast(&[&first, &second]));
    let mut peer = joined(&session, &first, 1, 0).await;
    let (left, ()) = tokio::join!(session.leave("chat:a"), async {
        let leave = peer.recv().await;
        assert_eq!((leave["type"].as_str(), leave["room"].as_str()), (Some("leave"), Some("chat:a")));
        peer.reply(&leave, json!({})).await;
    });
    left.unwrap();
    assert_eq!(session.publish("chat:a", json!(1)).await, Err(SessionError::Left("chat:a".into())));
    drop(peer);
    let mut peer = second.accept("c2").await;
    let url = second.url();
    next_matching(&mut events, |e| {
        matches!(e, SessionEvent::Connected { url: u, .. } if u == url).then_some(())
    })
    .await;
    let (presence, ()) = tokio::join!(session.presence("chat:b"), async {
        let first_frame = peer.recv().await;
        assert_eq!(first_frame["type"], "presence", "no join of the room left: {first_frame}");
        peer.reply(&first_frame, json!({"members": []})).await;
    });
    assert_eq!(presence.unwrap(), []);
}
