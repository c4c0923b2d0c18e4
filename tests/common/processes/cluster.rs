//! `ProcessCluster`: N `starling` processes named `node-1`.. with one temp
//! dir for their data, started from the example cluster's config files or
//! from config text a test writes. It starts, kills, pauses, restarts and
//! terminates nodes, and reads the cluster's view (leader, members,
//! presence) through each node's API.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use starling::auth::{mint_token, MintRequest};
use starling::Config;
use starling_client::{Client, ConnectOptions, Event, Events};

use super::netns::netns_ip;
use super::node::{example_config, free_ports, NodeProcess, NodeSpec, Placement, Ports, Signal, TestDir};
use super::{eventually, http_get, PATIENCE};

/// The secrets the nodes' config holds: tokens are signed with `jwt`, the
/// API is called with `api_key`.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub jwt: String,
    pub api_key: String,
}

impl Secrets {
    /// The example cluster's (`config/cluster/node-1.toml`).
    pub fn of_example() -> Secrets {
        let config =
            Config::load(Some(&example_config(1)), std::iter::empty()).expect("example config loads");
        Secrets {
            jwt: config.auth.jwt_hs256_secret.expect("the example sets a token secret"),
            api_key: config.auth.api_key.expect("the example sets an API key"),
        }
    }

    /// The test harness's (`common::SECRET`, `common::API_KEY`).
    pub fn of_tests() -> Secrets {
        Secrets { jwt: super::super::SECRET.into(), api_key: super::super::API_KEY.into() }
    }
}

pub struct ProcessCluster {
    /// How to start each node; a test may add to their environment.
    pub specs: Vec<NodeSpec>,
    /// `None` for a node that is not running.
    nodes: Vec<Option<NodeProcess>>,
    /// Holds every node's data dir (and written config); removed when the
    /// test ends, after the processes are killed.
    dir: TestDir,
    pub secrets: Secrets,
    /// `cluster.seeds` as the nodes are given it (a TOML array).
    pub seeds: String,
}

impl ProcessCluster {
    /// The example cluster (`config/cluster/node-1.toml` .. `node-3.toml`)
    /// on free loopback ports, not started.
    pub fn example(test: &str) -> ProcessCluster {
        ProcessCluster::example_seeded(test, "127.0.0.1")
    }

    /// The same with seeds given as `seed_host:PORT`, so a test can prove
    /// that names (as in Kubernetes and compose) are resolved.
    pub fn example_seeded(test: &str, seed_host: &str) -> ProcessCluster {
        let configs = (1..=3).map(example_config).collect();
        let placed =
            free_ports(3).into_iter().map(|ports| (IpAddr::V4(Ipv4Addr::LOCALHOST), ports)).collect();
        ProcessCluster::placed(test, configs, placed, Some(seed_host), Secrets::of_example())
    }

    /// The example cluster with node `n` inside network namespace
    /// `{prefix}-{n}` at `netns_ip(n)`, on the example's own ports.
    pub fn example_in_namespaces(test: &str, prefix: &str) -> ProcessCluster {
        let configs = (1..=3).map(example_config).collect();
        let placed = (1..=3).map(|n| (netns_ip(n), Ports::EXAMPLE)).collect();
        let mut cluster = ProcessCluster::placed(test, configs, placed, None, Secrets::of_example());
        for (n, spec) in (1..).zip(&mut cluster.specs) {
            spec.netns = Some(format!("{prefix}-{n}"));
        }
        cluster
    }

    /// `count` nodes whose config file is `config(name)`, on free loopback
    /// ports, not started. The text needs no data dir, listen addresses,
    /// seeds or peer TLS: the placement overrides give them.
    pub fn from_text(
        test: &str,
        count: usize,
        secrets: Secrets,
        config: impl Fn(&str) -> String,
    ) -> ProcessCluster {
        let dir = TestDir::new(test);
        let configs =
            (1..=count).map(|n| dir.write_config(&format!("node-{n}"), &config(&format!("node-{n}"))));
        let configs = configs.collect();
        let placed =
            free_ports(count).into_iter().map(|ports| (IpAddr::V4(Ipv4Addr::LOCALHOST), ports)).collect();
        ProcessCluster::placed_in(dir, configs, placed, None, secrets)
    }

    /// Starts the example cluster with `seed_host` seeds, all nodes at once
    /// (as compose or a Parallel StatefulSet does), and waits until every one
    /// has bound its listeners.
    pub async fn start(test: &str, seed_host: &str) -> ProcessCluster {
        let mut cluster = ProcessCluster::example_seeded(test, seed_host);
        cluster.start_all_at_once().await;
        cluster
    }

    fn placed(
        test: &str,
        configs: Vec<PathBuf>,
        placed: Vec<(IpAddr, Ports)>,
        seed_host: Option<&str>,
        secrets: Secrets,
    ) -> ProcessCluster {
        ProcessCluster::placed_in(TestDir::new(test), configs, placed, seed_host, secrets)
    }

    fn placed_in(
        dir: TestDir,
        configs: Vec<PathBuf>,
        placed: Vec<(IpAddr, Ports)>,
        seed_host: Option<&str>,
        secrets: Secrets,
    ) -> ProcessCluster {
        let gossip: Vec<String> = placed
            .iter()
            .map(|(ip, ports)| match seed_host {
                Some(host) => format!("\"{host}:{}\"", ports.gossip),
                None => format!("\"{}\"", SocketAddr::new(*ip, ports.gossip)),
            })
            .collect();
        let seeds = format!("[{}]", gossip.join(","));
        let specs: Vec<NodeSpec> = configs
            .into_iter()
            .zip(placed)
            .enumerate()
            .map(|(i, (config, (ip, ports)))| {
                let name = format!("node-{}", i + 1);
                let data_dir = dir.path().join(&name);
                NodeSpec::placed(&name, config, Placement { ip, ports, data_dir, seeds: seeds.clone() })
            })
            .collect();
        let nodes = specs.iter().map(|_| None).collect();
        ProcessCluster { specs, nodes, dir, secrets, seeds }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.specs[i].name
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.specs.iter().position(|s| s.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node(&self, i: usize) -> &NodeProcess {
        self.nodes[i].as_ref().unwrap_or_else(|| panic!("{} is not running", self.specs[i].name))
    }

    /// The indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    /// Every index but `leader`'s.
    pub fn followers(&self, leader: usize) -> Vec<usize> {
        (0..self.specs.len()).filter(|&i| i != leader).collect()
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.specs[i].client_addr()
    }

    pub fn api_addr(&self, i: usize) -> SocketAddr {
        self.specs[i].api_addr()
    }

    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        self.specs[i].peer_addr()
    }

    pub fn gossip_addr(&self, i: usize) -> SocketAddr {
        self.specs[i].gossip_addr()
    }

    // -----------------------------------------------------------------------
    // Starting and stopping

    /// Starts every node at once (as a service manager would) and waits
    /// until each has bound its listeners.
    pub async fn start_all_at_once(&mut self) {
        for i in 0..self.specs.len() {
            self.nodes[i] = Some(NodeProcess::spawn(&self.specs[i]));
        }
        for node in self.nodes.iter_mut().flatten() {
            node.wait_started().await;
        }
    }

    /// Starts the nodes one after the other, each once the previous one has
    /// bound its listeners, so that no two share a boot millisecond (their
    /// incarnation).
    pub async fn start_one_by_one(&mut self) {
        for i in 0..self.specs.len() {
            self.start_node(i).await;
        }
    }

    /// Starts (or restarts) node `i` and waits until it has bound its listeners.
    pub async fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "{} is running", self.specs[i].name);
        self.nodes[i] = Some(NodeProcess::start(&self.specs[i]).await);
    }

    /// Starts all nodes one by one and waits for one leader known to all,
    /// with every node of its own incarnation: (leader index, time taken).
    pub async fn form(&mut self) -> (usize, Duration) {
        let started = Instant::now();
        self.start_one_by_one().await;
        let all: Vec<usize> = (0..self.len()).collect();
        let leader = self.agreed_leader(&all, Some(self.len()), |_| true).await;
        let incarnations = self.incarnations(0).await;
        let mut distinct = incarnations.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), self.len(), "nodes share an incarnation: {incarnations:?}");
        (self.index_of(&leader), started.elapsed())
    }

    /// `kill -9` node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        let mut node =
            self.nodes[i].take().unwrap_or_else(|| panic!("{} is not running", self.specs[i].name));
        node.kill();
    }

    pub fn signal(&self, i: usize, signal: Signal) {
        self.node(i).signal(signal);
    }

    /// SIGTERM to node `i` (a drain); waits for it to exit.
    pub async fn terminate(&mut self, i: usize) -> ExitStatus {
        let mut node =
            self.nodes[i].take().unwrap_or_else(|| panic!("{} is not running", self.specs[i].name));
        node.signal(Signal::Term);
        node.wait_exit(PATIENCE).await
    }

    /// Removes node `i`'s data dir (a lost disk).
    pub fn wipe_data_of(&self, i: usize) {
        if let Some(placement) = &self.specs[i].placement {
            let _ = std::fs::remove_dir_all(&placement.data_dir);
        }
    }

    /// SIGTERM to every running node at once; returns their exit statuses.
    pub async fn terminate_all(&mut self) -> Vec<(String, ExitStatus)> {
        for node in self.nodes.iter().flatten() {
            node.signal(Signal::Term);
        }
        let mut statuses = Vec::new();
        for slot in &mut self.nodes {
            if let Some(mut node) = slot.take() {
                let status = node.wait_exit(PATIENCE).await;
                statuses.push((node.name.clone(), status));
            }
        }
        statuses
    }

    /// Removes every node's data dir (for a fresh start of the same nodes).
    pub fn wipe_data(&self) {
        for spec in &self.specs {
            if let Some(placement) = &spec.placement {
                let _ = std::fs::remove_dir_all(&placement.data_dir);
            }
        }
    }

    // -----------------------------------------------------------------------
    // The cluster's view, through the API

    /// `GET path` on node `i` with the API key, if it answers.
    pub async fn api_get(&self, i: usize, path: &str) -> Option<(u16, Value)> {
        http_get(self.api_addr(i), path, &self.secrets.api_key).await
    }

    /// `DELETE /api/cluster/nodes/{name}` on node `i`: the status and the
    /// body (a removal may wait seconds for a quorum).
    pub async fn remove_node(&self, i: usize, name: &str) -> (u16, Value) {
        let auth = format!("Bearer {}", self.secrets.api_key);
        let path = format!("/api/cluster/nodes/{name}");
        let response =
            super::super::http(self.api_addr(i), "DELETE", &path, &[("Authorization", &auth)], "").await;
        (response.status, serde_json::from_str(&response.body).unwrap_or(Value::Null))
    }

    /// `GET /api/cluster` on node `i`, if it answers.
    pub async fn cluster_view(&self, i: usize) -> Option<Value> {
        self.api_get(i, "/api/cluster").await.filter(|(status, _)| *status == 200).map(|(_, body)| body)
    }

    /// The users present in `room` as node `i` reads it, with their nodes.
    pub async fn presence(&self, i: usize, room: &str) -> Result<Vec<(String, String)>, String> {
        let name = &self.specs[i].name;
        let Some((status, body)) = self.api_get(i, &format!("/api/rooms/{room}/presence")).await else {
            return Err(format!("{name} does not answer"));
        };
        if status != 200 {
            return Err(format!("{name}: HTTP {status} {body}"));
        }
        let members = body["members"].as_array().cloned().unwrap_or_default();
        Ok(members
            .iter()
            .map(|m| (m["user"].as_str().unwrap_or("").to_string(), m["node"].as_str().unwrap_or("").into()))
            .collect())
    }

    /// The incarnation of every live node as node `i` lists them, sorted.
    pub async fn incarnations(&self, i: usize) -> Vec<u64> {
        let view = self.cluster_view(i).await.expect("node answers");
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        let mut incarnations: Vec<u64> = nodes.iter().filter_map(|n| n["incarnation"].as_u64()).collect();
        incarnations.sort();
        incarnations
    }

    /// The leader every node in `on` names, if they agree and each lists
    /// `live` nodes (any count when `None`); else why not.
    async fn leader_of(&self, on: &[usize], live: Option<usize>) -> Result<String, String> {
        let mut leaders = Vec::new();
        for &i in on {
            let name = &self.specs[i].name;
            let view = self.cluster_view(i).await.ok_or(format!("{name} does not answer"))?;
            let nodes = view["nodes"].as_array().map_or(0, Vec::len);
            if live.is_some_and(|live| live != nodes) {
                return Err(format!("{name} sees {nodes} nodes: {view}"));
            }
            let leader = view["leader"].as_str().ok_or(format!("{name} knows no leader: {view}"))?;
            leaders.push(leader.to_string());
        }
        if leaders.windows(2).any(|pair| pair[0] != pair[1]) {
            return Err(format!("leaders differ: {leaders:?}"));
        }
        leaders.first().cloned().ok_or_else(|| "no node asked".to_string())
    }

    /// Waits until every node in `on` reports the same leader, that leader
    /// passes `accept`, and each lists `live` nodes (any count when `None`).
    pub async fn agreed_leader(
        &self,
        on: &[usize],
        live: Option<usize>,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        eventually("the nodes agree on one leader", PATIENCE, async || {
            let leader = self.leader_of(on, live).await?;
            if !accept(&leader) {
                return Err(format!("leader is still {leader}"));
            }
            Ok(leader)
        })
        .await
    }

    /// Waits until every running node is ready (`/readyz` 200), lists every
    /// running node as alive, and all name the same Raft leader.
    pub async fn wait_formed(&self) -> String {
        let running = self.running();
        eventually("the cluster forms", PATIENCE, async || {
            for &i in &running {
                match self.api_get(i, "/readyz").await {
                    Some((200, _)) => {}
                    other => return Err(format!("{} /readyz: {other:?}", self.specs[i].name)),
                }
            }
            self.leader_of(&running, Some(running.len())).await
        })
        .await
    }

    // -----------------------------------------------------------------------
    // Clients

    /// A token for `chat:*`, signed with the nodes' secret.
    pub fn token(&self, user: &str) -> String {
        let request = MintRequest {
            sub: user.into(),
            rooms: vec!["chat:*".into()],
            ttl: Duration::from_secs(600),
            meta: None,
            audience: None,
            issuer: None,
        };
        mint_token(&self.secrets.jwt, &request).unwrap()
    }

    /// Connects `user` to node `i` (replies time out after 5 s).
    pub async fn connect(&self, i: usize, user: &str) -> Result<(Client, Events), String> {
        let options = ConnectOptions::new(self.specs[i].ws_url())
            .token(self.token(user))
            .reply_timeout(Duration::from_secs(5));
        Client::connect(options).await.map_err(|e| e.to_string())
    }

    /// Connects `user` to node `i` and joins `room`; the test fails if either fails.
    pub async fn member(&self, i: usize, user: &str, room: &str) -> (Client, Received) {
        let (client, events) = self.connect(i, user).await.unwrap_or_else(|e| panic!("{user} connects: {e}"));
        client.join(room, None).await.unwrap_or_else(|e| panic!("{user} joins {room}: {e}"));
        (client, Received::record(events))
    }
}

/// Everything one client received, stamped with its arrival time. A task
/// drains the connection, so waiting on a condition never stalls it.
#[derive(Clone)]
pub struct Received(Arc<Mutex<Vec<(Instant, Event)>>>);

impl Received {
    pub fn record(mut events: Events) -> Received {
        let received = Received(Arc::default());
        let sink = received.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next_non_ping().await {
                sink.0.lock().unwrap().push((Instant::now(), event));
            }
        });
        received
    }

    /// When a `left` event for `user` arrived.
    pub fn left(&self, user: &str) -> Option<Instant> {
        self.0.lock().unwrap().iter().find_map(|(at, event)| match event {
            Event::Left { member, .. } if member.user == user => Some(*at),
            _ => None,
        })
    }

    /// When the connection closed, and its close code.
    pub fn closed(&self) -> Option<(Instant, Option<u16>)> {
        self.0.lock().unwrap().iter().find_map(|(at, event)| match event {
            Event::Closed { code, .. } => Some((*at, *code)),
            _ => None,
        })
    }

    /// (epoch, offset, data) of every message, in arrival order.
    pub fn messages_with_data(&self) -> Vec<(u64, u64, serde_json::Value)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Message(m) => Some((m.epoch, m.offset, m.data.clone())),
                _ => None,
            })
            .collect()
    }

    /// When the first message after `since` arrived.
    pub fn first_message_after(&self, since: Instant) -> Option<Instant> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .find_map(|(at, event)| (matches!(event, Event::Message(_)) && *at > since).then_some(*at))
    }

    /// (epoch, offset) of every message, in arrival order.
    pub fn messages(&self) -> Vec<(u64, u64)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Message(m) => Some((m.epoch, m.offset)),
                _ => None,
            })
            .collect()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // Kill every process before `dir` (their data) is removed.
        self.nodes.clear();
    }
}
