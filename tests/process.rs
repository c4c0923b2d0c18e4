//! The real `starling` binary as a user runs it: config checking, token
//! minting, dev mode, and SIGTERM draining.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use starling_client::{ConnectOptions, Event};

const BIN: &str = env!("CARGO_BIN_EXE_starling");

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("starling-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

const CONFIG: &str = r#"
[node]
name = "proc-node"
[listen]
client = "127.0.0.1:0"
api = "127.0.0.1:0"
[auth]
jwt_hs256_secret = "test-secret-test-secret-test-secret!"
api_key = "test-api-key-0123456789"
[shutdown]
drain_ms = 300
deadline_ms = 5000
[log]
format = "json"
level = "info"
[[namespaces]]
name = "chat"
"#;

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let path = temp_file("node.toml", CONFIG);
    let output = Command::new(BIN).args(["check-config"]).arg(&path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("name = \"proc-node\""), "{text}");
    assert!(text.contains("read_buffer_bytes = 4096"), "defaults are shown: {text}");
    assert!(!text.contains("test-secret") && !text.contains("test-api-key"), "{text}");
    assert!(text.contains("********"));
}

#[test]
fn a_bad_config_fails_with_the_key_named() {
    let path = temp_file("bad.toml", "[limits]\nmax_conections = 5\n");
    let output = Command::new(BIN).args(["check-config"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_conections"), "{stderr}");

    let output = Command::new(BIN)
        .args(["check-config"])
        .arg(temp_file("ok.toml", CONFIG))
        .env("STARLING_LIMITS__MAX_CONNECTIONS", "lots")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("limits.max_connections"));
}

#[test]
fn the_token_command_mints_a_token_the_server_accepts() {
    let output = Command::new(BIN)
        .args(["token", "--secret", SECRET, "--sub", "carol", "--rooms", "chat:*", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let config = starling::config::AuthConfig { jwt_hs256_secret: Some(SECRET.into()), ..Default::default() };
    let claims = starling::auth::JwtVerifier::new(&config).unwrap().verify(&token).unwrap();
    assert_eq!(claims.sub, "carol");
    assert_eq!(claims.rooms, vec!["chat:*"]);
}

/// A running binary; killed on drop if a test fails half way.
struct Running {
    child: Child,
    client: SocketAddr,
    api: SocketAddr,
    stdout: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary and waits (bounded) for its "node started" log line.
fn spawn(args: &[&str], config: Option<&PathBuf>) -> Running {
    let mut command = Command::new(BIN);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).env_remove("RUST_LOG");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    } else {
        // Dev mode on free ports.
        command
            .env("STARLING_LISTEN__CLIENT", "127.0.0.1:0")
            .env("STARLING_LISTEN__API", "127.0.0.1:0")
            .env("STARLING_LOG__FORMAT", "json");
    }
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the test stops listening, so the node never
        // writes into a closed pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = loop {
        let line = rx.recv_timeout(PATIENCE).expect("the node logs that it started");
        let Ok(value) = serde_json::from_str::<Value>(&line) else { continue };
        if value["message"] == json!("node started") {
            break value;
        }
    };
    let addr = |key: &str| started[key].as_str().unwrap().parse().unwrap();
    let (client, api) = (addr("client"), addr("api"));
    Running { child, client, api, stdout: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_with_1012_and_exits_zero() {
    let path = temp_file("node.toml", CONFIG);
    let mut running = spawn(&["serve"], Some(&path));
    let url = format!("ws://{}/ws", running.client);
    let mut clients = Vec::new();
    for i in 0..3 {
        let options = ConnectOptions::new(&url).token(token(&format!("u{i}"), &["*"]));
        let (client, events) = try_connect(options).await.unwrap();
        client.join("chat:bye", None).await.unwrap();
        clients.push((client, events));
    }
    let reply = clients[0].0.publish("chat:bye", json!("before")).await.unwrap();
    let status = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    for (_, events) in clients.iter_mut() {
        let mut delivered = false;
        let code = loop {
            match next_event(events).await {
                Event::Message(m) if m.offset == reply.offset => delivered = true,
                Event::Closed { code, .. } => break code,
                _ => {}
            }
        };
        assert!(delivered, "an accepted publish was lost in the drain");
        assert_eq!(code, Some(1012));
    }
    let exit = within("the process exits", async {
        loop {
            if let Some(status) = running.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(exit.success(), "exit status {exit:?}");
    let _ = running.stdout.len();
    let _ = running.api;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_working_credentials_and_serves_the_demo_page() {
    let mut running = spawn(&[], None);
    let stdout = running.child.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout).lines().take(8).map_while(Result::ok).collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:#?}"))
    };
    let api_key = find("API key:");
    let token = find("Sample token (alice, chat:*, 1h):");
    let url = format!("ws://{}/ws", running.client);
    let (client, _events) = try_connect(ConnectOptions::new(&url).token(&token)).await.unwrap();
    assert_eq!(client.welcome().user, "alice");
    client.join("chat:lobby", None).await.unwrap();
    let auth = format!("Bearer {api_key}");
    let cluster = http(running.api, "GET", "/api/cluster", &[("Authorization", &auth)], "").await;
    assert_eq!(cluster.status, 200);
    let page = http(running.api, "GET", "/", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&format!("ws://{}/ws", running.client)), "the page knows the WebSocket URL");
    let dev_token = http(running.api, "GET", "/dev/token?user=bob", &[], "").await.json();
    let (bob, _) = try_connect(
        ConnectOptions::new(&url)
            .token(dev_token["token"].as_str().unwrap())
            .origin(format!("http://{}", running.api)),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bob.welcome().user, "bob");
    running.stdout = lines;
}
