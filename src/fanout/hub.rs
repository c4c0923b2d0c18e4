//! Room sequencing and local fan-out.
//!
//! The hub mirrors the replicated room table through [`EffectsObserver`]
//! (called in log order): for every room it knows the epoch, the owner node,
//! the last offset seen, and the sessions of the room's members on this
//! node. The owner node sequences a room's messages ([`Hub::sequence`]) and
//! hands each [`RoomMessage`] to a [`RemoteFanout`] for the other nodes;
//! other nodes take messages from the owner with [`Hub::deliver`]. A message
//! is encoded once per client protocol among the room's local members
//! ([`FrameCache`]) and the same bytes are queued for every member of that
//! protocol. The hub never decides membership (it only mirrors what `rooms`
//! decided) and knows no wire protocol.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use super::history::{HistoryBudget, HistoryPolicy, Ring, RingChange};
use super::idem::IdemWindow;
use super::message::{
    unix_micros, Draft, FrameCache, FrameEncoder, MemberEvent, Position, Published, Publisher, RoomMessage,
};
use super::outbound::{OutFrame, PushError};
use super::sessions::{SessionEntry, Sessions};
use crate::config::NamespacePolicies;
use crate::protocol::{CloseCode, ConnId, RoomName};
use crate::replicate::EffectsObserver;
use crate::rooms::{Effect, LeaveReason, MemberRecord, RoomTable};
use crate::telemetry::{self, Metrics};

/// The cluster's side of sequencing: sending messages to the other nodes,
/// and settling a room's position when this node takes it over.
pub trait RemoteFanout: Send + Sync + 'static {
    /// Sends a sequenced message to every other node; returns how many
    /// nodes it went to. Called inside the span of the sequencing, whose
    /// trace context it sends on, and under the room's lock, so messages
    /// leave in offset order.
    fn deliver(&self, message: &RoomMessage) -> usize;
    /// This node became `room`'s owner: learn how far the other live nodes
    /// got in the room's epoch and which of them hold those messages, then
    /// call [`Hub::finish_takeover`]. Called under the table's and the
    /// room's locks: it must only start that work.
    fn take_over(&self, room: &RoomName);
}

/// How a takeover ends (see [`Hub::finish_takeover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeoverOutcome {
    /// Continue the epoch. `fetched`: the messages after `resend_after`
    /// up to the highest offset any live node holds, from a node that held
    /// them (empty when this node holds them itself). Every message after
    /// `resend_after` is sent again to every other node, which keeps the
    /// ones it lacks, so all live nodes hold every message up to the end.
    Continue { resend_after: u64, fetched: Vec<RoomMessage> },
    /// The messages some live node lacks are gone everywhere: start the
    /// epoch the owner change named.
    NewEpoch,
}

/// Where a room stands on a node, for a new owner's takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomState {
    pub epoch: u64,
    pub last_offset: u64,
    /// The offsets held in history, first and last.
    pub held: Option<(u64, u64)>,
}

impl RoomState {
    /// Whether this node can give every message after `after` up to `to`.
    pub fn covers(&self, after: u64, to: u64) -> bool {
        self.last_offset == to
            && (after == to
                || self.held.is_some_and(|(first, last)| first <= after.saturating_add(1) && last == to))
    }
}

/// A sequenced message, and how to wait until another node holds it.
#[derive(Debug)]
pub struct Sequenced {
    pub position: Position,
    /// The highest offset of the epoch another node confirmed; `None` when
    /// the message went to no other node (a single node).
    replicated: Option<tokio::sync::watch::Receiver<Position>>,
}

/// No other node confirmed holding a message in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReplicated;

impl Sequenced {
    /// Waits until at least one other node holds the message (G8: a
    /// publish is acknowledged only then), at most `timeout`.
    pub async fn replicated(self, timeout: std::time::Duration) -> Result<Position, NotReplicated> {
        let Some(mut replicated) = self.replicated else {
            return Ok(self.position);
        };
        let position = self.position;
        let held = async {
            replicated.wait_for(|p| p.epoch == position.epoch && p.offset >= position.offset).await.is_ok()
        };
        match tokio::time::timeout(timeout, held).await {
            Ok(true) => Ok(position),
            _ => Err(NotReplicated),
        }
    }
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
    /// This node just became the owner and is settling the room's position
    /// with the other nodes (see [`Hub::sequence_when_ready`]).
    TakingOver,
}

/// How long a publish waits for this node to finish taking a room over.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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

/// Frames held, at most, for rooms this node does not know yet: the Raft
/// entry that opened the room is committed but not applied here yet, and
/// the owner's first messages arrived first. Without them this node would
/// lack the room's first messages (history that recovery needs).
const EARLY_FRAMES: usize = 1024;

/// How long a frame for a room this node does not know is kept: longer
/// than any apply lag of a live node, shorter than anything a caller waits.
const EARLY_FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a join with `since` waits for this node to hold the room's
/// messages up to that position before it is served (see
/// [`Hub::catch_up`]): a new owner's takeover brings a survivor every
/// message any live node holds within this, even when the dead node was
/// also the Raft leader.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A message of a future epoch, waiting for that epoch's owner change (or
/// of a room not applied here yet, waiting for the room to open).
#[derive(Debug)]
struct HeldFrame {
    node: Arc<str>,
    incarnation: u64,
    message: RoomMessage,
    published_at: Instant,
}

/// What a joining connection asked to be replayed before its join reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recover {
    /// Every message of the position's epoch after its offset, or nothing.
    Since(Position),
    /// The last messages held, at most this many.
    Rewind(usize),
    /// Nothing queued: the room's last message is taken aside as the
    /// member becomes a subscriber ([`Hub::join_last`]), for the caller to
    /// send after its own join reply (Pusher cache channels).
    Last,
}

/// A room's last message as a member became a subscriber (for
/// [`Recover::Last`]), and where the room stood then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastMessage {
    /// The room's position when the member became a subscriber: messages
    /// after it were queued to the member live.
    pub at: Position,
    /// The message at `at`, if this node still holds it.
    pub message: Option<RoomMessage>,
}

/// A join's recovery request, until the join applies here.
#[derive(Debug)]
struct PendingRecovery {
    request: Recover,
    /// Set when the join applied: whether a `since` was served.
    recovered: Option<bool>,
    /// Set when a [`Recover::Last`] join applied.
    last: Option<LastMessage>,
}

/// A page of a room's history (the history endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Where the room stands on this node.
    pub position: Position,
    /// Whether `messages` are every message after the requested position
    /// (always true without one: they are the most recent held).
    pub recovered: bool,
    pub messages: Vec<RoomMessage>,
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
    /// The room's recent messages (its namespace's `history_size`).
    history: Ring,
    policy: HistoryPolicy,
    /// The room's place in the node-wide history order.
    recency: Option<u64>,
    /// On a new owner, while it settles the room's position with the other
    /// nodes: the epoch to start if it cannot continue this one.
    takeover: Option<u64>,
    /// On the owner: the highest position another node confirmed holding.
    replicated: Option<tokio::sync::watch::Sender<Position>>,
    /// The positions recent publish keys got (on every node, so a new
    /// owner knows its predecessor's); created by the first key.
    idem: Option<Box<IdemWindow>>,
}

impl LocalRoom {
    fn new(epoch: u64, owner: Arc<str>, owner_incarnation: u64, policy: HistoryPolicy) -> LocalRoom {
        LocalRoom {
            epoch,
            owner,
            owner_incarnation,
            last_offset: 0,
            subscribers: Vec::new(),
            held: Vec::new(),
            history: Ring::default(),
            policy,
            recency: None,
            takeover: None,
            replicated: None,
            idem: None,
        }
    }

    /// Remembers the position of a message whose publish carried a key.
    fn remember_key(&mut self, message: &RoomMessage, now: Instant) {
        if let Some(Publisher { conn, idem: Some(key), .. }) = &message.publisher {
            self.idem.get_or_insert_default().record(*conn, key, message.position, now);
        }
    }

    /// The position an earlier publish with this draft's key got.
    fn known_key(&mut self, draft: &Draft, now: Instant) -> Option<Position> {
        let Some(Publisher { conn, idem: Some(key), .. }) = &draft.publisher else { return None };
        self.idem.as_mut()?.find(*conn, key, now)
    }

    fn position(&self) -> Position {
        Position { epoch: self.epoch, offset: self.last_offset }
    }

    /// Starts `epoch` at offset 0 (its history goes; see `Hub::drop_history`).
    fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.last_offset = 0;
        self.replicated = None;
    }
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
    /// `limits.history_bytes` and the rooms in the order to trim them.
    budget: HistoryBudget,
    /// Recovery requests of joins under way, by connection and room.
    recoveries: Mutex<HashMap<(ConnId, RoomName), PendingRecovery>>,
    /// Counts finished takeovers, so publishes waiting for one wake up.
    takeovers: tokio::sync::watch::Sender<u64>,
    /// Frames of rooms not opened here yet, oldest first, with the time
    /// each arrived (at most `EARLY_FRAMES`, each for `EARLY_FRAME_WAIT`).
    early: Mutex<VecDeque<(Instant, HeldFrame)>>,
    /// Joins waiting in [`Hub::catch_up`], and how they are woken when a
    /// room's position moves (only signalled while one waits).
    catching_up: AtomicUsize,
    progress: tokio::sync::Notify,
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
        history_bytes: usize,
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
            budget: HistoryBudget::new(history_bytes),
            recoveries: Mutex::default(),
            takeovers: tokio::sync::watch::Sender::new(0),
            early: Mutex::default(),
            catching_up: AtomicUsize::new(0),
            progress: tokio::sync::Notify::new(),
        }
    }

    fn history_policy(&self, room: &RoomName) -> HistoryPolicy {
        let (size, ttl_ms) = self.namespaces.history_of(room.as_str());
        HistoryPolicy::new(size, ttl_ms)
    }

    /// The sessions of this node.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Bytes of history held on this node.
    pub fn history_bytes(&self) -> usize {
        self.budget.held()
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

    fn on_joined(&self, room: &RoomName, member: &MemberRecord, first_of_user: bool) {
        let Some(local) = self.room(room) else {
            return;
        };
        let local_entry = if self.is_local(member) { self.sessions.get(member.conn) } else { None };
        let mut local = lock(&local);
        if self.events_enabled(room) && !local.subscribers.is_empty() {
            self.fan_out_event(&local.subscribers, room, member, MemberEvent::Joined { first_of_user });
        }
        if let Some(entry) = local_entry {
            let request = lock(&self.recoveries).get(&(member.conn, room.clone())).map(|p| p.request);
            if let Some(request) = request {
                let (recovered, last) = match request {
                    Recover::Last => (false, Some(self.last_message(&mut local))),
                    _ => (self.replay(&mut local, &entry, request), None),
                };
                if let Some(pending) = lock(&self.recoveries).get_mut(&(member.conn, room.clone())) {
                    pending.recovered = Some(recovered);
                    pending.last = last;
                }
            }
            local.subscribers.push(entry);
        }
    }

    /// The room's last message, if its history holds it, and its position.
    fn last_message(&self, local: &mut LocalRoom) -> LastMessage {
        let change = local.history.expire(Instant::now(), &local.policy);
        self.account(&change);
        let at = local.position();
        let held_last = local.history.span().is_some_and(|(_, last)| last == at.offset);
        let message = local.history.last(1).next().filter(|_| held_last).cloned();
        LastMessage { at, message }
    }

    /// Queues the messages `request` asks for to a joining member, before
    /// any live message (the member is not a subscriber yet, and the room
    /// is locked). Returns whether a `since` was served.
    fn replay(&self, local: &mut LocalRoom, entry: &SessionEntry, request: Recover) -> bool {
        let change = local.history.expire(Instant::now(), &local.policy);
        self.account(&change);
        let (recovered, messages): (bool, Vec<&RoomMessage>) = match request {
            Recover::Since(since) => {
                match local.history.since(local.epoch, local.last_offset, since.epoch, since.offset) {
                    Some(messages) => (true, messages.collect()),
                    None => (false, Vec::new()),
                }
            }
            Recover::Rewind(count) => (false, local.history.last(count.min(local.policy.size)).collect()),
            Recover::Last => (false, Vec::new()),
        };
        for message in messages {
            let Some(text) = entry.encoder.message(message) else { continue };
            match entry.outbound.push(OutFrame { text, published: None }) {
                Ok(()) => {}
                Err(PushError::Overflow) => {
                    self.metrics.drops_slow_consumer.increment(1);
                    break;
                }
                Err(PushError::Closing) => break,
            }
        }
        recovered
    }

    /// Records that a join of `conn` to `room`, about to be proposed, asks
    /// for `request` to be replayed before its reply. Take the outcome with
    /// [`Hub::join_recovered`] once the join returned (applied or not).
    pub fn expect_join(&self, conn: ConnId, room: &RoomName, request: Recover) {
        let pending = PendingRecovery { request, recovered: None, last: None };
        lock(&self.recoveries).insert((conn, room.clone()), pending);
    }

    /// What the [`Recover::Last`] join of `conn` to `room` found: `None`
    /// when nothing was announced or the join did not apply as a new
    /// member here. Takes the request, as [`Hub::join_recovered`] does.
    pub fn join_last(&self, conn: ConnId, room: &RoomName) -> Option<LastMessage> {
        lock(&self.recoveries).remove(&(conn, room.clone())).and_then(|pending| pending.last)
    }

    /// Whether the join of `conn` to `room` announced with
    /// [`Hub::expect_join`] was served its `since`. False when nothing was
    /// announced, the join did not apply as a new member here, or the
    /// position could not be served.
    pub fn join_recovered(&self, conn: ConnId, room: &RoomName) -> bool {
        lock(&self.recoveries)
            .remove(&(conn, room.clone()))
            .and_then(|pending| pending.recovered)
            .unwrap_or(false)
    }

    /// Keeps a sequenced or delivered message in the room's history.
    fn keep(&self, room: &RoomName, local: &mut LocalRoom, message: &RoomMessage) {
        if !local.policy.enabled() {
            return;
        }
        let change = local.history.push(message, Instant::now(), &local.policy);
        self.account(&change);
        local.recency = Some(self.budget.touch(room, local.recency));
    }

    /// Drops a room's history (a new epoch, or the room closed).
    fn drop_history(&self, local: &mut LocalRoom) {
        if local.history.is_empty() && local.recency.is_none() {
            return;
        }
        let freed = local.history.clear();
        self.account(&RingChange { freed_bytes: freed, ..RingChange::default() });
        self.budget.forget(local.recency.take());
    }

    fn account(&self, change: &RingChange) {
        if *change == RingChange::default() {
            return;
        }
        self.budget.apply(change);
        self.metrics.history_trimmed_size.increment(change.trimmed_size);
        self.metrics.history_trimmed_ttl.increment(change.trimmed_ttl);
        self.metrics.history_bytes.set(self.budget.held() as f64);
    }

    /// Trims the history of the rooms that gained history least recently
    /// until the node holds at most `limits.history_bytes`. Called with no
    /// room locked.
    fn enforce_history_budget(&self) {
        while self.budget.over() {
            let Some(name) = self.budget.take_oldest() else { return };
            let Some(local) = self.room(&name) else { continue };
            let mut local = lock(&local);
            let dropped = local.history.len() as u64;
            self.drop_history(&mut local);
            self.metrics.history_trimmed_bytes.increment(dropped);
        }
    }

    /// The messages of `room` held here: those after `since` (when every
    /// one of them is held), or else the most recent; at most `limit`.
    pub fn history(&self, room: &RoomName, since: Option<Position>, limit: usize) -> Option<HistoryPage> {
        let local = self.room(room)?;
        let mut guard = lock(&local);
        let local = &mut *guard;
        let change = local.history.expire(Instant::now(), &local.policy);
        self.account(&change);
        let position = local.position();
        let (recovered, messages) = match since {
            Some(since) => {
                match local.history.since(local.epoch, local.last_offset, since.epoch, since.offset) {
                    Some(messages) => (true, messages.take(limit).cloned().collect()),
                    None => (false, Vec::new()),
                }
            }
            None => (true, local.history.last(limit).cloned().collect()),
        };
        Some(HistoryPage { position, recovered, messages })
    }

    fn on_left(&self, room: &RoomName, member: &MemberRecord, reason: LeaveReason, last_of_user: bool) {
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
            self.fan_out_event(&local.subscribers, room, member, MemberEvent::Left { last_of_user });
        }
    }

    /// Sequences one message of a room this node owns and delivers it to
    /// every local member and, through the remote fan-out, to other nodes.
    pub fn sequence(
        &self,
        room: &RoomName,
        draft: Draft,
        published: Published,
    ) -> Result<Sequenced, SequenceError> {
        let local = self.room(room).ok_or(SequenceError::NoRoom)?;
        let mut local = lock(&local);
        if *local.owner != *self.node || local.owner_incarnation != self.incarnation {
            // An earlier incarnation of this node may own it: the room then
            // waits for that incarnation's eviction to get a new owner.
            return Err(SequenceError::NotOwner { owner: local.owner.clone(), epoch: local.epoch });
        }
        if local.takeover.is_some() {
            return Err(SequenceError::TakingOver);
        }
        if let Some(position) = local.known_key(&draft, Instant::now()) {
            // A retry of a publish already sequenced: answered with the first
            // result, once another node holds it (as the first was).
            let replicated = match (&local.replicated, self.remote.get()) {
                (Some(sender), Some(_)) if position.epoch == local.epoch => Some(sender.subscribe()),
                _ => None,
            };
            return Ok(Sequenced { position, replicated });
        }
        let offset = local.last_offset.checked_add(1).ok_or(SequenceError::OffsetsExhausted)?;
        local.last_offset = offset;
        let position = Position { epoch: local.epoch, offset };
        let message = RoomMessage::new(room.clone(), position, draft, unix_micros(published.at));
        local.remember_key(&message, Instant::now());
        self.keep(room, &mut local, &message);
        {
            let _fanout = telemetry::fanout_span(room, local.subscribers.len()).entered();
            self.fan_out_message(&local.subscribers, &message, published);
        }
        let mut replicated = None;
        if let Some(remote) = self.remote.get() {
            // Under the room lock: messages leave in offset order.
            if remote.deliver(&message) > 0 {
                let epoch_start = Position { epoch: position.epoch, offset: 0 };
                let sender =
                    local.replicated.get_or_insert_with(|| tokio::sync::watch::Sender::new(epoch_start));
                replicated = Some(sender.subscribe());
            }
        }
        drop(local);
        self.enforce_history_budget();
        self.metrics.publishes.increment(1);
        Ok(Sequenced { position, replicated })
    }

    /// [`Hub::sequence`], waiting (up to `TAKEOVER_WAIT`) while this node
    /// settles a room it just took over, so publishes sent meanwhile are
    /// sequenced afterwards, in the order they came.
    pub async fn sequence_when_ready(
        &self,
        room: &RoomName,
        draft: Draft,
        published: Published,
    ) -> Result<Sequenced, SequenceError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let mut finished = self.takeovers.subscribe();
        loop {
            match self.sequence(room, draft.clone(), published) {
                Err(SequenceError::TakingOver) => {
                    if tokio::time::timeout_at(deadline, finished.changed()).await.is_err() {
                        return Err(SequenceError::TakingOver);
                    }
                }
                result => return result,
            }
        }
    }

    /// Another node says it holds `position` of `room` (an acknowledgement
    /// of a delivery from this node, the owner).
    pub fn acknowledged(&self, room: &RoomName, position: Position) {
        let Some(local) = self.room(room) else { return };
        let local = lock(&local);
        if position.epoch != local.epoch {
            return;
        }
        if let Some(replicated) = &local.replicated {
            replicated.send_if_modified(|held| {
                let newer = held.epoch != position.epoch || held.offset < position.offset;
                if newer {
                    *held = position;
                }
                newer
            });
        }
    }

    /// Where `room` stands here (for a new owner's takeover).
    pub fn room_state(&self, room: &RoomName) -> Option<RoomState> {
        let local = self.room(room)?;
        let mut guard = lock(&local);
        let local = &mut *guard;
        let change = local.history.expire(Instant::now(), &local.policy);
        self.account(&change);
        let held = local.history.span();
        Some(RoomState { epoch: local.epoch, last_offset: local.last_offset, held })
    }

    /// The messages of `room`'s `epoch` after offset `after` held here, all
    /// of them up to the last this node saw, at most `max`; `None` when
    /// they are not all held.
    pub fn messages_after(
        &self,
        room: &RoomName,
        epoch: u64,
        after: u64,
        max: usize,
    ) -> Option<Vec<RoomMessage>> {
        let local = self.room(room)?;
        let local = lock(&local);
        let messages = local.history.since(local.epoch, local.last_offset, epoch, after)?;
        let messages: Vec<RoomMessage> = messages.take(max + 1).cloned().collect();
        (messages.len() <= max).then_some(messages)
    }

    /// Ends this node's takeover of `room` in `epoch` (see
    /// [`RemoteFanout::take_over`]). Publishes waiting for it go on.
    pub fn finish_takeover(&self, room: &RoomName, epoch: u64, outcome: TakeoverOutcome) {
        if let Some(local) = self.room(room) {
            let mut local = lock(&local);
            if local.takeover.is_some() && local.epoch == epoch {
                self.settle(&mut local, outcome);
            }
        }
        self.takeovers.send_modify(|finished| *finished += 1);
        self.enforce_history_budget();
    }

    fn settle(&self, local: &mut LocalRoom, outcome: TakeoverOutcome) {
        let Some(fallback) = local.takeover.take() else { return };
        let TakeoverOutcome::Continue { resend_after, fetched } = outcome else {
            self.start_new_epoch(local, fallback);
            return;
        };
        for message in &fetched {
            let published_at = super::message::instant_from_unix_micros(message.published_us);
            if message.position.epoch == local.epoch && message.position.offset == local.last_offset + 1 {
                self.deliver_in_epoch(local, message, published_at);
            }
        }
        let resend: Vec<RoomMessage> = if !fetched.is_empty() {
            fetched
        } else if resend_after < local.last_offset {
            let held: Option<Vec<RoomMessage>> = local
                .history
                .since(local.epoch, local.last_offset, local.epoch, resend_after)
                .map(|held| held.cloned().collect());
            match held {
                Some(held) => held,
                None => return self.start_new_epoch(local, fallback),
            }
        } else {
            Vec::new()
        };
        if resend.last().is_some_and(|m| m.position.offset != local.last_offset) {
            return self.start_new_epoch(local, fallback);
        }
        if let Some(remote) = self.remote.get() {
            for message in &resend {
                remote.deliver(message);
            }
        }
    }

    fn start_new_epoch(&self, local: &mut LocalRoom, epoch: u64) {
        self.drop_history(local);
        local.start_epoch(epoch.max(local.epoch + 1));
        self.progressed();
    }

    /// A room's position moved: wakes the joins waiting in
    /// [`Hub::catch_up`] (a load of one counter when none waits).
    fn progressed(&self) {
        if self.catching_up.load(Ordering::SeqCst) > 0 {
            self.progress.notify_waiters();
        }
    }

    /// Waits (at most `CATCH_UP_WAIT`) until this node holds `room`'s
    /// messages up to `since`, the position a re-joining client last saw.
    /// A client that moved off a dead node can reach a survivor before the
    /// room's new owner has made every live node hold every message any of
    /// them got; served earlier, its `since` would look ahead of this node
    /// and could not be recovered. Returns at once when the node is there
    /// already, the room is unknown here or has moved to a later epoch;
    /// after the wait the join goes on and is answered as it stands.
    pub async fn catch_up(&self, room: &RoomName, since: Position) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        self.catching_up.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.catching_up);
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_behind(room, since) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Whether this node has not reached `since` in `room` yet.
    fn is_behind(&self, room: &RoomName, since: Position) -> bool {
        let Some(local) = self.room(room) else { return false };
        let local = lock(&local);
        local.epoch < since.epoch || (local.epoch == since.epoch && local.last_offset < since.offset)
    }

    /// Takes a message sequenced by the room's owner on another node. Only
    /// the room's owner incarnation may deliver in the room's current epoch;
    /// anything else is refused. Messages of an older epoch, and offsets
    /// already seen, are dropped quietly (late or repeated); messages of a
    /// later epoch from another node are held until this node applies an
    /// owner change, then delivered if they came from the new owner; a
    /// later epoch from the owner itself starts that epoch here (the owner
    /// could not continue the previous one). `published_at` is the
    /// publisher's accept time on this node's clock. Returns the position
    /// to acknowledge to the owner when this node now holds the message.
    pub fn deliver(
        &self,
        from: FrameSender<'_>,
        message: RoomMessage,
        published_at: Instant,
    ) -> Result<Option<Position>, DeliveryRefused> {
        match self.room(&message.room) {
            Some(local) => self.deliver_to(&local, from, message, published_at),
            None => self.hold_early(from, message, published_at),
        }
    }

    /// Keeps a frame of a room this node has not opened yet, for
    /// `RoomOpened` to deliver (see `EARLY_FRAMES`). A frame of a room that
    /// closed here arrives late and expires unused.
    fn hold_early(
        &self,
        from: FrameSender<'_>,
        message: RoomMessage,
        published_at: Instant,
    ) -> Result<Option<Position>, DeliveryRefused> {
        let mut early = lock(&self.early);
        // Checked again under the lock: `RoomOpened` inserts the room, then
        // takes its frames under this lock, so none is left behind.
        if let Some(local) = self.room(&message.room) {
            drop(early);
            return self.deliver_to(&local, from, message, published_at);
        }
        let now = Instant::now();
        while early.front().is_some_and(|(at, _)| now.duration_since(*at) > EARLY_FRAME_WAIT) {
            early.pop_front();
        }
        if early.len() < EARLY_FRAMES {
            let frame = HeldFrame {
                node: Arc::from(from.node),
                incarnation: from.incarnation,
                message,
                published_at,
            };
            early.push_back((now, frame));
        }
        Ok(None)
    }

    /// Takes the frames held for `room` before it opened here.
    fn take_early(&self, room: &RoomName) -> Vec<HeldFrame> {
        let mut early = lock(&self.early);
        if early.is_empty() {
            return Vec::new();
        }
        let (taken, kept): (Vec<_>, Vec<_>) =
            early.drain(..).partition(|(_, frame)| frame.message.room == *room);
        early.extend(kept);
        taken.into_iter().map(|(_, frame)| frame).collect()
    }

    fn deliver_to(
        &self,
        local: &Mutex<LocalRoom>,
        from: FrameSender<'_>,
        message: RoomMessage,
        published_at: Instant,
    ) -> Result<Option<Position>, DeliveryRefused> {
        let mut local = lock(local);
        let epoch = message.position.epoch;
        if epoch < local.epoch {
            return Ok(None);
        }
        let from_owner = *local.owner == *from.node && local.owner_incarnation == from.incarnation;
        if !from_owner {
            if epoch == local.epoch || local.held.len() >= HELD_FRAMES_PER_ROOM {
                return Err(self.refuse_delivery());
            }
            // Perhaps the next owner, whose owner change is not applied here yet.
            local.held.push(HeldFrame {
                node: Arc::from(from.node),
                incarnation: from.incarnation,
                message,
                published_at,
            });
            return Ok(None);
        }
        if epoch > local.epoch {
            // The owner could not continue the epoch and started another.
            self.start_new_epoch(&mut local, epoch);
        }
        self.deliver_in_epoch(&mut local, &message, published_at);
        let held = (message.position.offset <= local.last_offset).then_some(message.position);
        drop(local);
        self.enforce_history_budget();
        Ok(held)
    }

    fn refuse_delivery(&self) -> DeliveryRefused {
        self.refused_deliveries.fetch_add(1, Ordering::Relaxed);
        DeliveryRefused
    }

    /// Fans out a message of the current epoch from the owner, once per offset.
    fn deliver_in_epoch(&self, local: &mut LocalRoom, message: &RoomMessage, published_at: Instant) {
        if message.position.offset <= local.last_offset {
            return;
        }
        local.last_offset = message.position.offset;
        self.progressed();
        local.remember_key(message, Instant::now());
        self.keep(&message.room, local, message);
        let _fanout = telemetry::fanout_span(&message.room, local.subscribers.len()).entered();
        let published = Published { at: published_at, cross_node: true };
        self.fan_out_message(&local.subscribers, message, published);
    }

    /// After an owner change (or the room opening here): delivers held
    /// messages from the owner, keeps those of later epochs from others,
    /// refuses the rest.
    fn release_held(&self, local: &mut LocalRoom) {
        if local.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut local.held);
        for frame in held {
            let epoch = frame.message.position.epoch;
            let from_owner = *frame.node == *local.owner && frame.incarnation == local.owner_incarnation;
            if epoch < local.epoch {
                continue;
            } else if from_owner {
                if epoch > local.epoch {
                    self.start_new_epoch(local, epoch);
                }
                self.deliver_in_epoch(local, &frame.message, frame.published_at);
            } else if epoch > local.epoch {
                local.held.push(frame);
            } else {
                self.refuse_delivery();
            }
        }
    }

    fn fan_out_message(
        &self,
        subscribers: &[Arc<SessionEntry>],
        message: &RoomMessage,
        published: Published,
    ) {
        let encode = |encoder: &dyn FrameEncoder| encoder.message(message);
        let publisher = message.publisher.as_ref().map(|p| p.conn);
        let frames = &mut FrameCache::new(&encode);
        let delivered = fan_out(subscribers, frames, publisher, Some(published), &self.metrics);
        // Deliveries count room messages; presence events are not counted.
        self.metrics.deliveries.increment(delivered);
    }

    fn fan_out_event(
        &self,
        subscribers: &[Arc<SessionEntry>],
        room: &RoomName,
        member: &MemberRecord,
        event: MemberEvent,
    ) {
        let encode = |encoder: &dyn FrameEncoder| encoder.member_event(room, member, event);
        fan_out(subscribers, &mut FrameCache::new(&encode), None, None, &self.metrics);
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
        f(Some(local.position()))
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

impl EffectsObserver for Hub {
    /// Mirrors applied room effects, in log order, under the table's lock.
    fn applied(&self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::RoomOpened { room, epoch, owner, owner_incarnation } => {
                    let policy = self.history_policy(room);
                    let local = Arc::new(Mutex::new(LocalRoom::new(
                        *epoch,
                        owner.clone(),
                        *owner_incarnation,
                        policy,
                    )));
                    self.rooms
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(room.clone(), Arc::clone(&local));
                    // The owner's first messages may have come before this entry applied.
                    let early = self.take_early(room);
                    if !early.is_empty() {
                        let mut local = lock(&local);
                        local.held.extend(early);
                        self.release_held(&mut local);
                    }
                }
                Effect::Joined { room, member, first_of_user, .. } => {
                    self.on_joined(room, member, *first_of_user)
                }
                Effect::Left { room, member, reason, last_of_user } => {
                    self.on_left(room, member, *reason, *last_of_user)
                }
                Effect::OwnerChanged { room, epoch, owner, owner_incarnation } => {
                    if let Some(local) = self.room(room) {
                        let mut local = lock(&local);
                        local.owner = owner.clone();
                        local.owner_incarnation = *owner_incarnation;
                        local.replicated = None;
                        if *owner == self.node && *owner_incarnation == self.incarnation {
                            // The room continues its epoch from where the
                            // live nodes got to, or starts `epoch`.
                            local.takeover = Some(*epoch);
                            match self.remote.get() {
                                Some(remote) => remote.take_over(room),
                                None => {
                                    let resend_after = local.last_offset;
                                    let outcome =
                                        TakeoverOutcome::Continue { resend_after, fetched: Vec::new() };
                                    self.settle(&mut local, outcome);
                                }
                            }
                        } else {
                            local.takeover = None;
                        }
                        // Deliveries from the new owner may have arrived first.
                        self.release_held(&mut local);
                    }
                }
                Effect::RoomClosed { room } => {
                    let closed = self.rooms.write().unwrap_or_else(|p| p.into_inner()).remove(room);
                    if let Some(closed) = closed {
                        self.drop_history(&mut lock(&closed));
                        self.progressed();
                    }
                }
                Effect::AlreadyJoined { .. } | Effect::Rejected { .. } | Effect::NotMember { .. } => {}
            }
        }
        self.metrics.rooms.set(self.room_count() as f64);
        record_evictions(&self.metrics, effects);
    }

    /// Rebuilds the mirror from a whole table (after a Raft snapshot was
    /// installed). Positions of rooms whose epoch did not change are kept.
    fn rebuilt(&self, table: &RoomTable) {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let mut rebuilt = HashMap::new();
        for name in table.room_names() {
            let Some(snapshot) = table.snapshot(&name) else { continue };
            let mut local = LocalRoom::new(
                snapshot.epoch,
                snapshot.owner.clone(),
                snapshot.owner_incarnation,
                self.history_policy(&name),
            );
            // A room whose epoch did not change keeps its place and history.
            if let Some(previous) = rooms.remove(&name) {
                let mut previous = lock(&previous);
                if previous.epoch == snapshot.epoch {
                    local.last_offset = previous.last_offset;
                    local.history = std::mem::take(&mut previous.history);
                    local.recency = previous.recency.take();
                }
            }
            local.subscribers = snapshot
                .members
                .iter()
                .filter(|m| self.is_local(m))
                .filter_map(|m| self.sessions.get(m.conn))
                .collect();
            rebuilt.insert(name, Arc::new(Mutex::new(local)));
        }
        // Rooms gone from the table take their history with them.
        for (_, gone) in rooms.drain() {
            self.drop_history(&mut lock(&gone));
        }
        *rooms = rebuilt;
        drop(rooms);
        // Frames of rooms the snapshot opened here may have come first.
        let early: Vec<(Instant, HeldFrame)> = lock(&self.early).drain(..).collect();
        let mut unknown = Vec::new();
        for (at, frame) in early {
            match self.room(&frame.message.room) {
                Some(local) => {
                    let mut local = lock(&local);
                    local.held.push(frame);
                    self.release_held(&mut local);
                }
                None => unknown.push((at, frame)),
            }
        }
        lock(&self.early).extend(unknown);
    }
}

/// Lists an applied eviction among the recent events: per evicted node
/// incarnation, how many members left and how many rooms changed owner.
fn record_evictions(metrics: &Metrics, effects: &[Effect]) {
    let mut evicted: Vec<((&str, u64), usize)> = Vec::new();
    for effect in effects {
        if let Effect::Left { member, reason: LeaveReason::NodeEvicted, .. } = effect {
            let key = (&*member.node, member.incarnation);
            match evicted.iter_mut().find(|(k, _)| *k == key) {
                Some((_, count)) => *count += 1,
                None => evicted.push((key, 1)),
            }
        }
    }
    let moved = effects.iter().filter(|e| matches!(e, Effect::OwnerChanged { .. })).count();
    for ((node, incarnation), members) in evicted {
        let detail = format!("members removed: {members}, rooms moved to a new owner: {moved}");
        metrics.events.record("evicted", node, incarnation, detail);
    }
}

/// Queues one frame per subscriber, encoded once per protocol; returns how
/// many subscribers got it.
fn fan_out(
    subscribers: &[Arc<SessionEntry>],
    frames: &mut FrameCache<'_>,
    publisher: Option<ConnId>,
    published: Option<Published>,
    metrics: &Metrics,
) -> u64 {
    let mut delivered = 0u64;
    for subscriber in subscribers {
        if Some(subscriber.conn) == publisher && !subscriber.encoder.echoes_to_publisher() {
            continue;
        }
        let Some(text) = frames.frame_for(&subscriber.encoder) else {
            continue;
        };
        match subscriber.outbound.push(OutFrame { text, published }) {
            Ok(()) => delivered += 1,
            Err(PushError::Overflow) => metrics.drops_slow_consumer.increment(1),
            Err(PushError::Closing) => {}
        }
    }
    delivered
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::*;
    use crate::testing::{apply_everywhere, frames, room, CoreNode, TextEncoder};

    fn draft(data: &str) -> Draft {
        Draft { publisher: None, event: None, data: bytes::Bytes::copy_from_slice(data.as_bytes()) }
    }

    fn now() -> Published {
        Published { at: Instant::now(), cross_node: false }
    }

    fn encoder() -> (Arc<TextEncoder>, Arc<dyn FrameEncoder>) {
        let encoder = Arc::new(TextEncoder::default());
        (Arc::clone(&encoder), encoder as Arc<dyn FrameEncoder>)
    }

    #[tokio::test]
    async fn the_owner_sequences_gapless_offsets_and_encodes_once_per_protocol_not_per_member() {
        let node = CoreNode::new("node-1", 1);
        let (counts_a, protocol_a) = encoder();
        let (counts_b, protocol_b) = encoder();
        let members: Vec<_> = (0..3)
            .map(|i| node.session(&format!("a{i}"), &protocol_a))
            .chain((0..2).map(|i| node.session(&format!("b{i}"), &protocol_b)))
            .collect();
        for member in &members {
            apply_everywhere(&[&node], node.join_command("chat:x", member)).await;
        }
        for member in &members {
            frames(member).await; // joined events
        }
        counts_a.encodings.store(0, Ordering::Relaxed);
        counts_b.encodings.store(0, Ordering::Relaxed);
        for (i, data) in ["one", "two", "three"].iter().enumerate() {
            let sequenced = node.hub.sequence(&room("chat:x"), draft(data), now()).unwrap();
            assert_eq!(sequenced.position.offset, i as u64 + 1);
        }
        assert_eq!(counts_a.encodings.load(Ordering::Relaxed), 3, "one encoding per message for protocol a");
        assert_eq!(counts_b.encodings.load(Ordering::Relaxed), 3, "one encoding per message for protocol b");
        let epoch = node.hub.owner_of(&room("chat:x")).unwrap().1;
        for member in &members {
            let expected: Vec<String> = ["one", "two", "three"]
                .iter()
                .enumerate()
                .map(|(i, d)| format!("msg:{epoch}:{}:{d}", i + 1))
                .collect();
            assert_eq!(frames(member).await, expected);
        }
    }

    #[tokio::test]
    async fn a_cache_channel_join_takes_the_rooms_last_message_aside_and_queues_nothing() {
        let node = CoreNode::new("node-1", 1);
        let (_, protocol) = encoder();
        let cache = room("pusher-app-1:cache-x");
        let first = node.session("first", &protocol);
        apply_everywhere(&[&node], node.join_command(cache.as_str(), &first)).await;
        let epoch = node.hub.owner_of(&cache).unwrap().1;

        let second = node.session("second", &protocol);
        node.hub.expect_join(second.conn, &cache, Recover::Last);
        apply_everywhere(&[&node], node.join_command(cache.as_str(), &second)).await;
        let nothing = LastMessage { at: Position { epoch, offset: 0 }, message: None };
        assert_eq!(node.hub.join_last(second.conn, &cache), Some(nothing), "nothing published yet");

        for data in ["one", "two"] {
            node.hub.sequence(&cache, draft(data), now()).unwrap();
        }
        let third = node.session("third", &protocol);
        node.hub.expect_join(third.conn, &cache, Recover::Last);
        apply_everywhere(&[&node], node.join_command(cache.as_str(), &third)).await;
        let last = node.hub.join_last(third.conn, &cache).unwrap();
        assert_eq!(last.at, Position { epoch, offset: 2 });
        assert_eq!(last.message.map(|m| m.data), Some(bytes::Bytes::from_static(b"two")), "only the last");
        assert_eq!(frames(&third).await, Vec::<String>::new(), "nothing queued: the caller sends it");
        assert_eq!(node.hub.join_last(third.conn, &cache), None, "taken once");

        // A room of another channel of the app keeps no history.
        let plain = room("pusher-app-1:prices");
        apply_everywhere(&[&node], node.join_command(plain.as_str(), &first)).await;
        node.hub.sequence(&plain, draft("one"), now()).unwrap();
        node.hub.expect_join(third.conn, &plain, Recover::Last);
        apply_everywhere(&[&node], node.join_command(plain.as_str(), &third)).await;
        assert_eq!(node.hub.join_last(third.conn, &plain).and_then(|last| last.message), None);
    }

    #[tokio::test]
    async fn only_the_owner_incarnation_sequences_and_rooms_without_members_have_no_sequence() {
        let owner = CoreNode::new("node-1", 1);
        let other = CoreNode::new("node-2", 1);
        let (_, protocol) = encoder();
        let alice = owner.session("alice", &protocol);
        apply_everywhere(&[&owner, &other], owner.join_command("chat:x", &alice)).await;
        assert!(owner.hub.owns(&room("chat:x")));
        assert!(matches!(
            other.hub.sequence(&room("chat:x"), draft("x"), now()),
            Err(SequenceError::NotOwner { owner, .. }) if &*owner == "node-1"
        ));
        assert!(matches!(
            owner.hub.sequence(&room("chat:none"), draft("x"), now()),
            Err(SequenceError::NoRoom)
        ));
        // A restarted node-1 (new incarnation) is not the owner either.
        let restarted = CoreNode::new("node-1", 2);
        apply_everywhere(&[&restarted], owner.join_command("chat:x", &alice)).await;
        assert!(matches!(
            restarted.hub.sequence(&room("chat:x"), draft("x"), now()),
            Err(SequenceError::NotOwner { .. })
        ));
    }

    #[tokio::test]
    async fn deliveries_are_taken_only_from_the_owner_once_per_offset_and_in_the_current_epoch() {
        let owner = CoreNode::new("node-1", 1);
        let other = CoreNode::new("node-2", 1);
        let (_, protocol) = encoder();
        let alice = owner.session("alice", &protocol);
        let bob = other.session("bob", &protocol);
        apply_everywhere(&[&owner, &other], owner.join_command("chat:x", &alice)).await;
        apply_everywhere(&[&owner, &other], other.join_command("chat:x", &bob)).await;
        frames(&bob).await;
        let epoch = other.hub.owner_of(&room("chat:x")).unwrap().1;
        let message =
            |offset, data: &str| RoomMessage::new(room("chat:x"), Position { epoch, offset }, draft(data), 0);
        let from_owner = FrameSender { node: "node-1", incarnation: 1 };
        let intruder = FrameSender { node: "node-3", incarnation: 1 };
        let old_owner = FrameSender { node: "node-1", incarnation: 0 };
        let held = |offset| Ok(Some(Position { epoch, offset }));
        assert_eq!(other.hub.deliver(from_owner.clone(), message(1, "a"), Instant::now()), held(1));
        assert_eq!(
            other.hub.deliver(from_owner.clone(), message(1, "a again"), Instant::now()),
            held(1),
            "a repeat is acknowledged again, not delivered again"
        );
        assert_eq!(other.hub.deliver(intruder, message(2, "forged"), Instant::now()), Err(DeliveryRefused));
        assert_eq!(other.hub.deliver(old_owner, message(2, "stale"), Instant::now()), Err(DeliveryRefused));
        assert_eq!(other.hub.deliver(from_owner, message(2, "b"), Instant::now()), held(2));
        assert_eq!(other.hub.refused_deliveries(), 2);
        assert_eq!(frames(&bob).await, vec![format!("msg:{epoch}:1:a"), format!("msg:{epoch}:2:b")]);
    }

    #[tokio::test]
    async fn frames_of_a_later_epoch_wait_for_its_owner_change_then_only_the_new_owners_are_delivered() {
        let nodes = [CoreNode::new("node-1", 1), CoreNode::new("node-2", 1), CoreNode::new("node-3", 1)];
        let all: Vec<&CoreNode> = nodes.iter().collect();
        let (_, protocol) = encoder();
        let members: Vec<_> =
            nodes.iter().map(|n| n.session(&format!("user-{}", n.name), &protocol)).collect();
        for (node, member) in nodes.iter().zip(&members) {
            apply_everywhere(&all, node.join_command("chat:y", member)).await;
        }
        // node-1 (the owner) dies: the room moves to the node of the member
        // with the lowest connection id. Here the heir could not continue the
        // epoch and starts epoch 4 (the eviction's index), which reaches this
        // node before the owner change does.
        let (heir, receiver) = if members[1].conn < members[2].conn { (1, 2) } else { (2, 1) };
        frames(&members[receiver]).await;
        let message =
            |offset| RoomMessage::new(room("chat:y"), Position { epoch: 4, offset }, draft("early"), 0);
        let from_heir = FrameSender { node: nodes[heir].name, incarnation: 1 };
        let from_other = FrameSender { node: nodes[receiver].name, incarnation: 1 };
        let hub = &nodes[receiver].hub;
        assert_eq!(hub.deliver(from_heir.clone(), message(1), Instant::now()), Ok(None));
        assert_eq!(hub.deliver(from_other, message(2), Instant::now()), Ok(None));
        assert!(frames(&members[receiver]).await.is_empty(), "held until the owner change applies");
        let evict = crate::rooms::RoomCommand::EvictNode { node: "node-1".into(), incarnation: 1 };
        apply_everywhere(&all, evict).await;
        assert_eq!(hub.owner_of(&room("chat:y")), Some((Arc::from(nodes[heir].name), 4)));
        assert_eq!(
            frames(&members[receiver]).await,
            vec!["left:user-node-1".to_string(), "msg:4:1:early".to_string()],
            "the heir's frame is delivered after the change; the other node's is refused"
        );
        assert_eq!(hub.refused_deliveries(), 1);
        // At most HELD_FRAMES_PER_ROOM frames of others wait per room.
        let later = |offset| RoomMessage::new(room("chat:y"), Position { epoch: 99, offset }, draft("x"), 0);
        let stranger = FrameSender { node: "node-9", incarnation: 1 };
        for offset in 1..=HELD_FRAMES_PER_ROOM as u64 {
            assert_eq!(hub.deliver(stranger.clone(), later(offset), Instant::now()), Ok(None));
        }
        assert_eq!(hub.deliver(stranger, later(999), Instant::now()), Err(DeliveryRefused));
        // The owner's own later epoch is taken at once: it could not continue.
        assert_eq!(
            hub.deliver(from_heir, later(1), Instant::now()),
            Ok(Some(Position { epoch: 99, offset: 1 }))
        );
        assert_eq!(hub.owner_of(&room("chat:y")), Some((Arc::from(nodes[heir].name), 99)));
    }

    #[tokio::test]
    async fn frames_that_arrive_before_their_room_opens_here_are_kept_and_recovered() {
        let owner = CoreNode::new("node-1", 1);
        let lagging = CoreNode::new("node-2", 1);
        let (_, protocol) = encoder();
        let alice = owner.session("alice", &protocol);
        // The room opens on the owner; the entry has not applied on node-2 yet.
        apply_everywhere(&[&owner], owner.join_command("chat:x", &alice)).await;
        let from_owner = FrameSender { node: "node-1", incarnation: 1 };
        let mut sent = Vec::new();
        for data in ["one", "two"] {
            let position = owner.hub.sequence(&room("chat:x"), draft(data), now()).unwrap().position;
            let message = RoomMessage::new(room("chat:x"), position, draft(data), 0);
            assert_eq!(lagging.hub.deliver(from_owner.clone(), message, Instant::now()), Ok(None));
            sent.push(position);
        }
        let stranger = FrameSender { node: "node-3", incarnation: 1 };
        let forged =
            RoomMessage::new(room("chat:x"), Position { epoch: sent[0].epoch, offset: 3 }, draft("x"), 0);
        assert_eq!(lagging.hub.deliver(stranger, forged, Instant::now()), Ok(None));
        apply_everywhere(&[&lagging], owner.join_command("chat:x", &alice)).await;
        let page = lagging.hub.history(&room("chat:x"), None, 10).unwrap();
        assert_eq!(page.position, sent[1], "the owner's early frames were delivered as the room opened");
        let held: Vec<Position> = page.messages.iter().map(|m| m.position).collect();
        assert_eq!(held, sent);
        assert_eq!(lagging.hub.refused_deliveries(), 1, "a frame from another node is refused");
        // A member re-joining here with `since` the first message recovers.
        let bob = lagging.session("bob", &protocol);
        lagging.hub.expect_join(bob.conn, &room("chat:x"), Recover::Since(sent[0]));
        apply_everywhere(&[&owner, &lagging], lagging.join_command("chat:x", &bob)).await;
        assert!(lagging.hub.join_recovered(bob.conn, &room("chat:x")));
        assert_eq!(frames(&bob).await, vec![format!("msg:{}:2:two", sent[1].epoch)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_with_since_ahead_of_this_node_waits_for_the_messages_then_is_served() {
        let owner = CoreNode::new("node-1", 1);
        let other = CoreNode::new("node-2", 1);
        let (_, protocol) = encoder();
        let alice = owner.session("alice", &protocol);
        apply_everywhere(&[&owner, &other], owner.join_command("chat:x", &alice)).await;
        let epoch = other.hub.owner_of(&room("chat:x")).unwrap().1;
        let at = move |offset| Position { epoch, offset };
        let hub = Arc::clone(&other.hub);
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn(async move { hub.catch_up(&room("chat:x"), at(2)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "offset 2 is not held here yet");
        let from_owner = FrameSender { node: "node-1", incarnation: 1 };
        for offset in 1..=2 {
            let message = RoomMessage::new(room("chat:x"), at(offset), draft("m"), 0);
            other.hub.deliver(from_owner.clone(), message, Instant::now()).unwrap();
        }
        waiting.await.unwrap();
        assert_eq!(started.elapsed(), std::time::Duration::ZERO, "woken by the delivery, not the clock");
        // Already there, an older epoch's position, or an unknown room: no wait.
        for (name, since) in
            [("chat:x", at(2)), ("chat:x", Position { epoch: epoch - 1, offset: 9 }), ("chat:z", at(9))]
        {
            other.hub.catch_up(&room(name), since).await;
        }
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
        // A position this node never reaches: the join goes on after the bound.
        other.hub.catch_up(&room("chat:x"), at(3)).await;
        assert_eq!(started.elapsed(), CATCH_UP_WAIT);
        assert_eq!(other.hub.catching_up.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_evicted_node_closes_its_own_members_sessions_to_make_them_rejoin() {
        let node = CoreNode::new("node-1", 1);
        let (_, protocol) = encoder();
        let alice = node.session("alice", &protocol);
        apply_everywhere(&[&node], node.join_command("chat:x", &alice)).await;
        let evict = crate::rooms::RoomCommand::EvictNode { node: "node-1".into(), incarnation: 1 };
        apply_everywhere(&[&node], evict).await;
        assert_eq!(alice.outbound.closing(), Some(CloseCode::Restarting));
        assert_eq!(node.hub.subscription_count(), 0);
    }

    #[tokio::test]
    async fn a_member_that_does_not_read_is_closed_as_a_slow_consumer_and_the_room_goes_on() {
        let node = CoreNode::new("node-1", 1);
        let (_, protocol) = encoder();
        let slow = node.session("slow", &protocol);
        let fast = node.session("fast", &protocol);
        apply_everywhere(&[&node], node.join_command("chat:x", &slow)).await;
        apply_everywhere(&[&node], node.join_command("chat:x", &fast)).await;
        for i in 0..100 {
            node.hub.sequence(&room("chat:x"), draft(&i.to_string()), now()).unwrap();
            frames(&fast).await;
        }
        assert_eq!(slow.outbound.closing(), Some(CloseCode::SlowConsumer));
        assert!(fast.outbound.closing().is_none());
    }
}
