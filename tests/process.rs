//! The real `starling` binary as a user runs it: config checking, token
//! minting, dev mode, and SIGTERM draining.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use common::processes::{eventually, NodeProcess, NodeSpec, Signal, BIN};
use common::*;
use serde_json::json;
use starling_client::{ConnectOptions, Event};

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

/// Starts the binary with `args` (and `config`, or dev mode on free ports
/// without one) and waits for its "node started" line: the process, and the
/// client and API addresses it bound.
async fn start(args: &[&str], config: Option<&PathBuf>) -> (NodeProcess, SocketAddr, SocketAddr) {
    let mut spec = NodeSpec::new("proc-node", config.cloned());
    spec.args = args.iter().map(|arg| arg.to_string()).collect();
    if config.is_none() {
        spec.env = [
            ("STARLING_LISTEN__CLIENT", "127.0.0.1:0"),
            ("STARLING_LISTEN__API", "127.0.0.1:0"),
            ("STARLING_LOG__FORMAT", "json"),
        ]
        .map(|(var, value)| (var.to_string(), value.to_string()))
        .to_vec();
    }
    let mut node = NodeProcess::spawn(&spec);
    let started = node.wait_started().await;
    let addr = |key: &str| started[key].as_str().unwrap().parse().unwrap();
    let (client, api) = (addr("client"), addr("api"));
    (node, client, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_with_1012_and_exits_zero() {
    let path = temp_file("node.toml", CONFIG);
    let (mut running, client_addr, _) = start(&["serve"], Some(&path)).await;
    let url = format!("ws://{client_addr}/ws");
    let mut clients = Vec::new();
    for i in 0..3 {
        let options = ConnectOptions::new(&url).token(token(&format!("u{i}"), &["*"]));
        let (client, events) = try_connect(options).await.unwrap();
        client.join("chat:bye", None).await.unwrap();
        clients.push((client, events));
    }
    let reply = clients[0].0.publish("chat:bye", json!("before")).await.unwrap();
    running.signal(Signal::Term);
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
    let exit = running.wait_exit(PATIENCE).await;
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_working_credentials_and_serves_the_demo_page() {
    let (running, client_addr, api_addr) = start(&[], None).await;
    let lines = eventually("dev mode prints its credentials", PATIENCE, async || {
        let lines = running.log_lines();
        let printed = |prefix: &str| lines.iter().any(|l| l.trim().starts_with(prefix));
        if printed("API key:") && printed("Sample token (alice, chat:*, 1h):") {
            Ok(lines)
        } else {
            Err(format!("{lines:#?}"))
        }
    })
    .await;
    let find = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:#?}"))
    };
    let api_key = find("API key:");
    let token = find("Sample token (alice, chat:*, 1h):");
    let url = format!("ws://{}/ws", client_addr);
    let (client, _events) = try_connect(ConnectOptions::new(&url).token(&token)).await.unwrap();
    assert_eq!(client.welcome().user, "alice");
    client.join("chat:lobby", None).await.unwrap();
    let auth = format!("Bearer {api_key}");
    let cluster = http(api_addr, "GET", "/api/cluster", &[("Authorization", &auth)], "").await;
    assert_eq!(cluster.status, 200);
    let page = http(api_addr, "GET", "/", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&format!("ws://{}/ws", client_addr)), "the page knows the WebSocket URL");
    let dev_token = http(api_addr, "GET", "/dev/token?user=bob", &[], "").await.json();
    let (bob, _) = try_connect(
        ConnectOptions::new(&url)
            .token(dev_token["token"].as_str().unwrap())
            .origin(format!("http://{}", api_addr)),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bob.welcome().user, "bob");
}

#[test]
fn the_token_command_refuses_a_secret_the_server_would_refuse() {
    let output = Command::new(BIN).args(["token", "--secret", "abc", "--sub", "carol"]).output().unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no token is printed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: --secret must be at least 32 bytes"), "{stderr}");
}

#[test]
fn config_errors_are_one_message_even_with_rust_backtrace_set() {
    let path = temp_file("bad.toml", "[limits]\nmax_connections = 0\n[[namespaces]]\nname = \"chat\"\n");
    let output =
        Command::new(BIN).args(["check-config"]).arg(&path).env("RUST_BACKTRACE", "1").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end(), "error: config key `limits.max_connections`: must be greater than 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_from_a_config_file_prints_a_banner_and_pipes_logs_without_terminal_colours() {
    let path = temp_file("node.toml", CONFIG);
    let mut spec = NodeSpec::new("proc-node", Some(path));
    spec.env = vec![("STARLING_LOG__FORMAT".to_string(), "pretty".to_string())];
    let running = NodeProcess::spawn(&spec);
    let lines = eventually("the node logs that it started", PATIENCE, async || {
        let lines = running.log_lines();
        if lines.iter().any(|l| l.contains("node started")) {
            Ok(lines)
        } else {
            Err(format!("{lines:#?}"))
        }
    })
    .await;
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "ANSI escapes in piped logs: {lines:#?}");
    let banner = eventually("the node prints its banner", PATIENCE, async || {
        let lines = running.log_lines();
        lines
            .iter()
            .any(|l| {
                l.starts_with(&format!(
                    "Starling node `proc-node` is running (version {},",
                    env!("CARGO_PKG_VERSION")
                ))
            })
            .then_some(())
            .ok_or(format!("{lines:#?}"))
    });
    banner.await;
}

/// Runs `starling check-config` on `text` with `env`: exit success, and
/// stderr.
fn check_config(text: &str, env: &[(&str, &str)]) -> (bool, String) {
    let path = temp_file("check.toml", text);
    let output = Command::new(BIN)
        .args(["check-config"])
        .arg(&path)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).trim_end().to_string())
}

#[test]
fn check_config_refuses_a_config_without_namespaces_or_apps() {
    let (ok, stderr) = check_config("[node]\nname = \"n\"\n", &[]);
    assert!(!ok);
    assert!(stderr.starts_with("error: config key `namespaces`: no namespace is configured"), "{stderr}");
    let (ok, stderr) = check_config("[[apps]]\nid = \"a\"\nkey = \"app-key\"\nsecret = \"s\"\n", &[]);
    assert!(ok, "a Pusher app alone is enough: {stderr}");
}

#[test]
fn check_config_reports_toml_syntax_errors_with_line_and_column() {
    let (ok, stderr) = check_config("[node]\nname = \"n\"\nport = = 3\n", &[]);
    assert!(!ok);
    assert!(stderr.contains("is not valid TOML at line 3, column 8: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn check_config_names_the_environment_variable_at_fault() {
    let config = "[[namespaces]]\nname = \"chat\"\n";
    let (ok, stderr) = check_config(config, &[("STARLING_LISTEN__CLIENT", "localhost:x")]);
    assert!(!ok);
    assert!(
        stderr
            .starts_with("error: environment variable STARLING_LISTEN__CLIENT (config key `listen.client`)"),
        "{stderr}"
    );
    let (ok, stderr) = check_config(config, &[("STARLING_LISTEN__CLIENT", "0.0.0.0:7601")]);
    assert!(!ok);
    assert!(stderr.ends_with("(listen.client is set by STARLING_LISTEN__CLIENT)"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_one_clean_line() {
    let output = Command::new(BIN)
        .args(["check-config", "/nonexistent/starling.toml"])
        .env("RUST_BACKTRACE", "full")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: cannot read config file /nonexistent/starling.toml: No such file or directory (os error 2)",
        "the cause once, no backtrace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_on_localhost_when_the_config_says_localhost() {
    let text = CONFIG.replace("127.0.0.1:0", "localhost:0");
    assert!(text.contains("client = \"localhost:0\""));
    let path = temp_file("node.toml", &text);
    let (_running, client_addr, api_addr) = start(&["serve"], Some(&path)).await;
    assert!(client_addr.ip().is_loopback() && api_addr.ip().is_loopback(), "{client_addr} {api_addr}");
    let health = http(api_addr, "GET", "/healthz", &[], "").await;
    assert_eq!(health.status, 200);
}
