//! Cluster operations on the example cluster as real processes: removing a
//! dead node for good (`DELETE /api/cluster/nodes/{name}` and
//! `starling cluster remove-node`), bringing a node back on an empty disk
//! under its old name, and a rolling upgrade from the previous peer
//! protocol version (N-1) with no full stop.
//!
//! The upgrade test runs the build named by `PREVIOUS_STARLING_BIN` (made
//! by `scripts/previous-build.sh` from the commit in
//! `tests/previous-build/COMMIT`, the last build of the previous peer
//! protocol). Without it the test says so and passes, unless
//! `CI_REQUIRE_PREVIOUS_BUILD=1` (set by `scripts/test.sh`, which always
//! builds it), where it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::processes::{eventually, ProcessCluster, Received, BIN};
use serde_json::{json, Value};

/// How long a cluster condition may take here (elections, gossip noticing
/// a death, a learner catching up).
const PATIENCE: Duration = Duration::from_secs(20);

/// Whether every running node's `/api/cluster` lists `name` alive, as a
/// voter when `voter`.
async fn listed_everywhere(cluster: &ProcessCluster, name: &str, voter: bool) -> Result<(), String> {
    for i in cluster.running() {
        let view = cluster.cluster_view(i).await.ok_or(format!("{} does not answer", cluster.name(i)))?;
        let listed = view["nodes"].as_array().into_iter().flatten().find(|n| n["name"] == json!(name));
        match listed {
            Some(node) if !voter || node["voter"] == json!(true) => {}
            _ => return Err(format!("{}: {view}", cluster.name(i))),
        }
    }
    Ok(())
}

/// Every reader gets the message `publisher` publishes to `room` (G2 across nodes).
async fn delivered(
    publisher: &starling_client::Client,
    room: &str,
    readers: &[&Received],
    text: &str,
) -> Result<(), String> {
    let reply = publisher.publish(room, json!(text)).await.map_err(|e| format!("publish {text}: {e}"))?;
    eventually(&format!("`{text}` reaches every reader"), PATIENCE, async || {
        for reader in readers {
            if !reader.messages().contains(&(reply.epoch, reply.offset)) {
                return Err(format!("missing ({}, {})", reply.epoch, reply.offset));
            }
        }
        Ok(())
    })
    .await;
    Ok(())
}

/// Runs `starling cluster remove-node NAME --api URL` with the API key in
/// `STARLING_API_KEY`: (success, stdout, stderr).
fn remove_with_cli(cluster: &ProcessCluster, i: usize, name: &str) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(["cluster", "remove-node", name, "--api", &format!("http://{}", cluster.api_addr(i))])
        .env("STARLING_API_KEY", &cluster.secrets.api_key)
        .output()
        .expect("run starling cluster remove-node");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

/// A dead voter removed for good gives up its seat: the two others go on
/// as the whole group, and the node can come back on an empty disk under
/// its old name (added as a learner and promoted, as any new node). A live
/// node and an unknown name are refused, and the request works from a
/// follower (which asks the leader over its peer link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_removed_for_good_gives_up_its_seat_and_may_return_on_an_empty_disk() {
    const ROOM: &str = "chat:remove-node";
    let mut cluster = ProcessCluster::example("remove-node");
    let (leader, _) = cluster.form().await;
    let followers = cluster.followers(leader);
    let (victim, asker) = (followers[0], followers[1]);
    let victim_name = cluster.name(victim).to_string();

    let (status, body) = cluster.remove_node(asker, &victim_name).await;
    assert_eq!(status, 409, "a live node is not removed: {body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("is alive"), "{body}");
    let (status, body) = cluster.remove_node(asker, "node-9").await;
    assert_eq!(status, 404, "an unknown node: {body}");
    let (status, body) = cluster.remove_node(leader, cluster.name(leader)).await;
    assert_eq!(status, 409, "the leader itself: {body}");

    cluster.kill(victim);
    // Until gossip notices the death the node still counts as alive (409).
    let line = eventually("the CLI removes the dead node through a follower", PATIENCE, async || {
        match remove_with_cli(&cluster, asker, &victim_name) {
            (true, stdout, _) => Ok(stdout),
            (false, _, stderr) => Err(stderr),
        }
    })
    .await;
    let mut survivors = [cluster.name(leader).to_string(), cluster.name(asker).to_string()];
    survivors.sort();
    assert_eq!(
        line,
        format!("removed {victim_name} (a voter); voters now: {}; learners: none", survivors.join(", "))
    );
    let (status, body) = cluster.remove_node(leader, &victim_name).await;
    assert_eq!(status, 404, "removed means no longer a member: {body}");
    // Nothing lists it any more, not even as down.
    eventually("the removed node is gone from every node's view", PATIENCE, async || {
        for i in [leader, asker] {
            let (_, stats) = cluster.api_get(i, "/api/stats").await.ok_or("no answer")?;
            let nodes = &stats["cluster"]["nodes"];
            if nodes.as_array().into_iter().flatten().any(|n| n["name"] == json!(victim_name)) {
                return Err(format!("{}: {nodes}", cluster.name(i)));
            }
        }
        Ok(())
    })
    .await;

    // Two voters are the whole group: joins commit, messages cross nodes.
    let (_reader, read) = cluster.member(leader, "reader", ROOM).await;
    let (writer, _) = cluster.member(asker, "writer", ROOM).await;
    delivered(&writer, ROOM, &[&read], "two voters serve").await.unwrap();

    // The same name on an empty disk is a new node: a learner, then a voter.
    cluster.wipe_data_of(victim);
    cluster.start_node(victim).await;
    eventually("the returning node is a voter on every node", PATIENCE, async || {
        listed_everywhere(&cluster, &victim_name, true).await
    })
    .await;
    let (_back, back) = cluster.member(victim, "back", ROOM).await;
    let present = cluster.presence(leader, ROOM).await.unwrap();
    assert!(present.contains(&("back".to_string(), victim_name.clone())), "G1: {present:?}");
    delivered(&writer, ROOM, &[&read, &back], "three again").await.unwrap();
}

/// The previous build, if one was made (see the module doc).
fn previous_build() -> Option<PathBuf> {
    let path = std::env::var_os("PREVIOUS_STARLING_BIN").map(PathBuf::from);
    match path {
        Some(path) if path.is_file() => Some(path),
        _ if std::env::var("CI_REQUIRE_PREVIOUS_BUILD").as_deref() == Ok("1") => {
            panic!("PREVIOUS_STARLING_BIN does not name a file (CI_REQUIRE_PREVIOUS_BUILD=1)")
        }
        _ => None,
    }
}

/// A rolling upgrade from the previous peer protocol: three nodes of the
/// previous build are replaced one at a time (SIGTERM, start the new build
/// on the same data dir), followers first, the leader last. At every step
/// the mixed cluster keeps one group, joins on any node are in presence
/// everywhere (G1), and messages cross between old and new nodes both ways
/// (G2). A new node does not send an old leader what it cannot read (the
/// removal request, refused with 409), and once all are new it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_the_previous_peer_protocol_needs_no_full_stop() {
    const ROOM: &str = "chat:upgrade";
    let Some(previous) = previous_build() else {
        eprintln!("skipped: PREVIOUS_STARLING_BIN is not set (scripts/previous-build.sh makes it)");
        return;
    };
    let mut cluster = ProcessCluster::example("rolling-upgrade");
    for spec in &mut cluster.specs {
        spec.bin = Some(previous.clone());
    }
    let (leader, _) = cluster.form().await;
    let mut order = cluster.followers(leader);
    order.push(leader);

    let mut readers = Vec::new();
    for i in 0..3 {
        readers.push(cluster.member(i, &format!("reader-{i}"), ROOM).await);
    }
    for (step, &i) in order.iter().enumerate() {
        let name = cluster.name(i).to_string();
        let status = cluster.terminate(i).await;
        assert!(status.success(), "{name} exited with {status} after SIGTERM");
        cluster.specs[i].bin = None;
        cluster.start_node(i).await;
        eprintln!("step {}: {name} runs this build", step + 1);
        eventually("one leader, known to every node", PATIENCE, async || {
            let mut leaders = Vec::new();
            for j in 0..3 {
                let view =
                    cluster.cluster_view(j).await.ok_or(format!("{} does not answer", cluster.name(j)))?;
                let alive = view["nodes"].as_array().map_or(0, |n| n.len());
                if alive != 3 {
                    return Err(format!("{}: {view}", cluster.name(j)));
                }
                leaders.push(view["leader"].clone());
            }
            leaders.dedup();
            (leaders.len() == 1 && !leaders[0].is_null()).then_some(()).ok_or(format!("leaders {leaders:?}"))
        })
        .await;
        // The upgraded node's clients join again (its old ones were closed).
        let (client, events) = eventually("a client of the upgraded node joins", PATIENCE, async || {
            let (client, events) = cluster.connect(i, &format!("reader-{i}-{step}")).await?;
            client.join(ROOM, None).await.map_err(|e| e.to_string())?;
            Ok((client, events))
        })
        .await;
        readers[i] = (client, Received::record(events));
        for j in 0..3 {
            let present = cluster.presence(j, ROOM).await.unwrap();
            assert!(
                present.iter().any(|(user, node)| *user == format!("reader-{i}-{step}") && *node == name),
                "G1 on {} after upgrading {name}: {present:?}",
                cluster.name(j)
            );
        }
        let all: Vec<&Received> = readers.iter().map(|(_, received)| received).collect();
        for (j, (publisher, _)) in readers.iter().enumerate() {
            let text = format!("step {} from {}", step + 1, cluster.name(j));
            delivered(publisher, ROOM, &all, &text).await.unwrap();
        }
        // While the leader runs the previous build, a new follower does not
        // send it the request that build cannot read.
        let leader_now = cluster.cluster_view(i).await.unwrap()["leader"].as_str().unwrap().to_string();
        let leader_is_old = order[step + 1..].iter().any(|&j| cluster.name(j) == leader_now);
        if leader_is_old && leader_now != name {
            let (status, body) = cluster.remove_node(i, "node-9").await;
            assert_eq!(status, 409, "asking an old leader: {body}");
            let message = body["error"]["message"].as_str().unwrap_or("");
            assert!(message.contains("speaks peer protocol 7"), "{body}");
        }
    }
    // All new: a follower's removal request reaches the leader.
    let leader_now = cluster.cluster_view(0).await.unwrap()["leader"].as_str().unwrap().to_string();
    let follower = (0..3).find(|&j| cluster.name(j) != leader_now).unwrap();
    let (status, body): (u16, Value) = cluster.remove_node(follower, "node-9").await;
    assert_eq!(status, 404, "the leader answered the forwarded request: {body}");
}
