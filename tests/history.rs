//! History and recovery on one node (wire contract v1.1), over real
//! WebSocket connections: a join's `since` and `rewind`, the history and
//! room endpoints, and the node-wide history byte cap.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use starling::node::Node;
use starling_client::{Event, JoinOptions, StreamPosition};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A raw socket of `user`, past its welcome, so the order of frames on the
/// wire is seen as it is.
async fn raw_socket(
    node: &Node,
    user: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}?token={}", ws_url(node), token(user, &["*"]));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // welcome
    ws
}

/// Reads frames until the reply to request 1; returns the message offsets
/// before it and the reply's result.
async fn messages_then_reply(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    within("the join reply", async {
        loop {
            let Some(Ok(WsMessage::Text(text))) = ws.next().await else { panic!("socket ended") };
            let frame: Value = serde_json::from_str(&text).unwrap();
            match frame["type"].as_str() {
                Some("message") => before.push(frame),
                Some("reply") => {
                    assert_eq!(frame["ok"], true, "{frame}");
                    return (before, frame["result"].clone());
                }
                _ => {}
            }
        }
    })
    .await
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["offset"].as_u64().unwrap()).collect()
}

async fn next_message(events: &mut starling_client::Events) -> starling_client::Message {
    next_matching(events, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_with_since_gets_every_missed_message_once_in_order_before_its_reply() {
    let node = start_default().await;
    let (alice, _alice_events) = connect_as(&node, "alice").await;
    alice.join("chat:r", None).await.unwrap();
    let (bob, mut bob_events) = connect_as(&node, "bob").await;
    bob.join("chat:r", None).await.unwrap();
    for n in 1..=3 {
        alice.publish("chat:r", json!(n)).await.unwrap();
    }
    let mut seen = StreamPosition { epoch: 0, offset: 0 };
    for _ in 1..=3 {
        let message = next_message(&mut bob_events).await;
        seen = StreamPosition { epoch: message.epoch, offset: message.offset };
    }
    bob.close();
    wait_until("bob is gone", || node.gateway().connection_count() == 1).await;
    for n in 4..=9 {
        alice.publish("chat:r", json!(n)).await.unwrap();
    }
    // Bob comes back on a raw socket with `since` his last message.
    let mut ws = raw_socket(&node, "bob").await;
    let join = json!({"type": "join", "id": 1, "room": "chat:r", "since": seen});
    ws.send(WsMessage::text(join.to_string())).await.unwrap();
    let (replayed, reply) = messages_then_reply(&mut ws).await;
    assert_eq!(reply["recovered"], true);
    assert_eq!(offsets(&replayed), (4..=9).collect::<Vec<_>>(), "every missed message, once, in order");
    assert_eq!(
        replayed.iter().map(|f| f["data"].clone()).collect::<Vec<_>>(),
        (4..=9).map(|n| json!(n)).collect::<Vec<_>>()
    );
    assert!(replayed.iter().all(|f| f["epoch"] == json!(seen.epoch) && f["from"]["user"] == "alice"));
    assert_eq!((reply["epoch"].as_u64(), reply["offset"].as_u64()), (Some(seen.epoch), Some(9)));
    // Live messages follow the reply.
    alice.publish("chat:r", json!(10)).await.unwrap();
    let live = within("the live message", async {
        loop {
            let Some(Ok(WsMessage::Text(text))) = ws.next().await else { panic!("socket ended") };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "message" {
                return frame;
            }
        }
    })
    .await;
    assert_eq!(live["offset"], 10);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_while_messages_flow_is_exactly_every_offset_once_replayed_then_live() {
    const TOTAL: u64 = 300;
    let mut config = test_config();
    config.limits.publish_per_second = 1e6;
    config.limits.publish_burst = 100_000;
    config.namespaces.iter_mut().for_each(|n| n.history_size = 1000);
    config.limits.outbound_queue_messages = 2048;
    let node = start(config).await;
    let (publisher, _events) = connect_as(&node, "publisher").await;
    let joined = publisher.join("chat:flow", None).await.unwrap();
    for n in 1..=50 {
        publisher.publish("chat:flow", json!(n)).await.unwrap();
    }
    let publishing = tokio::spawn(async move {
        for n in 51..=TOTAL {
            publisher.publish("chat:flow", json!(n)).await.unwrap();
        }
    });
    // Joins with `since` offset 20 while publishes go on.
    let mut ws = raw_socket(&node, "joiner").await;
    let since = json!({"epoch": joined.epoch, "offset": 20});
    ws.send(WsMessage::text(json!({"type":"join","id":1,"room":"chat:flow","since":since}).to_string()))
        .await
        .unwrap();
    let (before, reply) = messages_then_reply(&mut ws).await;
    assert_eq!(reply["recovered"], true);
    let at = reply["offset"].as_u64().unwrap();
    assert_eq!(
        offsets(&before),
        (21..=at).collect::<Vec<_>>(),
        "replayed and early live messages: 21..=reply offset"
    );
    let mut after = Vec::new();
    within("the rest of the stream", async {
        while after.last() != Some(&TOTAL) {
            let Some(Ok(WsMessage::Text(text))) = ws.next().await else { panic!("socket ended") };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "message" {
                after.push(frame["offset"].as_u64().unwrap());
            }
        }
    })
    .await;
    assert_eq!(after, (at + 1..=TOTAL).collect::<Vec<_>>(), "after the reply: every later offset once");
    publishing.await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_that_cannot_be_served_replays_nothing_and_says_so() {
    let mut config = test_config(); // history_size = 100
    config.limits.publish_per_second = 1e6;
    config.limits.publish_burst = 100_000;
    let node = start(config).await;
    let (alice, _events) = connect_as(&node, "alice").await;
    let joined = alice.join("chat:old", None).await.unwrap();
    for n in 1..=150 {
        alice.publish("chat:old", json!(n)).await.unwrap();
    }
    let epoch = joined.epoch;
    for (since, why) in [
        (json!({"epoch": epoch, "offset": 10}), "trimmed: offsets 11..=50 are gone"),
        (json!({"epoch": epoch + 1, "offset": 140}), "an epoch the room does not have"),
        (json!({"epoch": epoch, "offset": 151}), "an offset the room never reached"),
    ] {
        let mut ws = raw_socket(&node, "bob").await;
        ws.send(WsMessage::text(json!({"type":"join","id":1,"room":"chat:old","since":since}).to_string()))
            .await
            .unwrap();
        let (before, reply) = messages_then_reply(&mut ws).await;
        assert_eq!(reply["recovered"], false, "{why}");
        assert!(before.is_empty(), "{why}: nothing replayed, got {:?}", offsets(&before));
        assert_eq!(reply["offset"], 150);
    }
    // The oldest position still held (offset 50: 51..=150 are held) recovers.
    let mut ws = raw_socket(&node, "carol").await;
    let since = json!({"epoch": epoch, "offset": 50});
    ws.send(WsMessage::text(json!({"type":"join","id":1,"room":"chat:old","since":since}).to_string()))
        .await
        .unwrap();
    let (before, reply) = messages_then_reply(&mut ws).await;
    assert_eq!(reply["recovered"], true);
    assert_eq!(offsets(&before), (51..=150).collect::<Vec<_>>());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_replays_the_last_messages_and_a_join_without_recovery_has_no_recovered_field() {
    let node = start_default().await;
    let (alice, _events) = connect_as(&node, "alice").await;
    alice.join("chat:rw", None).await.unwrap();
    for n in 1..=8 {
        alice.publish("chat:rw", json!(n)).await.unwrap();
    }
    let (bob, mut bob_events) = connect_as(&node, "bob").await;
    let reply =
        bob.join_with("chat:rw", JoinOptions { rewind: Some(3), ..JoinOptions::default() }).await.unwrap();
    assert_eq!(reply.recovered, None);
    let replayed: Vec<u64> = {
        let mut offsets = Vec::new();
        for _ in 0..3 {
            offsets.push(next_message(&mut bob_events).await.offset);
        }
        offsets
    };
    assert_eq!(replayed, vec![6, 7, 8]);
    let plain = alice.join("chat:rw", None).await.unwrap();
    assert_eq!(plain.recovered, None, "no `since`, no `recovered`");
    // `rewind` is capped by history_size (100): asking for more gives what is held.
    let (carol, mut carol_events) = connect_as(&node, "carol").await;
    carol.join_with("chat:rw", JoinOptions { rewind: Some(1000), ..JoinOptions::default() }).await.unwrap();
    assert_eq!(next_message(&mut carol_events).await.offset, 1);
    // A bad `since` is a bad_request naming the field.
    let error =
        carol.request(json!({"type": "join", "room": "chat:rw", "since": {"epoch": "x"}})).await.unwrap_err();
    assert_eq!(error.code(), Some("bad_request"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_and_room_endpoints_show_what_the_node_holds() {
    let node = start_default().await;
    let (alice, _events) = connect_as(&node, "alice").await;
    let joined = alice.join("chat:h", json!({"k": 1}).into()).await.unwrap();
    for n in 1..=5 {
        alice.publish("chat:h", json!({"n": n})).await.unwrap();
    }
    let epoch = joined.epoch;
    let all = api(&node, "GET", "/api/rooms/chat:h/history", "").await;
    assert_eq!(all.status, 200);
    let body = all.json();
    assert_eq!((body["epoch"].as_u64(), body["offset"].as_u64()), (Some(epoch), Some(5)));
    assert_eq!(body["recovered"], true);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5);
    assert_eq!(
        messages[0],
        json!({"type":"message","room":"chat:h","offset":1,"epoch":epoch,"data":{"n":1},
               "from":{"user":"alice","conn":alice.welcome().conn}})
    );
    let path = format!("/api/rooms/chat:h/history?since_epoch={epoch}&since_offset=3&limit=1");
    let body = api(&node, "GET", &path, "").await.json();
    assert_eq!(body["recovered"], true);
    assert_eq!(offsets(body["messages"].as_array().unwrap()), vec![4]);
    let path = format!("/api/rooms/chat:h/history?since_epoch={}&since_offset=3", epoch + 9);
    let body = api(&node, "GET", &path, "").await.json();
    assert_eq!((body["recovered"].clone(), body["messages"].clone()), (json!(false), json!([])));
    for (path, status) in [
        ("/api/rooms/chat:h/history?since_epoch=1", 400),
        ("/api/rooms/chat:h/history?limit=-1", 400),
        ("/api/rooms/nope:h/history", 403),
        ("/api/rooms/news:h/history", 403), // history_size = 0 there
    ] {
        let response = api(&node, "GET", path, "").await;
        assert_eq!(response.status, status, "{path}: {}", response.json());
        assert!(response.json()["error"]["message"].is_string());
    }
    let room = api(&node, "GET", "/api/rooms/chat:h", "").await.json();
    assert_eq!(room["room"], "chat:h");
    assert_eq!((room["epoch"].as_u64(), room["offset"].as_u64()), (Some(epoch), Some(5)));
    assert_eq!(room["owner"], node.gateway().node.as_ref());
    assert_eq!(room["members"][0]["user"], "alice");
    assert_eq!(room["members"][0]["meta"], json!({"k": 1}));
    let empty = api(&node, "GET", "/api/rooms/chat:nobody", "").await.json();
    assert_eq!(empty, json!({"room":"chat:nobody","epoch":0,"offset":0,"owner":null,"members":[]}));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_wide_byte_cap_trims_the_rooms_that_published_least_recently_first() {
    let mut config = test_config();
    config.node.name = "history-cap".into(); // its own metric series
    config.limits.history_bytes = 20_000;
    config.limits.publish_per_second = 1e6;
    config.limits.publish_burst = 100_000;
    let node = start(config).await;
    let (alice, _events) = connect_as(&node, "alice").await;
    let payload = "x".repeat(300);
    for room in ["chat:a", "chat:b", "chat:c"] {
        alice.join(room, None).await.unwrap();
    }
    // a, then b, then c: 30 messages of ~300 bytes each (~10 KB per room).
    for room in ["chat:a", "chat:b", "chat:c"] {
        for _ in 0..30 {
            alice.publish(room, json!(payload)).await.unwrap();
        }
    }
    let held = |body: Value| body["messages"].as_array().map_or(0, Vec::len);
    let a = held(api(&node, "GET", "/api/rooms/chat:a/history", "").await.json());
    let c = held(api(&node, "GET", "/api/rooms/chat:c/history", "").await.json());
    assert_eq!(a, 0, "the room that published least recently lost its history first");
    assert_eq!(c, 30, "the most recent room keeps all of its history");
    let bytes = metric(&node, &["starling_history_bytes{", "node=\"history-cap\""]).await.unwrap();
    assert!(bytes > 0.0 && bytes <= 20_000.0, "held {bytes} bytes, cap 20000");
    let trimmed =
        metric(&node, &["starling_history_trimmed_total", "node=\"history-cap\"", "reason=\"bytes\""])
            .await
            .unwrap();
    assert!(trimmed >= 30.0, "trimmed {trimmed}");
    node.shutdown().await;
}
