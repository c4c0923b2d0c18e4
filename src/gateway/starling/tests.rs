//! A Starling session driven through channels instead of a socket: what a
//! client sends in, which frames come out, and what the session leaves in
//! the room table when it ends.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{sink, stream};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::auth::{Claims, JwtVerifier};
use crate::config::{Config, NamespacePolicies};
use crate::fanout::{Hub, Sessions};
use crate::forward::Router;
use crate::gateway::{Gateway, GatewayParts};
use crate::protocol::ConnId;
use crate::replicate::{EffectsObserver, Replicator, SharedTable};
use crate::service::{RoomService, ServiceParts};

struct Client {
    to_server: mpsc::UnboundedSender<Result<Message, WsError>>,
    from_server: mpsc::UnboundedReceiver<Message>,
    session: tokio::task::JoinHandle<()>,
}

impl Client {
    fn send(&self, frame: Value) {
        self.to_server.send(Ok(Message::text(frame.to_string()))).unwrap();
    }

    /// The next text frame, as JSON (pings are skipped).
    async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.from_server.recv())
                .await
                .expect("a frame within 5 s")
                .expect("the session is still writing");
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] != "ping" {
                    return frame;
                }
            }
        }
    }
}

fn gateway() -> Arc<Gateway> {
    let mut config = Config::dev();
    config.auth.jwt_hs256_secret = Some("unit-test-secret-unit-test-secret!!".into());
    let config = Arc::new(config);
    let metrics = crate::telemetry::Metrics::new("dev");
    let sessions = Arc::new(Sessions::default());
    let namespaces = Arc::new(NamespacePolicies::new(&config.namespaces, &config.apps));
    let hub = Arc::new(Hub::new(
        Arc::from("dev"),
        1,
        Arc::clone(&sessions),
        Arc::clone(&namespaces),
        metrics.clone(),
        config.limits.history_bytes,
    ));
    let shared = SharedTable::new(Arc::clone(&hub) as Arc<dyn EffectsObserver>);
    let replicator = Arc::new(Replicator::local(shared));
    let router = Arc::new(Router::local(Arc::clone(&hub)));
    let service = Arc::new(RoomService::new(ServiceParts {
        incarnation: 1,
        config: Arc::clone(&config),
        namespaces,
        hub,
        replicator,
        router,
        metrics: metrics.clone(),
    }));
    let verifier = JwtVerifier::new(&config.auth).unwrap();
    Arc::new(Gateway::new(GatewayParts { config, incarnation: 1, verifier, sessions, service, metrics }))
}

fn connect(gateway: &Arc<Gateway>, user: &str, counter: u64) -> Client {
    let (to_server, server_rx) = mpsc::unbounded_channel();
    let (server_tx, from_server) = mpsc::unbounded_channel();
    let claims = Claims {
        sub: user.into(),
        exp: u64::MAX / 2,
        nbf: None,
        iat: None,
        rooms: vec!["chat:*".into()],
        meta: None,
        aud: None,
        iss: None,
    };
    let sink = sink::unfold(server_tx, |tx, message: Message| async move {
        tx.send(message).map_err(|_| WsError::ConnectionClosed)?;
        Ok::<_, WsError>(tx)
    });
    let incoming = stream::unfold(server_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let conn = ConnId::new(ConnId::tag_of("dev", 1), counter);
    let session = tokio::spawn(super::run(
        Arc::clone(gateway),
        Arc::clone(&gateway.starling_encoder),
        conn,
        claims,
        Box::pin(sink),
        Box::pin(incoming),
        CancellationToken::new(),
    ));
    Client { to_server, from_server, session }
}

#[tokio::test]
async fn a_member_gets_its_join_reply_then_its_own_message_then_the_publish_reply() {
    let gateway = gateway();
    let mut alice = connect(&gateway, "alice", 1);
    let welcome = alice.next().await;
    assert_eq!((welcome["type"].as_str(), welcome["user"].as_str()), (Some("welcome"), Some("alice")));
    alice.send(json!({"type": "join", "id": 1, "room": "chat:x"}));
    let reply = alice.next().await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["offset"], 0);
    assert_eq!(reply["result"]["members"][0]["user"], "alice");
    alice.send(json!({"type": "publish", "id": 2, "room": "chat:x", "data": {"t": "hi"}}));
    let message = alice.next().await;
    assert_eq!((message["type"].as_str(), message["offset"].as_u64()), (Some("message"), Some(1)));
    assert_eq!(message["data"], json!({"t": "hi"}));
    assert_eq!(message["from"]["user"], "alice");
    let reply = alice.next().await;
    assert_eq!((reply["id"].as_u64(), reply["result"]["offset"].as_u64()), (Some(2), Some(1)));
}

#[tokio::test]
async fn bad_requests_get_documented_errors_and_the_session_goes_on() {
    let gateway = gateway();
    let mut bob = connect(&gateway, "bob", 2);
    bob.next().await;
    bob.send(json!({"type": "publish", "id": 7, "room": "chat:x", "data": 1}));
    let reply = bob.next().await;
    assert_eq!((reply["id"].as_u64(), reply["error"]["code"].as_str()), (Some(7), Some("not_joined")));
    bob.send(json!({"type": "join", "id": 8, "room": "nowhere:x"}));
    let reply = bob.next().await;
    assert_eq!(reply["error"]["code"], "forbidden");
    assert_eq!(reply["error"]["message"], "unknown namespace `nowhere`");
    bob.to_server.send(Ok(Message::binary(vec![1, 2, 3]))).unwrap();
    assert_eq!(bob.next().await["error"]["code"], "bad_request");
    bob.send(json!({"type": "presence", "id": 9, "room": "chat:x"}));
    let reply = bob.next().await;
    assert_eq!((reply["id"].as_u64(), reply["ok"].as_bool()), (Some(9), Some(true)));
}

#[tokio::test]
async fn a_session_that_ends_leaves_every_room_and_the_registry() {
    let gateway = gateway();
    let mut carol = connect(&gateway, "carol", 3);
    carol.next().await;
    for (id, room) in [(1, "chat:a"), (2, "chat:b")] {
        carol.send(json!({"type": "join", "id": id, "room": room}));
        assert_eq!(carol.next().await["ok"], true);
    }
    assert_eq!(gateway.service.replicator().stats().members, 2);
    carol.to_server.send(Ok(Message::Close(None))).unwrap();
    tokio::time::timeout(Duration::from_secs(5), carol.session).await.unwrap().unwrap();
    assert_eq!(gateway.service.replicator().stats().members, 0);
    assert_eq!(gateway.sessions.len(), 0);
    assert_eq!(gateway.service.hub().subscription_count(), 0);
}
