//! A three-node cluster in one process, with real listeners (TCP peer
//! links, UDP gossip, WebSocket clients): guarantees G1 to G4 across nodes.
//!
//! Cutting links needs the `faults` feature (`Node::start_with_faults`):
//! `cargo test --features faults --test cluster`, or `--all-features` as
//! `scripts/test.sh` runs it.

mod common;

use std::time::{Duration, Instant};

use std::sync::Arc;

use common::*;
use serde_json::json;
use starling::{Config, Node};
use starling_client::Event;
use starling_cluster::faults::LinkFaults;

fn cluster_config(name: &str, seeds: Vec<String>) -> Config {
    let mut config = test_config();
    config.node.name = name.into();
    let dir =
        std::env::temp_dir().join(format!("starling-cluster-{}-{name}-{}", std::process::id(), unique()));
    config.node.data_dir = dir;
    config.listen.peer = "127.0.0.1:0".parse().unwrap();
    config.listen.gossip = "127.0.0.1:0".parse().unwrap();
    config.cluster.bootstrap_expect = 3;
    config.cluster.seeds = seeds;
    // Only matters where a learner exists (the four-node test).
    config.cluster.replace_dead_voter_after_ms = 1_000;
    config.limits.publish_per_second = 10_000.0;
    config.limits.publish_burst = 10_000;
    certs::test_certs().apply(&mut config);
    config
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Starts three nodes seeded from the first and waits for one agreed leader.
async fn start_cluster() -> Vec<Node> {
    start_cluster_with(None).await
}

/// The same, with every peer link and gossip datagram going through `faults`.
async fn start_cluster_with(faults: Option<Arc<LinkFaults>>) -> Vec<Node> {
    let boot = |config: Config| {
        let faults = faults.clone();
        async move {
            starling::telemetry::init_logging(&config.log);
            Node::start_with_faults(config, faults).await.expect("node starts")
        }
    };
    let first = boot(cluster_config("node-1", Vec::new())).await;
    let seed = first.gossip_addr().unwrap().to_string();
    let second = boot(cluster_config("node-2", vec![seed.clone()])).await;
    let third = boot(cluster_config("node-3", vec![seed])).await;
    let began = Instant::now();
    let nodes = vec![first, second, third];
    wait_until("one leader known to every node", || {
        let leaders: Vec<_> = nodes.iter().map(|n| n.leader()).collect();
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    })
    .await;
    eprintln!("leader agreed in {:?}", began.elapsed());
    nodes
}

/// Drains every node at once, so the cluster keeps its quorum while the
/// nodes' last disconnects commit.
async fn stop_all(nodes: Vec<Node>) {
    let began = Instant::now();
    let dirs: Vec<_> = nodes.iter().map(|n| n.gateway().config.node.data_dir.clone()).collect();
    let stopping: Vec<_> = nodes.into_iter().map(|node| tokio::spawn(node.shutdown())).collect();
    for stop in stopping {
        stop.await.unwrap();
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    eprintln!("stopped in {:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_one_group_and_a_join_is_visible_in_presence_on_every_node() {
    let nodes = start_cluster().await;
    let (alice, _events) = connect_as(&nodes[0], "alice").await;
    assert_eq!(alice.welcome().node, "node-1");
    alice.join("chat:g1", Some(json!({"n": 1}))).await.unwrap();
    // G1: right after the join reply, presence on any node includes alice.
    for node in &nodes[1..] {
        let (reader, _) = connect_as(node, "reader").await;
        let members = reader.presence("chat:g1").await.unwrap();
        assert!(members.iter().any(|m| m.user == "alice" && m.node == "node-1"), "{members:?}");
    }
    // `/api/cluster` lists gossip's live nodes: the last node started sees
    // the others within a few gossip rounds.
    let deadline = Instant::now() + PATIENCE;
    let cluster = loop {
        let cluster = api(&nodes[2], "GET", "/api/cluster", "").await.json();
        if cluster["nodes"].as_array().is_some_and(|nodes| nodes.len() == 3) || Instant::now() > deadline {
            break cluster;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(cluster["nodes"].as_array().unwrap().len(), 3, "{cluster}");
    assert!(cluster["leader"].is_string(), "{cluster}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_published_on_any_node_reach_every_member_once_in_one_gapless_order() {
    const EACH: usize = 30;
    let nodes = start_cluster().await;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (client, events) = connect_as(node, &format!("user{i}")).await;
        client.join("chat:g2", None).await.unwrap();
        members.push((client, events));
    }
    // Everyone joined before anyone publishes (G2 is about after the reply).
    let mut tasks = Vec::new();
    for (i, (client, _)) in members.iter().enumerate() {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                client.publish("chat:g2", json!({"p": i, "n": n})).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = EACH * members.len();
    let mut orders = Vec::new();
    for (_, events) in members.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < total {
            if let Event::Message(m) = next_event(events).await {
                seen.push((m.epoch, m.offset, m.data));
            }
        }
        let offsets: Vec<u64> = seen.iter().map(|s| s.1).collect();
        assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>(), "gapless, in order, once");
        orders.push(seen);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "every member saw the same order");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_members_leave_presence_everywhere_with_left_events_within_five_seconds() {
    let mut nodes = start_cluster().await;
    // Kill a follower so this test is about eviction, not failover.
    let leader = nodes[0].leader().unwrap();
    let victim_index = nodes.iter().position(|n| n.gateway().node.as_ref() != leader).unwrap();
    let (doomed, _doomed_events) = connect_as(&nodes[victim_index], "doomed").await;
    doomed.join("chat:g4", None).await.unwrap();
    let mut observers = Vec::new();
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != victim_index) {
        let (client, events) = connect_as(node, &format!("observer{i}")).await;
        client.join("chat:g4", None).await.unwrap();
        observers.push((client, events));
    }
    let victim = nodes.remove(victim_index);
    let killed_at = Instant::now();
    victim.kill().await;
    for (client, events) in observers.iter_mut() {
        let left = next_matching(events, |e| match e {
            Event::Left { member, .. } if member.user == "doomed" => Some(member),
            _ => None,
        })
        .await;
        assert_eq!(left.user, "doomed");
        let members = client.presence("chat:g4").await.unwrap();
        assert!(members.iter().all(|m| m.user != "doomed"), "{members:?}");
    }
    let elapsed = killed_at.elapsed();
    eprintln!("presence converged {elapsed:?} after the kill");
    assert!(elapsed < Duration::from_secs(5), "G4: converged in {elapsed:?}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_room_owner_dies_a_new_owner_continues_the_epoch_and_members_agree() {
    let mut nodes = start_cluster().await;
    // The first joiner's node owns the room: make it the current leader, so
    // this also covers a leader failover.
    let leader = nodes[0].leader().unwrap();
    let owner_index = nodes.iter().position(|n| *n.gateway().node == *leader).unwrap();
    let (owner_client, _owner_events) = connect_as(&nodes[owner_index], "owner").await;
    owner_client.join("chat:owner", None).await.unwrap();
    let mut survivors = Vec::new();
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != owner_index) {
        let (client, events) = connect_as(node, &format!("survivor{i}")).await;
        client.join("chat:owner", None).await.unwrap();
        survivors.push((client, events));
    }
    let before = survivors[0].0.publish("chat:owner", json!("before")).await.unwrap();
    let victim = nodes.remove(owner_index);
    let killed_at = Instant::now();
    victim.kill().await;
    // Publish from a survivor until the room has a new owner (retrying the
    // documented, retryable `unavailable`).
    let after = within("a publish succeeds after the owner died", async {
        loop {
            match survivors[0].0.publish("chat:owner", json!("after")).await {
                Ok(position) => return position,
                Err(error) if error.code() == Some("unavailable") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("publish failed: {error}"),
            }
        }
    })
    .await;
    eprintln!("first publish after the owner's death: {:?}", killed_at.elapsed());
    // Every live node held offset 1, so the new owner continues the epoch.
    assert_eq!(after.epoch, before.epoch, "the same epoch: {before:?} then {after:?}");
    assert_eq!(after.offset, before.offset + 1, "gapless across the owner change");
    for (_, events) in survivors.iter_mut() {
        let seen = next_matching(events, |e| match e {
            Event::Message(m) if m.data == json!("after") => Some((m.epoch, m.offset)),
            _ => None,
        })
        .await;
        assert_eq!(seen, (after.epoch, after.offset));
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_node_joins_as_a_learner_and_replaces_a_voter_that_stays_dead() {
    let mut nodes = start_cluster().await;
    let seed = nodes[0].gossip_addr().unwrap().to_string();
    nodes.push(start(cluster_config("node-4", vec![seed])).await);
    let leader = nodes[0].leader().unwrap();
    wait_until("node-4 is in the group as a learner", || {
        let voters = nodes[0].voters().unwrap();
        voters.len() == 3
            && !voters.contains(&"node-4".to_string())
            && api_nodes_contains_learner(&nodes, "node-4")
    })
    .await;
    let victim =
        nodes.iter().position(|n| *n.gateway().node != *leader && &*n.gateway().node != "node-4").unwrap();
    let victim_name = nodes[victim].gateway().node.to_string();
    nodes.remove(victim).kill().await;
    wait_until("the dead voter's seat goes to node-4", || {
        nodes.iter().all(|n| {
            let voters = n.voters().unwrap();
            voters.contains(&"node-4".to_string()) && !voters.contains(&victim_name)
        })
    })
    .await;
    stop_all(nodes).await;
}

/// Whether `name` is in the Raft membership (voter or learner) on the leader.
fn api_nodes_contains_learner(nodes: &[Node], name: &str) -> bool {
    nodes.iter().any(|n| {
        n.leader().as_deref() == Some(&*n.gateway().node) && n.raft_members().contains(&name.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_leader_steps_down_so_the_others_elect_and_it_rejoins_as_a_voter_on_restart() {
    let mut nodes = start_cluster().await;
    let leader = nodes[0].leader().unwrap();
    let index = nodes.iter().position(|n| *n.gateway().node == *leader).unwrap();
    let config = nodes[index].gateway().config.as_ref().clone();
    let draining = nodes.remove(index);
    let began = Instant::now();
    draining.shutdown().await;
    wait_until("the others agree on a new leader", || {
        let new = nodes[0].leader();
        new.is_some() && new.as_deref() != Some(leader.as_str()) && nodes[1].leader() == new
    })
    .await;
    eprintln!("new leader {:?} {:?} after the drain began", nodes[0].leader(), began.elapsed());
    // The membership change that removed it reaches every survivor's log.
    wait_until("the old leader left the voters", || nodes.iter().all(|n| n.voters().unwrap().len() == 2))
        .await;
    let (client, _events) = connect_as(&nodes[0], "after").await;
    client.join("chat:after-drain", None).await.unwrap();
    // Back with a new incarnation (same name and data): a voter again.
    let mut config = config;
    config.cluster.seeds = vec![nodes[0].gossip_addr().unwrap().to_string()];
    nodes.push(start(config).await);
    wait_until("three voters again", || nodes.iter().all(|n| n.voters().unwrap().len() == 3)).await;
    stop_all(nodes).await;
}

/// Cuts every link (peer and gossip, both directions) between `a` and `b`.
fn cut(faults: &LinkFaults, a: &Node, b: &Node) {
    for (x, y) in [(a, b), (b, a)] {
        faults.cut_one_way(x.peer_addr().unwrap(), y.peer_addr().unwrap());
        faults.cut_one_way(x.gossip_addr().unwrap(), y.gossip_addr().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_node_answers_unavailable_and_presence_converges_after_healing() {
    let faults = LinkFaults::new();
    let nodes = start_cluster_with(Some(Arc::clone(&faults))).await;
    let leader = nodes[0].leader().unwrap();
    let isolated = nodes.iter().position(|n| *n.gateway().node != *leader).unwrap();
    let majority: Vec<usize> = (0..3).filter(|i| *i != isolated).collect();
    let (stranded, mut stranded_events) = connect_as(&nodes[isolated], "stranded").await;
    stranded.join("chat:g5", None).await.unwrap();
    let (watcher, mut watcher_events) = connect_as(&nodes[majority[0]], "watcher").await;
    watcher.join("chat:g5", None).await.unwrap();

    for &i in &majority {
        cut(&faults, &nodes[isolated], &nodes[i]);
    }
    // G5: the minority refuses membership changes instead of diverging.
    let (late, _late_events) = connect_as(&nodes[isolated], "late").await;
    let refused = late.join("chat:g5", None).await.unwrap_err();
    assert_eq!(refused.code(), Some("unavailable"), "{refused}");
    // The majority evicts the cut-off member and keeps serving.
    next_matching(&mut watcher_events, |e| match e {
        Event::Left { member, .. } if member.user == "stranded" => Some(()),
        _ => None,
    })
    .await;
    let (newcomer, _newcomer_events) = connect_as(&nodes[majority[1]], "newcomer").await;
    newcomer.join("chat:g5", None).await.unwrap();

    faults.heal_all();
    let healed = Instant::now();
    // The cut-off node learns its members were evicted and tells its clients.
    assert_eq!(close_code(&mut stranded_events).await, Some(1012));
    let mut readers = Vec::new();
    for node in &nodes {
        readers.push(connect_as(node, "reader").await.0);
    }
    let expected = vec!["newcomer".to_string(), "watcher".to_string()];
    within("presence converges on every node", async {
        loop {
            let mut all_equal = true;
            for reader in &readers {
                let mut users: Vec<String> = match reader.presence("chat:g5").await {
                    Ok(members) => members.into_iter().map(|m| m.user).collect(),
                    Err(_) => Vec::new(),
                };
                users.sort();
                all_equal &= users == expected;
            }
            if all_equal {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let converged = healed.elapsed();
    eprintln!("presence converged {converged:?} after healing");
    assert!(converged < Duration::from_secs(5), "G5: converged in {converged:?}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_way_cut_loses_no_acknowledged_join_and_nodes_agree_after_healing() {
    let faults = LinkFaults::new();
    let nodes = start_cluster_with(Some(Arc::clone(&faults))).await;
    let leader = nodes[0].leader().unwrap();
    let from = nodes.iter().position(|n| *n.gateway().node == *leader).unwrap();
    let to = (from + 1) % 3;
    // The leader can no longer reach one follower; the follower still
    // reaches the leader (and gossip is cut the same way).
    faults.cut_one_way(nodes[from].peer_addr().unwrap(), nodes[to].peer_addr().unwrap());
    faults.cut_one_way(nodes[from].gossip_addr().unwrap(), nodes[to].gossip_addr().unwrap());
    let mut acknowledged = Vec::new();
    let mut clients = Vec::new();
    for round in 0..6 {
        for (i, node) in nodes.iter().enumerate() {
            let user = format!("u{round}-{i}");
            let (client, events) = connect_as(node, &user).await;
            // Acknowledged joins must survive; refused ones must not appear.
            if client.join("chat:oneway", None).await.is_ok() {
                acknowledged.push(user);
            }
            clients.push((client, events));
        }
    }
    assert!(!acknowledged.is_empty(), "the majority kept accepting joins");
    faults.heal_all();
    let mut readers = Vec::new();
    for node in &nodes {
        readers.push(connect_as(node, "reader").await.0);
    }
    within("every node shows the same members, every acknowledged join among them", async {
        loop {
            let mut views = Vec::new();
            for reader in &readers {
                let mut users: Vec<String> = match reader.presence("chat:oneway").await {
                    Ok(members) => members.into_iter().map(|m| m.user).collect(),
                    Err(_) => Vec::new(),
                };
                users.sort();
                views.push(users);
            }
            let agree = views.windows(2).all(|w| w[0] == w[1]);
            // Members on the follower may have been evicted while it looked
            // dead to the leader (and told to reconnect); every other
            // acknowledged join is still there.
            let kept =
                acknowledged.iter().filter(|u| !u.ends_with(&format!("-{to}"))).all(|u| views[0].contains(u));
            if agree && kept {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_reads_work_right_after_formation_and_after_a_leader_change() {
    // The last committed entries here are a membership change and a new
    // leader's blank entry, not room commands: reads must not wait on them.
    let mut nodes = start_cluster().await;
    for node in &nodes {
        let (reader, _) = connect_as(node, "reader").await;
        assert_eq!(reader.presence("chat:fresh").await.unwrap(), vec![]);
    }
    let leader = nodes[0].leader().unwrap();
    let index = nodes.iter().position(|n| *n.gateway().node == *leader).unwrap();
    nodes.remove(index).kill().await;
    wait_until("a new leader", || {
        let new = nodes[0].leader();
        new.is_some() && new.as_deref() != Some(leader.as_str()) && nodes[1].leader() == new
    })
    .await;
    for node in &nodes {
        let (reader, _) = connect_as(node, "reader").await;
        let answered = within("presence after failover", reader.presence("chat:fresh")).await;
        assert_eq!(answered.unwrap(), vec![], "presence after a leader change");
    }
    stop_all(nodes).await;
}

/// G9: a connection's publishes to a room are one queue. Three publishes
/// are sent back to back from a node whose peer link to the room's owner is
/// cut; the first is refused retryably, and the two behind it are refused
/// too (held back), also when one of them is retried first. Retried in
/// order once the link heals, they are sequenced in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_refused_while_the_owner_is_unreachable_keep_their_order_when_retried() {
    let faults = LinkFaults::new();
    let nodes = start_cluster_with(Some(Arc::clone(&faults))).await;
    let (owner, _owner_events) = connect_as(&nodes[0], "owner").await;
    owner.join("chat:g9", None).await.unwrap();
    let (publisher, mut events) = connect_as(&nodes[1], "publisher").await;
    publisher.join("chat:g9", None).await.unwrap();
    let (a, b) = (nodes[1].peer_addr().unwrap(), nodes[0].peer_addr().unwrap());
    faults.cut_one_way(a, b);
    let publish = |key: &'static str| {
        publisher.request(json!({"type": "publish", "room": "chat:g9", "data": key, "idem": key}))
    };
    let (first, second, third) = tokio::join!(publish("a"), publish("b"), publish("c"));
    let refused = |result: Result<serde_json::Value, starling_client::ClientError>| {
        let error = result.expect_err("refused while the owner is unreachable");
        assert_eq!(error.code(), Some("unavailable"), "{error}");
        error.to_string()
    };
    refused(first);
    for later in [second, third] {
        let message = refused(later);
        assert!(message.contains("an earlier publish to this room was refused"), "{message}");
    }
    faults.heal_all();
    // Retrying a later one first is refused too: the refused one comes first.
    let out_of_order = publish("b").await.unwrap_err();
    assert!(out_of_order.to_string().contains("an earlier publish"), "{out_of_order}");
    let mut positions = Vec::new();
    for key in ["a", "b", "c"] {
        let reply = within("the retry", async {
            loop {
                match publish(key).await {
                    Ok(reply) => return reply,
                    Err(error) if error.code() == Some("unavailable") => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(error) => panic!("{error}"),
                }
            }
        })
        .await;
        positions.push(reply["offset"].as_u64().unwrap());
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = next_matching(&mut events, |e| match e {
            Event::Message(m) => Some(m.data),
            _ => None,
        })
        .await;
        seen.push(message);
    }
    assert_eq!(seen, vec![json!("a"), json!("b"), json!("c")], "sequenced in the order sent");
    stop_all(nodes).await;
}
