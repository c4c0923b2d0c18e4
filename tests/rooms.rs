//! Rooms, presence and messages over real WebSocket connections to a real
//! listener: the single-node guarantees of the wire contract.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::json;
use starling_client::{ConnectOptions, Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_comes_first_and_names_connection_node_and_user() {
    let node = start_default().await;
    let (client, _events) = connect_as(&node, "alice").await;
    let welcome = client.welcome();
    assert_eq!(welcome.user, "alice");
    assert_eq!(welcome.node, "test-node");
    assert_eq!(welcome.conn.len(), 16);
    assert_eq!(welcome.heartbeat_ms, 25_000);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_member_is_in_presence_and_others_get_joined_and_left_events() {
    let node = start_default().await;
    let (alice, mut alice_events) = connect_as(&node, "alice").await;
    let (bob, _bob_events) = connect_as(&node, "bob").await;

    let joined = alice.join("chat:lobby", Some(json!({"name": "Alice"}))).await.unwrap();
    assert_eq!(joined.room, "chat:lobby");
    assert_eq!(joined.offset, 0);
    assert!(joined.epoch > 0);
    let members = joined.members.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].meta, json!({"name": "Alice"}));

    let bob_join = bob.join("chat:lobby", None).await.unwrap();
    assert_eq!(bob_join.epoch, joined.epoch);
    assert_eq!(bob_join.members.unwrap().len(), 2);
    let (room, member) = next_matching(&mut alice_events, |e| match e {
        Event::Joined { room, member } => Some((room, member)),
        _ => None,
    })
    .await;
    assert_eq!((room.as_str(), member.user.as_str()), ("chat:lobby", "bob"));
    assert_eq!(member.conn, bob.welcome().conn);

    let presence = alice.presence("chat:lobby").await.unwrap();
    let mut users: Vec<_> = presence.iter().map(|m| m.user.clone()).collect();
    users.sort();
    assert_eq!(users, vec!["alice", "bob"]);

    bob.leave("chat:lobby").await.unwrap();
    let left = next_matching(&mut alice_events, |e| match e {
        Event::Left { member, .. } => Some(member),
        _ => None,
    })
    .await;
    assert_eq!(left.user, "bob");
    assert_eq!(alice.presence("chat:lobby").await.unwrap().len(), 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_user_on_two_connections_appears_as_two_members() {
    let node = start_default().await;
    let (tab1, _e1) = connect_as(&node, "alice").await;
    let (tab2, _e2) = connect_as(&node, "alice").await;
    tab1.join("chat:lobby", None).await.unwrap();
    tab2.join("chat:lobby", None).await.unwrap();
    let members = tab1.presence("chat:lobby").await.unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m.user == "alice"));
    assert_ne!(members[0].conn, members[1].conn);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_after_a_join_reply_reaches_every_member_once_with_its_sender() {
    let node = start_default().await;
    let (alice, mut alice_events) = connect_as(&node, "alice").await;
    let (bob, mut bob_events) = connect_as(&node, "bob").await;
    alice.join("chat:lobby", None).await.unwrap();
    bob.join("chat:lobby", None).await.unwrap();
    let reply = alice.publish("chat:lobby", json!({"text": "hi"})).await.unwrap();
    assert_eq!(reply.offset, 1);
    for events in [&mut alice_events, &mut bob_events] {
        let message = next_matching(events, |e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .await;
        assert_eq!(message.data, json!({"text": "hi"}));
        assert_eq!((message.offset, message.epoch), (reply.offset, reply.epoch));
        assert_eq!(message.from.unwrap().user, "alice");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_produce_one_gapless_order_seen_identically_by_every_member() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 40;
    let mut config = test_config();
    config.limits.publish_per_second = 10_000.0;
    config.limits.publish_burst = 1_000;
    let node = start(config).await;
    let mut clients = Vec::new();
    for i in 0..PUBLISHERS {
        let (client, events) = connect_as(&node, &format!("user{i}")).await;
        client.join("chat:order", None).await.unwrap();
        clients.push((client, events));
    }
    let mut tasks = Vec::new();
    for (i, (client, _)) in clients.iter().enumerate() {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                client.publish("chat:order", json!({"p": i, "n": n})).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = PUBLISHERS * EACH;
    let mut sequences = Vec::new();
    for (_, events) in clients.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < total {
            if let Event::Message(m) = next_event(events).await {
                seen.push((m.offset, m.data));
            }
        }
        // Gapless from 1, in order.
        let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>());
        // Each publisher's own messages stay in the order it sent them.
        let mut last: HashMap<u64, i64> = HashMap::new();
        for (_, data) in &seen {
            let (p, n) = (data["p"].as_u64().unwrap(), data["n"].as_i64().unwrap());
            assert!(n > *last.get(&p).unwrap_or(&-1), "publisher {p} reordered");
            last.insert(p, n);
        }
        sequences.push(seen);
    }
    assert!(sequences.windows(2).all(|w| w[0] == w[1]), "members saw different orders");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_policies_are_enforced() {
    let node = start_default().await;
    let (client, _events) = connect_as(&node, "alice").await;

    let error = client.join("nope:x", None).await.unwrap_err();
    assert_eq!(error.code(), Some("forbidden"), "{error}");

    // `news`: only the server publishes.
    client.join("news:today", None).await.unwrap();
    let error = client.publish("news:today", json!(1)).await.unwrap_err();
    assert_eq!(error.code(), Some("forbidden"));

    // `quiet`: no member list in the join reply, presence refused, no events.
    let joined = client.join("quiet:room", None).await.unwrap();
    assert!(joined.members.is_none());
    assert_eq!(client.presence("quiet:room").await.unwrap_err().code(), Some("forbidden"));

    // `small`: two members at most.
    let (b, _) = connect_as(&node, "b").await;
    let (c, _) = connect_as(&node, "c").await;
    client.join("small:room", None).await.unwrap();
    b.join("small:room", None).await.unwrap();
    let error = c.join("small:room", None).await.unwrap_err();
    assert_eq!(error.code(), Some("forbidden"));
    assert!(error.to_string().contains("full"), "{error}");

    // Data over the namespace limit (1024 bytes in tests).
    client.join("chat:big", None).await.unwrap();
    let error = client.publish("chat:big", json!("x".repeat(2000))).await.unwrap_err();
    assert_eq!(error.code(), Some("too_large"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_room_globs_limit_joins_and_presence() {
    let node = start_default().await;
    let options = ConnectOptions::new(ws_url(&node)).token(token("alice", &["chat:public-*"]));
    let (client, _events) = try_connect(options).await.unwrap();
    client.join("chat:public-1", None).await.unwrap();
    assert_eq!(client.join("chat:secret", None).await.unwrap_err().code(), Some("forbidden"));
    assert_eq!(client.presence("chat:secret").await.unwrap_err().code(), Some("forbidden"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_or_leaving_without_membership_is_not_joined() {
    let node = start_default().await;
    let (client, _events) = connect_as(&node, "alice").await;
    assert_eq!(client.publish("chat:x", json!(1)).await.unwrap_err().code(), Some("not_joined"));
    assert_eq!(client.leave("chat:x").await.unwrap_err().code(), Some("not_joined"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_meta_wins_over_join_meta_and_oversized_meta_is_too_large() {
    let node = start_default().await;
    let mut meta = serde_json::Map::new();
    meta.insert("role".into(), json!("admin"));
    let token = token_with("alice", &["*"], std::time::Duration::from_secs(60), Some(meta));
    let (client, _events) = try_connect(ConnectOptions::new(ws_url(&node)).token(token)).await.unwrap();
    let joined = client.join("chat:a", Some(json!({"role": "guest", "name": "A"}))).await.unwrap();
    assert_eq!(joined.members.unwrap()[0].meta, json!({"role": "admin", "name": "A"}));
    let error = client.join("chat:b", Some(json!({"blob": "x".repeat(5000)}))).await.unwrap_err();
    assert_eq!(error.code(), Some("too_large"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_join_only_so_many_rooms_and_rejoining_is_idempotent() {
    let mut config = test_config();
    config.limits.max_rooms_per_connection = 2;
    let node = start(config).await;
    let (client, _events) = connect_as(&node, "alice").await;
    client.join("chat:1", None).await.unwrap();
    client.join("chat:2", None).await.unwrap();
    // Joining a room it is already in is fine and changes nothing.
    let again = client.join("chat:2", None).await.unwrap();
    assert_eq!(again.members.unwrap().len(), 1);
    let error = client.join("chat:3", None).await.unwrap_err();
    assert_eq!(error.code(), Some("forbidden"));
    client.leave("chat:1").await.unwrap();
    client.join("chat:3", None).await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_reply_splits_the_stream_exactly_at_its_offset_while_messages_flow() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    const TOTAL: u64 = 400;
    let mut config = test_config();
    config.limits.publish_per_second = 1e6;
    config.limits.publish_burst = 100_000;
    let node = start(config).await;
    let (publisher, _events) = connect_as(&node, "publisher").await;
    publisher.join("chat:stream", None).await.unwrap();
    let publishing = tokio::spawn(async move {
        for n in 0..TOTAL {
            publisher.publish("chat:stream", json!(n)).await.unwrap();
        }
    });
    // A raw socket, so the order of replies and messages on the wire is seen as is.
    let url = format!("{}?token={}", ws_url(&node), token("joiner", &["*"]));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // welcome
    ws.send(WsMessage::text(r#"{"type":"join","id":1,"room":"chat:stream"}"#)).await.unwrap();
    let mut reply_offset = None;
    let mut before_reply = Vec::new();
    let mut after_reply = Vec::new();
    within("the joiner sees the end of the stream", async {
        while after_reply.last() != Some(&TOTAL) {
            let Some(Ok(WsMessage::Text(text))) = ws.next().await else { panic!("socket ended") };
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            match (frame["type"].as_str(), reply_offset) {
                (Some("reply"), _) => reply_offset = Some(frame["result"]["offset"].as_u64().unwrap()),
                // Sequenced after the join applied but queued before its
                // reply: allowed, with offsets up to the reply's (§10).
                (Some("message"), None) => before_reply.push(frame["offset"].as_u64().unwrap()),
                (Some("message"), Some(at)) => {
                    let offset = frame["offset"].as_u64().unwrap();
                    assert!(offset > at, "offset {offset} is not after the reply's {at}");
                    after_reply.push(offset);
                }
                _ => {}
            }
        }
    })
    .await;
    let at = reply_offset.unwrap();
    if let Some(&first) = before_reply.first() {
        assert_eq!(
            before_reply,
            (first..=at).collect::<Vec<_>>(),
            "before the reply: gapless, up to its offset"
        );
    }
    assert_eq!(after_reply, (at + 1..=TOTAL).collect::<Vec<_>>(), "gapless from the reply's offset");
    publishing.await.unwrap();
    node.shutdown().await;
}
