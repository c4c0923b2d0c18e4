//! Connection lifecycle: heartbeats, token expiry, cleanup after many
//! clients come and go, and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use starling_client::{ClientError, ConnectOptions, Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_answer_pings_is_closed_with_4001() {
    let mut config = test_config();
    config.websocket.heartbeat_ms = 100;
    config.websocket.heartbeat_timeout_ms = 100;
    let node = start(config).await;
    let options = ConnectOptions::new(ws_url(&node)).token(token("mute", &["*"])).auto_pong(false);
    let (_client, mut events) = try_connect(options).await.unwrap();
    assert_eq!(next_matching(&mut events, |e| (e == Event::Ping).then_some(())).await, ());
    assert_eq!(close_code(&mut events).await, Some(4001));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_pings_stays_connected() {
    let mut config = test_config();
    config.websocket.heartbeat_ms = 50;
    config.websocket.heartbeat_timeout_ms = 100;
    let node = start(config).await;
    let (client, mut events) = connect_as(&node, "alice").await;
    // Ten pings is more than a whole heartbeat_ms + heartbeat_timeout_ms.
    for _ in 0..10 {
        next_matching(&mut events, |e| match e {
            Event::Ping => Some(()),
            Event::Closed { code, .. } => panic!("closed with {code:?}"),
            _ => None,
        })
        .await;
    }
    client.join("chat:alive", None).await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let node = start_default().await;
    let short = token_with("alice", &["*"], Duration::from_secs(1), None);
    let (client, mut events) = try_connect(ConnectOptions::new(ws_url(&node)).token(short)).await.unwrap();
    client.join("chat:x", None).await.unwrap();
    assert_eq!(close_code(&mut events).await, Some(1008));
    wait_until("the expired member is gone", || node.stats().table.members == 0).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_count_returns_to_zero_after_many_clients_come_and_go() {
    const CLIENTS: usize = 200;
    let node = start_default().await;
    for round in 0..2 {
        let mut polite = Vec::new();
        let mut abrupt = Vec::new();
        for i in 0..CLIENTS {
            let room_a = format!("chat:room-{}", i % 7);
            let room_b = format!("chat:shared-{round}");
            if i % 2 == 0 {
                let (client, events) = connect_as(&node, &format!("user{i}")).await;
                client.join(&room_a, Some(json!({"i": i}))).await.unwrap();
                client.join(&room_b, None).await.unwrap();
                client.publish(&room_b, json!(i)).await.unwrap();
                polite.push((client, events));
            } else {
                // A raw socket that joins and then vanishes without a close frame.
                let url = format!("{}?token={}", ws_url(&node), token(&format!("user{i}"), &["*"]));
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                use futures_util::SinkExt;
                let join = json!({"type": "join", "id": 1, "room": room_a}).to_string();
                ws.send(tokio_tungstenite::tungstenite::Message::text(join)).await.unwrap();
                // welcome, then the join reply.
                within("raw join", async {
                    let mut seen = 0;
                    while seen < 2 {
                        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = ws.next().await {
                            if t.contains("welcome") || t.contains("\"reply\"") {
                                seen += 1;
                            }
                        }
                    }
                })
                .await;
                abrupt.push(ws);
            }
        }
        let stats = node.stats();
        assert_eq!(stats.sessions, CLIENTS);
        assert_eq!(stats.table.connections, CLIENTS);
        for (client, _) in &polite {
            client.close();
        }
        drop(abrupt);
        for (_, mut events) in polite {
            close_code(&mut events).await;
        }
        wait_until("every count is back to zero", || {
            let s = node.stats();
            s.sessions == 0
                && s.connection_tasks == 0
                && s.hub_rooms == 0
                && s.subscriptions == 0
                && s.table.rooms == 0
                && s.table.members == 0
                && s.table.connections == 0
        })
        .await;
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_upgrades_with_503_and_closes_every_client_with_1012() {
    let mut config = test_config();
    config.shutdown.drain_ms = 1_000;
    let node = start(config).await;
    let url = ws_url(&node);
    let api_addr = node.api_addr();
    let mut clients = Vec::new();
    for i in 0..4 {
        let (client, events) = connect_as(&node, &format!("u{i}")).await;
        client.join("chat:drain", None).await.unwrap();
        clients.push((client, events));
    }
    // A publish accepted before the drain reaches everyone before their close.
    let accepted = clients[0].0.publish("chat:drain", json!("last")).await.unwrap();
    let shutdown = tokio::spawn(node.shutdown());
    wait_until_async("new upgrades are refused with 503", || async {
        matches!(
            try_connect(ConnectOptions::new(&url).token(token("late", &["*"]))).await,
            Err(ClientError::Rejected { status: 503, .. })
        )
    })
    .await;
    let ready = http(api_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503, "readyz while draining");
    for (_, events) in clients.iter_mut() {
        let mut got_message = false;
        let code = loop {
            match next_event(events).await {
                Event::Message(m) => {
                    assert_eq!(m.offset, accepted.offset);
                    got_message = true;
                }
                Event::Closed { code, .. } => break code,
                _ => {}
            }
        };
        assert!(got_message, "the accepted publish was lost");
        assert_eq!(code, Some(1012));
    }
    within("shutdown finishes", shutdown).await.unwrap();
}

/// Polls an async condition with a deadline.
async fn wait_until_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
