//! Test support for unit tests across modules: a node's core parts (hub,
//! session registry, room table) without sockets or Raft, and a frame
//! encoder that records what it encoded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::{NamespaceConfig, NamespacePolicies, PublishPolicy};
use crate::fanout::{FrameEncoder, Hub, MemberEvent, Outbound, RoomMessage, SessionEntry, Sessions};
use crate::protocol::{ConnId, RoomName};
use crate::replicate::{EffectsObserver, Replicator, SharedTable};
use crate::rooms::{MemberRecord, RoomCommand};

/// Encodes `msg:EPOCH:OFFSET:DATA` and `joined:USER` / `left:USER`, and
/// counts its encodings.
#[derive(Default)]
pub struct TextEncoder {
    pub encodings: AtomicUsize,
}

impl FrameEncoder for TextEncoder {
    fn message(&self, message: &RoomMessage) -> Option<Utf8Bytes> {
        self.encodings.fetch_add(1, Ordering::Relaxed);
        let data = String::from_utf8_lossy(&message.data);
        Some(format!("msg:{}:{}:{data}", message.position.epoch, message.position.offset).into())
    }

    fn member_event(&self, _room: &RoomName, member: &MemberRecord, event: MemberEvent) -> Option<Utf8Bytes> {
        self.encodings.fetch_add(1, Ordering::Relaxed);
        let kind = if matches!(event, MemberEvent::Joined { .. }) { "joined" } else { "left" };
        Some(format!("{kind}:{}", member.user).into())
    }
}

pub fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

/// Namespaces `chat` (history of 5 messages) and `plain` (no history),
/// both with presence and join/leave events on, and the Pusher app
/// `app-1` (namespace `pusher-app-1`).
pub fn namespaces() -> Arc<NamespacePolicies> {
    Arc::new(NamespacePolicies::new(
        &[
            NamespaceConfig {
                name: "chat".into(),
                presence: true,
                join_leave_events: true,
                publish: PublishPolicy::Members,
                max_members: None,
                max_data_bytes: 1024,
                history_size: 5,
                history_ttl_ms: 0,
            },
            NamespaceConfig {
                name: "plain".into(),
                presence: true,
                join_leave_events: true,
                publish: PublishPolicy::Members,
                max_members: None,
                max_data_bytes: 1024,
                history_size: 0,
                history_ttl_ms: 0,
            },
        ],
        &[crate::config::AppConfig::with_defaults("app-1", "app-1-key", "app-1-secret")],
    ))
}

/// One node's core: its hub over a local room table.
pub struct CoreNode {
    pub name: &'static str,
    pub incarnation: u64,
    pub sessions: Arc<Sessions>,
    pub hub: Arc<Hub>,
    pub shared: Arc<SharedTable>,
    pub replicator: Replicator,
    next_conn: AtomicUsize,
}

impl CoreNode {
    pub fn new(name: &'static str, incarnation: u64) -> CoreNode {
        let sessions = Arc::new(Sessions::default());
        let metrics = crate::telemetry::Metrics::new(name);
        let hub = Arc::new(Hub::new(
            Arc::from(name),
            incarnation,
            Arc::clone(&sessions),
            namespaces(),
            metrics,
            1 << 20,
        ));
        let shared = SharedTable::new(Arc::clone(&hub) as Arc<dyn EffectsObserver>);
        let replicator = Replicator::local(Arc::clone(&shared));
        CoreNode { name, incarnation, sessions, hub, shared, replicator, next_conn: AtomicUsize::new(1) }
    }

    /// A session of `user` on this node, registered, with `encoder`.
    pub fn session(&self, user: &str, encoder: &Arc<dyn FrameEncoder>) -> Arc<SessionEntry> {
        let counter = self.next_conn.fetch_add(1, Ordering::Relaxed) as u64;
        let entry = Arc::new(SessionEntry {
            conn: ConnId::new(ConnId::tag_of(self.name, self.incarnation), counter),
            user: Arc::from(user),
            outbound: Outbound::new(64, 1 << 20),
            encoder: Arc::clone(encoder),
        });
        self.sessions.insert(Arc::clone(&entry));
        entry
    }

    /// The join command of `session` (of this node) to `room`.
    pub fn join_command(&self, room_name: &str, session: &SessionEntry) -> RoomCommand {
        RoomCommand::Join {
            room: room(room_name),
            member: MemberRecord {
                user: Arc::clone(&session.user),
                conn: session.conn,
                node: Arc::from(self.name),
                incarnation: self.incarnation,
                meta: "{}".into(),
            },
            max_members: None,
        }
    }
}

/// Applies `command` on every node, in the same order (what Raft does).
pub async fn apply_everywhere(nodes: &[&CoreNode], command: RoomCommand) {
    for node in nodes {
        node.replicator.propose(command.clone()).await.unwrap();
    }
}

/// The text of every frame queued for `session` so far (drains it).
pub async fn frames(session: &SessionEntry) -> Vec<String> {
    let mut batch = std::collections::VecDeque::new();
    if session.outbound.queued_frames() == 0 {
        return Vec::new();
    }
    session.outbound.next_batch(&mut batch).await;
    batch.into_iter().map(|frame| frame.text.as_str().to_string()).collect()
}
