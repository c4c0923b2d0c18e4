//! The example cluster (`config/cluster/node-1.toml` .. `node-3.toml`) as
//! three real `starling` processes: it forms exactly one Raft group, fails
//! over when its leader is killed, keeps serving when a follower dies,
//! evicts the members of dead or paused nodes within 5 s (G4), takes a
//! restarted node back as a new incarnation, and regains quorum from disk
//! after a full restart. Where Linux network namespaces are permitted, a
//! partition checks G5.
//!
//! Each test runs the files as written, overriding with `STARLING_` variables
//! only the data dir (a fresh temp dir), every listen address (free ports),
//! the seeds and peer TLS (the harness in `common::processes`), so tests run
//! in parallel and never collide with a dev cluster on the default ports.
//! Every process is killed when its test ends, passed or not; a failing test
//! prints each node's recent log lines.
//!
//! The partition test builds four namespaces (a hub with a bridge, one per
//! node), reruns this test binary inside the hub so that its clients reach
//! every node, and cuts node-to-node traffic with blackhole routes. It skips
//! (with a message) where `ip netns add` is not permitted.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::processes::{eventually, partition, Namespaces, ProcessCluster, Received, Signal};
use serde_json::{json, Value};
use starling_client::{Client, ConnectOptions, JoinOptions, StreamPosition};

/// G4: a dead node's members are gone everywhere, with `left` events, within this.
const EVICTION_BOUND: Duration = Duration::from_secs(5);
/// How long a wait for any cluster condition in a test may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(15);
/// Pace of the publishing loop: below the default 50 publishes/s per connection.
const PUBLISH_EVERY: Duration = Duration::from_millis(25);
/// Pace of the joining loop (a fresh connection per join).
const JOIN_EVERY: Duration = Duration::from_millis(150);

// ---------------------------------------------------------------------------
// Load while nodes fail

/// What one request in a loop got, and when it was sent.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    /// `(epoch, offset)` of a publish (zeros for a join), or the error.
    result: Result<(u64, u64), String>,
}

type Attempts = Arc<Mutex<Vec<Attempt>>>;

/// Publishes to `room` every `PUBLISH_EVERY` until `stop` (at most `max` times).
fn publish_loop(client: Client, room: &'static str, stop: Arc<AtomicBool>, max: u64) -> Attempts {
    let attempts = Attempts::default();
    let sink = Arc::clone(&attempts);
    tokio::spawn(async move {
        for n in 0..max {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let at = Instant::now();
            let result = client.publish(room, json!({ "n": n })).await;
            let result = result.map(|r| (r.epoch, r.offset)).map_err(|e| e.to_string());
            sink.lock().unwrap().push(Attempt { at, result });
            tokio::time::sleep_until((at + PUBLISH_EVERY).into()).await;
        }
    });
    attempts
}

/// Connects a fresh client to each of `nodes` in turn and joins `room`,
/// every `JOIN_EVERY` until `stop` (at most `max` joins). The joined clients
/// stay connected until the loop ends.
fn join_loop(
    cluster: Arc<Vec<(String, String)>>,
    room: &'static str,
    stop: Arc<AtomicBool>,
    max: usize,
) -> Attempts {
    let attempts = Attempts::default();
    let sink = Arc::clone(&attempts);
    tokio::spawn(async move {
        let mut joined = Vec::new();
        for n in 0..max {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (url, token) = &cluster[n % cluster.len()];
            let at = Instant::now();
            let options = ConnectOptions::new(url).token(token).reply_timeout(Duration::from_secs(5));
            let result = match Client::connect(options).await {
                Ok((client, events)) => {
                    let result = client.join(room, None).await.map(|_| (0, 0)).map_err(|e| e.to_string());
                    joined.push((client, events));
                    result
                }
                Err(error) => Err(format!("connect: {error}")),
            };
            sink.lock().unwrap().push(Attempt { at, result });
            tokio::time::sleep_until((at + JOIN_EVERY).into()).await;
        }
    });
    attempts
}

/// (URL, token) pairs for joiners on `nodes`, one user per node.
fn joiner_targets(cluster: &ProcessCluster, nodes: &[usize]) -> Arc<Vec<(String, String)>> {
    let targets = nodes
        .iter()
        .map(|&i| (cluster.specs[i].ws_url(), cluster.token(&format!("joiner-{}", cluster.specs[i].name))))
        .collect();
    Arc::new(targets)
}

/// G3 as one member saw it: no message twice, epochs never going back, and
/// each epoch's offsets exactly 1, 2, 3, ... (a killed owner may cut the end
/// of its epoch, never a piece out of the middle).
fn assert_gapless_per_epoch(who: &str, messages: &[(u64, u64)]) {
    let mut expected: Option<(u64, u64)> = None;
    for &(epoch, offset) in messages {
        match expected {
            Some((current, next)) if epoch == current => {
                assert_eq!(
                    offset, next,
                    "{who}: epoch {epoch} expected offset {next}, got {offset}: {messages:?}"
                )
            }
            Some((current, _)) => {
                assert!(epoch > current, "{who}: epoch went back from {current} to {epoch}: {messages:?}");
                assert_eq!(offset, 1, "{who}: epoch {epoch} does not start at offset 1: {messages:?}");
            }
            None => assert_eq!(offset, 1, "{who}: the first message is not offset 1: {messages:?}"),
        }
        expected = Some((epoch, offset + 1));
    }
}

/// The acknowledged publishes among `attempts`.
fn acknowledged(attempts: &Attempts) -> Vec<(u64, u64)> {
    attempts.lock().unwrap().iter().filter_map(|a| a.result.clone().ok()).collect()
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_expect_3_forms_exactly_one_group_with_one_leader_every_time() {
    let mut cluster = ProcessCluster::example("formation");
    for round in 1..=3 {
        let started = Instant::now();
        cluster.start_all_at_once().await;
        let leader = cluster.agreed_leader(&[0, 1, 2], Some(3), |_| true).await;
        let (leader, took) = (cluster.index_of(&leader), started.elapsed());
        eprintln!("round {round}: formed in {took:?}, leader {}", cluster.specs[leader].name);
        // Exactly one node formed the group (the others joined it), and all
        // agree on its term as well as its leader.
        let formers: Vec<&str> = (0..3)
            .filter(|&i| cluster.node(i).logged("forming the raft group"))
            .map(|i| cluster.specs[i].name.as_str())
            .collect();
        assert_eq!(formers, ["node-1"], "round {round}: the lowest name forms the group, once");
        let mut terms = Vec::new();
        for i in 0..3 {
            let view = cluster.cluster_view(i).await.expect("node answers");
            terms.push(view["term"].as_u64().unwrap_or(0));
            let (status, body) = cluster.api_get(i, "/readyz").await.expect("node answers");
            assert_eq!(status, 200, "round {round}: {} not ready: {body}", cluster.specs[i].name);
        }
        assert!(terms.windows(2).all(|pair| pair[0] == pair[1] && pair[0] > 0), "round {round}: {terms:?}");
        for (name, status) in cluster.terminate_all().await {
            assert!(status.success(), "round {round}: {name} exited with {status} after SIGTERM");
        }
        cluster.wipe_data();
    }
}

/// A message as a member saw it: epoch, offset, data.
type Seen = (u64, u64, Value);

/// Which node a failover test kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The Raft leader, which also owns the room.
    LeaderAndOwner,
    /// The room's owner, a follower.
    Owner,
    /// The Raft leader; a follower owns the room.
    Leader,
}

/// Kills `victim` with SIGKILL while a member on a surviving node publishes
/// every 25 ms, with members on every node and joins going on; the dead
/// node's member reconnects to a survivor with `since`. G4 (eviction within
/// 5 s), G8 (every acknowledged publish reaches every member exactly once,
/// in one gapless order, in the same epoch; the reconnected member with
/// `recovered: true`), and the publisher's order.
async fn kill_under_load(name: &str, victim: Victim) {
    const ROOM: &str = "chat:failover";
    let mut cluster = ProcessCluster::example(name);
    let (leader, took) = cluster.form().await;
    eprintln!("formed in {took:?}");
    let followers = cluster.followers(leader);
    let (owner, killed) = match victim {
        Victim::LeaderAndOwner => (leader, leader),
        Victim::Owner => (followers[0], followers[0]),
        Victim::Leader => (followers[0], leader),
    };
    let survivors: Vec<usize> = (0..cluster.specs.len()).filter(|&i| i != killed).collect();
    let killed_name = cluster.specs[killed].name.clone();
    // The first member's node owns the room.
    let first_user = format!("member-{}", cluster.specs[owner].name);
    let (first_client, first_received) = cluster.member(owner, &first_user, ROOM).await;
    let mut members = vec![(first_user, first_client, first_received)];
    for i in (0..cluster.specs.len()).filter(|&i| i != owner) {
        let user = format!("member-{}", cluster.specs[i].name);
        let (client, received) = cluster.member(i, &user, ROOM).await;
        members.push((user, client, received));
    }
    let dead_at = members.iter().position(|(user, _, _)| *user == format!("member-{killed_name}")).unwrap();
    let (doomed_user, _doomed_client, doomed_received) = members.remove(dead_at);
    let publisher = members.iter().find(|(_, c, _)| c.welcome().node != killed_name).unwrap().1.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let publishes = publish_loop(publisher, ROOM, Arc::clone(&stop), 2_000);
    let joins = join_loop(joiner_targets(&cluster, &survivors), ROOM, Arc::clone(&stop), 150);
    eventually("the publisher is under way", PATIENCE, async || {
        let ok = acknowledged(&publishes).len();
        (ok >= 10).then_some(()).ok_or(format!("{ok} publishes acknowledged"))
    })
    .await;
    let epoch = acknowledged(&publishes)[0].0;

    let killed_at = Instant::now();
    cluster.kill(killed);
    let mut led_again = killed_at;
    if killed == leader {
        let new_leader = cluster.agreed_leader(&survivors, None, |name| name != killed_name).await;
        led_again = Instant::now();
        eprintln!("new leader {new_leader} agreed {:?} after the kill", led_again - killed_at);
    }
    // The dead node's member comes back on a survivor with `since`, the
    // last message it received.
    let since = doomed_received.messages().last().copied().expect("the doomed member got messages");
    let (back, back_received, recovered) =
        eventually("the dead node's member rejoins elsewhere", PATIENCE, async || {
            let (client, events) = cluster.connect(survivors[0], &doomed_user).await?;
            let position = StreamPosition { epoch: since.0, offset: since.1 };
            let options = JoinOptions { since: Some(position), ..JoinOptions::default() };
            let reply = client.join_with(ROOM, options).await.map_err(|e| e.to_string())?;
            Ok((client, Received::record(events), reply.recovered))
        })
        .await;
    assert_eq!(recovered, Some(true), "the rejoin recovered from {since:?}");

    // G4: the killed node's member leaves, with a `left` event on every survivor.
    let evicted_at = eventually("every survivor got `left` for the killed member", PATIENCE, async || {
        let seen: Option<Vec<Instant>> = members.iter().map(|(_, _, r)| r.left(&doomed_user)).collect();
        seen.map(|times| times.into_iter().max().unwrap()).ok_or_else(|| "not yet".to_string())
    })
    .await;
    let evicted_after = evicted_at - killed_at;
    eprintln!("left events on every survivor {evicted_after:?} after the kill");
    assert!(evicted_after < EVICTION_BOUND, "G4: evicted {evicted_after:?} after the kill");

    eventually("20 more publishes acknowledged after the kill", PATIENCE, async || {
        let attempts = publishes.lock().unwrap();
        let later = attempts.iter().filter(|a| a.at > killed_at && a.result.is_ok()).count();
        (later >= 20).then_some(()).ok_or(format!("{later} so far"))
    })
    .await;
    let first_new = members.iter().filter_map(|(_, _, r)| r.first_message_after(killed_at)).max();
    eprintln!("first delivery on every survivor after the kill: {:?}", first_new.map(|at| at - killed_at));
    // Joins kept happening: every join sent once publishing worked again
    // and the survivors agreed on a leader succeeded.
    let first_ok =
        publishes.lock().unwrap().iter().find(|a| a.at > killed_at && a.result.is_ok()).unwrap().at;
    let first_ok = first_ok.max(led_again);
    eventually("a join succeeds after the failover", PATIENCE, async || {
        let attempts = joins.lock().unwrap();
        let later: Vec<_> = attempts.iter().filter(|a| a.at > first_ok).collect();
        if later.len() < 3 {
            return Err(format!("{} joins since", later.len()));
        }
        let failed: Vec<_> = later.iter().filter(|a| a.result.is_err()).collect();
        assert!(failed.is_empty(), "joins failed after the failover: {failed:?}");
        Ok(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    // A publish still in flight is neither counted nor required below.
    let attempts = publishes.lock().unwrap().clone();
    let refused = attempts.iter().filter(|a| a.result.is_err()).count();
    eprintln!("{} publishes, {refused} refused (retryable) around the kill", attempts.len());

    // G8: every acknowledged publish, exactly once, in one gapless order of
    // one epoch, for every member that stayed and for the one that came back.
    let acked = acknowledged(&publishes);
    assert!(acked.iter().all(|p| p.0 == epoch), "one epoch across the kill: {acked:?}");
    let last = acked.last().unwrap().1;
    for (user, _, received) in &members {
        eventually("every acknowledged publish arrived", PATIENCE, async || {
            let got = received.messages();
            let missing: Vec<_> = acked.iter().filter(|p| !got.contains(p)).collect();
            missing.is_empty().then_some(()).ok_or(format!("{user} misses {missing:?}"))
        })
        .await;
    }
    eventually("the rejoined member got every acknowledged publish", PATIENCE, async || {
        let got = back_received.messages();
        got.iter().any(|m| m.1 >= last).then_some(()).ok_or(format!("up to {:?}", got.last()))
    })
    .await;
    let mut everyone: Vec<(String, Vec<Seen>)> =
        members.iter().map(|(user, _, r)| (user.clone(), r.messages_with_data())).collect();
    let mut rejoined = doomed_received.messages_with_data();
    rejoined.extend(back_received.messages_with_data());
    everyone.push((format!("{doomed_user} (before and after its rejoin)"), rejoined));
    for (user, messages) in &everyone {
        let positions: Vec<(u64, u64)> = messages.iter().map(|m| (m.0, m.1)).collect();
        assert_gapless_per_epoch(user, &positions);
        assert!(positions.iter().all(|p| p.0 == epoch), "{user}: one epoch: {positions:?}");
        let first = positions.first().copied().unwrap();
        let missing: Vec<_> = acked.iter().filter(|p| p.1 >= first.1 && !positions.contains(p)).collect();
        assert!(missing.is_empty(), "{user} misses acknowledged {missing:?}");
        // The publisher's messages, in its send order.
        let sent: Vec<u64> = messages.iter().filter_map(|m| m.2["n"].as_u64()).collect();
        assert!(sent.windows(2).all(|w| w[0] < w[1]), "{user}: the publisher's order broke: {sent:?}");
    }
    drop(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_that_owns_the_room_loses_no_acknowledged_publish() {
    kill_under_load("leader-owner-kill", Victim::LeaderAndOwner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_rooms_owner_loses_no_acknowledged_publish() {
    kill_under_load("owner-kill", Victim::Owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_publish() {
    kill_under_load("leader-kill", Victim::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_follower_keeps_the_cluster_serving() {
    const ROOM: &str = "chat:follower";
    let mut cluster = ProcessCluster::example("follower-kill");
    let (leader, _) = cluster.form().await;
    let followers = cluster.followers(leader);
    let (victim, other) = (followers[0], followers[1]);
    let victim_name = cluster.specs[victim].name.clone();
    let survivors = [leader, other];
    // The room's owner is the leader's node (first member), which survives.
    let mut members = Vec::new();
    for i in survivors {
        let user = format!("member-{}", cluster.specs[i].name);
        let (client, received) = cluster.member(i, &user, ROOM).await;
        members.push((user, client, received));
    }
    let doomed_user = format!("member-{victim_name}");
    let (_doomed, _) = cluster.member(victim, &doomed_user, ROOM).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishes = publish_loop(members[1].1.clone(), ROOM, Arc::clone(&stop), 1_000);
    let joins = join_loop(joiner_targets(&cluster, &survivors), ROOM, Arc::clone(&stop), 150);
    eventually("the publisher is under way", PATIENCE, async || {
        let ok = acknowledged(&publishes).len();
        (ok >= 10).then_some(()).ok_or(format!("{ok} publishes acknowledged"))
    })
    .await;

    let killed_at = Instant::now();
    cluster.kill(victim);
    let evicted_at = eventually("every survivor got `left` for the killed member", PATIENCE, async || {
        let seen: Option<Vec<Instant>> = members.iter().map(|(_, _, r)| r.left(&doomed_user)).collect();
        seen.map(|times| times.into_iter().max().unwrap()).ok_or_else(|| "not yet".to_string())
    })
    .await;
    let evicted_after = evicted_at - killed_at;
    eprintln!("left events for the follower's member {evicted_after:?} after the kill");
    assert!(evicted_after < EVICTION_BOUND, "G4: evicted {evicted_after:?} after the kill");
    for i in survivors {
        let present = cluster.presence(i, ROOM).await.unwrap();
        assert!(present.iter().all(|(_, node)| *node != victim_name), "still present: {present:?}");
    }
    // Keep serving for a while after the eviction too.
    let until = Instant::now() + Duration::from_secs(1);
    eventually("the loops ran past the eviction", PATIENCE, async || {
        let (p, j) = (publishes.lock().unwrap().len(), joins.lock().unwrap().len());
        let last = joins.lock().unwrap().last().map(|a| a.at);
        (Instant::now() > until && last.is_some_and(|at| at > until))
            .then_some(())
            .ok_or(format!("{p} publishes, {j} joins"))
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    let publish_attempts = publishes.lock().unwrap().clone();
    let join_attempts = joins.lock().unwrap().clone();
    let failed_publishes: Vec<_> = publish_attempts.iter().filter(|a| a.result.is_err()).collect();
    let failed_joins: Vec<_> = join_attempts.iter().filter(|a| a.result.is_err()).collect();
    eprintln!("{} publishes and {} joins while a follower died", publish_attempts.len(), join_attempts.len());
    assert!(failed_publishes.is_empty(), "publishes failed: {failed_publishes:?}");
    assert!(failed_joins.is_empty(), "joins failed: {failed_joins:?}");
    let acked = acknowledged(&publishes);
    assert!(acked.iter().all(|p| p.0 == acked[0].0), "the owner survived, so the epoch stays: {acked:?}");
    for (user, _, received) in &members {
        eventually("every acknowledged publish arrived", PATIENCE, async || {
            let got = received.messages();
            let missing = acked.iter().filter(|p| !got.contains(p)).count();
            (missing == 0).then_some(()).ok_or(format!("{user} misses {missing}"))
        })
        .await;
        assert_gapless_per_epoch(user, &received.messages());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_evicted_and_its_clients_are_told_to_reconnect() {
    const ROOM: &str = "chat:paused";
    let mut cluster = ProcessCluster::example("pause");
    let (leader, _) = cluster.form().await;
    let followers = cluster.followers(leader);
    let (paused, other) = (followers[0], followers[1]);
    let paused_name = cluster.specs[paused].name.clone();
    let mut observers = Vec::new();
    for i in [leader, other] {
        let user = format!("member-{}", cluster.specs[i].name);
        let (client, received) = cluster.member(i, &user, ROOM).await;
        observers.push((client, received));
    }
    let sleeper_user = format!("member-{paused_name}");
    let (_sleeper, sleeper) = cluster.member(paused, &sleeper_user, ROOM).await;

    let stopped_at = Instant::now();
    cluster.signal(paused, Signal::Stop);
    let evicted_at = eventually("the others got `left` for the paused node's member", PATIENCE, async || {
        let seen: Option<Vec<Instant>> = observers.iter().map(|(_, r)| r.left(&sleeper_user)).collect();
        seen.map(|times| times.into_iter().max().unwrap()).ok_or_else(|| "not yet".to_string())
    })
    .await;
    let evicted_after = evicted_at - stopped_at;
    eprintln!("left events {evicted_after:?} after SIGSTOP");
    assert!(evicted_after < EVICTION_BOUND, "G4: evicted {evicted_after:?} after SIGSTOP");
    for i in [leader, other] {
        let present = cluster.presence(i, ROOM).await.unwrap();
        assert!(present.iter().all(|(_, node)| *node != paused_name), "still present: {present:?}");
    }
    assert!(sleeper.closed().is_none(), "the paused node's client was closed while the node was stopped");

    let resumed_at = Instant::now();
    cluster.signal(paused, Signal::Cont);
    let (closed_at, code) = eventually("the paused node closes its evicted client", PATIENCE, async || {
        sleeper.closed().ok_or_else(|| "still open".to_string())
    })
    .await;
    eprintln!("client closed with {code:?} {:?} after SIGCONT", closed_at - resumed_at);
    assert_eq!(code, Some(1012), "the evicted node's client must be told to reconnect");

    // Told to reconnect, the client can: the node serves joins again, and
    // the new member is present on the other nodes.
    let rejoined_user = format!("again-{paused_name}");
    eventually("a client of the resumed node joins again", PATIENCE, async || {
        let (client, _events) = cluster.connect(paused, &rejoined_user).await?;
        client.join(ROOM, None).await.map_err(|e| e.to_string())?;
        let present = cluster.presence(leader, ROOM).await?;
        present.iter().any(|(user, _)| *user == rejoined_user).then_some(()).ok_or(format!("{present:?}"))
    })
    .await;
    cluster.agreed_leader(&[0, 1, 2], Some(3), |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_comes_back_as_a_new_incarnation_and_its_old_presence_is_gone() {
    const ROOM: &str = "chat:restart";
    let mut cluster = ProcessCluster::example("restart");
    let (leader, _) = cluster.form().await;
    let victim = cluster.followers(leader)[0];
    let victim_name = cluster.specs[victim].name.clone();
    let incarnation_of = |view: &Value| {
        view["nodes"].as_array().and_then(|nodes| {
            nodes.iter().find(|n| n["name"] == json!(victim_name)).and_then(|n| n["incarnation"].as_u64())
        })
    };
    let old_incarnation = incarnation_of(&cluster.cluster_view(leader).await.unwrap()).unwrap();
    let (_observer, observed) = cluster.member(leader, "observer", ROOM).await;
    let (_old, _) = cluster.member(victim, "old-member", ROOM).await;

    cluster.kill(victim);
    let restarted_at = Instant::now();
    cluster.start_node(victim).await;
    eventually("every node lists the restarted node with a higher incarnation", PATIENCE, async || {
        for i in 0..3 {
            let view = cluster.cluster_view(i).await.ok_or("no answer")?;
            let incarnation = incarnation_of(&view).ok_or(format!("not listed: {view}"))?;
            if incarnation <= old_incarnation {
                return Err(format!("incarnation {incarnation} is not above {old_incarnation}"));
            }
        }
        Ok(())
    })
    .await;
    eprintln!("new incarnation listed everywhere {:?} after the restart", restarted_at.elapsed());
    eventually("the old incarnation's member is gone from presence on every node", PATIENCE, async || {
        for i in 0..3 {
            let present = cluster.presence(i, ROOM).await?;
            if present.iter().any(|(user, _)| user == "old-member") {
                return Err(format!("{}: {present:?}", cluster.specs[i].name));
            }
        }
        Ok(())
    })
    .await;
    let gone_after = restarted_at.elapsed();
    eprintln!("old presence gone everywhere {gone_after:?} after the restart");
    assert!(observed.left("old-member").is_some(), "the observer got a `left` event for the old member");
    assert!(gone_after < EVICTION_BOUND, "G4: old presence gone {gone_after:?} after the restart");
    // The new incarnation serves: a member joined there is present elsewhere.
    let (_new, _) = cluster.member(victim, "new-member", ROOM).await;
    let present = cluster.presence(leader, ROOM).await.unwrap();
    assert!(present.contains(&("new-member".into(), victim_name.clone())), "{present:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_restart_regains_quorum_from_disk() {
    const ROOM: &str = "chat:reboot";
    let mut cluster = ProcessCluster::example("full-restart");
    cluster.form().await;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(cluster.member(i, &format!("before-{i}"), ROOM).await);
    }
    for (name, status) in cluster.terminate_all().await {
        assert!(status.success(), "{name} exited with {status} after SIGTERM");
    }
    drop(before);

    let restarted = Instant::now();
    cluster.start_one_by_one().await;
    let leader = cluster.agreed_leader(&[0, 1, 2], Some(3), |_| true).await;
    eprintln!("leader {leader} after the full restart in {:?}", restarted.elapsed());
    for i in 0..3 {
        let (status, body) = cluster.api_get(i, "/readyz").await.expect("node answers");
        assert_eq!(status, 200, "{} not ready: {body}", cluster.specs[i].name);
        assert!(!cluster.node(i).logged("forming the raft group"), "the group came back from disk");
    }
    eventually("the previous incarnations' members are gone", PATIENCE, async || {
        for i in 0..3 {
            let present = cluster.presence(i, ROOM).await?;
            if !present.is_empty() {
                return Err(format!("{}: {present:?}", cluster.specs[i].name));
            }
        }
        Ok(())
    })
    .await;
    let (_reader, received) = cluster.member(0, "reader", ROOM).await;
    let (writer, _) = cluster.member(2, "writer", ROOM).await;
    let reply = writer.publish(ROOM, json!("after the restart")).await.expect("publish after the restart");
    eventually("the cross-node publish arrives", PATIENCE, async || {
        let got = received.messages();
        got.contains(&(reply.epoch, reply.offset)).then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
}

// ---------------------------------------------------------------------------
// Regressions: each of these failed on the first cluster build (8311e1b).

/// G2 where no Raft traffic has opened the links: a room owned by a
/// follower delivers to the other follower from its very first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_room_owned_by_a_follower_reach_members_on_every_node_gapless() {
    const ROOM: &str = "chat:follower-owned";
    let mut cluster = ProcessCluster::example("follower-owned");
    let (leader, _) = cluster.form().await;
    let followers = cluster.followers(leader);
    // The first member's node owns the room: a follower, which has never
    // sent anything to the other follower.
    let (owner_side, _) = cluster.member(followers[0], "owner-side", ROOM).await;
    let mut members = Vec::new();
    for i in [followers[1], leader] {
        let user = format!("member-{}", cluster.specs[i].name);
        let (client, received) = cluster.member(i, &user, ROOM).await;
        members.push((user, client, received));
    }
    let mut acked = Vec::new();
    for n in 0..5 {
        let reply = owner_side.publish(ROOM, json!(n)).await.expect("publish");
        acked.push((reply.epoch, reply.offset));
    }
    for (user, _, received) in &members {
        eventually("every acknowledged publish arrived", Duration::from_secs(5), async || {
            let got = received.messages();
            (got == acked).then_some(()).ok_or(format!("{user} got {got:?} of {acked:?}"))
        })
        .await;
    }
}

/// A node that was paused (or cut off) comes back with the same incarnation.
/// Every node that saw it depart must forget that, or whichever becomes
/// leader later evicts the members it has gained since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joined_on_a_node_that_came_back_survive_a_later_leader_change() {
    const ROOM: &str = "chat:came-back";
    let mut cluster = ProcessCluster::example("came-back");
    let (leader, _) = cluster.form().await;
    let followers = cluster.followers(leader);
    let (paused, other) = (followers[0], followers[1]);
    let (_watcher, watched) = cluster.member(other, "watcher", ROOM).await;
    let (_sleeper, sleeper) = cluster.member(paused, "sleeper", ROOM).await;
    let (_doomed, _) = cluster.member(leader, "on-leader", ROOM).await;
    cluster.signal(paused, Signal::Stop);
    eventually("the paused node is evicted", PATIENCE, async || {
        watched.left("sleeper").ok_or_else(|| "not yet".to_string())
    })
    .await;
    cluster.signal(paused, Signal::Cont);
    eventually("the evicted client is closed", PATIENCE, async || {
        sleeper.closed().ok_or_else(|| "not yet".to_string())
    })
    .await;
    // The node is back with the same incarnation; a client joins there again.
    let (_back, back) = eventually("a client of the resumed node joins", PATIENCE, async || {
        let (client, events) = cluster.connect(paused, "back").await?;
        client.join(ROOM, None).await.map_err(|e| e.to_string())?;
        Ok((client, Received::record(events)))
    })
    .await;
    cluster.agreed_leader(&[0, 1, 2], Some(3), |_| true).await;
    let old_leader = cluster.specs[leader].name.clone();
    cluster.kill(leader);
    let new_leader = cluster.agreed_leader(&[paused, other], None, |name| name != old_leader).await;
    eventually("the new leader evicted the killed leader's member", PATIENCE, async || {
        watched.left("on-leader").ok_or_else(|| "not yet".to_string())
    })
    .await;
    // Evictions of departed nodes go out in one pass; give it a few
    // autopilot ticks to show whether it also hit the live node.
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window && back.closed().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let present = cluster.presence(other, ROOM).await.unwrap();
    assert!(
        present.iter().any(|(user, _)| user == "back"),
        "new leader {new_leader} evicted a live member: {present:?}, closed {:?}",
        back.closed()
    );
    assert!(back.closed().is_none(), "the live member's client was closed: {:?}", back.closed());
}

/// Nodes started together (by a script or a service manager) can share a
/// boot millisecond, their incarnation; their connection ids must still
/// differ, or the room table merges their members. Starts the cluster until
/// that happens (at most 8 times) and then checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_in_the_same_millisecond_keep_their_members_apart() {
    const ROOM: &str = "chat:same-ms";
    let mut cluster = ProcessCluster::example("same-ms");
    for round in 1..=8 {
        cluster.start_all_at_once().await;
        cluster.agreed_leader(&[0, 1, 2], Some(3), |_| true).await;
        let incarnations = cluster.incarnations(0).await;
        let mut distinct = incarnations.clone();
        distinct.dedup();
        if distinct.len() == 3 {
            eprintln!("round {round}: distinct incarnations {incarnations:?}");
            (0..3).for_each(|i| cluster.kill(i));
            cluster.wipe_data();
            continue;
        }
        eprintln!("round {round}: nodes share a boot millisecond: {incarnations:?}");
        let mut members = Vec::new();
        for i in 0..3 {
            members.push(cluster.member(i, &format!("user-{i}"), ROOM).await);
        }
        let mut conns: Vec<&str> = members.iter().map(|(client, _)| client.welcome().conn.as_str()).collect();
        conns.sort();
        conns.dedup();
        assert_eq!(conns.len(), 3, "connection ids repeat across nodes");
        for i in 0..3 {
            let present = cluster.presence(i, ROOM).await.unwrap();
            assert_eq!(present.len(), 3, "G1: every joined member is present: {present:?}");
        }
        return;
    }
    eprintln!("no two nodes shared a boot millisecond in 8 rounds: nothing to check");
}

// ---------------------------------------------------------------------------
// A partition (G5), in Linux network namespaces

/// Set by the partition test for the half of it that runs inside the hub namespace.
const NETNS_VAR: &str = "CLUSTER_PROCESS_NETNS";
/// The test that runs inside the hub namespace.
const INSIDE: &str = "partition_inside_network_namespaces";

#[test]
fn a_minority_answers_unavailable_and_presence_converges_within_five_seconds_of_healing() {
    let namespaces = match Namespaces::create() {
        Ok(namespaces) => namespaces,
        Err(reason) => {
            eprintln!("SKIPPED: network namespaces are not available here ({reason})");
            return;
        }
    };
    let output = namespaces.run_in_hub(INSIDE, NETNS_VAR);
    eprintln!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the partition test failed inside the namespaces (see above)");
}

/// The partition test proper, run by the test above inside the hub
/// namespace, so that its clients reach every node over the bridge while
/// node-to-node traffic is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run inside network namespaces by the partition test"]
async fn partition_inside_network_namespaces() {
    const ROOM: &str = "chat:partition";
    let Ok(prefix) = std::env::var(NETNS_VAR) else {
        eprintln!("SKIPPED: run by a_minority_answers_unavailable_and_presence_converges_within_five_seconds_of_healing");
        return;
    };
    let mut cluster = ProcessCluster::example_in_namespaces("partition", &prefix);
    let (leader, took) = cluster.form().await;
    eprintln!("formed in namespaces in {took:?}");
    // The leader is cut off: the minority that still believes it leads.
    let minority = leader;
    let majority = cluster.followers(minority);
    let minority_name = cluster.specs[minority].name.clone();
    let (_isolated, isolated) = cluster.member(minority, "isolated", ROOM).await;
    let mut observers = Vec::new();
    for &i in &majority {
        observers.push(cluster.member(i, &format!("member-{}", cluster.specs[i].name), ROOM).await);
    }

    let cut_at = Instant::now();
    partition(&prefix, minority + 1, false);
    let (late, _late_events) =
        cluster.connect(minority, "late").await.expect("the hub still reaches the minority");
    let refused = late.join(ROOM, None).await.expect_err("G5: the minority must not accept a join");
    eprintln!("minority answered the join with {refused} {:?} after the cut", cut_at.elapsed());
    assert_eq!(refused.code(), Some("unavailable"), "G5: {refused}");
    // The majority elects a leader, keeps serving, and evicts the minority's member.
    cluster.agreed_leader(&majority, None, |name| name != minority_name).await;
    let (_inside, _) = cluster.member(majority[0], "joined-during-partition", ROOM).await;
    let evicted_at = eventually("the majority evicts the minority's member", PATIENCE, async || {
        let seen: Option<Vec<Instant>> = observers.iter().map(|(_, r)| r.left("isolated")).collect();
        seen.map(|times| times.into_iter().max().unwrap()).ok_or_else(|| "not yet".to_string())
    })
    .await;
    eprintln!("majority evicted the minority's member {:?} after the cut", evicted_at - cut_at);

    let healed_at = Instant::now();
    partition(&prefix, minority + 1, true);
    let converged = eventually("presence is the same on every node", PATIENCE, async || {
        let mut views = Vec::new();
        for i in 0..3 {
            let mut present = cluster.presence(i, ROOM).await?;
            present.sort();
            views.push(present);
        }
        if views.windows(2).any(|pair| pair[0] != pair[1]) {
            return Err(format!("{views:?}"));
        }
        Ok(views.remove(0))
    })
    .await;
    let took = healed_at.elapsed();
    eprintln!("presence converged {took:?} after healing: {converged:?}");
    assert!(took < EVICTION_BOUND, "G5: presence converged {took:?} after healing");
    let users: Vec<&str> = converged.iter().map(|(user, _)| user.as_str()).collect();
    assert!(users.contains(&"joined-during-partition"), "the majority's join survives: {users:?}");
    assert!(!users.contains(&"late"), "the refused join must not appear: {users:?}");
    assert!(!users.contains(&"isolated"), "the evicted member must not come back: {users:?}");
    let (_, code) = eventually("the minority closes its evicted client", PATIENCE, async || {
        isolated.closed().ok_or_else(|| "still open".to_string())
    })
    .await;
    assert_eq!(code, Some(1012), "the minority's evicted client is told to reconnect");
}
