//! Publish routing between in-process nodes over the in-memory peer
//! transport: the owner sequences, every node delivers, failures are typed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use starling_cluster::codec;
use starling_cluster::raft::{PeerAnswer, PeerMessage};
use starling_cluster::transport::{BoxFuture, MemoryNetwork, PeerHandler, PeerIdentity};

use super::*;
use crate::fanout::{FrameEncoder, Publisher, RoomMessage};
use crate::testing::{apply_everywhere, frames, room, CoreNode, TextEncoder};

/// The Raft membership, fixed.
struct Members {
    members: Vec<(String, String)>,
    refused: AtomicU64,
}

impl NodeDirectory for Members {
    fn nodes(&self) -> Vec<(String, String)> {
        self.members.clone()
    }
    fn is_member(&self, peer: &PeerIdentity) -> bool {
        self.members.iter().any(|(name, _)| *name == peer.name)
    }
    fn record_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// What the Raft group's handler does with application messages.
struct Unwrap(AppHandler);

impl PeerHandler for Unwrap {
    fn request(
        &self,
        from: &PeerIdentity,
        body: Vec<u8>,
        trace: Option<String>,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        let Ok(PeerMessage::App(inner)) = codec::decode::<PeerMessage>(&body) else {
            return Box::pin(async { Err("not an app message".to_string()) });
        };
        let answer = self.0.request(from, inner, trace);
        Box::pin(async move { codec::encode(&PeerAnswer::App(answer.await?)).map_err(|e| e.to_string()) })
    }
    fn one_way(&self, from: &PeerIdentity, body: Vec<u8>, trace: Option<String>) {
        if let Ok(PeerMessage::App(inner)) = codec::decode::<PeerMessage>(&body) {
            self.0.one_way(from, inner, trace);
        }
    }
}

struct Cluster {
    network: Arc<MemoryNetwork>,
    nodes: Vec<CoreNode>,
    routers: Vec<Router>,
    directories: Vec<Arc<Members>>,
    links: Vec<Arc<PeerLinks>>,
}

/// `count` nodes (incarnation 0, as the memory transport names them), each
/// knowing the first `members` of them as the Raft membership.
fn cluster(count: usize, members: usize) -> Cluster {
    let network = MemoryNetwork::new();
    let names = ["node-1", "node-2", "node-3"];
    let addr = |i: usize| format!("mem-{i}");
    let membership: Vec<(String, String)> = (0..members).map(|i| (names[i].to_string(), addr(i))).collect();
    let mut cluster = Cluster {
        network: Arc::clone(&network),
        nodes: Vec::new(),
        routers: Vec::new(),
        directories: Vec::new(),
        links: Vec::new(),
    };
    for (i, name) in names.iter().enumerate().take(count) {
        let node = CoreNode::new(name, 0);
        let directory = Arc::new(Members { members: membership.clone(), refused: AtomicU64::new(0) });
        let transport = Arc::new(network.transport(&addr(i)));
        let links = PeerLinks::new(name, transport, Arc::clone(&directory) as _, Arc::clone(&node.shared));
        links.attach(&node.hub);
        let handler = AppHandler {
            hub: Arc::clone(&node.hub),
            shared: Arc::clone(&node.shared),
            group: Arc::clone(&directory) as _,
            links: Arc::clone(&links),
        };
        network.register(&addr(i), name, Arc::new(Unwrap(handler)));
        cluster.routers.push(Router::cluster(Arc::clone(&node.hub), Arc::clone(&links)));
        cluster.links.push(links);
        cluster.directories.push(directory);
        cluster.nodes.push(node);
    }
    cluster
}

/// A member (user `u`) on every node of `cluster`, joined to `room_name`
/// in the same order everywhere (node-1's first: node-1 owns the room).
async fn member_on_every_node(cluster: &Cluster, room_name: &str) -> Vec<Arc<crate::fanout::SessionEntry>> {
    let all: Vec<&CoreNode> = cluster.nodes.iter().collect();
    let encoder: Arc<dyn FrameEncoder> = Arc::new(TextEncoder::default());
    let members: Vec<_> = cluster.nodes.iter().map(|n| n.session("u", &encoder)).collect();
    for (node, member) in cluster.nodes.iter().zip(&members) {
        apply_everywhere(&all, node.join_command(room_name, member)).await;
    }
    members
}

fn draft(node: &CoreNode, user: &str, data: &str) -> Draft {
    let conn = crate::protocol::ConnId::new(crate::protocol::ConnId::tag_of(node.name, node.incarnation), 99);
    Draft {
        publisher: Some(Publisher { user: Arc::from(user), conn, idem: None }),
        event: None,
        data: bytes::Bytes::copy_from_slice(data.as_bytes()),
    }
}

#[tokio::test]
async fn a_publish_on_any_node_is_sequenced_by_the_owner_and_reaches_every_member_once_in_order() {
    let cluster = cluster(3, 3);
    let members = member_on_every_node(&cluster, "chat:x").await;
    for member in &members {
        frames(member).await;
    }
    let epoch = cluster.nodes[0].hub.owner_of(&room("chat:x")).unwrap().1;
    // node-1 owns the room (its member joined first).
    let mut expected = Vec::new();
    for (i, router) in cluster.routers.iter().enumerate().cycle().take(6) {
        let data = format!("from-{i}-{}", expected.len());
        let position = router
            .publish(&room("chat:x"), draft(&cluster.nodes[i], "u", &data), Instant::now())
            .await
            .unwrap();
        assert_eq!(position, Position { epoch, offset: expected.len() as u64 + 1 });
        expected.push(format!("msg:{epoch}:{}:{data}", position.offset));
    }
    for member in &members {
        assert_eq!(frames(member).await, expected);
    }
}

#[tokio::test]
async fn failures_across_nodes_are_typed_and_say_whether_to_retry() {
    let cluster = cluster(2, 2);
    let all: Vec<&CoreNode> = cluster.nodes.iter().collect();
    let encoder: Arc<dyn FrameEncoder> = Arc::new(TextEncoder::default());
    let alice = cluster.nodes[0].session("alice", &encoder);
    apply_everywhere(&all, cluster.nodes[0].join_command("chat:x", &alice)).await;
    let (router, node_2) = (&cluster.routers[1], &cluster.nodes[1]);
    let chat_x = room("chat:x");
    let publish = || router.publish(&chat_x, draft(node_2, "bob", "x"), Instant::now());

    assert_eq!(
        router.publish(&room("chat:empty"), draft(node_2, "bob", "x"), Instant::now()).await,
        Err(PublishError::NoMembers)
    );

    // The answer is lost on its way back: the message may have been delivered.
    cluster.network.cut_one_way("mem-0", "mem-1");
    let error = publish().await.unwrap_err();
    assert_eq!(error, PublishError::TimedOut);
    assert!(error.retryable());
    cluster.network.heal_all();
    assert_eq!(frames(&alice).await.len(), 1, "the timed-out publish was in fact sequenced");

    cluster.network.cut("mem-0", "mem-1");
    let error = publish().await.unwrap_err();
    assert_eq!(error, PublishError::OwnerUnreachable { owner: "node-1".into() });
    assert!(error.retryable());
    cluster.network.heal_all();

    // The owner is no longer the owner (node-1 was evicted and node-2's
    // table does not know yet).
    let evict = crate::rooms::RoomCommand::EvictNode { node: "node-1".into(), incarnation: 0 };
    cluster.nodes[0].replicator.propose(evict).await.unwrap();
    assert_eq!(publish().await, Err(PublishError::NoMembers));
}

#[tokio::test]
async fn a_node_outside_the_membership_cannot_have_publishes_sequenced_or_deliver_messages() {
    // node-3 reaches the others but is not a Raft member.
    let cluster = cluster(3, 2);
    let all: Vec<&CoreNode> = cluster.nodes.iter().collect();
    let encoder: Arc<dyn FrameEncoder> = Arc::new(TextEncoder::default());
    let alice = cluster.nodes[0].session("alice", &encoder);
    let bob = cluster.nodes[1].session("bob", &encoder);
    apply_everywhere(&all, cluster.nodes[0].join_command("chat:x", &alice)).await;
    apply_everywhere(&all, cluster.nodes[1].join_command("chat:x", &bob)).await;
    frames(&bob).await;
    frames(&alice).await;
    let node_3 = &cluster.nodes[2];
    let error = cluster.routers[2]
        .publish(&room("chat:x"), draft(node_3, "eve", "forged"), Instant::now())
        .await
        .unwrap_err();
    assert_eq!(error, PublishError::NotAuthorized);
    assert!(!error.retryable());
    assert_eq!(cluster.directories[0].refused(), 1);
    // A member forwarding a publish in another node's connection's name.
    let forged = draft(&cluster.nodes[0], "alice", "forged");
    let error = cluster.routers[1].publish(&room("chat:x"), forged, Instant::now()).await.unwrap_err();
    assert_eq!(error, PublishError::NotAuthorized);
    // A delivery from node-3, which does not own the room, is refused.
    let epoch = cluster.nodes[1].hub.owner_of(&room("chat:x")).unwrap().1;
    let message =
        RoomMessage::new(room("chat:x"), Position { epoch, offset: 1 }, draft(node_3, "eve", "x"), 0);
    let handler = AppHandler {
        hub: Arc::clone(&cluster.nodes[1].hub),
        shared: Arc::clone(&cluster.nodes[1].shared),
        group: Arc::clone(&cluster.directories[1]) as _,
        links: Arc::clone(&cluster.links[1]),
    };
    let body = codec::encode(&wire::AppMessageOut::Deliver(&message)).unwrap();
    handler.one_way(&PeerIdentity { name: "node-3".into(), incarnation: 0 }, body, None);
    assert_eq!(cluster.nodes[1].hub.refused_deliveries(), 1);
    assert!(frames(&bob).await.is_empty());
}

#[test]
fn the_borrowed_form_of_a_message_decodes_as_the_owned_form() {
    let message = RoomMessage {
        room: room("chat:x"),
        position: Position { epoch: 3, offset: 4 },
        publisher: Some(Publisher { user: "bob".into(), conn: crate::protocol::ConnId(7), idem: None }),
        event: Some("client-typing".into()),
        data: bytes::Bytes::from_static(b"{\"a\":1}"),
        published_us: 1234,
    };
    let bytes = codec::encode(&wire::AppMessageOut::Deliver(&message)).unwrap();
    let wire::AppMessage::Deliver(decoded) = codec::decode::<wire::AppMessage>(&bytes).unwrap() else {
        panic!("decoded as a publish");
    };
    assert_eq!(decoded, message);
    let draft = Draft { publisher: None, event: None, data: bytes::Bytes::from_static(b"1") };
    let out =
        wire::AppMessageOut::Publish { room: &room("chat:x"), draft: &draft, min_index: 5, published_us: 6 };
    let decoded = codec::decode::<wire::AppMessage>(&codec::encode(&out).unwrap()).unwrap();
    assert!(matches!(decoded, wire::AppMessage::Publish { min_index: 5, published_us: 6, .. }));
}

/// The texts of `member`'s messages so far, as `epoch:offset:data`.
async fn messages(member: &crate::fanout::SessionEntry) -> Vec<String> {
    frames(member).await.into_iter().filter_map(|f| f.strip_prefix("msg:").map(str::to_string)).collect()
}

/// Three nodes with a member each; the owner (node-1) sends messages d and
/// e to one survivor only, then dies. `heir_lags`: the survivor that missed
/// them is the one that takes the room over (it must fetch them), else the
/// other one (the heir sends them again from its own history).
async fn owner_dies_after_reaching_one_survivor(heir_lags: bool) {
    let cluster = cluster(3, 3);
    let members = member_on_every_node(&cluster, "chat:x").await;
    let chat_x = room("chat:x");
    let epoch = cluster.nodes[0].hub.owner_of(&chat_x).unwrap().1;
    let publish = |i: usize, data: &str| {
        cluster.routers[i].publish(&chat_x, draft(&cluster.nodes[i], "u", data), Instant::now())
    };
    for data in ["a", "b", "c"] {
        publish(0, data).await.unwrap();
    }
    let heir = if members[1].conn < members[2].conn { 1 } else { 2 };
    let other = 3 - heir;
    let lagging = if heir_lags { heir } else { other };
    cluster.network.cut_one_way("mem-0", &format!("mem-{lagging}"));
    for data in ["d", "e"] {
        // Acknowledged: the other survivor holds them.
        assert_eq!(publish(0, data).await.unwrap().epoch, epoch);
    }
    cluster.network.unregister("mem-0");
    let survivors = [&cluster.nodes[1], &cluster.nodes[2]];
    let evict = crate::rooms::RoomCommand::EvictNode { node: "node-1".into(), incarnation: 0 };
    apply_everywhere(&survivors, evict).await;
    let position = publish(lagging, "f").await.unwrap();
    assert_eq!(
        position,
        Position { epoch, offset: 6 },
        "the same epoch, after the highest offset any node held"
    );
    let expected: Vec<String> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{epoch}:{}:{d}", i + 1))
        .collect();
    for i in [heir, other] {
        let mut seen = Vec::new();
        let all_seen = async {
            while seen.len() < expected.len() {
                let batch = messages(&members[i]).await;
                if batch.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                seen.extend(batch);
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), all_seen).await;
        assert_eq!(seen, expected, "node-{} saw every message once, gapless, in one epoch", i + 1);
    }
}

#[tokio::test]
async fn a_new_owner_continues_the_epoch_after_sending_survivors_what_only_it_received() {
    owner_dies_after_reaching_one_survivor(false).await;
}

#[tokio::test]
async fn a_new_owner_that_missed_messages_fetches_them_and_continues_the_epoch() {
    owner_dies_after_reaching_one_survivor(true).await;
}

#[tokio::test]
async fn a_new_owner_starts_a_new_epoch_when_what_a_survivor_lacks_is_held_nowhere() {
    let cluster = cluster(3, 3);
    // The `plain` namespace keeps no history.
    let members = member_on_every_node(&cluster, "plain:x").await;
    let room_name = room("plain:x");
    let epoch = cluster.nodes[0].hub.owner_of(&room_name).unwrap().1;
    let heir = if members[1].conn < members[2].conn { 1 } else { 2 };
    let behind = 3 - heir;
    // Both survivors lose the last frames, so no live node holds them.
    cluster.network.cut_one_way("mem-0", "mem-1");
    cluster.network.cut_one_way("mem-0", "mem-2");
    let sent =
        cluster.routers[0].publish(&room_name, draft(&cluster.nodes[0], "u", "lost"), Instant::now()).await;
    assert_eq!(sent, Err(PublishError::NotReplicated), "no other node holds it: not acknowledged");
    // Now one survivor gets a message the other lacks, and nobody keeps history.
    cluster.network.heal_all();
    cluster.network.cut_one_way("mem-0", &format!("mem-{behind}"));
    let half = cluster.routers[0].publish(&room_name, draft(&cluster.nodes[0], "u", "half"), Instant::now());
    assert_eq!(half.await.unwrap(), Position { epoch, offset: 2 });
    cluster.network.unregister("mem-0");
    let survivors = [&cluster.nodes[1], &cluster.nodes[2]];
    let evict = crate::rooms::RoomCommand::EvictNode { node: "node-1".into(), incarnation: 0 };
    apply_everywhere(&survivors, evict).await;
    let position = cluster.routers[behind]
        .publish(&room_name, draft(&cluster.nodes[behind], "u", "next"), Instant::now())
        .await
        .unwrap();
    assert!(position.epoch > epoch, "a new epoch: {position:?} after {epoch}");
    assert_eq!(position.offset, 1);
}

#[tokio::test]
async fn a_publish_key_is_sequenced_once_even_when_retried_at_a_new_owner_after_the_first_one_died() {
    let cluster = cluster(3, 3);
    let members = member_on_every_node(&cluster, "plain:k").await;
    let room_name = room("plain:k");
    let epoch = cluster.nodes[0].hub.owner_of(&room_name).unwrap().1;
    let heir = if members[1].conn < members[2].conn { 1 } else { 2 };
    let keyed = |key: &str, data: &str| {
        let mut draft = draft(&cluster.nodes[heir], "u", data);
        draft.publisher.as_mut().unwrap().idem = Some(Arc::from(key));
        cluster.routers[heir].publish(&room_name, draft, Instant::now())
    };
    let first = keyed("k-1", "once").await.unwrap();
    assert_eq!(first, Position { epoch, offset: 1 });
    assert_eq!(keyed("k-1", "once").await, Ok(first), "a retry gets the first result");
    // The owner dies; the heir, which took the keyed message from it, owns the room.
    cluster.network.unregister("mem-0");
    let survivors = [&cluster.nodes[1], &cluster.nodes[2]];
    let evict = crate::rooms::RoomCommand::EvictNode { node: "node-1".into(), incarnation: 0 };
    apply_everywhere(&survivors, evict).await;
    assert_eq!(keyed("k-1", "once").await, Ok(first), "the new owner knows the key too");
    let next = keyed("k-2", "next").await.unwrap();
    assert_eq!(next, Position { epoch, offset: 2 }, "a new key is sequenced after it, in the same epoch");
    let expected = vec![format!("{epoch}:1:once"), format!("{epoch}:2:next")];
    let mut seen = Vec::new();
    let all_seen = async {
        while seen.len() < expected.len() {
            let batch = messages(&members[heir]).await;
            if batch.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            seen.extend(batch);
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), all_seen).await;
    assert_eq!(seen, expected, "the keyed message was delivered once");
}
