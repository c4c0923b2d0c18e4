//! A 3-node cluster of real `starling` processes for tests that put
//! something in front of it (nginx): the example config files
//! (`config/cluster/node-N.toml`) with only the data dir, the listen
//! addresses (free loopback ports) and the seeds overridden by `STARLING_`
//! variables. Seeds are given as `HOST:PORT` with a host name the caller
//! picks, so a test can prove that names (as in Kubernetes and compose) are
//! resolved. Every process is killed when the cluster is dropped.
//!
//! Include it with `#[path = "common/processes.rs"] mod processes;`.
//! `tests/cluster_process.rs` has its own, richer harness for fault tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use starling::auth::{mint_token, MintRequest};
use starling::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_starling");
/// How long a wait for a cluster condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// The sum of a Prometheus counter's samples whose labels contain `labels`
/// (e.g. `reason="tls"`), read from `/metrics`; 0 when absent.
pub async fn metric(addr: SocketAddr, api_key: &str, name: &str, labels: &str) -> f64 {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        // HTTP/1.0: no chunked body to undo.
        let request = format!("GET /metrics HTTP/1.0\r\nAuthorization: Bearer {api_key}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        Some(String::from_utf8_lossy(&raw).into_owned())
    };
    let text = tokio::time::timeout(HTTP_TIMEOUT, exchange).await.ok().flatten().unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How long one HTTP exchange with a node may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// The ports one node listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub client: u16,
    pub api: u16,
    pub peer: u16,
    pub gossip: u16,
}

/// Free loopback ports for `count` nodes: every socket is held until all are
/// chosen, so none repeats, then all are released for the nodes to bind.
pub fn free_ports(count: usize) -> Vec<Ports> {
    let tcp: Vec<TcpListener> =
        (0..count * 3).map(|_| TcpListener::bind("127.0.0.1:0").expect("free TCP port")).collect();
    let udp: Vec<UdpSocket> =
        (0..count).map(|_| UdpSocket::bind("127.0.0.1:0").expect("free UDP port")).collect();
    let tcp_port = |i: usize| tcp[i].local_addr().unwrap().port();
    (0..count)
        .map(|n| Ports {
            client: tcp_port(3 * n),
            api: tcp_port(3 * n + 1),
            peer: tcp_port(3 * n + 2),
            gossip: udp[n].local_addr().unwrap().port(),
        })
        .collect()
}

/// Polls `check` until it returns `Ok`, or fails the test after `limit`
/// with the last reason it gave.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let reason = match check().await {
            Ok(value) => return value,
            Err(reason) => reason,
        };
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}: {reason}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `GET` with a bearer key; `None` when nothing answers in time.
pub async fn http_get(addr: SocketAddr, path: &str, api_key: &str) -> Option<(u16, Value)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {api_key}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange).await.ok().flatten()
}

/// One running `starling` process; its stderr is drained into `log`.
struct NodeProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    fn logged(&self, message: &str) -> bool {
        self.log.lock().unwrap().iter().any(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|value| value["message"].as_str() == Some(message))
        })
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(lines)..].join("\n")
    }
}

/// Three `starling` processes on loopback.
pub struct ProcessCluster {
    /// Holds every node's data dir; removed on drop.
    dir: PathBuf,
    pub names: Vec<String>,
    pub ports: Vec<Ports>,
    /// `None` once a node has been killed.
    nodes: Vec<Option<NodeProcess>>,
    jwt_secret: String,
    pub api_key: String,
    /// `cluster.seeds` as the nodes were given it (a TOML array).
    pub seeds: String,
}

fn example_config(n: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/cluster/node-{n}.toml"))
}

impl ProcessCluster {
    /// Starts three nodes at once (as compose or a Parallel StatefulSet
    /// does), with `cluster.seeds` = `seed_host:GOSSIP_PORT` of each, and
    /// waits until every one has bound its listeners.
    pub async fn start(test: &str, seed_host: &str) -> ProcessCluster {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("starling-{test}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let example =
            Config::load(Some(&example_config(1)), std::iter::empty()).expect("example config loads");
        let ports = free_ports(3);
        let seeds: Vec<String> = ports.iter().map(|p| format!("\"{seed_host}:{}\"", p.gossip)).collect();
        let seeds = format!("[{}]", seeds.join(","));
        let mut cluster = ProcessCluster {
            dir,
            names: (1..=3).map(|n| format!("node-{n}")).collect(),
            ports,
            nodes: Vec::new(),
            jwt_secret: example.auth.jwt_hs256_secret.expect("the example sets a token secret"),
            api_key: example.auth.api_key.expect("the example sets an API key"),
            seeds: seeds.clone(),
        };
        for i in 0..3 {
            let node = cluster.spawn(i, &seeds);
            cluster.nodes.push(Some(node));
        }
        for i in 0..3 {
            cluster.wait_started(i).await;
        }
        cluster
    }

    fn spawn(&self, i: usize, seeds: &str) -> NodeProcess {
        let at = |port: u16| format!("127.0.0.1:{port}");
        let ports = self.ports[i];
        let mut command = Command::new(BIN);
        for (var, _) in std::env::vars().filter(|(var, _)| var.starts_with("STARLING_")) {
            command.env_remove(var);
        }
        command
            .arg("--config")
            .arg(example_config(i + 1))
            .env_remove("RUST_LOG")
            .env("STARLING_NODE__DATA_DIR", self.dir.join(&self.names[i]))
            .env("STARLING_LISTEN__CLIENT", at(ports.client))
            .env("STARLING_LISTEN__API", at(ports.api))
            .env("STARLING_LISTEN__PEER", at(ports.peer))
            .env("STARLING_LISTEN__GOSSIP", at(ports.gossip))
            .env("STARLING_CLUSTER__SEEDS", seeds)
            .envs(super::certs::test_certs().env(&self.names[i]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn starling");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        NodeProcess { child, log }
    }

    async fn wait_started(&mut self, i: usize) {
        let name = self.names[i].clone();
        let node = self.nodes[i].as_mut().expect("node is running");
        let deadline = Instant::now() + PATIENCE;
        while !node.logged("node started") {
            if let Some(status) = node.child.try_wait().unwrap() {
                panic!("{name} exited with {status} before starting:\n{}", node.log_tail(30));
            }
            assert!(Instant::now() < deadline, "{name} did not start:\n{}", node.log_tail(30));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn api_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i].api))
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i].client))
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    /// Waits until every running node is ready (`/readyz` 200), lists every
    /// running node as alive, and all name the same Raft leader.
    pub async fn wait_formed(&self) -> String {
        let running = self.running();
        eventually("the cluster forms", PATIENCE, async || {
            let mut leaders = Vec::new();
            for &i in &running {
                let name = &self.names[i];
                match http_get(self.api_addr(i), "/readyz", &self.api_key).await {
                    Some((200, _)) => {}
                    other => return Err(format!("{name} /readyz: {other:?}")),
                }
                let (_, view) = http_get(self.api_addr(i), "/api/cluster", &self.api_key)
                    .await
                    .ok_or(format!("{name} does not answer /api/cluster"))?;
                let live = view["nodes"].as_array().map_or(0, Vec::len);
                if live != running.len() {
                    return Err(format!("{name} sees {live} nodes: {view}"));
                }
                leaders.push(view["leader"].as_str().ok_or(format!("{name} knows no leader"))?.to_string());
            }
            if leaders.windows(2).any(|pair| pair[0] != pair[1]) {
                return Err(format!("leaders differ: {leaders:?}"));
            }
            Ok(leaders[0].clone())
        })
        .await
    }

    /// `kill -9` node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("node is running");
        node.child.kill().expect("SIGKILL the node");
        let _ = node.child.wait();
    }

    /// A token for `chat:*`, signed with the example cluster's secret.
    pub fn token(&self, user: &str) -> String {
        let request = MintRequest {
            sub: user.into(),
            rooms: vec!["chat:*".into()],
            ttl: Duration::from_secs(600),
            meta: None,
            audience: None,
            issuer: None,
        };
        mint_token(&self.jwt_secret, &request).unwrap()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for (name, slot) in self.names.iter().zip(&mut self.nodes) {
            if let Some(node) = slot.as_mut() {
                if std::thread::panicking() {
                    eprintln!("---- last log lines of {name} ----\n{}", node.log_tail(20));
                }
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
