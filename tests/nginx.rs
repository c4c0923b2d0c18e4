//! The shipped nginx config (`deploy/nginx/starling.conf`) run by a real
//! nginx in front of a real 3-node cluster: WebSocket traffic passes both
//! ways, a client with an affinity key (query parameter or cookie) keeps
//! landing on one node, distinct keys spread over the nodes, the access log
//! never holds a token, and when a client's node is killed (SIGKILL) the
//! client reconnects through nginx to a live node and stays there.
//!
//! nginx runs as the current user from a temp directory with a main config
//! written here that includes the shipped file as it is; the test supplies
//! only the two site files the shipped config includes
//! (`starling/upstream.conf`: the nodes; `starling/server.conf`: the listen
//! port and access log). nginx runs with `master_process off` so that killing
//! its one process on drop leaves no worker behind.
//!
//! The cluster's seeds are `localhost:PORT` (a host name, as in compose and
//! Kubernetes), so forming the cluster also proves that names in
//! `cluster.seeds` are resolved.
//!
//! Without nginx on the machine the tests print a message and pass, unless
//! `CI_REQUIRE_NGINX=1` (set by `.ci/run`), which makes a missing
//! nginx a failure.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::processes::{eventually, ProcessCluster, PATIENCE};
use futures_util::StreamExt;
use serde_json::{json, Value};
use starling_client::{Client, ConnectOptions, Event, Events};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Where nginx may be when it is not on PATH (Debian puts it in /usr/sbin,
/// which a non-root PATH often lacks).
const NGINX_PATHS: &[&str] = &["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"];

fn find_nginx() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain(NGINX_PATHS.iter().map(PathBuf::from)).find(|p| p.is_file())
}

/// nginx, or `None` (with a message) when it is missing and not required.
fn nginx_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_nginx();
    if found.is_none() {
        assert!(
            std::env::var("CI_REQUIRE_NGINX").as_deref() != Ok("1"),
            "CI_REQUIRE_NGINX=1 but nginx is not installed"
        );
        eprintln!("{test}: nginx is not installed; skipping (install the `nginx` package to run it)");
    }
    found
}

/// A running nginx with the shipped config in front of `upstreams`.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    async fn start(binary: &Path, test: &str, upstreams: &[SocketAddr]) -> Nginx {
        let dir = std::env::temp_dir().join(format!("starling-nginx-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("starling")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/starling.conf");
        let d = dir.display();
        let main = format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{}}\nhttp {{\n\
             client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\nfastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\naccess_log off;\n\
             include {};\n}}\n",
            shipped.display()
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let servers: String =
            upstreams.iter().map(|addr| format!("server {addr} max_fails=1 fail_timeout=10s;\n")).collect();
        std::fs::write(dir.join("starling/upstream.conf"), servers).unwrap();
        let server = format!("listen 127.0.0.1:{port};\naccess_log {d}/access.log starling_redacted;\n");
        std::fs::write(dir.join("starling/server.conf"), server).unwrap();
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let error_log = || std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nginx exited with {status}:\n{}", error_log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen:\n{}", error_log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Nginx { child, dir, port }
    }

    fn url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws{query}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("---- nginx error.log (last lines, newest first) ----\n{}", tail.join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster formed with host-name seeds, and nginx in front of its client listeners.
async fn cluster_behind_nginx(nginx: &Path, test: &str) -> (ProcessCluster, Nginx) {
    let cluster = ProcessCluster::start(test, "localhost").await;
    cluster.wait_formed().await;
    let upstreams: Vec<SocketAddr> = (0..3).map(|i| cluster.client_addr(i)).collect();
    let proxy = Nginx::start(nginx, test, &upstreams).await;
    (cluster, proxy)
}

/// Connects through nginx with `?affinity=KEY` (no key: `None`).
async fn connect_via(
    proxy: &Nginx,
    cluster: &ProcessCluster,
    user: &str,
    affinity: Option<&str>,
) -> Result<(Client, Events), String> {
    let query = affinity.map(|key| format!("?affinity={key}")).unwrap_or_default();
    let options = ConnectOptions::new(proxy.url(&query))
        .token(cluster.token(user))
        .reply_timeout(Duration::from_secs(5));
    Client::connect(options).await.map_err(|e| e.to_string())
}

/// The node a connection through nginx with affinity `key` lands on.
async fn node_for(proxy: &Nginx, cluster: &ProcessCluster, key: &str) -> String {
    let (client, _events) =
        connect_via(proxy, cluster, "probe", Some(key)).await.expect("connects via nginx");
    let node = client.welcome().node.clone();
    client.close();
    node
}

/// The node of an upgrade through nginx that carries the key in a
/// `starling_affinity` cookie, as a browser sends it.
async fn node_for_cookie(proxy: &Nginx, cluster: &ProcessCluster, key: &str) -> String {
    let mut request = proxy.url("").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", HeaderValue::from_str(&format!("theme=dark; starling_affinity={key}")).unwrap());
    let bearer = format!("Bearer {}", cluster.token("cookie-user"));
    headers.insert("authorization", HeaderValue::from_str(&bearer).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("cookie client connects");
    let first = tokio::time::timeout(PATIENCE, ws.next()).await.expect("welcome in time").unwrap().unwrap();
    let WsMessage::Text(text) = first else { panic!("not a text frame: {first:?}") };
    let welcome: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let _ = ws.close(None).await;
    welcome["node"].as_str().unwrap().to_string()
}

/// Guarantees: through the shipped nginx config, (1) a client with an
/// affinity key lands on the same node on every reconnect, by query
/// parameter or by cookie, and a client with no key stays on one node too
/// (its address is the key); (2) distinct keys spread over more than one
/// node; (3) join, publish and message delivery work across nodes through
/// nginx; (4) a `?token=` never reaches nginx's access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_websocket_traffic_and_keeps_each_client_on_one_node() {
    let Some(nginx) = nginx_or_skip("nginx_passes_websocket_traffic") else { return };
    let (cluster, proxy) = cluster_behind_nginx(&nginx, "sticky").await;

    let keys: Vec<String> = (0..12).map(|n| format!("client-{n}")).collect();
    let mut first = Vec::new();
    for key in &keys {
        first.push(node_for(&proxy, &cluster, key).await);
    }
    let spread: BTreeSet<&String> = first.iter().collect();
    assert!(spread.len() > 1, "12 distinct keys all landed on {spread:?}");

    for (key, node) in keys.iter().zip(&first).take(4) {
        for _ in 0..3 {
            assert_eq!(&node_for(&proxy, &cluster, key).await, node, "key {key} moved between reconnects");
        }
        assert_eq!(&node_for_cookie(&proxy, &cluster, key).await, node, "cookie {key} lands elsewhere");
    }

    let mut keyless = BTreeSet::new();
    for _ in 0..3 {
        let (client, _events) = connect_via(&proxy, &cluster, "anon", None).await.unwrap();
        keyless.insert(client.welcome().node.clone());
        client.close();
    }
    assert_eq!(keyless.len(), 1, "a client without a key moved between nodes: {keyless:?}");

    // Two members on different nodes, both through nginx; the reader sends
    // its token in the query, as browsers do.
    let reader_key = &keys[0];
    let writer_key =
        keys.iter().zip(&first).find(|(_, node)| **node != first[0]).map(|(key, _)| key).unwrap();
    let options = ConnectOptions::new(proxy.url(&format!("?affinity={reader_key}")))
        .token(cluster.token("reader"))
        .token_in_query(true);
    let (reader, mut reader_events) = Client::connect(options).await.expect("reader connects via nginx");
    let (writer, _writer_events) = connect_via(&proxy, &cluster, "writer", Some(writer_key)).await.unwrap();
    assert_ne!(reader.welcome().node, writer.welcome().node);
    reader.join("chat:nginx", None).await.expect("reader joins");
    writer.join("chat:nginx", None).await.expect("writer joins");
    let published = writer.publish("chat:nginx", json!({"text": "through nginx"})).await.expect("publish");
    let message = next_message(&mut reader_events).await;
    assert_eq!(message.data, json!({"text": "through nginx"}));
    assert_eq!((message.epoch, message.offset), (published.epoch, published.offset));

    let token_in_query = cluster.token("reader");
    reader.close();
    writer.close();
    // nginx writes a WebSocket's access log line when it closes.
    let log = eventually("nginx logs the closed connections", PATIENCE, async || {
        let log = proxy.access_log();
        let upgrades = log.lines().filter(|line| line.contains("GET /ws ") && line.contains(" 101 ")).count();
        if upgrades < 20 {
            return Err(format!("{upgrades} upgrades logged so far"));
        }
        Ok(log)
    })
    .await;
    assert!(!log.contains("token="), "the access log holds a query token:\n{log}");
    assert!(!log.contains(&token_in_query[..20]), "the access log holds a token:\n{log}");
}

/// The next `message` event, skipping others.
async fn next_message(events: &mut Events) -> starling_client::Message {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.next_non_ping().await.expect("events end before a message") {
                Event::Message(message) => return message,
                _ => continue,
            }
        }
    })
    .await
    .expect("a message in time")
}

/// Guarantee: when the node a client is pinned to dies (SIGKILL), the
/// client's connection ends, and its first reconnect with the same key
/// through nginx succeeds on a live node, where it can join and exchange messages; the
/// key then stays on that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_node_is_killed_reconnects_through_nginx_to_a_live_node() {
    let Some(nginx) = nginx_or_skip("a_client_whose_node_is_killed") else { return };
    let (mut cluster, proxy) = cluster_behind_nginx(&nginx, "failover").await;

    let key = "failover-client";
    let (client, mut events) = connect_via(&proxy, &cluster, "mover", Some(key)).await.unwrap();
    let doomed = client.welcome().node.clone();
    client.join("chat:failover", None).await.expect("joins before the kill");

    cluster.kill(cluster.index_of(&doomed));
    tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            if matches!(event, Event::Closed { .. }) {
                return;
            }
        }
    })
    .await
    .expect("the client sees its connection end");

    // One attempt: nginx finds the dead node refusing and passes the upgrade
    // on (`proxy_next_upstream`), so the client never sees an error.
    let (moved, mut moved_events) =
        connect_via(&proxy, &cluster, "mover", Some(key)).await.expect("the first reconnect succeeds");
    let home = moved.welcome().node.clone();
    assert_ne!(home, doomed, "reconnected to the killed node");
    // Joins answer `unavailable` while a new leader is elected (if the killed node led).
    eventually("the moved client joins", PATIENCE, async || {
        moved.join("chat:failover", None).await.map_err(|e| e.to_string())
    })
    .await;

    // A second client through nginx on the other live node publishes to it.
    let mut other = None;
    for n in 0..50 {
        let other_key = format!("other-{n}");
        let (candidate, _events) = connect_via(&proxy, &cluster, "other", Some(&other_key)).await.unwrap();
        if candidate.welcome().node != home {
            other = Some(candidate);
            break;
        }
        candidate.close();
    }
    let other = other.expect("some key lands on the other live node");
    assert_ne!(other.welcome().node, doomed);
    other.join("chat:failover", None).await.expect("other joins");
    // Publishes answer `unavailable` until the room, if the killed node owned
    // it, has a new owner.
    eventually("a publish after the kill is accepted", PATIENCE, async || {
        other.publish("chat:failover", json!("after the kill")).await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(next_message(&mut moved_events).await.data, json!("after the kill"));

    for _ in 0..3 {
        assert_eq!(node_for(&proxy, &cluster, key).await, home, "the key left its new node");
    }
}
