//! Admission before the upgrade: every refusal is an HTTP status with no 101,
//! and the node keeps serving everyone else.

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use starling::auth::{sign_claims, Claims};
use starling_client::{ClientError, ConnectOptions};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn status_of(
    result: Result<(starling_client::Client, starling_client::Events), ClientError>,
) -> (u16, String) {
    match result {
        Err(ClientError::Rejected { status, body, .. }) => (status, body),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got a connection"),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_origins_are_refused_before_the_upgrade() {
    let node = start_default().await;
    let url = ws_url(&node);
    let good = token("alice", &["*"]);

    let (status, _) = status_of(try_connect(ConnectOptions::new(&url)).await);
    assert_eq!(status, 401, "no token");

    let (status, body) = status_of(try_connect(ConnectOptions::new(&url).token(format!("{good}x"))).await);
    assert_eq!((status, body.as_str()), (401, "invalid token: bad signature"));

    let other_secret = sign_claims(
        "some-other-secret-some-other-secret",
        &Claims { sub: "alice".into(), exp: now() + 60, ..Claims::default() },
    )
    .unwrap();
    let (status, _) = status_of(try_connect(ConnectOptions::new(&url).token(other_secret)).await);
    assert_eq!(status, 401, "signed with another secret");

    // {"alg":"none"} with an empty signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let (status, _) = status_of(try_connect(ConnectOptions::new(&url).token(none)).await);
    assert_eq!(status, 401, "alg none");

    let expired =
        sign_claims(SECRET, &Claims { sub: "alice".into(), exp: now() - 120, ..Claims::default() }).unwrap();
    let (status, body) = status_of(try_connect(ConnectOptions::new(&url).token(expired)).await);
    assert_eq!((status, body.as_str()), (401, "token expired"));

    let (status, _) =
        status_of(try_connect(ConnectOptions::new(&url).token(&good).origin("http://evil.example")).await);
    assert_eq!(status, 403, "wrong origin");

    let (status, _) = status_of(
        try_connect(ConnectOptions::new(format!("ws://{}/other", node.client_addr())).token(&good)).await,
    );
    assert_eq!(status, 404, "wrong path");

    // The right origin, and a token in the query string, both work.
    let (client, _events) =
        try_connect(ConnectOptions::new(&url).token(&good).token_in_query(true).origin(ALLOWED_ORIGIN))
            .await
            .expect("a good browser-style connection is accepted");
    client.join("chat:ok", None).await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_refused_when_an_audience_is_configured() {
    let mut config = test_config();
    config.auth.jwt_audience = Some("starling".into());
    let node = start(config).await;
    let claims = |aud: &str| Claims {
        sub: "alice".into(),
        exp: now() + 60,
        rooms: vec!["*".into()],
        aud: Some(serde_json::json!(aud)),
        ..Claims::default()
    };
    let wrong = sign_claims(SECRET, &claims("another-service")).unwrap();
    let (status, body) = status_of(try_connect(ConnectOptions::new(ws_url(&node)).token(wrong)).await);
    assert_eq!((status, body.as_str()), (401, "invalid token: wrong audience"));
    let right = sign_claims(SECRET, &claims("starling")).unwrap();
    assert!(try_connect(ConnectOptions::new(ws_url(&node)).token(right)).await.is_ok());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_answers_503_with_retry_after_and_frees_the_slot_on_disconnect() {
    let mut config = test_config();
    config.limits.max_connections = 2;
    let node = start(config).await;
    let (first, mut first_events) = connect_as(&node, "a").await;
    let (_second, _e2) = connect_as(&node, "b").await;
    let refused = try_connect(ConnectOptions::new(ws_url(&node)).token(token("c", &["*"]))).await;
    match refused {
        Err(ClientError::Rejected { status, retry_after, .. }) => {
            assert_eq!(status, 503);
            assert_eq!(retry_after.as_deref(), Some("5"));
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    first.close();
    close_code(&mut first_events).await;
    wait_until("the slot is free", || node.stats().sessions == 1).await;
    connect_as(&node, "c").await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_dropped_after_the_timeout() {
    let mut config = test_config();
    config.websocket.handshake_timeout_ms = 200;
    let node = start(config).await;
    let mut silent = tokio::net::TcpStream::connect(node.client_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    // The server closes the socket: read returns 0 (EOF) well before PATIENCE.
    let read = within("the server drops the silent socket", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    wait_until("no connection task is left", || node.stats().connection_tasks == 0).await;
    // Meanwhile a proper client is served.
    let (client, _events) = connect_as(&node, "alice").await;
    client.join("chat:x", None).await.unwrap();
    node.shutdown().await;
}

/// Signs any JSON as the claims (values `Claims` cannot hold included).
fn sign_json(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Opens a WebSocket from `local` (another loopback address is another
/// client address) and returns the `welcome` frame.
async fn welcome_from(local: &str, server: SocketAddr) -> serde_json::Value {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let tcp = within("tcp connect", socket.connect(server)).await.unwrap();
    let mut request = format!("ws://{server}/ws").into_client_request().unwrap();
    let bearer = format!("Bearer {}", token("carol", &["*"]));
    request.headers_mut().insert("authorization", bearer.parse().unwrap());
    let (mut ws, _) = within("the upgrade", tokio_tungstenite::client_async(request, tcp))
        .await
        .unwrap_or_else(|e| panic!("a client from {local} is served: {e}"));
    let Some(Ok(WsMessage::Text(text))) = within("welcome", ws.next()).await else {
        panic!("no welcome frame");
    };
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_pending_handshake() {
    let mut config = test_config();
    config.node.name = "pending-per-ip".into();
    config.limits.max_pending_handshakes = 16;
    config.limits.pending_handshakes_per_ip = 4;
    let node = start(config).await;
    let per_ip =
        ["starling_connections_rejected_total{", "node=\"pending-per-ip\"", "pending_handshakes_per_ip"];
    // Enough half-open connections from 127.0.0.1 to fill the global cap.
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(tokio::net::TcpStream::connect(node.client_addr()).await.unwrap());
    }
    wait_for_metric(&node, &per_ip, |refused| refused == 12.0).await;
    // Another address is still served, and 127.0.0.1 is refused no more
    // once its half-open connections are gone.
    let welcome = welcome_from("127.0.0.2", node.client_addr()).await;
    assert_eq!(welcome["type"], json!("welcome"));
    drop(silent);
    wait_until("the half-open handshakes have ended", || node.stats().connection_tasks == 0).await;
    let (client, _events) = connect_as(&node, "alice").await;
    client.join("chat:x", None).await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_not_yet_valid_or_issued_in_the_future_are_refused_within_the_leeway() {
    let mut config = test_config();
    config.auth.jwt_leeway_secs = 60;
    let node = start(config).await;
    let url = ws_url(&node);
    let refused = |claims: serde_json::Value| {
        let url = url.clone();
        async move { status_of(try_connect(ConnectOptions::new(url).token(sign_json(claims))).await) }
    };
    let exp = now() + 3600;
    let (status, body) = refused(json!({"sub": "a", "exp": exp, "nbf": now() + 600})).await;
    assert_eq!((status, body.as_str()), (401, "token not yet valid"));
    let (status, body) = refused(json!({"sub": "a", "exp": exp, "iat": now() + 600})).await;
    assert_eq!((status, body.as_str()), (401, "invalid token: issued in the future"));
    // Within the leeway (clocks a little apart) both are accepted.
    let skewed = sign_json(json!({"sub": "a", "exp": exp, "nbf": now() + 30, "iat": now() + 30}));
    assert!(try_connect(ConnectOptions::new(&url).token(skewed)).await.is_ok());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_living_longer_than_max_token_ttl_is_refused() {
    let mut config = test_config();
    config.auth.max_token_ttl_s = Some(3600);
    let node = start(config).await;
    let url = ws_url(&node);
    let long = sign_json(json!({"sub": "a", "iat": now(), "exp": now() + 7200}));
    let (status, body) = status_of(try_connect(ConnectOptions::new(&url).token(long)).await);
    assert_eq!((status, body.as_str()), (401, "invalid token: lifetime (exp - iat) is over the maximum"));
    let no_iat = sign_json(json!({"sub": "a", "exp": now() + 60}));
    let (status, body) = status_of(try_connect(ConnectOptions::new(&url).token(no_iat)).await);
    assert_eq!((status, body.as_str()), (401, "invalid token: iat is required"));
    // A minted one-hour token (it carries `iat`) fits.
    connect_as(&node, "alice").await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_time_claims_never_panic_and_the_connections_gauge_returns_to_zero() {
    let mut config = test_config();
    config.node.name = "extreme-claims".into();
    config.auth.jwt_leeway_secs = 5;
    let node = start(config).await;
    let url = ws_url(&node);
    let exp = now() + 3600;
    let refusals = [
        (json!({"sub": "a", "exp": -1}), "invalid token: exp must be a whole number of seconds"),
        (json!({"sub": "a", "exp": 1.5e9}), "invalid token: exp must be a whole number of seconds"),
        (json!({"sub": "a", "exp": 1e300}), "invalid token: exp must be a whole number of seconds"),
        (json!({"sub": "a", "exp": "never"}), "invalid token: exp must be a whole number of seconds"),
        (json!({"sub": "a", "exp": 0}), "token expired"),
        (json!({"sub": "a", "exp": exp, "nbf": u64::MAX}), "token not yet valid"),
        (json!({"sub": "a", "exp": exp, "nbf": -5}), "invalid token: nbf must be a whole number of seconds"),
        (json!({"sub": "a", "exp": exp, "iat": u64::MAX}), "invalid token: issued in the future"),
        (json!({"sub": "a", "exp": exp, "iat": 0.5}), "invalid token: iat must be a whole number of seconds"),
    ];
    for (claims, reason) in refusals {
        let token = sign_json(claims.clone());
        let (status, body) = status_of(try_connect(ConnectOptions::new(&url).token(token)).await);
        assert_eq!((status, body.as_str()), (401, reason), "{claims}");
    }
    // exp = u64::MAX (+ leeway) is simply a token that does not expire.
    let forever = sign_claims(
        SECRET,
        &Claims { sub: "a".into(), exp: u64::MAX, rooms: vec!["*".into()], ..Claims::default() },
    )
    .unwrap();
    let (client, mut events) = try_connect(ConnectOptions::new(&url).token(forever)).await.expect("accepted");
    client.join("chat:forever", None).await.expect("the session is alive");
    client.close();
    close_code(&mut events).await;
    wait_until("the session is gone", || node.stats().sessions == 0).await;
    let gauge = ["starling_connections{", "node=\"extreme-claims\""];
    wait_for_metric(&node, &gauge, |open| open == 0.0).await;
    node.shutdown().await;
}
