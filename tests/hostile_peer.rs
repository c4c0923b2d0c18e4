//! G7 against real processes: with TLS and a gossip key configured, a
//! process without a CA-signed certificate and the gossip key cannot change
//! cluster state, deliver a frame to a client, stop a node or get a node's
//! members evicted; malformed frames or datagrams from anyone never stop a
//! node. Each test reproduces findings of the security review (numbers in
//! the test names' docs) against a 3-node cluster of real `starling`
//! processes started from `config/cluster/node-N.toml` with certificates.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::certs;
use common::processes::{
    eventually, example_config, free_ports, http_get, metric, NodeProcess, NodeSpec, Placement,
    ProcessCluster, PATIENCE,
};
use serde::Serialize;
use serde_json::{json, Value};
use starling_client::{Client, ConnectOptions, Event, Events};
use starling_cluster::raft::{PeerAnswer, PeerMessage, ProposeRefusal};
use starling_cluster::transport::{PeerTls, PeerTransport, TcpTransport, TcpTransportConfig, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The example cluster's id (config/cluster/node-N.toml).
const CLUSTER_ID: &str = "starling";

async fn rejected(cluster: &ProcessCluster, i: usize, reason: &str) -> f64 {
    let labels = format!("reason=\"{reason}\"");
    metric(cluster.api_addr(i), &cluster.secrets.api_key, "starling_peer_rejected_total", &labels).await
}

/// Waits until node `i` has counted more than `before` rejections for `reason`.
async fn wait_rejected(cluster: &ProcessCluster, i: usize, reason: &str, before: f64) -> f64 {
    eventually(&format!("node {i} counts a `{reason}` rejection"), PATIENCE, async || {
        let now = rejected(cluster, i, reason).await;
        if now > before {
            Ok(now)
        } else {
            Err(format!("{reason}: {now}"))
        }
    })
    .await
}

/// A peer link dialler presenting a certificate for `cert_name` signed by the
/// CA in `ca_dir`, claiming to be `claimed` (incarnation `incarnation`).
fn dialler(ca_dir: &Path, cert_name: &str, claimed: &str, incarnation: u64) -> Arc<TcpTransport> {
    let ca = starling::tls::load_certs(&ca_dir.join("ca.crt")).unwrap();
    let chain = starling::tls::load_certs(&ca_dir.join(format!("{cert_name}.crt"))).unwrap();
    let key = starling::tls::load_private_key(&ca_dir.join(format!("{cert_name}.key"))).unwrap();
    let mut config = TcpTransportConfig::new(CLUSTER_ID, claimed);
    config.incarnation = incarnation;
    config.tls = Some(PeerTls::new(ca, chain, key, cert_name).unwrap());
    TcpTransport::new(config)
}

/// The peer application messages of `src/forward/wire.rs`, mirrored (same
/// variant order and fields), so the test can forge them.
#[derive(Serialize)]
enum AppMessage {
    #[allow(dead_code)]
    Publish,
    Deliver(RoomMessageMirror),
}

/// `fanout::RoomMessage` as nodes send it.
#[derive(Serialize)]
struct RoomMessageMirror {
    room: String,
    epoch: u64,
    offset: u64,
    publisher: Option<(String, String)>,
    event: Option<String>,
    #[serde(with = "serde_bytes_mirror")]
    data: Vec<u8>,
    published_us: u64,
}

/// Bytes as `bytes::Bytes` serializes them (length and raw bytes).
mod serde_bytes_mirror {
    pub fn serialize<S: serde::Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(data)
    }
}

/// `RoomCommand::EvictNode` as `src/rooms/table.rs` encodes it (variant 3).
#[derive(Serialize)]
enum RoomCommandMirror {
    #[allow(dead_code)]
    Join,
    #[allow(dead_code)]
    Leave,
    #[allow(dead_code)]
    ConnGone,
    EvictNode {
        node: String,
        incarnation: u64,
    },
}

fn forged_eviction(node: &str) -> Vec<u8> {
    let batch = vec![RoomCommandMirror::EvictNode { node: node.into(), incarnation: u64::MAX }];
    let command = starling_cluster::codec::encode(&batch).unwrap();
    starling_cluster::codec::encode(&PeerMessage::Propose(command)).unwrap()
}

fn forged_delivery(room: &str, epoch: u64) -> Vec<u8> {
    let deliver = AppMessage::Deliver(RoomMessageMirror {
        room: room.into(),
        epoch,
        offset: 1,
        publisher: None,
        event: None,
        data: json!("forged").to_string().into_bytes(),
        published_us: 0,
    });
    let inner = starling_cluster::codec::encode(&deliver).unwrap();
    starling_cluster::codec::encode(&PeerMessage::App(inner)).unwrap()
}

/// Sends a forged delivery for `room` from `dialler` to node-2 (its link
/// comes up first) until node-2 counts it as refused.
async fn delivery_is_refused(cluster: &ProcessCluster, dialler: &Arc<TcpTransport>, room: &str, epoch: u64) {
    let node_2 = cluster.peer_addr(1).to_string();
    let before = rejected(cluster, 1, "unauthorized").await;
    dialler.warm(&node_2);
    eventually("the forged delivery is refused", PATIENCE, async || {
        let _ = dialler.send(&node_2, forged_delivery(room, epoch), None);
        let now = rejected(cluster, 1, "unauthorized").await;
        if now > before {
            Ok(())
        } else {
            Err(format!("{now}"))
        }
    })
    .await;
}

async fn connect(cluster: &ProcessCluster, i: usize, user: &str) -> (Client, Events) {
    let url = format!("ws://{}/ws", cluster.client_addr(i));
    let options = ConnectOptions::new(url).token(cluster.token(user)).reply_timeout(Duration::from_secs(5));
    Client::connect(options).await.expect("client connects")
}

/// Members `alice` (node-1) and `bob` (node-2) in `room`; bob's events and
/// the room's epoch.
async fn two_members(cluster: &ProcessCluster, room: &str) -> (Client, Client, Events, u64) {
    let (alice, _alice_events) = connect(cluster, 0, "alice").await;
    let (bob, bob_events) = connect(cluster, 1, "bob").await;
    alice.join(room, None).await.expect("alice joins");
    let joined = bob.join(room, None).await.expect("bob joins");
    (alice, bob, bob_events, joined.epoch)
}

/// Users in `room`'s presence as node `i` answers it.
async fn presence(cluster: &ProcessCluster, i: usize, room: &str) -> Vec<String> {
    let (_, body) =
        http_get(cluster.api_addr(i), &format!("/api/rooms/{room}/presence"), &cluster.secrets.api_key)
            .await
            .expect("presence answers");
    let mut users: Vec<String> = body["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["user"].as_str().map(String::from))
        .collect();
    users.sort();
    users
}

/// After the attacks: bob is still a member everywhere, and the first room
/// message bob gets is alice's real one (nothing forged, no `left`, no close).
async fn assert_room_untouched(
    cluster: &ProcessCluster,
    room: &str,
    alice: &Client,
    bob_events: &mut Events,
) {
    for i in 0..3 {
        assert_eq!(presence(cluster, i, room).await, vec!["alice", "bob"], "presence on node {i}");
    }
    alice.publish(room, json!("real")).await.expect("alice publishes");
    let first = tokio::time::timeout(PATIENCE, async {
        loop {
            match bob_events.next_non_ping().await {
                Some(Event::Joined { .. }) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("bob gets a message in time");
    match first {
        Some(Event::Message(message)) => assert_eq!(message.data, json!("real"), "bob got {message:?}"),
        other => panic!("bob's first event after the attacks is {other:?}"),
    }
}

/// Findings 1 and 2: a plain-TCP hello with the cluster id is refused without
/// learning anything (TLS comes first; the old refusal echoed the expected
/// id), a 15-byte frame claiming a 2^62-byte string and a megabyte of garbage
/// are refused, and every node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_garbage_and_an_allocation_bomb_on_the_peer_port_stop_nothing() {
    let cluster = ProcessCluster::start("hostile-tcp", "127.0.0.1").await;
    cluster.wait_formed().await;
    let room = "chat:hostile-tcp";
    let (alice, _bob, mut bob_events, _) = two_members(&cluster, room).await;
    let before = rejected(&cluster, 0, "tls").await;

    // The old handshake in the clear, carrying the real cluster id.
    #[derive(Serialize)]
    enum OldFrame {
        Hello { version: u32, cluster_id: String, node: String },
    }
    let hello = starling_cluster::codec::encode(&OldFrame::Hello {
        version: 2,
        cluster_id: CLUSTER_ID.into(),
        node: "node-2".into(),
    })
    .unwrap();
    let mut framed = (hello.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&hello);
    // Hello (variant 0), version 3, then a string length of 2^62.
    let mut bomb = vec![0u8, 3, 0xfd];
    bomb.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let mut bomb_frame = (bomb.len() as u32).to_be_bytes().to_vec();
    bomb_frame.extend_from_slice(&bomb);
    assert_eq!(bomb_frame.len(), 15);
    let garbage: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    for payload in [framed, bomb_frame, garbage] {
        let mut stream = tokio::net::TcpStream::connect(cluster.peer_addr(0)).await.unwrap();
        let _ = stream.write_all(&payload).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.contains(CLUSTER_ID) && !text.contains("node-1"), "the refusal leaks: {text:?}");
    }
    wait_rejected(&cluster, 0, "tls", before + 2.0).await;
    cluster.wait_formed().await;
    assert_room_untouched(&cluster, room, &alice, &mut bob_events).await;
}

/// Findings 3, 4, 5 and 6 at the peer link: a certificate from another CA
/// gets no link at all; a CA-signed certificate of a node that is not a
/// member cannot propose (`EvictNode` of a live node) or deliver; a member
/// cannot propose another node's eviction or garbage, and cannot deliver
/// into a room it does not own. Nothing is applied, no member leaves, no
/// client sees a forged frame, and every node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_proposals_and_deliveries_change_nothing() {
    let cluster = ProcessCluster::start("hostile-forge", "127.0.0.1").await;
    cluster.wait_formed().await;
    let room = "chat:hostile-forge";
    let (alice, _bob, mut bob_events, epoch) = two_members(&cluster, room).await;
    let (_, cluster_view) =
        http_get(cluster.api_addr(0), "/api/cluster", &cluster.secrets.api_key).await.unwrap();
    let leader = cluster_view["leader"].as_str().unwrap().to_string();
    let leader_addr = cluster.peer_addr(cluster.index_of(&leader)).to_string();
    let bob_node = cluster.peer_addr(1).to_string();
    let timeout = Duration::from_secs(3);

    // Another CA (a stock `starling cert create-ca`), claiming node-2.
    let foreign = std::env::temp_dir().join(format!("starling-foreign-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&foreign);
    starling::certs::create_ca(&foreign).unwrap();
    starling::certs::create_node("node-2", &foreign, &[]).unwrap();
    let before_tls = rejected(&cluster, 1, "tls").await;
    let impostor = dialler(&foreign, "node-2", "node-2", u64::MAX);
    let answer = impostor.request(&leader_addr, forged_eviction("node-2"), None, timeout).await;
    assert!(matches!(answer, Err(TransportError::Unreachable(_))), "{answer:?}");
    let _ = impostor.send(&bob_node, forged_delivery(room, epoch), None);
    wait_rejected(&cluster, 1, "tls", before_tls).await;
    impostor.shutdown();

    // This CA, but not a member of the group.
    let certs = certs::test_certs();
    certs.node("intruder");
    let intruder = dialler(&certs.dir, "intruder", "intruder", 1);
    let before = rejected(&cluster, cluster.index_of(&leader), "unauthorized").await;
    let answer = eventually("the intruder's link is up and refused", PATIENCE, async || {
        match intruder.request(&leader_addr, forged_eviction("node-2"), None, timeout).await {
            Err(TransportError::Remote { message, .. }) => Ok(message),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(answer, "not authorized");
    wait_rejected(&cluster, cluster.index_of(&leader), "unauthorized", before).await;
    delivery_is_refused(&cluster, &intruder, room, epoch).await;
    intruder.shutdown();

    // A member (node-3's own certificate) forging what only others may say.
    let insider = dialler(&certs.dir, "node-3", "node-3", 1);
    let garbage = starling_cluster::codec::encode(&PeerMessage::Propose(b"\x0bgarbage!!!".to_vec())).unwrap();
    for (forged, why) in [(forged_eviction("node-2"), "may not propose"), (garbage, "decode")] {
        let answer = eventually("the insider's proposal is refused", PATIENCE, async || {
            let bytes = insider.request(&leader_addr, forged.clone(), None, timeout).await;
            let answer = bytes.map(|b| starling_cluster::codec::decode::<PeerAnswer>(&b));
            match answer {
                Ok(Ok(PeerAnswer::Propose(Err(ProposeRefusal::Invalid(reason))))) => Ok(reason),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert!(answer.contains(why), "{answer}");
    }
    // And cannot deliver into a room another node owns.
    delivery_is_refused(&cluster, &insider, room, epoch).await;
    insider.shutdown();

    assert_eq!(
        metric(cluster.api_addr(0), &cluster.secrets.api_key, "starling_raft_entries_rejected_total", "")
            .await,
        0.0
    );
    cluster.wait_formed().await;
    assert_room_untouched(&cluster, room, &alice, &mut bob_events).await;
    let _ = std::fs::remove_dir_all(foreign);
}

/// Finding 6: a second process of the stock binary started with
/// `name = "node-2"`, the cluster's gossip key and a certificate from its own
/// CA gossips its way in, but gets no peer link: the real node-2 keeps its
/// members, clients and Raft seat, and the rogue never becomes a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_process_claiming_a_members_name_takes_nothing_over() {
    let cluster = ProcessCluster::start("hostile-rogue", "127.0.0.1").await;
    cluster.wait_formed().await;
    let room = "chat:hostile-rogue";
    let (alice, _bob, mut bob_events, _) = two_members(&cluster, room).await;
    let rogue_dir = std::env::temp_dir().join(format!("starling-rogue-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rogue_dir);
    starling::certs::create_ca(&rogue_dir).unwrap();
    starling::certs::create_node("node-2", &rogue_dir, &[]).unwrap();
    let ports = free_ports(1)[0];
    let path = |p: std::path::PathBuf| p.display().to_string();
    let placement = Placement {
        ip: [127, 0, 0, 1].into(),
        ports,
        data_dir: rogue_dir.join("data"),
        seeds: cluster.seeds.clone(),
    };
    // The stock binary with node-2's config and the cluster's gossip key
    // (from the placement), but a certificate of its own CA.
    let mut spec = NodeSpec::placed("node-2", example_config(2), placement);
    spec.env = vec![
        ("STARLING_CLUSTER__TLS__CA".into(), path(rogue_dir.join("ca.crt"))),
        ("STARLING_CLUSTER__TLS__CERT".into(), path(rogue_dir.join("node-2.crt"))),
        ("STARLING_CLUSTER__TLS__KEY".into(), path(rogue_dir.join("node-2.key"))),
    ];
    let rogue = NodeProcess::spawn(&spec);

    // The rogue holds the gossip key, so gossip lists its incarnation of node-2.
    let rogue_api = spec.api_addr();
    eventually("gossip sees the rogue", PATIENCE, async || {
        let (_, view) =
            http_get(rogue_api, "/api/cluster", &cluster.secrets.api_key).await.ok_or("no answer")?;
        let seen = view["nodes"].as_array().map_or(0, |nodes| nodes.len());
        if seen >= 3 {
            Ok(())
        } else {
            Err(format!("the rogue sees {seen} nodes"))
        }
    })
    .await;
    // Its links to the other real nodes are refused (foreign CA).
    for i in [0, 2] {
        wait_rejected(&cluster, i, "tls", 0.0).await;
    }
    // Several autopilot rounds (300 ms each) pass with the rogue in gossip:
    // nothing of node-2 may change in any of them.
    let voters_before = voters(&cluster).await;
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < watch_until {
        assert_eq!(presence(&cluster, 0, room).await, vec!["alice", "bob"]);
        assert_eq!(voters(&cluster).await, voters_before);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(rogue);
    assert_room_untouched(&cluster, room, &alice, &mut bob_events).await;
    let _ = std::fs::remove_dir_all(rogue_dir);
}

async fn voters(cluster: &ProcessCluster) -> Vec<(String, bool)> {
    let (_, view) = http_get(cluster.api_addr(0), "/api/cluster", &cluster.secrets.api_key).await.unwrap();
    let mut voters: Vec<(String, bool)> = view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| (n["name"].as_str().unwrap_or_default().to_string(), n["voter"].as_bool().unwrap_or(false)))
        .collect();
    voters.sort();
    voters
}

/// Finding 7: gossip datagrams from anyone without the key (garbage of every
/// size, a zero-filled maximum datagram, a stale plain chitchat hello) are
/// dropped before chitchat sees them and counted; no node is declared dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsealed_gossip_datagrams_are_dropped_and_no_node_is_declared_dead() {
    let cluster = ProcessCluster::start("hostile-gossip", "127.0.0.1").await;
    cluster.wait_formed().await;
    let target = cluster.gossip_addr(0);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for size in [0usize, 1, 4, 24, 40, 41, 100, 1400, 9000, 65_507] {
        let garbage: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
        let _ = socket.send_to(&garbage, target);
    }
    let _ = socket.send_to(&vec![0u8; 65_507], target);
    let sent_at = tokio::time::Instant::now();
    wait_rejected(&cluster, 0, "gossip_unauthenticated", 5.0).await;
    // Failure detection takes about 2 s; watch past it for false deaths.
    while sent_at.elapsed() < Duration::from_secs(4) {
        let (_, view) =
            http_get(cluster.api_addr(1), "/api/cluster", &cluster.secrets.api_key).await.unwrap();
        let alive: Vec<Value> = view["nodes"].as_array().cloned().unwrap_or_default();
        assert_eq!(alive.len(), 3, "a node was declared dead: {view}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.wait_formed().await;
}
