//! Local fan-out: which connections on this node are in which room, and the
//! sequencing of rooms this node owns.
//!
//! The hub follows the replicated room table through [`Hub::apply_effects`],
//! called in log order, and keeps for each room with local members the list
//! of their outbound queues. A message is encoded once and the same bytes
//! are queued for every local member. The hub never decides membership: it
//! only mirrors what `rooms` decided.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::outbound::{OutFrame, PushError};
use super::sessions::{SessionEntry, Sessions};
use crate::config::NamespacePolicies;
use crate::protocol::{self, ConnId, MessageFrom, RoomName};
use crate::rooms::{Effect, MemberRecord};
use crate::telemetry::Metrics;

/// Where a room's message stream stands: the next message gets `offset + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

#[derive(Debug)]
struct LocalRoom {
    epoch: u64,
    /// The offset of the last message sequenced (0: none yet in this epoch).
    last_offset: u64,
    subscribers: Vec<Arc<SessionEntry>>,
}

pub struct Hub {
    node: Arc<str>,
    incarnation: u64,
    rooms: RwLock<HashMap<RoomName, Arc<Mutex<LocalRoom>>>>,
    sessions: Arc<Sessions>,
    namespaces: Arc<NamespacePolicies>,
    metrics: Metrics,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    pub fn new(
        node: Arc<str>,
        incarnation: u64,
        sessions: Arc<Sessions>,
        namespaces: Arc<NamespacePolicies>,
        metrics: Metrics,
    ) -> Hub {
        Hub { node, incarnation, rooms: RwLock::default(), sessions, namespaces, metrics }
    }

    fn is_local(&self, member: &MemberRecord) -> bool {
        *member.node == *self.node && member.incarnation == self.incarnation
    }

    fn room(&self, room: &RoomName) -> Option<Arc<Mutex<LocalRoom>>> {
        self.rooms.read().unwrap_or_else(|p| p.into_inner()).get(room).cloned()
    }

    fn events_enabled(&self, room: &RoomName) -> bool {
        self.namespaces.get(room.namespace()).is_some_and(|n| n.join_leave_events)
    }

    /// Mirrors applied room effects. Must be called in log order, once per
    /// effect list, while the caller holds the table's apply lock.
    pub fn apply_effects(&self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Joined { room, epoch, member } => self.on_joined(room, *epoch, member),
                Effect::Left { room, member, .. } => self.on_left(room, member),
                Effect::OwnerChanged { room, epoch, .. } => {
                    if let Some(local) = self.room(room) {
                        let mut local = lock(&local);
                        local.epoch = *epoch;
                        local.last_offset = 0;
                    }
                }
                Effect::RoomClosed { room } => {
                    self.rooms.write().unwrap_or_else(|p| p.into_inner()).remove(room);
                }
                Effect::RoomOpened { .. }
                | Effect::AlreadyJoined { .. }
                | Effect::Rejected { .. }
                | Effect::NotMember { .. } => {}
            }
        }
        let count = self.rooms.read().unwrap_or_else(|p| p.into_inner()).len();
        self.metrics.rooms.set(count as f64);
    }

    fn on_joined(&self, room: &RoomName, epoch: u64, member: &MemberRecord) {
        let event = self
            .events_enabled(room)
            .then(|| Utf8Bytes::from(protocol::encode_event_joined(room.as_str(), wire_member(member))));
        let local_entry = if self.is_local(member) { self.sessions.get(member.conn) } else { None };
        let local = match (self.room(room), &local_entry) {
            (Some(local), _) => local,
            (None, Some(_)) => {
                let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
                rooms
                    .entry(room.clone())
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(LocalRoom { epoch, last_offset: 0, subscribers: Vec::new() }))
                    })
                    .clone()
            }
            (None, None) => return,
        };
        let mut local = lock(&local);
        if let Some(text) = event {
            self.fan_out(&local.subscribers, &text, None);
        }
        if let Some(entry) = local_entry {
            local.subscribers.push(entry);
        }
    }

    fn on_left(&self, room: &RoomName, member: &MemberRecord) {
        let Some(local) = self.room(room) else {
            return;
        };
        let mut local = lock(&local);
        if self.is_local(member) {
            if let Some(i) = local.subscribers.iter().position(|s| s.conn == member.conn) {
                local.subscribers.swap_remove(i);
            }
        }
        if self.events_enabled(room) && !local.subscribers.is_empty() {
            let text = Utf8Bytes::from(protocol::encode_event_left(room.as_str(), wire_member(member)));
            self.fan_out(&local.subscribers, &text, None);
        }
        if local.subscribers.is_empty() {
            drop(local);
            let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
            // Re-check under the map lock: a join may have raced in.
            if rooms.get(room).is_some_and(|r| lock(r).subscribers.is_empty()) {
                rooms.remove(room);
            }
        }
    }

    /// Sequences and delivers one message to every local member of `room`.
    /// Returns its position, or `None` when the room has no members here
    /// (then nobody received it).
    pub fn publish(
        &self,
        room: &RoomName,
        data: &RawValue,
        from: Option<MessageFrom<'_>>,
        published_at: Instant,
    ) -> Option<Position> {
        let local = self.room(room)?;
        let mut local = lock(&local);
        local.last_offset += 1;
        let position = Position { epoch: local.epoch, offset: local.last_offset };
        let text = Utf8Bytes::from(protocol::encode_message(
            room.as_str(),
            position.epoch,
            position.offset,
            data,
            from,
        ));
        self.fan_out(&local.subscribers, &text, Some(published_at));
        self.metrics.publishes.increment(1);
        Some(position)
    }

    fn fan_out(&self, subscribers: &[Arc<SessionEntry>], text: &Utf8Bytes, published_at: Option<Instant>) {
        let mut delivered = 0u64;
        for subscriber in subscribers {
            let frame = OutFrame { text: text.clone(), published_at };
            match subscriber.outbound.push(frame) {
                Ok(()) => delivered += 1,
                Err(PushError::Overflow) => self.metrics.drops_slow_consumer.increment(1),
                Err(PushError::Closing) => {}
            }
        }
        self.metrics.deliveries.increment(delivered);
    }

    /// Calls `f` with the current position of `room` on this node (if it
    /// has local members) while no message of the room can be sequenced, so
    /// whatever `f` queues lands between offset `position` and the next one.
    pub fn with_position<R>(&self, room: &RoomName, f: impl FnOnce(Option<Position>) -> R) -> R {
        let Some(local) = self.room(room) else {
            return f(None);
        };
        let local = lock(&local);
        f(Some(Position { epoch: local.epoch, offset: local.last_offset }))
    }

    /// Rooms with at least one member on this node.
    pub fn room_count(&self) -> usize {
        self.rooms.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Local subscriptions across all rooms.
    pub fn subscription_count(&self) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        rooms.values().map(|r| lock(r).subscribers.len()).sum()
    }

    /// Whether `conn` is subscribed to `room` on this node.
    pub fn is_subscribed(&self, room: &RoomName, conn: ConnId) -> bool {
        self.room(room).is_some_and(|r| lock(&r).subscribers.iter().any(|s| s.conn == conn))
    }
}

/// The wire view of a member record.
pub fn wire_member(member: &MemberRecord) -> protocol::Member<'_> {
    protocol::Member {
        user: &member.user,
        conn: member.conn,
        node: &member.node,
        meta: meta_json(&member.meta),
    }
}

/// The wire view of a member list.
pub fn wire_member_list(members: &[Arc<MemberRecord>]) -> Vec<protocol::Member<'_>> {
    members.iter().map(|m| wire_member(m)).collect()
}

/// `meta` text is validated JSON object text when the member joins.
fn meta_json(meta: &str) -> &RawValue {
    serde_json::from_str(meta).unwrap_or_else(|_| {
        debug_assert!(false, "member meta is not JSON: {meta}");
        serde_json::from_str("{}").expect("literal is JSON")
    })
}
