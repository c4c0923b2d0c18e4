//! The Rust client's reconnect policy against a real 3-node cluster
//! (`starling` processes from `config/cluster/`): a `Session` connected to
//! node A, joined to a room while a publisher on another node publishes
//! steadily; node A is killed with SIGKILL. The session moves to the next
//! URL, re-joins with `since` (the last message it delivered), is told
//! `recovered: true`, and has every acknowledged publish exactly once, in
//! one gapless order (G8), without the caller doing anything.
//!
//! Three kills: A is a plain member's node (the room is owned elsewhere);
//! A owns the room (the owner moves, the epoch continues; the publisher's
//! `Session` retries what is refused `unavailable`, in order); A is the
//! Raft leader and owns the room (an election as well).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::processes::{eventually, ProcessCluster};
use serde_json::{json, Value};
use starling_client::{CloseCause, Session, SessionEvent, SessionOptions};

const ROOM: &str = "chat:reconnect";
/// How long any wait for a cluster or client condition may take.
const PATIENCE: Duration = Duration::from_secs(20);
/// Pace of the publisher: below the default 50 publishes/s per connection.
const PUBLISH_EVERY: Duration = Duration::from_millis(25);

/// Everything a session yielded, stamped with its arrival time; a task
/// drains the stream so waiting never stalls the session.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<(Instant, SessionEvent)>>>);

impl Recorded {
    fn record(mut events: starling_client::SessionEvents) -> Recorded {
        let recorded = Recorded::default();
        let sink = recorded.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                sink.0.lock().unwrap().push((Instant::now(), event));
            }
        });
        recorded
    }

    fn events(&self) -> Vec<SessionEvent> {
        self.0.lock().unwrap().iter().map(|(_, e)| e.clone()).collect()
    }

    /// (epoch, offset, data) of every message, in delivery order.
    fn messages(&self) -> Vec<(u64, u64, Value)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|(_, event)| match event {
                SessionEvent::Message(m) if m.room == ROOM => Some((m.epoch, m.offset, m.data.clone())),
                _ => None,
            })
            .collect()
    }
}

/// An acknowledged publish: (epoch, offset, n).
type Acknowledged = (u64, u64, u64);

/// Publishes `{"n": n}` every `PUBLISH_EVERY` until `stop`; the task's
/// result is every acknowledged publish, (epoch, offset, n), and the
/// longest a publish took (retries after `unavailable` included).
fn publish_loop(
    session: Session,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Acknowledged>, Duration)> {
    tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut slowest = Duration::ZERO;
        for n in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let at = tokio::time::Instant::now();
            let outcome = session.publish(ROOM, json!({ "n": n })).await;
            slowest = slowest.max(at.elapsed());
            match outcome {
                Ok(result) => acknowledged.push((result.epoch, result.offset, n)),
                Err(error) => eprintln!("publish {n}: {error}"),
            }
            tokio::time::sleep_until(at + PUBLISH_EVERY).await;
        }
        (acknowledged, slowest)
    })
}

/// Which node dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The session's node; another node owns the room.
    SessionsNode,
    /// The session's node, which owns the room.
    SessionsNodeOwningTheRoom,
    /// The session's node, the Raft leader, which owns the room.
    LeaderOwningTheRoom,
}

async fn room_owner(cluster: &ProcessCluster, on: usize) -> String {
    eventually("the room has an owner", PATIENCE, async || {
        let (status, body) = cluster.api_get(on, &format!("/api/rooms/{ROOM}")).await.ok_or("no answer")?;
        let owner = body["owner"].as_str().filter(|_| status == 200);
        owner.map(str::to_string).ok_or(format!("HTTP {status}: {body}"))
    })
    .await
}

async fn session_survives_the_kill_of_its_node(name: &str, victim: Victim) {
    let mut cluster = ProcessCluster::example(name);
    let (leader, took) = cluster.form().await;
    eprintln!("formed in {took:?}");
    // A: the session's node, a follower (no election in the way) unless
    // the leader is the victim; B: another node, first in A's fallbacks;
    // C: the publisher's node.
    let followers = cluster.followers(leader);
    let (a, b, c) = match victim {
        Victim::LeaderOwningTheRoom => (leader, followers[0], followers[1]),
        _ => (followers[0], leader, followers[1]),
    };
    let url = |i: usize| cluster.specs[i].ws_url();

    // The room's first member decides its owner: B's anchor, or the session on A.
    let _anchor = match victim {
        Victim::SessionsNode => Some(cluster.member(b, "anchor", ROOM).await),
        Victim::SessionsNodeOwningTheRoom | Victim::LeaderOwningTheRoom => None,
    };
    let options = SessionOptions::new([url(a)])
        .fallback_urls([url(b), url(c)])
        .token(cluster.token("subscriber"))
        .reconnect_delay(Duration::from_millis(50), Duration::from_secs(1));
    let (subscriber, events) = Session::start(options);
    let received = Recorded::record(events);
    subscriber.join(ROOM, None).await.expect("the subscriber joins");
    assert_eq!(subscriber.welcome().unwrap().node, cluster.specs[a].name, "the session starts on A");
    let owner = room_owner(&cluster, b).await;
    let expected_owner = if victim == Victim::SessionsNode { b } else { a };
    assert_eq!(owner, cluster.specs[expected_owner].name, "the room's owner");

    let (publisher, _publisher_events) =
        Session::start(SessionOptions::new([url(c)]).token(cluster.token("publisher")));
    publisher.join(ROOM, None).await.expect("the publisher joins");
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publish_loop(publisher.clone(), Arc::clone(&stop));
    eventually("the subscriber has 20 messages", PATIENCE, async || {
        let got = received.messages().len();
        (got >= 20).then_some(()).ok_or(format!("{got} so far"))
    })
    .await;

    let killed_at = Instant::now();
    cluster.kill(a);
    let recovered = eventually("the session re-joins on another node", PATIENCE, async || {
        received
            .events()
            .iter()
            .find_map(|event| match event {
                SessionEvent::Resubscribed { room, recovered, missed, .. } if room == ROOM => {
                    Some((*recovered, *missed))
                }
                _ => None,
            })
            .ok_or_else(|| format!("state {:?}", subscriber.state()))
    })
    .await;
    eprintln!("re-joined {:?} after the kill", killed_at.elapsed());
    assert_eq!(recovered, (true, false), "the re-join recovered every missed message");
    let moved_to = subscriber.welcome().expect("connected again").node;
    assert_ne!(moved_to, cluster.specs[a].name, "the session moved off the killed node");
    let disconnected: Vec<CloseCause> = received
        .events()
        .iter()
        .filter_map(|event| match event {
            SessionEvent::Disconnected { cause, .. } => Some(*cause),
            _ => None,
        })
        .collect();
    assert!(!disconnected.is_empty(), "a Disconnected event came");

    // Keep publishing past the failover, then stop and wait for the loop
    // to end, so that no publish is in flight below.
    let mark = received.messages().len();
    eventually("30 more messages delivered after the re-join", PATIENCE, async || {
        let more = received.messages().len() - mark;
        (more >= 30).then_some(()).ok_or(format!("{more} so far"))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, slowest) =
        tokio::time::timeout(PATIENCE, publishing).await.expect("the publisher stops").unwrap();
    let last = acknowledged.last().copied().expect("publishes were acknowledged");
    eventually("the last acknowledged publish arrived", PATIENCE, async || {
        let got = received.messages();
        got.iter()
            .any(|m| (m.0, m.1) == (last.0, last.1))
            .then_some(())
            .ok_or(format!("up to {:?}", got.last()))
    })
    .await;

    // G8 through the session: every acknowledged publish exactly once, one
    // epoch, offsets 1, 2, 3, ... with no gap, in the publisher's order.
    let messages = received.messages();
    let epoch = acknowledged[0].0;
    assert!(acknowledged.iter().all(|p| p.0 == epoch), "one epoch across the kill: {acknowledged:?}");
    let positions: Vec<(u64, u64)> = messages.iter().map(|m| (m.0, m.1)).collect();
    let expected: Vec<(u64, u64)> = (1..=positions.len() as u64).map(|offset| (epoch, offset)).collect();
    assert_eq!(positions, expected, "gapless, once each, in one epoch");
    for (epoch, offset, n) in &acknowledged {
        let found = messages.iter().filter(|m| (m.0, m.1) == (*epoch, *offset)).collect::<Vec<_>>();
        assert_eq!(found.len(), 1, "acknowledged ({epoch}, {offset}) delivered once: {found:?}");
        assert_eq!(found[0].2, json!({ "n": n }), "at ({epoch}, {offset})");
    }
    let sent: Vec<u64> = messages.iter().filter_map(|m| m.2["n"].as_u64()).collect();
    assert!(sent.windows(2).all(|w| w[0] < w[1]), "the publisher's order: {sent:?}");
    eprintln!(
        "{} acknowledged, {} delivered, slowest publish {slowest:?}, moved to {moved_to}, disconnected by {disconnected:?}",
        acknowledged.len(),
        messages.len()
    );
    subscriber.close();
    publisher.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_node_is_killed_rejoins_elsewhere_and_gets_every_acknowledged_message_once() {
    session_survives_the_kill_of_its_node("session-node-kill", Victim::SessionsNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_the_killed_owner_rejoins_elsewhere_and_gets_every_acknowledged_message_once() {
    session_survives_the_kill_of_its_node("session-owner-kill", Victim::SessionsNodeOwningTheRoom).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_the_killed_leader_and_owner_rejoins_elsewhere_and_gets_every_acknowledged_message_once()
{
    session_survives_the_kill_of_its_node("session-leader-kill", Victim::LeaderOwningTheRoom).await;
}
