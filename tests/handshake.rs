//! Admission before the upgrade: every refusal is an HTTP status with no 101,
//! and the node keeps serving everyone else.

mod common;

use common::*;
use starling::auth::{sign_claims, Claims};
use starling_client::{ClientError, ConnectOptions};
use tokio::io::AsyncReadExt;

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
        &Claims { sub: "alice".into(), exp: now() + 60, rooms: vec![], meta: None, aud: None, iss: None },
    )
    .unwrap();
    let (status, _) = status_of(try_connect(ConnectOptions::new(&url).token(other_secret)).await);
    assert_eq!(status, 401, "signed with another secret");

    // {"alg":"none"} with an empty signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let (status, _) = status_of(try_connect(ConnectOptions::new(&url).token(none)).await);
    assert_eq!(status, 401, "alg none");

    let expired = sign_claims(
        SECRET,
        &Claims { sub: "alice".into(), exp: now() - 120, rooms: vec![], meta: None, aud: None, iss: None },
    )
    .unwrap();
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
        meta: None,
        aud: Some(serde_json::json!(aud)),
        iss: None,
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
