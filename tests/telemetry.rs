//! Observability against real `starling` processes: traces exported over
//! OTLP/HTTP to a receiver in this test, the cluster's `/metrics`, and
//! log lines that never carry a secret.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::processes::{
    eventually, free_ports, NodeProcess, NodeSpec, Placement, ProcessCluster, Secrets, TestDir, PATIENCE,
};
use common::{http, token, within, API_KEY, SECRET};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{json, Value};
use starling_client::{Client, ConnectOptions, Event, Events};
use warp::Filter;

// ---------------------------------------------------------------------------
// An OTLP/HTTP (protobuf) receiver

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct SpanRecord {
    /// `service.instance.id` of the span's resource.
    instance: String,
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
}

type Spans = Arc<Mutex<Vec<SpanRecord>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `POST /v1/traces` on a free loopback port and keeps every span.
async fn otlp_receiver() -> (SocketAddr, Spans) {
    let spans: Spans = Arc::default();
    let sink = Arc::clone(&spans);
    let route =
        warp::post().and(warp::path!("v1" / "traces")).and(warp::body::bytes()).map(move |body: Bytes| {
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export request");
            let mut sink = sink.lock().unwrap();
            for resource_spans in request.resource_spans {
                let attribute = |key: &str| -> String {
                    let resource = resource_spans.resource.as_ref();
                    let found = resource.and_then(|r| r.attributes.iter().find(|kv| kv.key == key));
                    match found.and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref()) {
                        Some(AnyValue::StringValue(s)) => s.clone(),
                        _ => String::new(),
                    }
                };
                let (instance, service) = (attribute("service.instance.id"), attribute("service.name"));
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        sink.push(SpanRecord {
                            instance: instance.clone(),
                            service: service.clone(),
                            name: span.name.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                        });
                    }
                }
            }
            warp::reply::with_header(Vec::<u8>::new(), "content-type", "application/x-protobuf")
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (addr, spans)
}

// ---------------------------------------------------------------------------
// Nodes as processes

/// A node's config, placed by the harness (data dir, addresses, seeds and
/// peer TLS come from `STARLING_` variables).
fn node_config(name: &str, bootstrap_expect: usize, level: &str) -> String {
    format!(
        r#"
[node]
name = "{name}"
[cluster]
id = "telemetry-test"
bootstrap_expect = {bootstrap_expect}
[auth]
jwt_hs256_secret = "{SECRET}"
api_key = "{API_KEY}"
[log]
level = "{level}"
format = "json"
[[namespaces]]
name = "chat"
"#
    )
}

async fn api_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let auth = format!("Bearer {API_KEY}");
    let response = http(addr, "GET", path, &[("Authorization", &auth)], "").await;
    (response.status, response.body)
}

/// Starts three nodes exporting to `otlp` and waits until they form one
/// group with every node a voter.
async fn start_cluster(otlp: SocketAddr) -> ProcessCluster {
    let mut cluster = ProcessCluster::from_text("trace", 3, Secrets::of_tests(), |name| {
        node_config(name, 3, "info,openraft=warn")
    });
    for spec in &mut cluster.specs {
        // The standard variable alone turns export on (issue 5).
        spec.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://{otlp}")));
        // Export every 100 ms so the test does not wait for the default 5 s.
        spec.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    }
    cluster.start_all_at_once().await;
    for i in 0..cluster.len() {
        let name = cluster.name(i).to_string();
        eventually(&format!("{name} sees a leader and three voters"), PATIENCE, async || {
            let view = cluster.cluster_view(i).await.ok_or("no answer")?;
            let voters = view["nodes"]
                .as_array()
                .map_or(0, |nodes| nodes.iter().filter(|n| n["voter"] == json!(true)).count());
            if !view["leader"].is_null() && voters == 3 {
                Ok(())
            } else {
                Err(format!("last view {view}"))
            }
        })
        .await;
    }
    cluster
}

async fn member(cluster: &ProcessCluster, i: usize, user: &str, room: &str) -> (Client, Events) {
    let options = ConnectOptions::new(cluster.specs[i].ws_url()).token(token(user, &["*"]));
    let (client, events) = Client::connect(options).await.expect("connect");
    eventually("a join reply", PATIENCE, async || client.join(room, None).await.map_err(|e| e.to_string()))
        .await;
    (client, events)
}

async fn next_message(events: &mut Events) -> Value {
    within("a message", async {
        loop {
            match events.next().await.expect("event stream open") {
                Event::Message(message) => return message.data,
                _ => continue,
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Traces

/// Issue 5: one publish makes one trace spanning every node it touched
/// (publish on A -> forward -> sequence on the owner -> deliver and fan-out
/// on every other node), joined to the caller's own `traceparent`, with
/// each span's resource naming its node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_makes_one_trace_across_every_node_it_touched() {
    let (otlp, spans) = otlp_receiver().await;
    let cluster = start_cluster(otlp).await;

    // Members on node-2 (first: its node becomes the room's owner) and
    // node-3; the publish enters on node-1, which has no member.
    let room = "chat:traced";
    let (b, mut b_events) = member(&cluster, 1, "bea", room).await;
    let (_c, mut c_events) = member(&cluster, 2, "cai", room).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"room": room, "data": {"n": 1}}).to_string();
    let published = eventually("the publish is accepted", PATIENCE, async || {
        let headers = [("Authorization", auth.as_str()), ("traceparent", traceparent.as_str())];
        let response = http(cluster.api_addr(0), "POST", "/api/publish", &headers, &body).await;
        let accepted = response.status == 200 && response.json()["epoch"] != json!(0);
        accepted.then(|| response.json()).ok_or(format!("HTTP {} {}", response.status, response.body))
    })
    .await;
    assert_eq!(next_message(&mut b_events).await, json!({"n": 1}));
    assert_eq!(next_message(&mut c_events).await, json!({"n": 1}));

    // Wait until every node exported its part: the owner's sequence, and a
    // deliver + fan-out on each of the two other nodes.
    let trace = eventually("the whole trace at the receiver", PATIENCE, async || {
        let trace: Vec<SpanRecord> =
            spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        let owner =
            trace.iter().find(|s| s.name == "sequence").ok_or("no sequence span yet")?.instance.clone();
        let delivered = trace.iter().filter(|s| s.name == "deliver" && s.instance != owner).count();
        let fanouts = trace.iter().filter(|s| s.name == "fanout").count();
        let whole = delivered == 2 && fanouts == 3 && trace.iter().any(|s| s.name == "publish");
        let got = trace.len();
        whole.then_some(trace).ok_or(format!("{got} spans so far"))
    })
    .await;
    eprintln!("published {published}; the trace as the receiver got it:");
    for span in &trace {
        let parent = if span.parent.is_empty() { "-" } else { &span.parent };
        eprintln!("  {:<7} {:<9} span {} parent {parent}", span.instance, span.name, span.span_id);
    }

    let one = |instance: &str, name: &str| -> SpanRecord {
        let found: Vec<&SpanRecord> =
            trace.iter().filter(|s| s.instance == instance && s.name == name).collect();
        assert_eq!(found.len(), 1, "exactly one {name} span on {instance}: {trace:#?}");
        found[0].clone()
    };
    assert!(trace.iter().all(|s| s.service == "starling"), "service.name on every span");
    let publish = one("node-1", "publish");
    assert_eq!(publish.parent, caller_span, "the publish joins the caller's trace");
    let sequence = trace.iter().find(|s| s.name == "sequence").unwrap().clone();
    let owner = sequence.instance.clone();
    if owner == "node-1" {
        assert_eq!(sequence.parent, publish.span_id);
    } else {
        let forward = one("node-1", "forward");
        assert_eq!(forward.parent, publish.span_id, "forward is inside the publish");
        assert_eq!(sequence.parent, forward.span_id, "the owner's sequence is a child of node-1's forward");
    }
    assert_eq!(one(&owner, "fanout").parent, sequence.span_id, "the owner fans out inside its sequence");
    for node in ["node-1", "node-2", "node-3"].into_iter().filter(|n| *n != owner) {
        let deliver = one(node, "deliver");
        assert_eq!(deliver.parent, sequence.span_id, "{node} receives the owner's frame in the same trace");
        assert_eq!(one(node, "fanout").parent, deliver.span_id, "{node} fans out inside its deliver");
    }
    let ids: std::collections::HashSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), trace.len(), "span ids are unique");

    // A client's own traceparent on a WebSocket publish: the publish span on
    // its node is the child of the client's span.
    let ws_trace = "0af7651916cd43dd8448eb211c80319c";
    let ws_parent = "b7ad6b7169203331";
    let frame = json!({"type": "publish", "room": room, "data": {"n": 2},
        "traceparent": format!("00-{ws_trace}-{ws_parent}-01")});
    b.request(frame).await.expect("the traced publish is accepted");
    let ws_publish = eventually("the WebSocket publish's span", PATIENCE, async || {
        let spans = spans.lock().unwrap();
        spans.iter().find(|s| s.trace_id == ws_trace && s.name == "publish").cloned().ok_or("not yet".into())
    })
    .await;
    assert_eq!(ws_publish.instance, "node-2");
    assert_eq!(ws_publish.parent, ws_parent, "the publish joins the client's trace");

    // A server-side close, so the close counter has a series too.
    let body = json!({"user": "bea"}).to_string();
    let disconnected =
        http(cluster.api_addr(1), "POST", "/api/disconnect", &[("Authorization", &auth)], &body).await;
    assert_eq!(disconnected.status, 200);
    eventually("bea's close", PATIENCE, async || match b_events.next().await {
        Some(Event::Closed { .. }) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;

    // The cluster's own gauges on /metrics: one leader, three live nodes,
    // links up, and cross-node latency observed where members were reached
    // from another node.
    let mut leaders = 0.0;
    let mut all_text = String::new();
    for i in 0..cluster.len() {
        let node = cluster.name(i);
        let (_, text) = api_get(cluster.api_addr(i), "/metrics").await;
        all_text.push_str(&text);
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(&format!("node=\"{node}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        leaders += value("starling_raft_is_leader");
        assert_eq!(value("starling_gossip_live_nodes"), 3.0, "{node}: {text}");
        assert!(value("starling_raft_term") >= 1.0);
        assert!(value("starling_raft_applied_index") >= 1.0);
        assert!(value("starling_peer_link_up{") >= 2.0, "{node}: links to both peers are up");
        if node != owner && node != "node-1" {
            let cross: f64 = text
                .lines()
                .filter(|l| l.starts_with("starling_delivery_latency_seconds_count"))
                .filter(|l| l.contains(&format!("node=\"{node}\"")) && l.contains("path=\"cross_node\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert!(cross >= 1.0, "{node}: the member's delivery counts as cross-node latency: {text}");
        }
    }
    assert_eq!(leaders, 1.0, "exactly one node reports itself leader");
    // Every metric the shipped Grafana dashboard queries exists.
    let dashboard = include_str!("../deploy/grafana/metrics.txt");
    for name in dashboard.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let exported = all_text
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(exported, "the dashboard queries {name}, which /metrics does not export");
    }
}

// ---------------------------------------------------------------------------
// Logs

/// Issue 5: no token, token secret or API key is ever printed, even at the
/// most verbose log level, whether a token comes in the query or a header,
/// is refused, or expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_log_even_at_trace_level() {
    let dir = TestDir::new("secrets");
    let config = dir.write_config("solo", &node_config("solo", 1, "trace"));
    let ports = free_ports(1)[0];
    let placement = Placement {
        ip: Ipv4Addr::LOCALHOST.into(),
        ports,
        data_dir: dir.path().join("solo"),
        seeds: "[]".into(),
    };
    let spec = NodeSpec::placed("solo", config, placement);
    let node = NodeProcess::start(&spec).await;

    let good = token("alice", &["*"]);
    let expired = {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = json!({"sub": "bob", "rooms": ["*"], "exp": now - 3600});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let forged = {
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        parts[2] = "forgedsignatureforgedsignatureforgedsig".into();
        parts.join(".")
    };
    // A token in the query and one in the header; publish and leave.
    for in_query in [true, false] {
        let options = ConnectOptions::new(spec.ws_url()).token(good.clone()).token_in_query(in_query);
        let (client, mut events) = Client::connect(options).await.expect("connect");
        client.join("chat:quiet", Some(json!({"k": "v"}))).await.unwrap();
        client.publish("chat:quiet", json!("hello")).await.unwrap();
        next_message(&mut events).await;
        client.close();
    }
    for bad in [&expired, &forged] {
        for in_query in [true, false] {
            let options = ConnectOptions::new(spec.ws_url()).token(bad.clone()).token_in_query(in_query);
            assert!(Client::connect(options).await.is_err(), "a bad token is refused");
        }
    }
    let wrong_key =
        http(spec.api_addr(), "GET", "/api/cluster", &[("Authorization", "Bearer wrong-key-123")], "").await;
    assert_eq!(wrong_key.status, 401);
    let (status, _) = api_get(spec.api_addr(), "/api/cluster").await;
    assert_eq!(status, 200);
    let (_, metrics) = api_get(spec.api_addr(), "/metrics").await;
    assert!(metrics.contains("starling_connections"));

    let log = node.finish();
    assert!(log.lines().count() > 20, "trace level logs a lot: {log}");
    for (what, secret) in [
        ("token secret", SECRET.to_string()),
        ("API key", API_KEY.to_string()),
        ("token", good.clone()),
        ("token signature", good.rsplit('.').next().unwrap().to_string()),
        ("expired token", expired.clone()),
        ("forged token", forged.clone()),
    ] {
        assert!(!log.contains(&secret), "the {what} appears in the log");
    }
}
