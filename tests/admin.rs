//! The admin dashboard's endpoints against real nodes: `GET /admin` (a
//! static page that holds no data), `GET /api/rooms` and `GET /api/stats`
//! (API key required, bad parameters refused), on one node and on an
//! in-process three-node cluster with a node killed.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use starling::Config;

/// Polls `check` until it gives a value, or fails after `PATIENCE`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn named(name: &str) -> Config {
    let mut config = test_config();
    // Metrics are per process and labelled by node: a name of its own
    // keeps other tests' traffic out of this node's figures.
    config.node.name = name.into();
    config
}

fn room_names(listing: &Value) -> Vec<&str> {
    listing["rooms"].as_array().unwrap().iter().map(|r| r["room"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_need_the_api_key_and_the_page_holds_no_data() {
    let node = start(named("admin-auth")).await;
    let addr = node.api_addr();
    for path in ["/api/rooms", "/api/rooms?prefix=chat:", "/api/stats"] {
        let none = http(addr, "GET", path, &[], "").await;
        assert_eq!(
            (none.status, none.json()["error"]["code"].clone()),
            (401, json!("unauthorized")),
            "{path}"
        );
        let wrong = http(addr, "GET", path, &[("Authorization", "Bearer not-the-key")], "").await;
        assert_eq!(wrong.status, 401, "{path}");
        // The key is never taken from the URL.
        let in_url = http(addr, "GET", &format!("{path}?api_key={API_KEY}"), &[], "").await;
        assert_eq!(in_url.status, 401, "{path}");
        assert_eq!(api(&node, "GET", path, "").await.status, 200, "{path}");
    }
    // The page is public and static: no key, no node data, a strict policy.
    let page = http(addr, "GET", "/admin", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.body.contains("Starling admin") && page.body.contains("sessionStorage"));
    assert!(!page.body.contains(API_KEY) && !page.body.contains("admin-auth"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(!page.body.contains("http://") && !page.body.contains("https://"), "no external resources");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_by_prefix_in_name_order_up_to_the_limit() {
    let node = start(named("admin-rooms")).await;
    let (alice, _alice_events) = connect_as(&node, "alice").await;
    let (bob, _bob_events) = connect_as(&node, "bob").await;
    for room in ["chat:c", "chat:a", "chat:b", "news:x", "chat:<b>&\"x\""] {
        alice.join(room, None).await.unwrap();
    }
    bob.join("chat:b", None).await.unwrap();
    alice.publish("chat:b", json!("one")).await.unwrap();
    alice.publish("chat:b", json!("two")).await.unwrap();

    let all = api(&node, "GET", "/api/rooms", "").await.json();
    assert_eq!(all["total"], json!(5));
    assert_eq!((all["limit"].clone(), all["truncated"].clone()), (json!(100), json!(false)));
    assert_eq!(room_names(&all), ["chat:<b>&\"x\"", "chat:a", "chat:b", "chat:c", "news:x"]);

    let chat = api(&node, "GET", "/api/rooms?prefix=chat%3A&limit=2", "").await.json();
    assert_eq!(room_names(&chat), ["chat:<b>&\"x\"", "chat:a"]);
    assert_eq!((chat["total"].clone(), chat["truncated"].clone()), (json!(4), json!(true)));
    let b = api(&node, "GET", "/api/rooms?prefix=chat:b", "").await.json();
    let row = &b["rooms"][0];
    assert_eq!(room_names(&b), ["chat:b"]);
    assert_eq!((row["members"].clone(), row["users"].clone()), (json!(2), json!(2)));
    assert_eq!((row["owner"].clone(), row["offset"].clone()), (json!("admin-rooms"), json!(2)));
    assert!(row["epoch"].as_u64().unwrap() > 0);
    let none = api(&node, "GET", "/api/rooms?prefix=zzz", "").await.json();
    assert_eq!((none["total"].clone(), none["rooms"].clone()), (json!(0), json!([])));

    // The rate appears once the room has been listed a second earlier.
    let rate = eventually("a message rate for chat:b", || async {
        alice.publish("chat:b", json!("more")).await.unwrap();
        let listing = api(&node, "GET", "/api/rooms?prefix=chat:b", "").await.json();
        listing["rooms"][0]["messages_per_s"].as_f64()
    })
    .await;
    assert!(rate > 0.0, "{rate}");

    for bad in
        ["limit=0", "limit=1001", "limit=ten", "limit=-1", "limt=5", &format!("prefix={}", "x".repeat(300))]
    {
        let response = api(&node, "GET", &format!("/api/rooms?{bad}"), "").await;
        assert_eq!(response.status, 400, "{bad}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], json!("bad_request"), "{bad}");
    }
    let message = api(&node, "GET", "/api/rooms?limit=0", "").await.json()["error"]["message"].clone();
    assert_eq!(message, json!("`limit` must be an integer from 1 to 1000"));
    assert_eq!(api(&node, "GET", "/api/rooms?limit=1000", "").await.status, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_connections_rooms_rates_latency_and_recent_errors() {
    let node = start(named("admin-stats")).await;
    let first = api(&node, "GET", "/api/stats", "").await.json();
    assert_eq!(first["node"], json!("admin-stats"));
    assert_eq!((first["connections"].clone(), first["rooms"].clone()), (json!(0), json!(0)));
    assert_eq!(first["rates"], Value::Null, "no earlier reading to compare with");
    assert_eq!(first["cluster"]["nodes"][0]["name"], json!("admin-stats"));
    assert_eq!(first["cluster"]["leader"], json!("admin-stats"));

    let (a, _a_events) = connect_as(&node, "a").await;
    let (b, _b_events) = connect_as(&node, "b").await;
    a.join("chat:s", None).await.unwrap();
    b.join("chat:s", None).await.unwrap();
    let _ = a.publish("nope:x", json!(1)).await; // forbidden: unknown namespace
    let stats = eventually("deliveries per second and latency", || async {
        a.publish("chat:s", json!("tick")).await.unwrap();
        let stats = api(&node, "GET", "/api/stats", "").await.json();
        let delivering = stats["rates"]["deliveries_per_s"].as_f64().is_some_and(|r| r > 0.0);
        (delivering && stats["latency"]["p99_ms"].is_number()).then_some(stats)
    })
    .await;
    assert_eq!((stats["connections"].clone(), stats["rooms"].clone()), (json!(2), json!(1)));
    assert_eq!(stats["subscriptions"], json!(2));
    assert!(stats["history_bytes"].as_u64().unwrap() > 0, "chat keeps history");
    assert!(stats["rates"]["publishes_per_s"].as_f64().unwrap() > 0.0);
    assert!(stats["totals"]["deliveries"].as_u64().unwrap() >= 2);
    let latency = &stats["latency"];
    assert!(latency["p50_ms"].as_f64().unwrap() <= latency["p99_ms"].as_f64().unwrap(), "{latency}");
    let forbidden = stats["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "error" && e["name"] == "forbidden")
        .cloned()
        .unwrap_or_else(|| panic!("no forbidden error in {}", stats["errors"]));
    assert_eq!((forbidden["total"].clone(), forbidden["last_minute"].clone()), (json!(1), json!(1)));
    node.shutdown().await;
}

fn cluster_config(name: &str, seeds: Vec<String>) -> Config {
    let mut config = test_config();
    config.node.name = name.into();
    config.node.data_dir = std::env::temp_dir().join(format!("starling-admin-{}-{name}", std::process::id()));
    config.listen.peer = "127.0.0.1:0".parse().unwrap();
    config.listen.gossip = "127.0.0.1:0".parse().unwrap();
    config.cluster.bootstrap_expect = 3;
    config.cluster.seeds = seeds;
    certs::test_certs().apply(&mut config);
    config
}

fn node_states(stats: &Value) -> Vec<(String, String)> {
    let nodes = stats["cluster"]["nodes"].as_array().unwrap();
    nodes.iter().map(|n| (n["name"].as_str().unwrap().into(), n["state"].as_str().unwrap().into())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_any_node_lists_every_room_and_shows_a_killed_node_down() {
    let first = start(cluster_config("admin-1", Vec::new())).await;
    let seed = first.gossip_addr().unwrap().to_string();
    let second = start(cluster_config("admin-2", vec![seed.clone()])).await;
    let third = start(cluster_config("admin-3", vec![seed])).await;
    let mut nodes = vec![first, second, third];
    let dirs: Vec<_> = nodes.iter().map(|n| n.gateway().config.node.data_dir.clone()).collect();
    let leader = eventually("a leader known to every node", || async {
        let leaders: Vec<_> = nodes.iter().map(|n| n.leader()).collect();
        leaders.iter().all(|l| l.is_some() && *l == leaders[0]).then(|| leaders[0].clone().unwrap())
    })
    .await;
    // Watch from a follower and kill the other follower: this is about
    // what the dashboard shows, not failover.
    let followers: Vec<usize> = (0..3).filter(|i| *nodes[*i].gateway().node != *leader).collect();
    let (observer, victim) = (followers[0], followers[1]);
    let victim_name = nodes[victim].gateway().node.to_string();
    eventually("three alive nodes in the stats", || async {
        let stats = api(&nodes[observer], "GET", "/api/stats", "").await.json();
        let states = node_states(&stats);
        let all_alive = states.len() == 3 && states.iter().all(|(_, s)| s == "alive");
        (all_alive && stats["cluster"]["leader"] == leader).then_some(())
    })
    .await;

    // A room made on the victim is listed by the observer, owned by the victim.
    let (client, _events) = connect_as(&nodes[victim], "victim-user").await;
    client.join("chat:made-elsewhere", None).await.unwrap();
    let listing = eventually("the room listed on another node", || async {
        let listing = api(&nodes[observer], "GET", "/api/rooms?prefix=chat:made", "").await.json();
        (listing["total"] == 1).then_some(listing)
    })
    .await;
    assert_eq!(listing["rooms"][0]["owner"], json!(victim_name));
    assert_eq!(listing["rooms"][0]["members"], json!(1));

    nodes.remove(victim).kill().await;
    let observer = if victim < observer { observer - 1 } else { observer };
    let stats = eventually("the killed node shown down and its room gone", || async {
        let stats = api(&nodes[observer], "GET", "/api/stats", "").await.json();
        let down = node_states(&stats).contains(&(victim_name.clone(), "down".into()));
        let rooms = api(&nodes[observer], "GET", "/api/rooms?prefix=chat:made", "").await.json();
        (down && rooms["total"] == 0).then_some(stats)
    })
    .await;
    assert_eq!(node_states(&stats).iter().filter(|(_, s)| s == "alive").count(), 2);
    let events = stats["events"].as_array().unwrap();
    let about_victim =
        |kind: &str| events.iter().any(|e| e["kind"] == kind && e["node"] == json!(victim_name));
    assert!(about_victim("node_down"), "{events:?}");
    assert!(about_victim("evicted"), "{events:?}");
    let stopping: Vec<_> = nodes.into_iter().map(|node| tokio::spawn(node.shutdown())).collect();
    for stop in stopping {
        stop.await.unwrap();
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
