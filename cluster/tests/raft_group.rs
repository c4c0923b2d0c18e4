//! A Raft group of three nodes, in memory (with cut links) and over TCP:
//! one leader, proposals from any node applied everywhere in one order,
//! failover, and refusal (not divergence) on the minority side.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_cluster::raft::{node_id, Applier, GroupConfig, PeerNode, ProposeError, RaftGroup};
use starling_cluster::transport::{
    BoxFuture, MemoryNetwork, PeerHandler, PeerTransport, TcpTransport, TcpTransportConfig,
};

type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// Records every applied command.
struct Recorder(Log);

impl Applier for Recorder {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.0.lock().unwrap().push(command.to_vec());
        index.to_be_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        starling_cluster::codec::encode(&*self.0.lock().unwrap()).unwrap()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        *self.0.lock().unwrap() = starling_cluster::codec::decode(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// No application messages in these tests.
struct NoApp;

impl PeerHandler for NoApp {
    fn request(&self, _: &str, _: Vec<u8>, _: Option<String>) -> BoxFuture<Result<Vec<u8>, String>> {
        Box::pin(async { Err("no application handler".into()) })
    }
    fn one_way(&self, _: &str, _: Vec<u8>, _: Option<String>) {}
}

fn temp_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("starling-group-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Member {
    name: String,
    addr: String,
    group: Arc<RaftGroup>,
    log: Log,
}

async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leader_of(members: &[&Member]) -> Option<String> {
    let leaders: Vec<_> = members
        .iter()
        .filter(|m| m.group.metrics().borrow().current_leader == Some(m.group.id()))
        .map(|m| m.name.clone())
        .collect();
    // Every listed member must agree on that one leader.
    let id = node_id(leaders.first()?);
    members.iter().all(|m| m.group.metrics().borrow().current_leader == Some(id)).then(|| leaders[0].clone())
}

fn voters(members: &[Member]) -> BTreeMap<u64, PeerNode> {
    members
        .iter()
        .map(|m| (node_id(&m.name), PeerNode { name: m.name.clone(), peer_addr: m.addr.clone() }))
        .collect()
}

async fn memory_group(network: &Arc<MemoryNetwork>, dir: &std::path::Path) -> Vec<Member> {
    let mut members = Vec::new();
    for i in 1..=3 {
        let (name, addr) = (format!("node-{i}"), format!("mem-{i}"));
        let log: Log = Arc::default();
        let transport: Arc<dyn PeerTransport> = Arc::new(network.transport(&addr));
        let config = GroupConfig::new(&name, &addr, dir.join(format!("{name}.redb")));
        let group = RaftGroup::start(config, Box::new(Recorder(log.clone())), transport).await.unwrap();
        network.register(&addr, &name, group.handler(Arc::new(NoApp)));
        members.push(Member { name, addr, group, log });
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader_and_apply_proposals_from_any_node_in_one_order() {
    let network = MemoryNetwork::new();
    let dir = temp_dir();
    let members = memory_group(&network, &dir).await;
    members[0].group.initialize(voters(&members)).await.unwrap();
    let all: Vec<&Member> = members.iter().collect();
    wait_for("one leader", || leader_of(&all)).await;
    for (i, member) in members.iter().enumerate() {
        member.group.propose(format!("from-{i}").into_bytes()).await.unwrap();
    }
    let expected = wait_for("every node applied three commands", || {
        let first = members[0].log.lock().unwrap().clone();
        (first.len() == 3).then_some(first)
    })
    .await;
    for member in &members {
        wait_for("the same order everywhere", || (*member.log.lock().unwrap() == expected).then_some(()))
            .await;
    }
    for member in &members {
        member.group.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_refuses_while_the_majority_elects_a_new_one_and_it_catches_up_after_heal() {
    let network = MemoryNetwork::new();
    let dir = temp_dir();
    let members = memory_group(&network, &dir).await;
    members[0].group.initialize(voters(&members)).await.unwrap();
    let all: Vec<&Member> = members.iter().collect();
    let old_leader = wait_for("one leader", || leader_of(&all)).await;
    members[0].group.propose(b"before".to_vec()).await.unwrap();

    let isolated = members.iter().find(|m| m.name == old_leader).unwrap();
    let majority: Vec<&Member> = members.iter().filter(|m| m.name != old_leader).collect();
    for other in &majority {
        network.cut(&isolated.addr, &other.addr);
    }
    let started = tokio::time::Instant::now();
    let new_leader = wait_for("a new leader on the majority side", || leader_of(&majority)).await;
    assert_ne!(new_leader, old_leader);
    eprintln!("failover took {:?}", started.elapsed());
    majority[0].group.propose(b"during".to_vec()).await.unwrap();
    let refused = isolated.group.propose(b"lost".to_vec()).await;
    assert!(matches!(refused, Err(ProposeError::Unavailable(_))), "{refused:?}");

    network.heal_all();
    let expected = vec![b"before".to_vec(), b"during".to_vec()];
    for member in &members {
        wait_for("every node converged", || (*member.log.lock().unwrap() == expected).then_some(())).await;
    }
    for member in &members {
        member.group.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_tcp_and_a_foreign_cluster_is_refused() {
    let dir = temp_dir();
    let mut members = Vec::new();
    let mut transports = Vec::new();
    for i in 1..=3 {
        let name = format!("node-{i}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tcp = TcpTransport::new(TcpTransportConfig::new("test-cluster", &name));
        let log: Log = Arc::default();
        let config = GroupConfig::new(&name, &addr, dir.join(format!("{name}.redb")));
        let transport: Arc<dyn PeerTransport> = Arc::new(Arc::clone(&tcp));
        let group = RaftGroup::start(config, Box::new(Recorder(log.clone())), transport).await.unwrap();
        tokio::spawn(Arc::clone(&tcp).serve(listener, group.handler(Arc::new(NoApp))));
        transports.push(tcp);
        members.push(Member { name, addr, group, log });
    }
    members[0].group.initialize(voters(&members)).await.unwrap();
    let all: Vec<&Member> = members.iter().collect();
    wait_for("one leader over tcp", || leader_of(&all)).await;
    members[2].group.propose(b"over-tcp".to_vec()).await.unwrap();
    for member in &members {
        wait_for("applied everywhere", || (member.log.lock().unwrap().len() == 1).then_some(())).await;
    }

    // A node of another cluster cannot talk to these.
    let stranger = TcpTransport::new(TcpTransportConfig::new("other-cluster", "stranger"));
    let _ = Arc::clone(&stranger).send(&members[0].addr, vec![1], None);
    wait_for("the handshake is refused", || {
        (stranger.stats.handshakes_refused.load(std::sync::atomic::Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    assert!(!stranger.is_connected(&members[0].addr));
    stranger.shutdown();
    for member in &members {
        member.group.shutdown().await;
    }
    for tcp in transports {
        tcp.shutdown();
    }
    let _ = std::fs::remove_dir_all(dir);
}
