//! Smoke runs of the load generator, so the tool cannot rot: a real Starling
//! node in this process (configured from `bench/config/single.toml`), the
//! raw ceiling server, and (where `npm ci` ran in `bench/peers`) the
//! Socket.IO peer, each driven through the same command-line parser and
//! code paths that `bench/compare.sh` uses. Small runs: a few hundred
//! connections for a second or two each.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use starling::auth::{mint_token, MintRequest};
use starling::{Config, Node};
use starling_bench::run_args;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

/// The tests run one at a time: the idle run reads this process's RSS, which
/// another test's connections would disturb.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench has a parent").to_path_buf()
}

async fn start_node() -> Node {
    let env = [
        ("STARLING_LISTEN__CLIENT", "127.0.0.1:0"),
        ("STARLING_LISTEN__API", "127.0.0.1:0"),
        ("STARLING_LOG__LEVEL", "error"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let config =
        Config::load(Some(&repo_root().join("bench/config/single.toml")), env).expect("bench config loads");
    Node::start(config).await.expect("node starts")
}

fn token() -> String {
    let request = MintRequest {
        sub: "bench".into(),
        rooms: vec!["*".into()],
        ttl: Duration::from_secs(3600),
        meta: None,
        audience: None,
        issuer: None,
    };
    mint_token(SECRET, &request).expect("token mints")
}

async fn bench(args: &[&str]) -> Value {
    run_args(args.iter().copied()).await.unwrap_or_else(|e| panic!("starling-bench {args:?} failed: {e:#}"))
}

/// Checks one fixed-rate fan-out step: every message reached every member
/// of its room exactly once, in order, with a latency recorded.
fn assert_clean_step(step: &Value, rooms: u64, per_room: u64, rate: u64, secs: u64) {
    let published = rooms * rate * secs;
    assert_eq!(step["published"], published, "{step}");
    assert_eq!(step["expected_deliveries"], published * per_room, "{step}");
    assert_eq!(step["received"], published * per_room, "{step}");
    for key in ["missing", "gaps", "duplicates", "reordered", "late", "disconnected_members"] {
        assert_eq!(step[key], 0, "{key} in {step}");
    }
    let latency = &step["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() > 0.0, "{step}");
    assert!(latency["p50"].as_f64() <= latency["p99"].as_f64(), "{step}");
    assert!(latency["p99"].as_f64() <= latency["max"].as_f64(), "{step}");
}

/// Guarantee: against a real Starling node, the tool measures idle memory
/// through holding child processes (each opened exactly the connections
/// asked for, and connections cost the server memory), measures fan-out
/// with no loss, duplicate or reordering at a rate a node easily carries,
/// reports a `kill -9` (of a bystander process) with every member
/// recovered, and counts join/leave and connect churn operations with no
/// failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_tool_measures_a_starling_node() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let url = format!("ws://{}/ws", node.client_addr());
    let token = token();
    let pid = std::process::id().to_string();

    let idle = bench(&[
        "idle",
        "--url",
        &url,
        "--token",
        &token,
        "--steps",
        "100,300",
        "--server-pids",
        &pid,
        "--shard-size",
        "200",
        "--settle-secs",
        "1",
        "--exe",
        env!("CARGO_BIN_EXE_starling-bench"),
    ])
    .await;
    let counts: Vec<u64> =
        idle["steps"].as_array().unwrap().iter().map(|s| s["connections"].as_u64().unwrap()).collect();
    assert_eq!(counts, [100, 300], "{idle}");
    assert!(idle["bytes_per_connection_slope"].as_f64().unwrap() > 0.0, "{idle}");

    let fanout = bench(&[
        "fanout",
        "--url",
        &url,
        "--token",
        &token,
        "--rooms",
        "4",
        "--members-per-room",
        "25",
        "--rates",
        "20,40",
        "--duration-secs",
        "1",
        "--grace-secs",
        "5",
        "--server-pids",
        &pid,
    ])
    .await;
    let steps = fanout["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{fanout}");
    assert_clean_step(&steps[0], 4, 25, 20, 1);
    assert_clean_step(&steps[1], 4, 25, 40, 1);
    assert!(steps[1]["server_cpu_seconds"].as_f64().unwrap() >= 0.0, "{fanout}");

    let mut bystander = Command::new("sleep").arg("30").stdout(Stdio::null()).spawn().expect("sleep runs");
    let bystander_pid = bystander.id().to_string();
    let killed = bench(&[
        "fanout",
        "--url",
        &url,
        "--token",
        &token,
        "--rooms",
        "2",
        "--members-per-room",
        "10",
        "--rates",
        "50",
        "--duration-secs",
        "2",
        "--grace-secs",
        "5",
        "--kill-pid",
        &bystander_pid,
        "--kill-after-secs",
        "0.5",
    ])
    .await;
    let status = bystander.wait().expect("sleep reaped");
    assert!(!status.success(), "the bystander was killed, not left to finish");
    let step = &killed["steps"][0];
    assert_clean_step(step, 2, 10, 50, 2);
    assert_eq!(step["kill"]["members_unrecovered"], 0, "{step}");
    assert!(step["kill"]["recovery_ms"].as_f64().is_some(), "{step}");

    let joins = bench(&[
        "joins",
        "--url",
        &url,
        "--token",
        &token,
        "--conns",
        "20",
        "--joins-per-conn",
        "5",
        "--leave",
    ])
    .await;
    assert_eq!(joins["operations"], 200, "{joins}");
    assert_eq!(joins["failed"], 0, "{joins}");

    let churn =
        bench(&["churn", "--url", &url, "--token", &token, "--workers", "4", "--duration-secs", "0.5"]).await;
    assert!(churn["connections"].as_u64().unwrap() > 0, "{churn}");
    assert_eq!(churn["failed"], 0, "{churn}");

    node.shutdown().await;
}

/// Guarantee: the raw ceiling server speaks enough of the wire contract
/// for the tool, and delivers every message once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_ceiling_server_delivers_everything() {
    let _serial = SERIAL.lock().await;
    let addr = starling_bench::raw::spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("ws://{addr}/ws");
    let fanout = bench(&[
        "fanout",
        "--url",
        &url,
        "--rooms",
        "4",
        "--members-per-room",
        "25",
        "--rates",
        "20",
        "--duration-secs",
        "1",
    ])
    .await;
    assert_clean_step(&fanout["steps"][0], 4, 25, 20, 1);
    let joins = bench(&["joins", "--url", &url, "--conns", "10", "--joins-per-conn", "5", "--leave"]).await;
    assert_eq!(joins["operations"], 100, "{joins}");
}

/// Guarantee: the tool's Socket.IO v4 client talks to the real Socket.IO
/// 4.8 peer (Engine.IO open, namespace connect, acknowledged join/leave,
/// broadcast events, ping/pong) and sees every message once and in order.
/// Needs `npm ci` in bench/peers (done by .ci/run); elsewhere it is skipped
/// with a message, but under CI=true a missing install fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_peer_delivers_everything() {
    let _serial = SERIAL.lock().await;
    let peers = repo_root().join("bench/peers");
    if !peers.join("node_modules/socket.io").is_dir() {
        assert!(std::env::var("CI").is_err(), "CI must run `npm ci` in bench/peers");
        eprintln!("skipped: run `npm ci` in bench/peers to test the Socket.IO peer");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = tokio::process::Command::new("node")
        .arg(peers.join("socketio-server.js"))
        .env("PORT", port.to_string())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    // The peer says when it listens.
    let stderr = server.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let line =
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("peer starts").unwrap();
    assert!(line.as_deref().unwrap_or("").contains("listening"), "{line:?}");
    let url = format!("ws://127.0.0.1:{port}");
    let pid = server.id().unwrap().to_string();
    let fanout = bench(&[
        "fanout",
        "--protocol",
        "socketio",
        "--url",
        &url,
        "--rooms",
        "4",
        "--members-per-room",
        "25",
        "--rates",
        "20",
        "--duration-secs",
        "1",
        "--grace-secs",
        "5",
        "--server-pids",
        &pid,
    ])
    .await;
    assert_clean_step(&fanout["steps"][0], 4, 25, 20, 1);
    let joins = bench(&[
        "joins",
        "--protocol",
        "socketio",
        "--url",
        &url,
        "--conns",
        "10",
        "--joins-per-conn",
        "5",
        "--leave",
    ])
    .await;
    assert_eq!(joins["operations"], 100, "{joins}");
    assert_eq!(joins["failed"], 0, "{joins}");
    server.kill().await.unwrap();
}
