//! Gossip membership over chitchat's in-memory transport, over real UDP and
//! over sealed UDP (with hostile datagrams).
//!
//! Every wait is a condition with a deadline: polling `live_members` or
//! awaiting the change stream under `tokio::time::timeout`.
//!
//! One node of the sealed test gossips through the fault wrapper, so this file
//! needs the `faults` feature (`--all-features`, as `scripts/test.sh` runs it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_cluster::faults::{FaultyGossip, LinkFaults};
use starling_cluster::membership::{
    ChannelTransport, ClusterChange, ClusterChangeStream, ClusterMember, GossipKey, GossipStats, Membership,
    MembershipConfig, SealedUdpTransport, Transport, UdpTransport,
};

const CLUSTER_ID: &str = "starling-test";
/// Upper bound for discovery and for changes to spread (the default config
/// converges in about a second; the slack is for a loaded test machine).
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(15);
/// A stopped node must be reported removed within this (ARCHITECTURE.md G4 budget).
const REMOVAL_DEADLINE: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A member whose gossip port is picked at bind time; other ports only need to be distinct.
fn member(name: &str, incarnation: u64, index: u16) -> ClusterMember {
    ClusterMember {
        name: name.to_string(),
        incarnation,
        peer_addr: SocketAddr::from(([127, 0, 0, 1], 17_800 + index)),
        client_addr: SocketAddr::from(([127, 0, 0, 1], 17_600 + index)),
        api_addr: SocketAddr::from(([127, 0, 0, 1], 17_700 + index)),
        gossip_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        role: "ready".to_string(),
        connections: 0,
    }
}

/// Starts `me` gossiping on its own `gossip_addr` (port 0 picks one).
async fn start_node(
    transport: &dyn Transport,
    cluster_id: &str,
    me: &ClusterMember,
    seeds: &[&Membership],
) -> Membership {
    let seeds = seeds.iter().map(|seed| seed.gossip_addr().to_string()).collect();
    let config = MembershipConfig::new(cluster_id, me.clone(), me.gossip_addr, seeds);
    Membership::start(config, transport).await.expect("membership starts")
}

/// `me` as the others see it: with the gossip address it actually got.
fn as_seen(me: &ClusterMember, node: &Membership) -> ClusterMember {
    ClusterMember { gossip_addr: node.gossip_addr(), ..me.clone() }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < CONVERGENCE_DEADLINE, "timed out after {CONVERGENCE_DEADLINE:?}: {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn next_change(changes: &mut ClusterChangeStream, deadline: Duration) -> ClusterChange {
    tokio::time::timeout(deadline, changes.recv())
        .await
        .unwrap_or_else(|_| panic!("no membership change within {deadline:?}"))
        .expect("change stream ended")
}

/// Subscribes and checks the stream opens with an `Add` for each expected member.
async fn subscribe_after_adds(node: &Membership, expected: &[ClusterMember]) -> ClusterChangeStream {
    let mut changes = node.subscribe();
    for member in expected {
        assert_eq!(next_change(&mut changes, CONVERGENCE_DEADLINE).await, ClusterChange::Add(member.clone()));
    }
    changes
}

fn names(node: &Membership) -> Vec<String> {
    node.live_members().into_iter().map(|member| member.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_each_other_from_one_seed_with_their_addresses() {
    let transport = ChannelTransport::default();
    let (me_a, me_b, me_c) = (member("a", 1, 1), member("b", 1, 2), member("c", 1, 3));
    let a = start_node(&transport, CLUSTER_ID, &me_a, &[]).await;
    let b = start_node(&transport, CLUSTER_ID, &me_b, &[&a]).await;
    let c = start_node(&transport, CLUSTER_ID, &me_c, &[&a]).await;

    let expected = vec![as_seen(&me_a, &a), as_seen(&me_b, &b), as_seen(&me_c, &c)];
    for node in [&a, &b, &c] {
        wait_until("every node lists all three members", || node.live_members() == expected).await;
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_is_reported_removed_within_five_seconds() {
    let transport = ChannelTransport::default();
    let (me_a, me_b, me_c) = (member("a", 1, 1), member("b", 1, 2), member("c", 1, 3));
    let a = start_node(&transport, CLUSTER_ID, &me_a, &[]).await;
    let b = start_node(&transport, CLUSTER_ID, &me_b, &[&a]).await;
    let c = start_node(&transport, CLUSTER_ID, &me_c, &[&a]).await;
    let all = vec![as_seen(&me_a, &a), as_seen(&me_b, &b), as_seen(&me_c, &c)];
    for node in [&a, &b] {
        wait_until("a and b list all three members", || node.live_members() == all).await;
    }
    let mut changes_at_a = subscribe_after_adds(&a, &all).await;
    let mut changes_at_b = subscribe_after_adds(&b, &all).await;

    let stopped_at = Instant::now();
    c.shutdown().await;
    for (observer, changes) in [("a", &mut changes_at_a), ("b", &mut changes_at_b)] {
        let change = next_change(changes, REMOVAL_DEADLINE.saturating_sub(stopped_at.elapsed())).await;
        assert_eq!(change, ClusterChange::Remove(all[2].clone()));
        eprintln!("{observer} reported c removed {:?} after it stopped", stopped_at.elapsed());
    }
    assert_eq!(names(&a), ["a", "b"]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_is_removed_then_added_as_a_new_incarnation() {
    let transport = ChannelTransport::default();
    let me_a = member("a", 1, 1);
    let a = start_node(&transport, CLUSTER_ID, &me_a, &[]).await;
    let b_first = start_node(&transport, CLUSTER_ID, &member("b", 1, 2), &[&a]).await;
    let old_b = as_seen(&member("b", 1, 2), &b_first);
    let both = vec![as_seen(&me_a, &a), old_b.clone()];
    wait_until("a lists a and b", || a.live_members() == both).await;
    let mut changes = subscribe_after_adds(&a, &both).await;

    b_first.shutdown().await;
    let new_b = ClusterMember { incarnation: 2, connections: 3, ..old_b.clone() };
    let b_second = start_node(&transport, CLUSTER_ID, &new_b, &[&a]).await;

    assert_eq!(next_change(&mut changes, CONVERGENCE_DEADLINE).await, ClusterChange::Remove(old_b));
    assert_eq!(next_change(&mut changes, CONVERGENCE_DEADLINE).await, ClusterChange::Add(new_b.clone()));
    assert_eq!(a.live_members(), vec![as_seen(&me_a, &a), new_b]);
    a.shutdown().await;
    b_second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_and_connection_changes_reach_other_nodes_as_updates() {
    let transport = ChannelTransport::default();
    let (me_a, me_b) = (member("a", 1, 1), member("b", 1, 2));
    let a = start_node(&transport, CLUSTER_ID, &me_a, &[]).await;
    let b = start_node(&transport, CLUSTER_ID, &me_b, &[&a]).await;
    let both = vec![as_seen(&me_a, &a), as_seen(&me_b, &b)];
    wait_until("a lists a and b", || a.live_members() == both).await;
    let mut changes = subscribe_after_adds(&a, &both).await;

    b.set_connections(42).await;
    b.set_role("draining").await;

    let updated_b = ClusterMember { connections: 42, role: "draining".to_string(), ..both[1].clone() };
    loop {
        // The two keys may arrive in one gossip round or in two.
        match next_change(&mut changes, CONVERGENCE_DEADLINE).await {
            ClusterChange::Update(member) if member == updated_b => break,
            ClusterChange::Update(member) if member.name == "b" => continue,
            other => panic!("expected only updates of b, got {other:?}"),
        }
    }
    wait_until("b sees its own update", || b.live_members().get(1) == Some(&updated_b)).await;
    assert_eq!(a.live_members(), vec![both[0].clone(), updated_b]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_discover_each_other_over_udp_on_ports_picked_at_bind() {
    let (me_a, me_b) = (member("a", 1, 1), member("b", 1, 2));
    let a = start_node(&UdpTransport, CLUSTER_ID, &me_a, &[]).await;
    let b = start_node(&UdpTransport, CLUSTER_ID, &me_b, &[&a]).await;
    assert_ne!(a.gossip_addr().port(), 0);
    assert_ne!(a.gossip_addr(), b.gossip_addr());

    let expected = vec![as_seen(&me_a, &a), as_seen(&me_b, &b)];
    for node in [&a, &b] {
        wait_until("both nodes list both members over UDP", || node.live_members() == expected).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_cluster_ids_do_not_see_each_other() {
    let transport = ChannelTransport::default();
    let a = start_node(&transport, CLUSTER_ID, &member("a", 1, 1), &[]).await;
    let stranger = start_node(&transport, "another-cluster", &member("stranger", 1, 2), &[&a]).await;
    let c = start_node(&transport, CLUSTER_ID, &member("c", 1, 3), &[&a]).await;

    // `c` joined after `stranger` with the same seed: once `a` and `c` see each
    // other, the stranger has had as many chances to be seen.
    wait_until("a lists a and c", || names(&a) == ["a", "c"]).await;
    wait_until("c lists a and c", || names(&c) == ["a", "c"]).await;
    assert_eq!(names(&stranger), ["stranger"]);
    for node in [a, stranger, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_stream_ends_when_membership_shuts_down() {
    let transport = ChannelTransport::default();
    let me_a = member("a", 1, 1);
    let a = start_node(&transport, CLUSTER_ID, &me_a, &[]).await;
    let mut changes = subscribe_after_adds(&a, &[as_seen(&me_a, &a)]).await;

    a.shutdown().await;
    let end = tokio::time::timeout(CONVERGENCE_DEADLINE, changes.recv()).await;
    assert_eq!(end.expect("stream ends before the deadline"), None);
}

/// A sealed transport for `key`, with the counters it writes to.
fn sealed(key: &GossipKey) -> (SealedUdpTransport, Arc<GossipStats>) {
    let stats = Arc::new(GossipStats::default());
    (SealedUdpTransport::new(key.clone(), CLUSTER_ID, Arc::clone(&stats)), stats)
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_nodes_with_one_key_see_each_other_and_never_a_node_without_it() {
    let key = GossipKey::generate();
    let ((sealed_a, stats_a), (sealed_b, stats_b), (sealed_c, stats_c)) =
        (sealed(&key), sealed(&key), sealed(&key));
    // c's transport also goes through the test harness's fault wrapper (with no cut).
    let faulty_c = FaultyGossip { inner: Box::new(sealed_c), faults: LinkFaults::new() };
    let (me_a, me_b, me_c) = (member("a", 1, 1), member("b", 1, 2), member("c", 1, 3));
    let a = start_node(&sealed_a, CLUSTER_ID, &me_a, &[]).await;
    let (other_key, _) = sealed(&GossipKey::generate());
    let stranger = start_node(&other_key, CLUSTER_ID, &member("stranger", 1, 4), &[&a]).await;
    let plain = start_node(&UdpTransport, CLUSTER_ID, &member("plain", 1, 5), &[&a]).await;
    let b = start_node(&sealed_b, CLUSTER_ID, &me_b, &[&a]).await;
    let c = start_node(&faulty_c, CLUSTER_ID, &me_c, &[&a]).await;

    let expected = vec![as_seen(&me_a, &a), as_seen(&me_b, &b), as_seen(&me_c, &c)];
    for node in [&a, &b, &c] {
        wait_until("every sealed node lists the three sealed members", || node.live_members() == expected)
            .await;
    }
    // Both outsiders gossip with their seed every round: once a has rejected
    // several rounds of them, they have had every chance to be seen.
    wait_until("a rejects the outsiders' datagrams", || count(&stats_a.rejected_unauthenticated) >= 6).await;
    for node in [&a, &b, &c] {
        assert_eq!(node.live_members(), expected);
    }
    assert_eq!(names(&stranger), ["stranger"]);
    assert_eq!(names(&plain), ["plain"]);
    for stats in [&stats_a, &stats_b, &stats_c] {
        // Every datagram chitchat wrote passed the inflation bound and decoded.
        assert_eq!(count(&stats.rejected_malformed), 0);
        assert_eq!(count(&stats.dropped_oversize), 0);
    }
    for node in [a, b, c, stranger, plain] {
        node.shutdown().await;
    }
}

/// Peak resident memory of this process in KiB (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// An unsealed chitchat Ack (chitchat 0.13's wire format, built by hand)
/// whose delta is compressed blocks that each inflate to 65,535 zero bytes:
/// about 300 MB from one 64 KB datagram.
fn unsealed_decompression_bomb() -> Vec<u8> {
    const ZSTD_FRAME_OF_65535_ZEROS: [u8; 11] = [
        0x28, 0xb5, 0x2f, 0xfd, // zstd magic number
        0x60, 0xff, 0xfe, // single segment, content size 65,535
        0xfb, 0xff, 0x07, 0x00, // last block, RLE of 65,535 zero bytes
    ];
    let mut ack = 45_139u16.to_le_bytes().to_vec(); // chitchat magic number
    ack.extend([0, 2]); // protocol version 0, Ack
    while ack.len() + 14 < 65_507 {
        ack.extend([1, ZSTD_FRAME_OF_65535_ZEROS.len() as u8, 0]); // compressed block, length
        ack.extend(ZSTD_FRAME_OF_65535_ZEROS);
    }
    ack.push(0); // no more blocks
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_are_counted_and_the_sealed_node_keeps_gossiping() {
    let key = GossipKey::generate();
    let ((sealed_a, stats_a), (sealed_b, _)) = (sealed(&key), sealed(&key));
    let (me_a, me_b) = (member("a", 1, 1), member("b", 1, 2));
    let a = start_node(&sealed_a, CLUSTER_ID, &me_a, &[]).await;
    let b = start_node(&sealed_b, CLUSTER_ID, &me_b, &[&a]).await;
    let both = vec![as_seen(&me_a, &a), as_seen(&me_b, &b)];
    wait_until("b lists a and b", || b.live_members() == both).await;

    let hostile = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bomb = unsealed_decompression_bomb();
    assert!(bomb.len() > 65_000 && bomb.len() <= 65_507);
    let mut datagrams: Vec<Vec<u8>> = [0, 1, 23, 39, 40, 41, 100, 1_472, 9_000, 65_507]
        .into_iter()
        .map(|len| (0..len).map(|_| rand::random()).collect())
        .collect();
    datagrams.extend(std::iter::repeat_n(bomb, 5));
    let peak_before = peak_rss_kib();
    let rejected_before = count(&stats_a.rejected_unauthenticated);
    for (sent, datagram) in datagrams.iter().enumerate() {
        hostile.send_to(datagram, a.gossip_addr()).await.unwrap();
        // One at a time, so none is lost to a full socket buffer.
        let expected = rejected_before + sent as u64 + 1;
        wait_until("a counts the hostile datagram", || count(&stats_a.rejected_unauthenticated) >= expected)
            .await;
    }
    if let (Some(before), Some(after)) = (peak_before, peak_rss_kib()) {
        // Each bomb would inflate to over 300 MB inside chitchat.
        assert!(after - before < 64 * 1024, "peak RSS grew by {} KiB", after - before);
    }
    assert_eq!(count(&stats_a.rejected_malformed), 0);

    a.set_connections(7).await;
    let updated_a = ClusterMember { connections: 7, ..both[0].clone() };
    wait_until("b sees a's update after the flood", || {
        b.live_members() == [updated_a.clone(), both[1].clone()]
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}
