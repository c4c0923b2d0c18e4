//! A Raft group of three nodes, in memory (with cut links) and over TCP:
//! one leader, proposals from any node applied everywhere in one order,
//! failover, and refusal (not divergence) on the minority side.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_cluster::raft::{
    node_id, AcceptAll, Applier, GroupConfig, PeerMessage, PeerNode, ProposeError, RaftGroup,
};
use starling_cluster::transport::{
    BoxFuture, MemoryNetwork, PeerHandler, PeerIdentity, PeerTls, PeerTransport, TcpTransport,
    TcpTransportConfig, TransportError,
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
    fn request(&self, _: &PeerIdentity, _: Vec<u8>, _: Option<String>) -> BoxFuture<Result<Vec<u8>, String>> {
        Box::pin(async { Err("no application handler".into()) })
    }
    fn one_way(&self, _: &PeerIdentity, _: Vec<u8>, _: Option<String>) {}
}

/// A cluster CA that signs node certificates, as `starling cert` does.
struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let der = params.self_signed(&key).unwrap().der().clone();
        TestCa { params, key, der }
    }

    /// A certificate valid for `name`, for both ends of a link.
    fn node(
        &self,
        name: &str,
    ) -> (rustls::pki_types::CertificateDer<'static>, rustls::pki_types::PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap().der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (cert, key)
    }

    /// TLS settings for node `name` with a certificate made for `cert_name`.
    fn tls(&self, name: &str, cert_name: &str) -> Result<PeerTls, starling_cluster::transport::PeerTlsError> {
        let (cert, key) = self.node(cert_name);
        PeerTls::new(vec![self.der.clone()], vec![cert], key, name)
    }
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
        let group = RaftGroup::start(config, Box::new(Recorder(log.clone())), Arc::new(AcceptAll), transport)
            .await
            .unwrap();
        network.register(&addr, &name, group.handler(Arc::new(NoApp)));
        members.push(Member { name, addr, group, log });
    }
    members
}

/// Three nodes over real TCP links (`tls` gives each node's TLS settings),
/// formed, with one command proposed and applied everywhere.
async fn tcp_group(
    dir: &std::path::Path,
    tls: impl Fn(&str) -> Option<PeerTls>,
) -> (Vec<Member>, Vec<Arc<TcpTransport>>) {
    let mut members = Vec::new();
    let mut transports = Vec::new();
    for i in 1..=3 {
        let name = format!("node-{i}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut transport_config = TcpTransportConfig::new("test-cluster", &name);
        transport_config.tls = tls(&name);
        let tcp = TcpTransport::new(transport_config);
        let log: Log = Arc::default();
        let config = GroupConfig::new(&name, &addr, dir.join(format!("{name}.redb")));
        let transport: Arc<dyn PeerTransport> = Arc::new(Arc::clone(&tcp));
        let group = RaftGroup::start(config, Box::new(Recorder(log.clone())), Arc::new(AcceptAll), transport)
            .await
            .unwrap();
        tokio::spawn(Arc::clone(&tcp).serve(listener, group.handler(Arc::new(NoApp))));
        transports.push(tcp);
        members.push(Member { name, addr, group, log });
    }
    members[0].group.initialize(voters(&members)).await.unwrap();
    let all: Vec<&Member> = members.iter().collect();
    wait_for("one leader over tcp", || leader_of(&all)).await;
    members[2].group.propose(b"first".to_vec()).await.unwrap();
    for member in &members {
        wait_for("applied everywhere", || (member.log.lock().unwrap().len() == 1).then_some(())).await;
    }
    (members, transports)
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
async fn peers_that_are_not_members_or_speak_for_another_node_are_refused() {
    let network = MemoryNetwork::new();
    let dir = temp_dir();
    let members = memory_group(&network, &dir).await;
    members[0].group.initialize(voters(&members)).await.unwrap();
    let all: Vec<&Member> = members.iter().collect();
    wait_for("one leader", || leader_of(&all)).await;
    // A stranger on the network (not in the group) proposes and asks for
    // a read index: both refused, nothing applied.
    network.register("mem-9", "node-9", Arc::new(NoApp));
    let stranger = network.transport("mem-9");
    let timeout = Duration::from_secs(2);
    for message in [PeerMessage::Propose(b"forged".to_vec()), PeerMessage::ReadIndex] {
        let body = starling_cluster::codec::encode(&message).unwrap();
        let answer = stranger.request(&members[0].addr, body, None, timeout).await;
        assert!(
            matches!(&answer, Err(TransportError::Remote { message, .. }) if message == "not authorized"),
            "{answer:?}"
        );
    }
    // A member asking for votes in another member's name is refused too.
    let leader_metrics = members[0].group.metrics().borrow().clone();
    let forged = openraft::raft::VoteRequest::new(
        openraft::Vote::new(leader_metrics.current_term + 5, node_id("node-3")),
        None,
    );
    let body = starling_cluster::codec::encode(&PeerMessage::Vote(forged)).unwrap();
    let answer = network.transport(&members[1].addr).request(&members[0].addr, body, None, timeout).await;
    assert!(matches!(&answer, Err(TransportError::Remote { .. })), "{answer:?}");
    assert!(members[0].group.refused_unauthorized() >= 3);
    assert!(members.iter().all(|m| m.log.lock().unwrap().is_empty()));
    // Members still work.
    members[1].group.propose(b"real".to_vec()).await.unwrap();
    for member in &members {
        member.group.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_mutual_tls_and_strangers_get_nowhere() {
    let dir = temp_dir();
    let ca = TestCa::new();
    let (members, transports) = tcp_group(&dir, |name| Some(ca.tls(name, name).unwrap())).await;
    let target = &members[0].addr;
    let stats = &transports[0].stats;
    let rejected =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);

    // A node of another CA: its TLS handshake fails.
    let foreign = TestCa::new();
    let mut config = TcpTransportConfig::new("test-cluster", "node-2");
    config.tls = Some(foreign.tls("node-2", "node-2").unwrap());
    let impostor = TcpTransport::new(config);
    let _ = Arc::clone(&impostor).send(target, vec![1], None);
    wait_for("the foreign certificate is refused", || (rejected(&stats.rejected_tls) >= 1).then_some(()))
        .await;
    assert!(!impostor.is_connected(target));
    impostor.shutdown();

    // A node with a certificate of this CA, claiming a name it is not valid for.
    let mut config = TcpTransportConfig::new("test-cluster", "node-2");
    config.tls = Some(ca.tls("node-9", "node-9").unwrap());
    config.node = "node-2".into();
    let liar = TcpTransport::new(config);
    let before = rejected(&stats.rejected_handshake);
    let _ = Arc::clone(&liar).send(target, vec![1], None);
    wait_for("the false name is refused", || (rejected(&stats.rejected_handshake) > before).then_some(()))
        .await;
    assert!(!liar.is_connected(target));
    liar.shutdown();

    // Plain TCP that speaks the old handshake gets no further than TLS.
    let plain = TcpTransport::new(TcpTransportConfig::new("test-cluster", "node-2"));
    let before = rejected(&stats.rejected_tls);
    let _ = Arc::clone(&plain).send(target, vec![1], None);
    wait_for("plain tcp is refused", || (rejected(&stats.rejected_tls) > before).then_some(())).await;
    assert!(!plain.is_connected(target));
    plain.shutdown();

    // The group still works, and nothing else was applied.
    members[1].group.propose(b"after".to_vec()).await.unwrap();
    for member in &members {
        wait_for("applied everywhere", || (member.log.lock().unwrap().len() == 2).then_some(())).await;
    }
    for member in &members {
        member.group.shutdown().await;
    }
    for tcp in transports {
        tcp.shutdown();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_valid_for_the_node_name_is_refused_at_start() {
    let ca = TestCa::new();
    assert!(matches!(
        ca.tls("node-1", "node-2"),
        Err(starling_cluster::transport::PeerTlsError::WrongName(_))
    ));
    let other = TestCa::new();
    let (cert, key) = other.node("node-1");
    let signed_elsewhere = PeerTls::new(vec![ca.der.clone()], vec![cert], key, "node-1");
    assert!(matches!(signed_elsewhere, Err(starling_cluster::transport::PeerTlsError::NotSignedByCa(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_tcp_and_a_foreign_cluster_is_refused() {
    let dir = temp_dir();
    let (members, transports) = tcp_group(&dir, |_| None).await;

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
