//! Test harness: an in-process node on loopback port 0, token minting, real
//! WebSocket clients, a raw HTTP client, and waiting on conditions with a
//! deadline (never sleeping as synchronisation).
//!
//! - [`certs`]: the test cluster CA, node certificates and gossip key.
//! - [`processes`]: real `starling` processes, one or a cluster, with
//!   signals and network namespaces (every test that runs the binary).

#![allow(dead_code)]

pub mod certs;
pub mod processes;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use starling::auth::{mint_token, MintRequest};
use starling::config::{NamespaceConfig, PublishPolicy};
use starling::{Config, Node};
use starling_client::{Client, ClientError, ConnectOptions, Event, Events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SECRET: &str = "test-secret-test-secret-test-secret!";
pub const API_KEY: &str = "test-api-key-0123456789";
pub const ALLOWED_ORIGIN: &str = "http://allowed.example";
/// How long any test waits for a condition before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

fn namespace(name: &str) -> NamespaceConfig {
    NamespaceConfig {
        name: name.into(),
        presence: true,
        join_leave_events: true,
        publish: PublishPolicy::Members,
        max_members: None,
        max_data_bytes: 1024,
        history_size: 100,
        history_ttl_ms: 0,
    }
}

/// A config for tests: loopback, port 0, known secrets, and namespaces
/// covering every policy: `chat` (defaults, history of 100 messages), `news`
/// (server publishes only, no history),
/// `quiet` (no presence, no events), `small` (two members at most).
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.node.name = "test-node".into();
    config.listen.client = "127.0.0.1:0".parse().unwrap();
    config.listen.api = "127.0.0.1:0".parse().unwrap();
    config.auth.jwt_hs256_secret = Some(SECRET.into());
    config.auth.api_key = Some(API_KEY.into());
    config.auth.allowed_origins = vec![ALLOWED_ORIGIN.into()];
    config.log.level = "warn,openraft=error".into();
    config.shutdown.drain_ms = 200;
    config.shutdown.deadline_ms = 5_000;
    let mut news = namespace("news");
    news.publish = PublishPolicy::Server;
    news.history_size = 0;
    let mut quiet = namespace("quiet");
    quiet.presence = false;
    quiet.join_leave_events = false;
    let mut small = namespace("small");
    small.max_members = Some(2);
    config.namespaces = vec![namespace("chat"), news, quiet, small];
    config
}

pub async fn start(config: Config) -> Node {
    // Logs go to the test's output (shown for failing tests); RUST_LOG wins.
    starling::telemetry::init_logging(&config.log);
    Node::start(config).await.expect("node starts")
}

pub async fn start_default() -> Node {
    start(test_config()).await
}

pub fn token(sub: &str, rooms: &[&str]) -> String {
    token_with(sub, rooms, Duration::from_secs(3600), None)
}

pub fn token_with(
    sub: &str,
    rooms: &[&str],
    ttl: Duration,
    meta: Option<serde_json::Map<String, serde_json::Value>>,
) -> String {
    let request = MintRequest {
        sub: sub.into(),
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        ttl,
        meta,
        audience: None,
        issuer: None,
    };
    mint_token(SECRET, &request).unwrap()
}

pub fn ws_url(node: &Node) -> String {
    format!("ws://{}/ws", node.client_addr())
}

pub async fn connect_as(node: &Node, user: &str) -> (Client, Events) {
    let options = ConnectOptions::new(ws_url(node)).token(token(user, &["*"]));
    Client::connect(options).await.expect("client connects")
}

pub async fn try_connect(options: ConnectOptions) -> Result<(Client, Events), ClientError> {
    Client::connect(options).await
}

/// Waits until `check` is true, polling, or panics after `PATIENCE`.
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future` or panics after `PATIENCE`.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The next event that satisfies `pick`, skipping others.
pub async fn next_matching<T>(events: &mut Events, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    within("a matching event", async {
        loop {
            let event = events.next().await.expect("event stream ended before a match");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
}

/// Waits for the connection to close and returns the close code.
pub async fn close_code(events: &mut Events) -> Option<u16> {
    next_matching(events, |event| match event {
        Event::Closed { code, .. } => Some(code),
        _ => None,
    })
    .await
}

/// Waits for the next non-ping event.
pub async fn next_event(events: &mut Events) -> Event {
    within("an event", events.next_non_ping()).await.expect("event stream ended")
}

/// A minimal HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP request over a fresh connection and reads the whole
/// response; the test fails if none comes within `PATIENCE`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    try_http(addr, method, path, headers, body, PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no HTTP response from {addr} to {method} {path}"))
}

/// Like [`http`], but `None` when nothing answers within `limit` (a node
/// that is not listening yet, killed, or paused).
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    limit: Duration,
) -> Option<HttpResponse> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        Some(parse_http(&String::from_utf8_lossy(&raw)))
    };
    tokio::time::timeout(limit, exchange).await.ok().flatten()
}

fn parse_http(text: &str) -> HttpResponse {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    HttpResponse { status, headers, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

pub async fn api(node: &Node, method: &str, path: &str, body: &str) -> HttpResponse {
    let auth = format!("Bearer {API_KEY}");
    http(node.api_addr(), method, path, &[("Authorization", &auth)], body).await
}

/// The value of the first `/metrics` line containing every part of `series`
/// (metric name and labels), if there is one.
pub async fn metric(node: &Node, series: &[&str]) -> Option<f64> {
    let text = http(node.api_addr(), "GET", "/metrics", &[], "").await.body;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| series.iter().all(|part| line.contains(part)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Waits until the metric in `series` exists and satisfies `check`, or
/// panics after `PATIENCE`.
pub async fn wait_for_metric(node: &Node, series: &[&str], check: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let value = metric(node, series).await;
        if value.is_some_and(&check) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {series:?}; last {value:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
