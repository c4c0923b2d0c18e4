//! One `starling` process: how to start it (`NodeSpec`), and the running
//! process (`NodeProcess`) with its captured output, signals, and waits for
//! it to start or exit. Also free ports and per-test temp dirs.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PATIENCE;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// The ports one node listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub client: u16,
    pub api: u16,
    pub peer: u16,
    pub gossip: u16,
}

impl Ports {
    /// The ports of `config/cluster/node-1.toml`, for nodes that each have
    /// an address of their own (network namespaces).
    pub const EXAMPLE: Ports = Ports { client: 7601, api: 7701, peer: 7801, gossip: 7901 };
}

/// Free loopback ports for `count` nodes: every socket is held until all are
/// chosen, so none repeats, then all are released for the nodes to bind.
///
/// They come from below the kernel's ephemeral range, so that a node
/// restarted on its ports finds them free: a port from the ephemeral range
/// (port 0) can be taken meanwhile by any outgoing connection, such as a
/// client of another test.
pub fn free_ports(count: usize) -> Vec<Ports> {
    let mut tcp_held = Vec::new();
    let mut udp_held = Vec::new();
    let mut tcp = || {
        let listener = bind_free("TCP", TcpListener::bind);
        let port = listener.local_addr().unwrap().port();
        tcp_held.push(listener);
        port
    };
    let mut ports: Vec<Ports> =
        (0..count).map(|_| Ports { client: tcp(), api: tcp(), peer: tcp(), gossip: 0 }).collect();
    for node in &mut ports {
        let socket = bind_free("UDP", UdpSocket::bind);
        node.gossip = socket.local_addr().unwrap().port();
        udp_held.push(socket);
    }
    drop((tcp_held, udp_held));
    ports
}

/// A socket bound by `bind` to the first free loopback port of `next_port`.
fn bind_free<S>(what: &str, bind: impl Fn(SocketAddr) -> std::io::Result<S>) -> S {
    for _ in 0..10_000 {
        if let Ok(socket) = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, next_port()))) {
            return socket;
        }
    }
    panic!("no free loopback {what} port");
}

/// The lowest port `free_ports` hands out.
const LOWEST_PORT: u16 = 12_000;

/// The next candidate port, in turn through [`LOWEST_PORT`, start of the
/// ephemeral range), from a point that differs between test processes (so
/// parallel test binaries rarely try the same ones); 0 (any) if that range
/// is too small.
fn next_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = u64::from(ephemeral.saturating_sub(LOWEST_PORT));
    if span < 1_000 {
        return 0;
    }
    let turn = NEXT.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 7_919;
    LOWEST_PORT + (turn % span) as u16
}

/// The example cluster's config file of node `n` (1-based).
pub fn example_config(n: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/cluster/node-{n}.toml"))
}

/// A fresh directory for one test's files (configs, data dirs), removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("starling-{test}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` as `name.toml` and returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A signal sent with kill(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL (`kill -9`).
    Kill,
    /// SIGSTOP: the process is paused, its sockets stay open.
    Stop,
    /// SIGCONT: a paused process resumes.
    Cont,
    /// SIGTERM: the node drains and exits.
    Term,
}

impl Signal {
    fn flag(self) -> &'static str {
        match self {
            Signal::Kill => "-9",
            Signal::Stop => "-STOP",
            Signal::Cont => "-CONT",
            Signal::Term => "-TERM",
        }
    }
}

/// Where a cluster node listens, keeps its data and finds its peers. The
/// node gets it as `STARLING_` overrides, with peer TLS and the gossip key
/// of the test CA (`certs::test_certs`) for its name.
#[derive(Debug, Clone)]
pub struct Placement {
    pub ip: IpAddr,
    pub ports: Ports,
    pub data_dir: PathBuf,
    /// `cluster.seeds` (a TOML array).
    pub seeds: String,
}

impl Placement {
    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    fn env(&self, name: &str) -> Vec<(String, String)> {
        let at = |port: u16| self.addr(port).to_string();
        let mut env = vec![
            ("STARLING_NODE__DATA_DIR".to_string(), self.data_dir.display().to_string()),
            ("STARLING_LISTEN__CLIENT".into(), at(self.ports.client)),
            ("STARLING_LISTEN__API".into(), at(self.ports.api)),
            ("STARLING_LISTEN__PEER".into(), at(self.ports.peer)),
            ("STARLING_LISTEN__GOSSIP".into(), at(self.ports.gossip)),
            ("STARLING_CLUSTER__SEEDS".into(), self.seeds.clone()),
        ];
        env.extend(super::super::certs::test_certs().env(name));
        env
    }
}

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// Arguments before `--config`, e.g. `serve`.
    pub args: Vec<String>,
    /// The config file; `None` runs dev mode.
    pub config: Option<PathBuf>,
    /// `None` keeps the config's own addresses (e.g. port 0, read back from
    /// the "node started" line).
    pub placement: Option<Placement>,
    /// Run inside this network namespace (`ip netns exec`), for partitions.
    pub netns: Option<String>,
    /// More environment, applied last (so it wins over the placement's).
    pub env: Vec<(String, String)>,
    /// Another `starling` binary (an earlier build, for upgrades); `None`
    /// runs this build's.
    pub bin: Option<PathBuf>,
}

impl NodeSpec {
    /// `config` run as it is (no placement).
    pub fn new(name: &str, config: Option<PathBuf>) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            args: Vec::new(),
            config,
            placement: None,
            netns: None,
            env: Vec::new(),
            bin: None,
        }
    }

    /// `config` placed at `placement`.
    pub fn placed(name: &str, config: PathBuf, placement: Placement) -> NodeSpec {
        NodeSpec { placement: Some(placement), ..NodeSpec::new(name, Some(config)) }
    }

    fn placement(&self) -> &Placement {
        self.placement.as_ref().unwrap_or_else(|| panic!("{} has no placement", self.name))
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.placement().addr(self.placement().ports.client)
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.placement().addr(self.placement().ports.api)
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.placement().addr(self.placement().ports.peer)
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        self.placement().addr(self.placement().ports.gossip)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.client_addr())
    }

    fn command(&self) -> Command {
        let bin = self.bin.clone().unwrap_or_else(|| PathBuf::from(BIN));
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&bin);
                command
            }
            None => Command::new(&bin),
        };
        // Only the environment below applies, whatever the caller's holds.
        for (var, _) in
            std::env::vars().filter(|(var, _)| var.starts_with("STARLING_") || var.starts_with("OTEL_"))
        {
            command.env_remove(var);
        }
        command.env_remove("RUST_LOG").args(&self.args);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        if let Some(placement) = &self.placement {
            command.envs(placement.env(&self.name));
        }
        command.envs(self.env.iter().cloned());
        command
    }
}

/// One running `starling` process. Killed (SIGKILL) and reaped on drop.
pub struct NodeProcess {
    pub name: String,
    child: Child,
    /// Every line of stdout and stderr so far, appended by threads that drain
    /// the pipes for the whole life of the process (a full pipe would block
    /// the node).
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl NodeProcess {
    pub fn spawn(spec: &NodeSpec) -> NodeProcess {
        let mut child = spec
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn starling");
        let log = Arc::new(Mutex::new(Vec::new()));
        let pipes: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stderr.take().unwrap()), Box::new(child.stdout.take().unwrap())];
        let readers = pipes
            .into_iter()
            .map(|pipe| {
                let sink = Arc::clone(&log);
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        sink.lock().unwrap().push(line);
                    }
                })
            })
            .collect();
        NodeProcess { name: spec.name.clone(), child, log, readers }
    }

    /// Spawns the node and waits until it has bound its listeners.
    pub async fn start(spec: &NodeSpec) -> NodeProcess {
        let mut node = NodeProcess::spawn(spec);
        node.wait_started().await;
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args([signal.flag(), &pid]).status().expect("run kill");
        assert!(status.success(), "kill {} {pid} ({}) failed", signal.flag(), self.name);
    }

    /// The log line (JSON) whose `message` is `message`, if there is one.
    pub fn logged_line(&self, message: &str) -> Option<Value> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|value| value["message"].as_str() == Some(message))
    }

    /// Whether the node logged a line whose `message` is `message`.
    pub fn logged(&self, message: &str) -> bool {
        self.logged_line(message).is_some()
    }

    /// Everything printed so far, one entry per line.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for the "node started" log line and returns it (it names the
    /// bound `client` and `api` addresses); fails if the process exits first.
    pub async fn wait_started(&mut self) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.logged_line("node started") {
                return line;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status} before starting:\n{}", self.name, self.log_tail(30));
            }
            assert!(Instant::now() < deadline, "{} did not start:\n{}", self.name, self.log_tail(30));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `limit`) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit:\n{}", self.name, self.log_tail(30));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, reap, and wait until every line it printed is read.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Kills the process and returns everything it printed.
    pub fn finish(mut self) -> String {
        self.kill();
        self.log_lines().join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Starling's own lines; openraft's are too many to be useful here.
            let log = self.log.lock().unwrap();
            let own: Vec<&str> =
                log.iter().filter(|l| !l.contains(r#""target":"openraft"#)).map(String::as_str).collect();
            let tail = own[own.len().saturating_sub(30)..].join("\n");
            eprintln!("---- last starling log lines of {} ----\n{tail}", self.name);
        }
        // SIGKILL also ends a stopped (SIGSTOP) process. The readers are not
        // joined here: a pipe held open elsewhere must not hang the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
