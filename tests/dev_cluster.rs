//! `scripts/dev-cluster.sh` as a developer runs it: one command, three
//! nodes that form one cluster, every URL, the API key and a working token
//! printed, the demo page on every node, and Ctrl-C stopping them all.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::processes::{eventually, http_get, BIN};
use common::*;
use starling_client::ConnectOptions;

/// The script with its output collected; stopped with SIGTERM (so it stops
/// its nodes) when dropped.
struct Script {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn start(base: u16) -> Script {
        let mut child = Command::new("bash")
            .arg("scripts/dev-cluster.sh")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DEV_CLUSTER_BIN", BIN)
            .env("DEV_CLUSTER_BASE_PORT", base.to_string())
            .env_remove("DEV_CLUSTER_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run bash scripts/dev-cluster.sh");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let outputs: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for output in outputs {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Script { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("-TERM");
            let _ = self.child.wait();
        }
    }
}

/// A base port whose twelve ports (base+1..3, +101..103, +201..203,
/// +301..303) are free now.
fn free_base() -> u16 {
    let offsets = [1, 2, 3, 101, 102, 103, 201, 202, 203, 301, 302, 303];
    loop {
        let base = 20_000 + 100 * (rand::random::<u16>() % 400);
        let free = offsets.iter().all(|offset| {
            let addr = SocketAddr::from(([127, 0, 0, 1], base + offset));
            TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok()
        });
        if free {
            return base;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_cluster_script_starts_three_nodes_that_form_one_cluster_and_ctrl_c_stops_them() {
    let base = free_base();
    let script = Script::start(base);
    let lines = eventually(
        "the script prints the cluster's URLs and credentials",
        Duration::from_secs(90),
        async || {
            let lines = script.lines();
            if lines.iter().any(|l| l.contains("Sample token")) {
                Ok(lines)
            } else {
                Err(format!("{lines:#?}"))
            }
        },
    )
    .await;
    let value = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:#?}"))
    };
    let api_key = value("API key:");
    let token = value("Sample token (alice, chat:*, 24h):");
    let api = |n: u16| SocketAddr::from(([127, 0, 0, 1], base + 100 + n));
    for n in 1..=3 {
        let printed = format!("WebSocket ws://127.0.0.1:{}/ws", base + n);
        assert!(lines.iter().any(|l| l.contains(&printed)), "{printed} in {lines:#?}");
        assert!(lines.iter().any(|l| l.contains(&format!("Demo chat http://{}/", api(n)))), "{lines:#?}");
    }

    // Every node sees the same three-node cluster with one leader.
    for n in 1..=3 {
        let (status, view) = http_get(api(n), "/api/cluster", &api_key).await.expect("node answers");
        assert_eq!(status, 200, "{view}");
        let mut names: Vec<&str> =
            view["nodes"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["node-1", "node-2", "node-3"], "{view}");
        assert!(names.contains(&view["leader"].as_str().unwrap_or_default()), "{view}");
        let page = http(api(n), "GET", "/", &[], "").await;
        assert_eq!(page.status, 200, "the demo page on node-{n}");
    }

    // Each node printed its banner; openraft logs nothing below warn.
    for n in 1..=3 {
        let log_path = lines
            .iter()
            .find_map(|l| {
                l.strip_prefix(&format!("  node-{n} "))?.rsplit_once(" log ").map(|(_, p)| p.to_string())
            })
            .unwrap_or_else(|| panic!("no log path of node-{n} in {lines:#?}"));
        let log = std::fs::read_to_string(&log_path).unwrap();
        let banner = format!("Starling node `node-{n}` is running (version {}", env!("CARGO_PKG_VERSION"));
        assert!(log.contains(&banner) && log.contains("  Peers:      gossip seeds "), "{log}");
        let chatty =
            log.lines().filter(|l| l.contains("openraft") && (l.contains(" INFO ") || l.contains(" DEBUG ")));
        assert_eq!(chatty.count(), 0, "openraft below warn: {log}");
    }

    // The printed token works on any node: alice joins through node-3.
    let url = format!("ws://127.0.0.1:{}/ws", base + 3);
    let (client, _events) = try_connect(ConnectOptions::new(&url).token(&token)).await.unwrap();
    assert_eq!(client.welcome().user, "alice");
    client.join("chat:lobby", None).await.unwrap();

    // Ctrl-C: the script stops every node and exits.
    script.signal("-INT");
    let mut script = script;
    eventually("the script exits", Duration::from_secs(20), async || {
        script.child.try_wait().unwrap().ok_or("still running".to_string())
    })
    .await;
    for n in 1..=3 {
        assert!(TcpStream::connect(api(n)).is_err(), "node-{n} still listens after Ctrl-C");
    }
}
