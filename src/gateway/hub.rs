//! Local fan-out and room sequencing.
//!
//! The hub mirrors the replicated room table through [`Hub::apply_effects`]
//! (called in log order): for every room it knows the epoch, the owner node,
//! the last offset seen, and the outbound queues of the room's members on
//! this node. The owner node sequences a room's messages ([`Hub::sequence`])
//! and hands each encoded frame to a [`RemoteFanout`] for the other nodes;
//! other nodes take frames from the owner with [`Hub::deliver`]. A frame is
//! encoded once and the same bytes are queued for every local member. The
//! hub never decides membership: it only mirrors what `rooms` decided.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::outbound::{OutFrame, Published, PushError};
use super::sessions::{SessionEntry, Sessions};
use crate::config::NamespacePolicies;
use crate::protocol::{self, CloseCode, MessageFrom, RoomName};
use crate::rooms::{Effect, LeaveReason, MemberRecord, RoomTable};
use crate::telemetry::{self, Metrics};

/// Where a room's message stream stands: the next message gets `offset + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

/// Sends a sequenced frame to the other nodes (the cluster's forwarding).
/// Called inside the span of the sequencing, whose trace context it sends on.
pub trait RemoteFanout: Send + Sync + 'static {
    fn deliver(&self, room: &RoomName, position: Position, text: &Utf8Bytes, published_at: Instant);
}

/// Why [`Hub::sequence`] did not sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceError {
    /// The room has no members anywhere.
    NoRoom,
    /// Another node owns the room and sequences its messages.
    NotOwner { owner: Arc<str>, epoch: u64 },
    /// The epoch's offsets are used up (2^64 messages): the room needs a new
    /// epoch. Never reached in practice; offsets never wrap.
    OffsetsExhausted,
}

/// The node that sent a frame, as its peer link authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSender<'a> {
    pub node: &'a str,
    pub incarnation: u64,
}

/// A delivery that was not from the room's owner incarnation in the
/// room's current epoch, and was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRefused;

/// Frames held for a room, at most: frames of an epoch this node has not
/// applied yet (the owner changed and the Raft entry saying so is still on
/// its way here).
const HELD_FRAMES_PER_ROOM: usize = 256;

/// A frame of a future epoch, waiting for that epoch's owner change.
#[derive(Debug)]
struct HeldFrame {
    node: Arc<str>,
    incarnation: u64,
    position: Position,
    text: Utf8Bytes,
    published_at: Instant,
}

#[derive(Debug)]
struct LocalRoom {
    epoch: u64,
    owner: Arc<str>,
    owner_incarnation: u64,
    /// The offset of the last message sequenced or delivered in this epoch.
    last_offset: u64,
    subscribers: Vec<Arc<SessionEntry>>,
    /// Frames of later epochs that arrived before this node applied the
    /// owner change (bounded by `HELD_FRAMES_PER_ROOM`).
    held: Vec<HeldFrame>,
}

pub struct Hub {
    node: Arc<str>,
    incarnation: u64,
    rooms: RwLock<HashMap<RoomName, Arc<Mutex<LocalRoom>>>>,
    sessions: Arc<Sessions>,
    namespaces: Arc<NamespacePolicies>,
    metrics: Metrics,
    /// Set once in a cluster; a single node has no one to send to.
    remote: OnceLock<Arc<dyn RemoteFanout>>,
    /// Deliveries dropped because their sender was not the room's owner
    /// incarnation for their epoch (`starling_peer_rejected_total`).
    refused_deliveries: AtomicU64,
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
        Hub {
            node,
            incarnation,
            rooms: RwLock::default(),
            sessions,
            namespaces,
            metrics,
            remote: OnceLock::new(),
            refused_deliveries: AtomicU64::new(0),
        }
    }

    /// Deliveries refused so far (see [`Hub::deliver`]).
    pub fn refused_deliveries(&self) -> u64 {
        self.refused_deliveries.load(Ordering::Relaxed)
    }

    /// Connects the hub to the cluster's forwarding (once, at start).
    pub fn set_remote(&self, remote: Arc<dyn RemoteFanout>) {
        let _ = self.remote.set(remote);
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
                Effect::RoomOpened { room, epoch, owner, owner_incarnation } => {
                    let local = LocalRoom {
                        epoch: *epoch,
                        owner: owner.clone(),
                        owner_incarnation: *owner_incarnation,
                        last_offset: 0,
                        subscribers: Vec::new(),
                        held: Vec::new(),
                    };
                    self.rooms
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(room.clone(), Arc::new(Mutex::new(local)));
                }
                Effect::Joined { room, member, .. } => self.on_joined(room, member),
                Effect::Left { room, member, reason } => self.on_left(room, member, *reason),
                Effect::OwnerChanged { room, epoch, owner, owner_incarnation } => {
                    if let Some(local) = self.room(room) {
                        let mut local = lock(&local);
                        local.owner = owner.clone();
                        local.owner_incarnation = *owner_incarnation;
                        if local.epoch < *epoch {
                            local.epoch = *epoch;
                            local.last_offset = 0;
                        }
                        // Deliveries from the new owner may have arrived first.
                        self.release_held(room, &mut local);
                    }
                }
                Effect::RoomClosed { room } => {
                    self.rooms.write().unwrap_or_else(|p| p.into_inner()).remove(room);
                }
                Effect::AlreadyJoined { .. } | Effect::Rejected { .. } | Effect::NotMember { .. } => {}
            }
        }
        self.metrics.rooms.set(self.room_count() as f64);
    }

    fn on_joined(&self, room: &RoomName, member: &MemberRecord) {
        let Some(local) = self.room(room) else {
            return;
        };
        let local_entry = if self.is_local(member) { self.sessions.get(member.conn) } else { None };
        let mut local = lock(&local);
        if self.events_enabled(room) && !local.subscribers.is_empty() {
            let text = Utf8Bytes::from(protocol::encode_event_joined(room.as_str(), wire_member(member)));
            self.fan_out(&local.subscribers, &text, None);
        }
        if let Some(entry) = local_entry {
            local.subscribers.push(entry);
        }
    }

    fn on_left(&self, room: &RoomName, member: &MemberRecord, reason: LeaveReason) {
        let Some(local) = self.room(room) else {
            return;
        };
        let mut local = lock(&local);
        if self.is_local(member) {
            if let Some(i) = local.subscribers.iter().position(|s| s.conn == member.conn) {
                let session = local.subscribers.swap_remove(i);
                if reason == LeaveReason::NodeEvicted {
                    // The cluster took this node for dead (it was paused or
                    // cut off) and removed its members; its clients must
                    // reconnect and join again to be members anywhere.
                    session.outbound.close(CloseCode::Restarting);
                }
            }
        }
        if self.events_enabled(room) && !local.subscribers.is_empty() {
            let text = Utf8Bytes::from(protocol::encode_event_left(room.as_str(), wire_member(member)));
            self.fan_out(&local.subscribers, &text, None);
        }
    }

    /// Rebuilds the mirror from a whole table (after a Raft snapshot was
    /// installed). Positions of rooms whose epoch did not change are kept.
    pub fn rebuild(&self, table: &RoomTable) {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let mut rebuilt = HashMap::new();
        for name in table.room_names() {
            let Some(snapshot) = table.snapshot(&name) else { continue };
            let last_offset = rooms
                .get(&name)
                .map(|r| lock(r))
                .filter(|r| r.epoch == snapshot.epoch)
                .map_or(0, |r| r.last_offset);
            let subscribers = snapshot
                .members
                .iter()
                .filter(|m| self.is_local(m))
                .filter_map(|m| self.sessions.get(m.conn))
                .collect();
            let local = LocalRoom {
                epoch: snapshot.epoch,
                owner: snapshot.owner.clone(),
                owner_incarnation: snapshot.owner_incarnation,
                last_offset,
                subscribers,
                held: Vec::new(),
            };
            rebuilt.insert(name, Arc::new(Mutex::new(local)));
        }
        *rooms = rebuilt;
    }

    /// Sequences one message of a room this node owns and delivers it to
    /// every local member and, through the remote fan-out, to other nodes.
    pub fn sequence(
        &self,
        room: &RoomName,
        data: &RawValue,
        from: Option<MessageFrom<'_>>,
        published: Published,
    ) -> Result<Position, SequenceError> {
        let local = self.room(room).ok_or(SequenceError::NoRoom)?;
        let mut local = lock(&local);
        if *local.owner != *self.node || local.owner_incarnation != self.incarnation {
            // An earlier incarnation of this node may own it: the room then
            // waits for that incarnation's eviction to get a new owner.
            return Err(SequenceError::NotOwner { owner: local.owner.clone(), epoch: local.epoch });
        }
        let offset = local.last_offset.checked_add(1).ok_or(SequenceError::OffsetsExhausted)?;
        local.last_offset = offset;
        let position = Position { epoch: local.epoch, offset };
        let text = Utf8Bytes::from(protocol::encode_message(
            room.as_str(),
            position.epoch,
            position.offset,
            data,
            from,
        ));
        {
            let _fanout = telemetry::fanout_span(room, local.subscribers.len()).entered();
            self.fan_out(&local.subscribers, &text, Some(published));
        }
        if let Some(remote) = self.remote.get() {
            // Under the room lock: frames leave in offset order.
            remote.deliver(room, position, &text, published.at);
        }
        self.metrics.publishes.increment(1);
        Ok(position)
    }

    /// Takes a frame sequenced by the room's owner on another node. Only the
    /// room's owner incarnation may deliver in the room's current epoch;
    /// anything else is refused. Frames of an older epoch, and offsets
    /// already seen, are dropped quietly (a late or repeated frame); frames
    /// of a later epoch are held until this node applies that epoch's owner
    /// change, then delivered if they came from the new owner.
    /// `published_at` is the publisher's accept time on this node's clock.
    pub fn deliver(
        &self,
        from: FrameSender<'_>,
        room: &RoomName,
        position: Position,
        text: Utf8Bytes,
        published_at: Instant,
    ) -> Result<(), DeliveryRefused> {
        let Some(local) = self.room(room) else {
            return Ok(());
        };
        let mut local = lock(&local);
        if position.epoch < local.epoch {
            return Ok(());
        }
        if position.epoch > local.epoch {
            if local.held.len() >= HELD_FRAMES_PER_ROOM {
                return Err(self.refuse_delivery());
            }
            local.held.push(HeldFrame {
                node: Arc::from(from.node),
                incarnation: from.incarnation,
                position,
                text,
                published_at,
            });
            return Ok(());
        }
        if *local.owner != *from.node || local.owner_incarnation != from.incarnation {
            return Err(self.refuse_delivery());
        }
        self.deliver_in_epoch(room, &mut local, position.offset, &text, published_at);
        Ok(())
    }

    fn refuse_delivery(&self) -> DeliveryRefused {
        self.refused_deliveries.fetch_add(1, Ordering::Relaxed);
        DeliveryRefused
    }

    /// Fans out a frame of the current epoch from the owner, once per offset.
    fn deliver_in_epoch(
        &self,
        room: &RoomName,
        local: &mut LocalRoom,
        offset: u64,
        text: &Utf8Bytes,
        published_at: Instant,
    ) {
        if offset <= local.last_offset {
            return;
        }
        local.last_offset = offset;
        let _fanout = telemetry::fanout_span(room, local.subscribers.len()).entered();
        self.fan_out(&local.subscribers, text, Some(Published { at: published_at, cross_node: true }));
    }

    /// After an owner change: delivers held frames of the new epoch from the
    /// new owner, keeps those of later epochs, refuses the rest.
    fn release_held(&self, room: &RoomName, local: &mut LocalRoom) {
        if local.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut local.held);
        for frame in held {
            if frame.position.epoch > local.epoch {
                local.held.push(frame);
            } else if frame.position.epoch < local.epoch {
                continue;
            } else if *frame.node == *local.owner && frame.incarnation == local.owner_incarnation {
                self.deliver_in_epoch(room, local, frame.position.offset, &frame.text, frame.published_at);
            } else {
                self.refuse_delivery();
            }
        }
    }

    fn fan_out(&self, subscribers: &[Arc<SessionEntry>], text: &Utf8Bytes, published: Option<Published>) {
        let mut delivered = 0u64;
        for subscriber in subscribers {
            let frame = OutFrame { text: text.clone(), published };
            match subscriber.outbound.push(frame) {
                Ok(()) => delivered += 1,
                Err(PushError::Overflow) => self.metrics.drops_slow_consumer.increment(1),
                Err(PushError::Closing) => {}
            }
        }
        // Deliveries count room messages; presence events are not counted.
        if published.is_some() {
            self.metrics.deliveries.increment(delivered);
        }
    }

    /// Whether this node (this incarnation) sequences `room`.
    pub fn owns(&self, room: &RoomName) -> bool {
        self.room(room).is_some_and(|local| {
            let local = lock(&local);
            *local.owner == *self.node && local.owner_incarnation == self.incarnation
        })
    }

    /// The owner and epoch of `room`, if it exists.
    pub fn owner_of(&self, room: &RoomName) -> Option<(Arc<str>, u64)> {
        let local = self.room(room)?;
        let local = lock(&local);
        Some((local.owner.clone(), local.epoch))
    }

    /// Calls `f` with the current position of `room` on this node while no
    /// message of the room can be sequenced or delivered here, so whatever
    /// `f` queues lands between offset `position` and the next one.
    pub fn with_position<R>(&self, room: &RoomName, f: impl FnOnce(Option<Position>) -> R) -> R {
        let Some(local) = self.room(room) else {
            return f(None);
        };
        let local = lock(&local);
        f(Some(Position { epoch: local.epoch, offset: local.last_offset }))
    }

    /// Rooms known to this node (all rooms of the cluster).
    pub fn room_count(&self) -> usize {
        self.rooms.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Local (room, connection) subscriptions across all rooms.
    pub fn subscription_count(&self) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        rooms.values().map(|r| lock(r).subscribers.len()).sum()
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
