//! The HTTP server API, health, readiness and metrics, against a real node.

mod common;

use common::*;
use serde_json::json;
use starling_client::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_api_key() {
    let node = start_default().await;
    let addr = node.api_addr();
    let body = r#"{"room":"chat:x","data":1}"#;
    let none = http(addr, "POST", "/api/publish", &[], body).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["code"], json!("unauthorized"));
    let wrong = http(addr, "POST", "/api/publish", &[("Authorization", "Bearer not-the-key")], body).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(http(addr, "GET", "/api/cluster", &[], "").await.status, 401);
    // Health and metrics are open (they go on an internal listener).
    assert_eq!(http(addr, "GET", "/healthz", &[], "").await.status, 200);
    assert_eq!(http(addr, "GET", "/readyz", &[], "").await.status, 200);
    assert_eq!(http(addr, "GET", "/nope", &[], "").await.status, 404);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_publish_reaches_members_without_a_sender_even_where_clients_may_not_publish() {
    let node = start_default().await;
    let (client, mut events) = connect_as(&node, "alice").await;
    client.join("news:today", None).await.unwrap();
    let response =
        api(&node, "POST", "/api/publish", r#"{"room":"news:today","data":{"headline":"x"}}"#).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let result = response.json();
    assert_eq!(result["offset"], json!(1));
    let message = next_matching(&mut events, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(message.data, json!({"headline": "x"}));
    assert_eq!(message.from, None);
    assert_eq!(json!(message.epoch), result["epoch"]);

    // A room nobody is in: accepted, delivered to nobody, epoch 0.
    let empty = api(&node, "POST", "/api/publish", r#"{"room":"news:empty","data":1}"#).await;
    assert_eq!(empty.json(), json!({"offset": 0, "epoch": 0}));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_requests_get_documented_errors() {
    let node = start_default().await;
    let cases = [
        (r#"{"room":"nope:x","data":1}"#, 403, "forbidden"),
        (r#"{"room":"chat","data":1}"#, 400, "bad_request"),
        (r#"{"room":"chat:x"}"#, 400, "bad_request"),
        ("not json", 400, "bad_request"),
    ];
    for (body, status, code) in cases {
        let response = api(&node, "POST", "/api/publish", body).await;
        assert_eq!(response.status, status, "{body}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], json!(code), "{body}");
    }
    let big = format!(r#"{{"room":"chat:x","data":"{}"}}"#, "x".repeat(2000));
    let response = api(&node, "POST", "/api/publish", &big).await;
    assert_eq!((response.status, response.json()["error"]["code"].clone()), (413, json!("too_large")));
    let huge = format!(r#"{{"room":"chat:x","data":"{}"}}"#, "x".repeat(200_000));
    assert_eq!(api(&node, "POST", "/api/publish", &huge).await.status, 413);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_cluster_and_disconnect_reflect_the_node() {
    let node = start_default().await;
    let (alice, mut alice_events) = connect_as(&node, "alice").await;
    let (bob, _bob_events) = connect_as(&node, "bob").await;
    alice.join("chat:a/b", Some(json!({"n": 1}))).await.unwrap();
    bob.join("chat:a/b", None).await.unwrap();

    let presence = api(&node, "GET", "/api/rooms/chat%3Aa%2Fb/presence", "").await;
    assert_eq!(presence.status, 200, "{}", presence.body);
    let members = presence.json()["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 2);
    assert!(members.iter().any(|m| m["user"] == json!("alice") && m["meta"] == json!({"n": 1})));
    assert_eq!(api(&node, "GET", "/api/rooms/chat:none/presence", "").await.json(), json!({"members": []}));
    let quiet = api(&node, "GET", "/api/rooms/quiet:x/presence", "").await;
    assert_eq!(quiet.status, 403, "presence is off in `quiet`");

    let cluster = api(&node, "GET", "/api/cluster", "").await.json();
    assert_eq!(cluster["leader"], json!("test-node"));
    assert_eq!(cluster["nodes"][0]["connections"], json!(2));
    assert_eq!(cluster["nodes"][0]["role"], json!("leader"));

    let response = api(&node, "POST", "/api/disconnect", r#"{"user":"alice"}"#).await;
    assert_eq!(response.json(), json!({"disconnected": 1}));
    assert_eq!(close_code(&mut alice_events).await, Some(1000));
    wait_until("alice left presence", || {
        node.gateway().service.replicator().snapshot(&"chat:a/b".parse_room()).map(|s| s.members.len())
            == Some(1)
    })
    .await;
    node.shutdown().await;
}

/// Issue 5: `/metrics` values move exactly as a scripted workload says
/// (this test's node has a name of its own, so other tests' nodes in this
/// process do not count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let mut config = test_config();
    config.node.name = "metrics-node".into();
    let node = start(config).await;
    let read = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("node=\"metrics-node\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = api(&node, "GET", "/metrics", "").await.body;
    let (a, mut a_events) = connect_as(&node, "a").await;
    let (b, mut b_events) = connect_as(&node, "b").await;
    a.join("chat:m", None).await.unwrap();
    b.join("chat:m", None).await.unwrap();
    for n in 0..3 {
        a.publish("chat:m", json!(n)).await.unwrap();
    }
    for events in [&mut a_events, &mut b_events] {
        for _ in 0..3 {
            next_matching(events, |e| matches!(e, Event::Message(_)).then_some(())).await;
        }
    }
    let _ = a.publish("nope:x", json!(1)).await; // forbidden: unknown namespace
    let _ = a.publish("chat:other", json!(1)).await; // not_joined
    b.leave("chat:m").await.unwrap();
    let during = api(&node, "GET", "/metrics", "").await.body;
    let delta = |name: &str| read(&during, name) - read(&before, name);
    assert_eq!(delta("starling_connections_opened_total"), 2.0);
    assert_eq!(read(&during, "starling_connections{"), 2.0, "two open connections");
    assert_eq!(delta("starling_joins_total"), 2.0);
    assert_eq!(delta("starling_leaves_total"), 1.0);
    assert_eq!(delta("starling_publishes_total"), 3.0);
    assert_eq!(delta("starling_deliveries_total"), 6.0, "three messages to two members");
    assert_eq!(delta("starling_errors_total{node=\"metrics-node\",code=\"forbidden\"}"), 1.0);
    assert_eq!(delta("starling_errors_total{node=\"metrics-node\",code=\"not_joined\"}"), 1.0);
    assert!(delta("starling_delivery_latency_seconds_count{node=\"metrics-node\",path=\"local\"}") >= 1.0);
    assert_eq!(read(&during, "starling_rooms{"), 1.0);
    assert!(during.contains("starling_outbound_queue_frames{node=\"metrics-node\"}"), "{during}");
    assert!(during.contains("starling_outbound_queue_bytes{node=\"metrics-node\"}"));

    // A server-side close is counted by code.
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"user": "a"}).to_string();
    let disconnected =
        http(node.api_addr(), "POST", "/api/disconnect", &[("Authorization", &auth)], &body).await;
    assert_eq!(disconnected.status, 200, "{}", disconnected.body);
    assert_eq!(close_code(&mut a_events).await, Some(1000));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let after = api(&node, "GET", "/metrics", "").await.body;
        let closes = read(&after, "starling_closes_total{node=\"metrics-node\",code=\"1000\"}")
            - read(&before, "starling_closes_total{node=\"metrics-node\",code=\"1000\"}");
        if closes == 1.0 && read(&after, "starling_connections{") == 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "closes moved by {closes}: {after}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    node.shutdown().await;
}

/// The demo page, its JavaScript client and dev tokens exist only with
/// `api.demo` on; then the page imports the client, which is served as a
/// JavaScript module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_serves_the_js_client_only_when_demo_is_on() {
    let off = start_default().await;
    for path in ["/", "/starling.js", "/dev/token?user=x"] {
        assert_eq!(http(off.api_addr(), "GET", path, &[], "").await.status, 404, "{path} with demo off");
    }
    off.shutdown().await;

    let mut config = test_config();
    config.api.demo = true;
    let on = start(config).await;
    let page = http(on.api_addr(), "GET", "/", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"import { StarlingClient } from "/starling.js""#), "{}", page.body);
    let client = http(on.api_addr(), "GET", "/starling.js", &[], "").await;
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(client.body.contains("export class StarlingClient"));
    let token = http(on.api_addr(), "GET", "/dev/token?user=ann", &[], "").await;
    assert_eq!(token.status, 200);
    on.shutdown().await;
}

trait ParseRoom {
    fn parse_room(&self) -> starling::protocol::RoomName;
}

impl ParseRoom for str {
    fn parse_room(&self) -> starling::protocol::RoomName {
        starling::protocol::RoomName::parse(self).unwrap()
    }
}
