//! Room history: the most recent messages of a room, held on every node
//! that receives the room's messages, for recovery (a join's `since` and
//! `rewind`) and the history endpoint.
//!
//! A ring holds one unbroken run of offsets of the room's current epoch,
//! ending at the last message the node saw: a message that does not follow
//! the last one held starts the run again, so whatever a ring answers has
//! no gap. Bounds: the namespace's `history_size` and `history_ttl_ms` per
//! room here; the node-wide `limits.history_bytes` in [`HistoryBudget`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::message::RoomMessage;
use crate::protocol::RoomName;

/// How much history a room keeps (from its namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryPolicy {
    /// Messages kept; 0 keeps none.
    pub size: usize,
    /// How long a message is kept; `None`: until trimmed by size or bytes.
    pub ttl: Option<Duration>,
}

impl HistoryPolicy {
    pub fn new(size: usize, ttl_ms: u64) -> HistoryPolicy {
        HistoryPolicy { size, ttl: (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms)) }
    }

    pub fn enabled(&self) -> bool {
        self.size > 0
    }
}

/// What one ring operation changed, for the node-wide budget and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingChange {
    pub added_bytes: usize,
    pub freed_bytes: usize,
    /// Messages dropped because the ring was full.
    pub trimmed_size: u64,
    /// Messages dropped because they outlived the TTL.
    pub trimmed_ttl: u64,
}

#[derive(Debug)]
struct HeldMessage {
    message: RoomMessage,
    at: Instant,
    bytes: usize,
}

/// What a held message costs, approximately: the message's own heap
/// bytes plus the ring slot and the shared structures around them (the
/// data's reference-counted block and the allocator's rounding, about 96
/// bytes as measured: `bench/history-memory.mjs`).
pub fn held_bytes(message: &RoomMessage) -> usize {
    const SLOT: usize = std::mem::size_of::<HeldMessage>() + 96;
    SLOT + message.data.len()
        + message.event.as_ref().map_or(0, |e| e.len())
        + message.publisher.as_ref().map_or(0, |p| p.user.len())
}

/// The recent messages of one room, offsets without a gap.
#[derive(Debug, Default)]
pub struct Ring {
    entries: VecDeque<HeldMessage>,
    bytes: usize,
}

impl Ring {
    /// Bytes held (as [`held_bytes`] counts them).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The offsets held, first and last.
    pub fn span(&self) -> Option<(u64, u64)> {
        Some((self.entries.front()?.message.position.offset, self.entries.back()?.message.position.offset))
    }

    /// Keeps `message` (received at `at`), dropping what `policy` no longer
    /// allows. A message that does not directly follow the last one held
    /// (another epoch, or a gap) starts the ring again.
    pub fn push(&mut self, message: &RoomMessage, at: Instant, policy: &HistoryPolicy) -> RingChange {
        let mut change = RingChange::default();
        if !policy.enabled() {
            change.freed_bytes = self.clear();
            return change;
        }
        let follows = self.entries.back().is_none_or(|last| {
            last.message.position.epoch == message.position.epoch
                && last.message.position.offset.checked_add(1) == Some(message.position.offset)
        });
        if !follows {
            change.freed_bytes += self.clear();
        }
        if self.entries.capacity() == 0 {
            // A full ring's exact size, not the next power of two.
            self.entries.reserve_exact(policy.size.min(1024));
        }
        let bytes = held_bytes(message);
        self.entries.push_back(HeldMessage { message: message.clone(), at, bytes });
        self.bytes += bytes;
        change.added_bytes = bytes;
        while self.entries.len() > policy.size {
            change.freed_bytes += self.pop_front();
            change.trimmed_size += 1;
        }
        let expired = self.expire(at, policy);
        change.freed_bytes += expired.freed_bytes;
        change.trimmed_ttl += expired.trimmed_ttl;
        change
    }

    /// Drops the messages older than the TTL at `now`.
    pub fn expire(&mut self, now: Instant, policy: &HistoryPolicy) -> RingChange {
        let mut change = RingChange::default();
        let Some(ttl) = policy.ttl else { return change };
        while self.entries.front().is_some_and(|held| now.saturating_duration_since(held.at) > ttl) {
            change.freed_bytes += self.pop_front();
            change.trimmed_ttl += 1;
        }
        change
    }

    fn pop_front(&mut self) -> usize {
        let freed = self.entries.pop_front().map_or(0, |held| held.bytes);
        self.bytes -= freed;
        freed
    }

    /// Drops everything; returns the bytes freed.
    pub fn clear(&mut self) -> usize {
        self.entries.clear();
        std::mem::take(&mut self.bytes)
    }

    /// Every message of `epoch` after offset `since`, when this ring holds
    /// them all and the room stands at `current` (the last offset this node
    /// saw of the room). `None` when it cannot tell them all: another epoch,
    /// an offset the room never reached, or messages already dropped. Call
    /// [`Ring::expire`] first so that expired messages count as dropped.
    pub fn since(
        &self,
        current_epoch: u64,
        current: u64,
        epoch: u64,
        since: u64,
    ) -> Option<impl Iterator<Item = &RoomMessage>> {
        if epoch != current_epoch || since > current {
            return None;
        }
        let skip = if since == current {
            self.entries.len()
        } else {
            let (first, last) = self.span()?;
            if last != current || since.checked_add(1)? < first {
                return None;
            }
            (since + 1 - first) as usize
        };
        Some(self.entries.iter().skip(skip).map(|held| &held.message))
    }

    /// The last `count` messages held, oldest first.
    pub fn last(&self, count: usize) -> impl Iterator<Item = &RoomMessage> {
        self.entries.iter().skip(self.entries.len().saturating_sub(count)).map(|held| &held.message)
    }
}

/// The node-wide cap on history bytes (`limits.history_bytes`), and the
/// order in which rooms last gained history, so that the history of the
/// rooms that published least recently is trimmed first.
pub struct HistoryBudget {
    cap: usize,
    held: AtomicUsize,
    /// Recency key -> room; each room with history has one key.
    recency: Mutex<Recency>,
}

#[derive(Default)]
struct Recency {
    next: u64,
    rooms: BTreeMap<u64, RoomName>,
}

impl HistoryBudget {
    pub fn new(cap: usize) -> HistoryBudget {
        HistoryBudget { cap, held: AtomicUsize::new(0), recency: Mutex::default() }
    }

    /// Bytes held across every room.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn over(&self) -> bool {
        self.held() > self.cap
    }

    /// Accounts for `change`.
    pub fn apply(&self, change: &RingChange) {
        if change.added_bytes > 0 {
            self.held.fetch_add(change.added_bytes, Ordering::Relaxed);
        }
        if change.freed_bytes > 0 {
            self.held.fetch_sub(change.freed_bytes, Ordering::Relaxed);
        }
    }

    fn recency(&self) -> std::sync::MutexGuard<'_, Recency> {
        self.recency.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `room` as the most recent to gain history; `key` is the room's
    /// previous key, replaced by the returned one.
    pub fn touch(&self, room: &RoomName, key: Option<u64>) -> u64 {
        let mut recency = self.recency();
        if let Some(key) = key {
            recency.rooms.remove(&key);
        }
        let next = recency.next;
        recency.next += 1;
        recency.rooms.insert(next, room.clone());
        next
    }

    /// Forgets `room`'s key (its history is gone).
    pub fn forget(&self, key: Option<u64>) {
        if let Some(key) = key {
            self.recency().rooms.remove(&key);
        }
    }

    /// The room that gained history least recently, taken out of the order
    /// (its history is about to be trimmed).
    pub fn take_oldest(&self) -> Option<RoomName> {
        self.recency().rooms.pop_first().map(|(_, room)| room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::{Draft, Position};

    fn message(epoch: u64, offset: u64, data: &str) -> RoomMessage {
        let draft =
            Draft { publisher: None, event: None, data: bytes::Bytes::copy_from_slice(data.as_bytes()) };
        RoomMessage::new(RoomName::parse("chat:x").unwrap(), Position { epoch, offset }, draft, 0)
    }

    fn offsets<'a>(messages: impl Iterator<Item = &'a RoomMessage>) -> Vec<u64> {
        messages.map(|m| m.position.offset).collect()
    }

    #[test]
    fn a_ring_keeps_the_last_history_size_messages_and_counts_their_bytes() {
        let policy = HistoryPolicy::new(3, 0);
        let mut ring = Ring::default();
        let now = Instant::now();
        let mut held = 0isize;
        for offset in 1..=5 {
            let change = ring.push(&message(7, offset, "0123456789"), now, &policy);
            held += change.added_bytes as isize - change.freed_bytes as isize;
            assert_eq!(change.trimmed_size, u64::from(offset > 3));
        }
        assert_eq!(ring.span(), Some((3, 5)));
        assert_eq!(ring.bytes() as isize, held);
        assert_eq!(ring.bytes(), 3 * held_bytes(&message(7, 1, "0123456789")));
        assert_eq!(offsets(ring.last(2)), vec![4, 5]);
        assert_eq!(offsets(ring.last(10)), vec![3, 4, 5]);
    }

    #[test]
    fn recovery_serves_exactly_the_messages_after_a_held_position_and_nothing_else() {
        let policy = HistoryPolicy::new(3, 0);
        let mut ring = Ring::default();
        for offset in 1..=5 {
            ring.push(&message(7, offset, "x"), Instant::now(), &policy);
        }
        // Held: 3, 4, 5. Recoverable positions: 2 (first held is next), 3, 4, 5.
        assert_eq!(ring.since(7, 5, 7, 2).map(offsets), Some(vec![3, 4, 5]));
        assert_eq!(ring.since(7, 5, 7, 4).map(offsets), Some(vec![5]));
        assert_eq!(ring.since(7, 5, 7, 5).map(offsets), Some(vec![]), "up to date: nothing to replay");
        assert!(ring.since(7, 5, 7, 1).is_none(), "offset 2 was trimmed");
        assert!(ring.since(7, 5, 6, 4).is_none(), "another epoch");
        assert!(ring.since(7, 5, 7, 6).is_none(), "an offset the room never reached");
        assert!(ring.since(7, 6, 7, 4).is_none(), "the ring does not reach the room's last offset");
        assert!(Ring::default().since(7, 5, 7, 4).is_none(), "nothing held");
        assert_eq!(Ring::default().since(7, 0, 7, 0).map(offsets), Some(vec![]), "a new room is up to date");
    }

    #[test]
    fn a_gap_or_a_new_epoch_starts_the_ring_again_so_it_never_answers_across_one() {
        let policy = HistoryPolicy::new(10, 0);
        let mut ring = Ring::default();
        for offset in [1, 2, 3, 5, 6] {
            ring.push(&message(7, offset, "x"), Instant::now(), &policy);
        }
        assert_eq!(ring.span(), Some((5, 6)));
        assert!(ring.since(7, 6, 7, 2).is_none(), "offset 4 was never seen here");
        assert_eq!(ring.since(7, 6, 7, 4).map(offsets), Some(vec![5, 6]));
        ring.push(&message(9, 1, "x"), Instant::now(), &policy);
        assert_eq!(ring.span(), Some((1, 1)));
        assert!(ring.since(9, 1, 7, 6).is_none());
    }

    #[test]
    fn messages_older_than_the_ttl_are_dropped_and_no_longer_recover() {
        let policy = HistoryPolicy::new(10, 1_000);
        let mut ring = Ring::default();
        let start = Instant::now();
        ring.push(&message(7, 1, "x"), start, &policy);
        ring.push(&message(7, 2, "x"), start + Duration::from_millis(600), &policy);
        let later = start + Duration::from_millis(1_200);
        let change = ring.expire(later, &policy);
        assert_eq!(change.trimmed_ttl, 1);
        assert_eq!(change.freed_bytes, held_bytes(&message(7, 1, "x")));
        assert!(ring.since(7, 2, 7, 0).is_none(), "offset 1 expired");
        assert_eq!(ring.since(7, 2, 7, 1).map(offsets), Some(vec![2]));
        // A push expires too.
        let change = ring.push(&message(7, 3, "x"), start + Duration::from_millis(1_700), &policy);
        assert_eq!(change.trimmed_ttl, 1);
        assert_eq!(ring.span(), Some((3, 3)));
    }

    #[test]
    fn a_room_without_history_holds_nothing() {
        let mut ring = Ring::default();
        let change = ring.push(&message(7, 1, "x"), Instant::now(), &HistoryPolicy::new(0, 0));
        assert_eq!(change, RingChange::default());
        assert!(ring.is_empty());
    }

    #[test]
    fn the_budget_names_rooms_least_recently_given_history_first() {
        let budget = HistoryBudget::new(100);
        let (a, b, c) = (
            RoomName::parse("chat:a").unwrap(),
            RoomName::parse("chat:b").unwrap(),
            RoomName::parse("chat:c").unwrap(),
        );
        let key_a = budget.touch(&a, None);
        let key_b = budget.touch(&b, None);
        let _key_c = budget.touch(&c, None);
        budget.touch(&a, Some(key_a)); // a published again: now the most recent
        budget.forget(Some(key_b)); // b's history is gone
        assert_eq!(budget.take_oldest(), Some(c));
        assert_eq!(budget.take_oldest(), Some(a));
        assert_eq!(budget.take_oldest(), None);
        budget.apply(&RingChange { added_bytes: 150, ..RingChange::default() });
        assert!(budget.over());
        budget.apply(&RingChange { freed_bytes: 60, ..RingChange::default() });
        assert!(!budget.over());
        assert_eq!(budget.held(), 90);
    }
}
