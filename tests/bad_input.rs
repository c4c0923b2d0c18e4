//! What a hostile or broken client sends: each gets its documented reply or
//! close code, the server keeps serving everyone else, and no message it
//! accepted is lost.

mod common;

use common::*;
use serde_json::{json, Value};
use starling_client::Event;
use tokio_tungstenite::tungstenite::Message as WsMessage;

async fn unmatched_reply(events: &mut starling_client::Events) -> Value {
    next_matching(events, |e| match e {
        Event::UnmatchedReply(value) => Some(value),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_bad_request_and_the_connection_keeps_working() {
    let node = start_default().await;
    let (client, mut events) = connect_as(&node, "alice").await;
    let cases: Vec<(WsMessage, Option<u64>, &str)> = vec![
        (WsMessage::text("hello"), None, "frame is not valid JSON"),
        (WsMessage::text(r#"{"type":"subscribe","id":5}"#), Some(5), "unknown type `subscribe`"),
        (WsMessage::text(r#"{"id":6,"room":"chat:x"}"#), Some(6), "missing field `type`"),
        (WsMessage::text(r#"{"type":"join","id":7}"#), Some(7), "missing field `room`"),
        (WsMessage::text(r#"{"type":"publish","id":8,"room":"chat:x"}"#), Some(8), "missing field `data`"),
        (
            WsMessage::text(r#"{"type":"join","id":9,"room":"nocolon"}"#),
            Some(9),
            "room name must be `namespace:name`",
        ),
        (WsMessage::text(r#"[1,2,3]"#), None, ""),
        (WsMessage::binary(vec![1u8, 2, 3]), None, "binary frames are not supported; send JSON text"),
    ];
    for (frame, id, message) in cases {
        client.send_raw(frame).unwrap();
        let reply = unmatched_reply(&mut events).await;
        assert_eq!(reply["ok"], json!(false), "{reply}");
        assert_eq!(reply["error"]["code"], json!("bad_request"), "{reply}");
        assert_eq!(reply["id"].as_u64(), id, "{reply}");
        if !message.is_empty() {
            assert_eq!(reply["error"]["message"], json!(message));
        }
    }
    let joined = client.join("chat:x", None).await.unwrap();
    assert_eq!(joined.room, "chat:x");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_closes_with_1009_and_others_are_unaffected() {
    let mut config = test_config();
    config.limits.max_message_bytes = 4096;
    let node = start(config).await;
    let (bystander, mut bystander_events) = connect_as(&node, "bob").await;
    bystander.join("chat:x", None).await.unwrap();
    let (client, mut events) = connect_as(&node, "alice").await;
    client.join("chat:x", None).await.unwrap();
    let huge = format!(r#"{{"type":"publish","room":"chat:x","data":"{}"}}"#, "x".repeat(10_000));
    client.send_raw(WsMessage::text(huge)).unwrap();
    assert_eq!(close_code(&mut events).await, Some(1009));
    // The bystander sees alice leave, and still publishes fine.
    next_matching(&mut bystander_events, |e| matches!(e, Event::Left { .. }).then_some(())).await;
    bystander.publish("chat:x", json!("still here")).await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_flood_is_rate_limited_then_closed_with_4029_and_accepted_messages_all_arrive() {
    let mut config = test_config();
    config.limits.publish_per_second = 1.0;
    config.limits.publish_burst = 5;
    config.limits.rate_limited_close_after = 10;
    let node = start(config).await;
    let (watcher, mut watcher_events) = connect_as(&node, "watcher").await;
    watcher.join("chat:flood", None).await.unwrap();
    let (flooder, mut flooder_events) = connect_as(&node, "flooder").await;
    flooder.join("chat:flood", None).await.unwrap();
    for i in 0..30u64 {
        let frame = json!({"type": "publish", "id": 1000 + i, "room": "chat:flood", "data": i});
        // The server may close (4029) before the last frames are handed to
        // the socket: the close is what this test waits for.
        if flooder.send_raw(WsMessage::text(frame.to_string())).is_err() {
            break;
        }
    }
    let (mut accepted, mut limited) = (Vec::new(), 0);
    let code = loop {
        match next_event(&mut flooder_events).await {
            Event::UnmatchedReply(reply) if reply["ok"] == json!(true) => {
                accepted.push(reply["result"]["offset"].as_u64().unwrap())
            }
            Event::UnmatchedReply(reply) => {
                assert_eq!(reply["error"]["code"], json!("rate_limited"));
                assert!(reply["error"]["retry_after_ms"].as_u64().unwrap() > 0);
                limited += 1;
            }
            Event::Closed { code, .. } => break code,
            _ => {}
        }
    };
    assert_eq!(code, Some(4029));
    assert_eq!(accepted, vec![1, 2, 3, 4, 5]);
    assert_eq!(limited, 9, "the tenth refusal closes instead of replying");
    // Every accepted publish reached the other member, in order.
    let mut delivered = Vec::new();
    while delivered.len() < accepted.len() {
        if let Event::Message(m) = next_event(&mut watcher_events).await {
            delivered.push(m.offset);
        }
    }
    assert_eq!(delivered, accepted);
    node.shutdown().await;
}

/// G9 with the rate limit: a publish refused `rate_limited` holds the
/// room's later publishes back (`unavailable`) until it is retried, so a
/// client that retries in call order keeps its order even when a token
/// came back before the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_publish_holds_the_later_ones_back_until_its_retry() {
    let mut config = test_config();
    config.limits.publish_per_second = 20.0;
    config.limits.publish_burst = 1;
    config.limits.rate_limited_close_after = 100;
    let node = start(config).await;
    let (watcher, mut watcher_events) = connect_as(&node, "watcher").await;
    watcher.join("chat:g9", None).await.unwrap();
    let (publisher, mut events) = connect_as(&node, "publisher").await;
    publisher.join("chat:g9", None).await.unwrap();
    let mut id = 0;
    let mut publish = |data: &str, idem: &str| {
        id += 1;
        let frame = json!({"type": "publish", "id": id, "room": "chat:g9", "data": data, "idem": idem});
        publisher.send_raw(WsMessage::text(frame.to_string())).unwrap();
    };
    // Sends `data` until it is accepted, waiting what each refusal says.
    async fn until_accepted(
        events: &mut starling_client::Events,
        mut send: impl FnMut(),
        mut refused: impl FnMut(&str),
    ) {
        loop {
            send();
            let reply = unmatched_reply(events).await;
            if reply["ok"] == json!(true) {
                return;
            }
            let code = reply["error"]["code"].as_str().unwrap().to_string();
            refused(&code);
            let wait = reply["error"]["retry_after_ms"].as_u64().unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
    }
    publish("first", "a");
    assert_eq!(unmatched_reply(&mut events).await["ok"], json!(true));
    publish("second", "b");
    assert_eq!(unmatched_reply(&mut events).await["error"]["code"], json!("rate_limited"));
    // The third goes before the second is retried: held back, whether or
    // not the bucket has a token again.
    let mut third_refusals = Vec::new();
    loop {
        publish("third", "c");
        let reply = unmatched_reply(&mut events).await;
        assert_ne!(reply["ok"], json!(true), "the third overtook the refused second");
        let code = reply["error"]["code"].as_str().unwrap().to_string();
        third_refusals.push(code.clone());
        if code == "unavailable" {
            break;
        }
        let wait = reply["error"]["retry_after_ms"].as_u64().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
    // Retried in call order, both go through.
    let mut refusals = Vec::new();
    until_accepted(&mut events, || publish("second", "b"), |code| refusals.push(code.to_string())).await;
    until_accepted(&mut events, || publish("third", "c"), |code| refusals.push(code.to_string())).await;
    assert!(refusals.iter().all(|code| code == "rate_limited"), "{refusals:?}");
    let mut delivered = Vec::new();
    while delivered.len() < 3 {
        if let Event::Message(m) = next_event(&mut watcher_events).await {
            delivered.push(m.data.as_str().unwrap().to_string());
        }
    }
    assert_eq!(delivered, ["first", "second", "third"]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_as_a_slow_consumer_without_hurting_the_room() {
    const MESSAGES: u64 = 3000;
    let mut config = test_config();
    config.limits.publish_per_second = 1e6;
    config.limits.publish_burst = 100_000;
    config.limits.outbound_queue_bytes = 128 * 1024;
    config.websocket.close_timeout_ms = 200;
    let node = start(config).await;

    // A raw client with a tiny receive buffer that joins and then never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(node.client_addr()).await.unwrap();
    let url = format!("{}?token={}", ws_url(&node), token("sloth", &["*"]));
    let (mut sloth, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    sloth.send(WsMessage::text(r#"{"type":"join","room":"chat:busy","id":1}"#)).await.unwrap();
    // Read the welcome and the join reply, then stop reading.
    for _ in 0..2 {
        within("sloth setup", sloth.next()).await.unwrap().unwrap();
    }

    let (reader, mut reader_events) = connect_as(&node, "reader").await;
    reader.join("chat:busy", None).await.unwrap();
    let (publisher, _p) = connect_as(&node, "publisher").await;
    publisher.join("chat:busy", None).await.unwrap();
    let payload = json!("y".repeat(900));
    let consume = tokio::spawn(async move {
        let mut offsets = Vec::new();
        while offsets.len() < MESSAGES as usize {
            match reader_events.next_non_ping().await {
                Some(Event::Message(m)) => offsets.push(m.offset),
                Some(Event::Closed { code, .. }) => panic!("reader closed: {code:?}"),
                Some(_) => {}
                None => panic!("reader stream ended"),
            }
        }
        offsets
    });
    for _ in 0..MESSAGES {
        publisher.publish("chat:busy", payload.clone()).await.unwrap();
    }
    let offsets = within("the reader gets every message", consume).await.unwrap();
    assert_eq!(offsets, (1..=MESSAGES).collect::<Vec<_>>());

    // The sloth was removed from the room and its session ended.
    wait_until("the sloth's session ends", || node.stats().sessions == 2).await;
    let members = reader.presence("chat:busy").await.unwrap();
    assert!(members.iter().all(|m| m.user != "sloth"), "{members:?}");
    let metrics = api(&node, "GET", "/metrics", "").await.body;
    assert!(
        metrics.lines().any(|l| l.starts_with("starling_closes_total") && l.contains("code=\"4008\"")),
        "{metrics}"
    );
    drop(sloth);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pongs_or_pings_is_rate_limited_and_closed_with_4029() {
    let mut config = test_config();
    config.limits.requests_per_second = 1.0;
    config.limits.request_burst = 5;
    config.limits.rate_limited_close_after = 10;
    let node = start(config).await;
    let (bystander, _bystander_events) = connect_as(&node, "carol").await;
    let floods =
        [("alice", WsMessage::text(r#"{"type":"pong"}"#)), ("bob", WsMessage::Ping(Vec::new().into()))];
    for (user, frame) in floods {
        let (client, mut events) = connect_as(&node, user).await;
        for _ in 0..100 {
            if client.send_raw(frame.clone()).is_err() {
                break;
            }
        }
        assert_eq!(close_code(&mut events).await, Some(4029), "{frame:?}");
    }
    bystander.join("chat:x", None).await.expect("others are unaffected");
    node.shutdown().await;
}
