//! Observability against real `starling` processes: traces exported over
//! OTLP/HTTP to a receiver in this test, the cluster's `/metrics`, and
//! log lines that never carry a secret.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{http, token, within, API_KEY, SECRET};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{json, Value};
use starling_client::{Client, ConnectOptions, Event, Events};
use warp::Filter;

const BIN: &str = env!("CARGO_BIN_EXE_starling");
const PATIENCE: Duration = Duration::from_secs(20);

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

struct Ports {
    client: u16,
    api: u16,
    peer: u16,
    gossip: u16,
}

/// Free ports for `count` nodes, all chosen before any is released.
fn free_ports(count: usize) -> Vec<Ports> {
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut tcp = || {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        held_tcp.push(listener);
        port
    };
    let mut ports: Vec<Ports> =
        (0..count).map(|_| Ports { client: tcp(), api: tcp(), peer: tcp(), gossip: 0 }).collect();
    for p in &mut ports {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        p.gossip = socket.local_addr().unwrap().port();
        held_udp.push(socket);
    }
    ports
}

/// A running `starling` process whose stderr is collected line by line.
struct Proc {
    name: String,
    child: Child,
    client: SocketAddr,
    api: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(name: &str, config: &str, dir: &std::path::Path, env: &[(&str, String)], ports: &Ports) -> Proc {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(BIN);
        for (var, _) in std::env::vars().filter(|(v, _)| v.starts_with("STARLING_") || v.starts_with("OTEL_"))
        {
            command.env_remove(var);
        }
        command.env_remove("RUST_LOG").arg("--config").arg(&path);
        for (var, value) in env {
            command.env(var, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = Arc::clone(&log);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            }));
        }
        Proc {
            name: name.into(),
            child,
            client: SocketAddr::from((Ipv4Addr::LOCALHOST, ports.client)),
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, ports.api)),
            log,
            readers,
        }
    }

    /// Kills the process and returns everything it printed.
    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let log = self.log.lock().unwrap().join("\n");
        log
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.client)
    }

    async fn wait_started(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains("node started")) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.log.lock().unwrap().join("\n"));
            }
            assert!(Instant::now() < deadline, "{} did not start", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("starling-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn node_config(name: &str, dir: &std::path::Path, ports: &Ports, seeds: &str, level: &str) -> String {
    format!(
        r#"
[node]
name = "{name}"
data_dir = "{data}"
[listen]
client = "127.0.0.1:{client}"
api = "127.0.0.1:{api}"
peer = "127.0.0.1:{peer}"
gossip = "127.0.0.1:{gossip}"
[cluster]
id = "telemetry-test"
seeds = {seeds}
bootstrap_expect = {expect}
{security}[auth]
jwt_hs256_secret = "{SECRET}"
api_key = "{API_KEY}"
[log]
level = "{level}"
format = "json"
[[namespaces]]
name = "chat"
"#,
        security = common::certs::test_certs().toml(name),
        data = dir.join(name).display(),
        client = ports.client,
        api = ports.api,
        peer = ports.peer,
        gossip = ports.gossip,
        expect = if seeds == "[]" { 1 } else { 3 },
    )
}

/// Polls `check` until it gives a value, or panics after `PATIENCE`.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn api_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let auth = format!("Bearer {API_KEY}");
    let response = http(addr, "GET", path, &[("Authorization", &auth)], "").await;
    (response.status, response.body)
}

/// Starts three nodes exporting to `otlp` and waits until they form one
/// group with every node a voter.
async fn start_cluster(dir: &std::path::Path, otlp: SocketAddr) -> Vec<Proc> {
    let ports = free_ports(3);
    let seeds: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{}\"", p.gossip)).collect();
    let seeds = format!("[{}]", seeds.join(","));
    let env = [
        // The standard variable alone turns export on (issue 5).
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        // Export every 100 ms so the test does not wait for the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let mut nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let name = format!("node-{}", i + 1);
            let config = node_config(&name, dir, &ports[i], &seeds, "info,openraft=warn");
            Proc::spawn(&name, &config, dir, &env, &ports[i])
        })
        .collect();
    for node in &mut nodes {
        node.wait_started().await;
    }
    for node in &nodes {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body) = api_get(node.api, "/api/cluster").await;
            let formed = serde_json::from_str::<Value>(&body).ok().is_some_and(|view| {
                let voters = view["nodes"]
                    .as_array()
                    .map_or(0, |nodes| nodes.iter().filter(|n| n["voter"] == json!(true)).count());
                status == 200 && !view["leader"].is_null() && voters == 3
            });
            if formed {
                break;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = nodes.iter().map(|n| n.log.lock().unwrap().join("\n")).collect();
                panic!(
                    "{}: no leader and three voters; last view {body}\n{}",
                    node.name,
                    logs.join("\n----\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    nodes
}

async fn member(node: &Proc, user: &str, room: &str) -> (Client, Events) {
    let options = ConnectOptions::new(node.ws_url()).token(token(user, &["*"]));
    let (client, events) = Client::connect(options).await.expect("connect");
    eventually("a join reply", async || client.join(room, None).await.ok()).await;
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
    let dir = temp_dir("trace");
    let nodes = start_cluster(&dir, otlp).await;

    // Members on node-2 (first: its node becomes the room's owner) and
    // node-3; the publish enters on node-1, which has no member.
    let room = "chat:traced";
    let (b, mut b_events) = member(&nodes[1], "bea", room).await;
    let (_c, mut c_events) = member(&nodes[2], "cai", room).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"room": room, "data": {"n": 1}}).to_string();
    let published = eventually("the publish is accepted", async || {
        let headers = [("Authorization", auth.as_str()), ("traceparent", traceparent.as_str())];
        let response = http(nodes[0].api, "POST", "/api/publish", &headers, &body).await;
        (response.status == 200 && response.json()["epoch"] != json!(0)).then_some(response.json())
    })
    .await;
    assert_eq!(next_message(&mut b_events).await, json!({"n": 1}));
    assert_eq!(next_message(&mut c_events).await, json!({"n": 1}));

    // Wait until every node exported its part: the owner's sequence, and a
    // deliver + fan-out on each of the two other nodes.
    let trace = eventually("the whole trace at the receiver", async || {
        let trace: Vec<SpanRecord> =
            spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        let owner = trace.iter().find(|s| s.name == "sequence")?.instance.clone();
        let delivered = trace.iter().filter(|s| s.name == "deliver" && s.instance != owner).count();
        let fanouts = trace.iter().filter(|s| s.name == "fanout").count();
        (delivered == 2 && fanouts == 3 && trace.iter().any(|s| s.name == "publish")).then_some(trace)
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
    let ws_publish = eventually("the WebSocket publish's span", async || {
        let spans = spans.lock().unwrap();
        spans.iter().find(|s| s.trace_id == ws_trace && s.name == "publish").cloned()
    })
    .await;
    assert_eq!(ws_publish.instance, "node-2");
    assert_eq!(ws_publish.parent, ws_parent, "the publish joins the client's trace");

    // A server-side close, so the close counter has a series too.
    let body = json!({"user": "bea"}).to_string();
    let disconnected =
        http(nodes[1].api, "POST", "/api/disconnect", &[("Authorization", &auth)], &body).await;
    assert_eq!(disconnected.status, 200);
    eventually("bea's close", async || match b_events.next().await? {
        Event::Closed { .. } => Some(()),
        _ => None,
    })
    .await;

    // The cluster's own gauges on /metrics: one leader, three live nodes,
    // links up, and cross-node latency observed where members were reached
    // from another node.
    let mut leaders = 0.0;
    let mut all_text = String::new();
    for node in &nodes {
        let (_, text) = api_get(node.api, "/metrics").await;
        all_text.push_str(&text);
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(&format!("node=\"{}\"", node.name)))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        leaders += value("starling_raft_is_leader");
        assert_eq!(value("starling_gossip_live_nodes"), 3.0, "{}: {text}", node.name);
        assert!(value("starling_raft_term") >= 1.0);
        assert!(value("starling_raft_applied_index") >= 1.0);
        assert!(value("starling_peer_link_up{") >= 2.0, "{}: links to both peers are up", node.name);
        if node.name != owner && node.name != "node-1" {
            let cross: f64 = text
                .lines()
                .filter(|l| l.starts_with("starling_delivery_latency_seconds_count"))
                .filter(|l| {
                    l.contains(&format!("node=\"{}\"", node.name)) && l.contains("path=\"cross_node\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert!(
                cross >= 1.0,
                "{}: the member's delivery counts as cross-node latency: {text}",
                node.name
            );
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
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Logs

/// Issue 5: no token, token secret or API key is ever printed, even at the
/// most verbose log level, whether a token comes in the query or a header,
/// is refused, or expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_log_even_at_trace_level() {
    let dir = temp_dir("secrets");
    let ports = free_ports(1);
    let config = node_config("solo", &dir, &ports[0], "[]", "trace");
    let mut node = Proc::spawn("solo", &config, &dir, &[], &ports[0]);
    node.wait_started().await;

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
        let options = ConnectOptions::new(node.ws_url()).token(good.clone()).token_in_query(in_query);
        let (client, mut events) = Client::connect(options).await.expect("connect");
        client.join("chat:quiet", Some(json!({"k": "v"}))).await.unwrap();
        client.publish("chat:quiet", json!("hello")).await.unwrap();
        next_message(&mut events).await;
        client.close();
    }
    for bad in [&expired, &forged] {
        for in_query in [true, false] {
            let options = ConnectOptions::new(node.ws_url()).token(bad.clone()).token_in_query(in_query);
            assert!(Client::connect(options).await.is_err(), "a bad token is refused");
        }
    }
    let wrong_key =
        http(node.api, "GET", "/api/cluster", &[("Authorization", "Bearer wrong-key-123")], "").await;
    assert_eq!(wrong_key.status, 401);
    let (status, _) = api_get(node.api, "/api/cluster").await;
    assert_eq!(status, 200);
    let (_, metrics) = api_get(node.api, "/metrics").await;
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
    let _ = std::fs::remove_dir_all(&dir);
}
