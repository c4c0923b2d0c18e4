//! The publishes of a session that are not answered yet, in call order:
//! queued (the room is not joined, or they wait to be retried) or in flight
//! (sent, reply awaited). Each has a sequence number from the call order,
//! which is also its `idem` key, so a retry is the same publish to the
//! server (G9). Pure: no socket, no clock; generic over what waits for the
//! answer, so tests use plain values.

use std::collections::BTreeMap;

use serde_json::Value;

/// Where a publish is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to be sent: its room is not joined, or it was refused with a
    /// retryable error and waits for its room's retry.
    Queued,
    /// Sent as the request with this id; its reply is awaited.
    InFlight(u64),
}

#[derive(Debug)]
pub struct Item<W> {
    pub room: String,
    pub data: Value,
    pub state: State,
    /// Told the outcome once, when the item leaves the outbox.
    pub waiter: W,
}

#[derive(Debug)]
pub struct Outbox<W> {
    items: BTreeMap<u64, Item<W>>,
    next_seq: u64,
    /// Queued publishes held at most (in flight ones do not count).
    limit: usize,
}

impl<W> Outbox<W> {
    pub fn new(limit: usize) -> Outbox<W> {
        Outbox { items: BTreeMap::new(), next_seq: 0, limit }
    }

    /// The `idem` key of publish `seq`: the same on every retry.
    pub fn idem(seq: u64) -> String {
        format!("p{seq}")
    }

    /// Adds a publish as queued; returns its sequence number and the
    /// publishes dropped to stay within the limit (the oldest queued first,
    /// possibly this one when the limit is 0).
    pub fn push(&mut self, room: &str, data: Value, waiter: W) -> (u64, Vec<Item<W>>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.items.insert(seq, Item { room: room.to_string(), data, state: State::Queued, waiter });
        (seq, self.trim())
    }

    /// Whether `room` has publishes waiting to be sent (a new one must
    /// queue behind them, never overtake).
    pub fn has_queued(&self, room: &str) -> bool {
        self.items.values().any(|item| item.room == room && item.state == State::Queued)
    }

    /// The queued publishes of `room`, oldest call first.
    pub fn queued(&self, room: &str) -> Vec<u64> {
        self.items
            .iter()
            .filter(|(_, item)| item.room == room && item.state == State::Queued)
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Every publish in flight, oldest call first.
    pub fn in_flight(&self) -> Vec<u64> {
        self.items
            .iter()
            .filter(|(_, item)| matches!(item.state, State::InFlight(_)))
            .map(|(s, _)| *s)
            .collect()
    }

    pub fn get(&self, seq: u64) -> Option<&Item<W>> {
        self.items.get(&seq)
    }

    /// Publish `seq` was sent as request `id`.
    pub fn sent(&mut self, seq: u64, id: u64) {
        if let Some(item) = self.items.get_mut(&seq) {
            item.state = State::InFlight(id);
        }
    }

    /// Publish `seq` goes back into the queue, at its place in call order;
    /// returns the publishes dropped to stay within the limit.
    pub fn requeue(&mut self, seq: u64) -> Vec<Item<W>> {
        if let Some(item) = self.items.get_mut(&seq) {
            item.state = State::Queued;
        }
        self.trim()
    }

    /// Removes publish `seq` (answered, timed out or rejected).
    pub fn take(&mut self, seq: u64) -> Option<Item<W>> {
        self.items.remove(&seq)
    }

    /// Removes every publish of `room`.
    pub fn take_room(&mut self, room: &str) -> Vec<Item<W>> {
        let seqs: Vec<u64> = self.items.iter().filter(|(_, i)| i.room == room).map(|(s, _)| *s).collect();
        seqs.into_iter().filter_map(|seq| self.items.remove(&seq)).collect()
    }

    /// Removes everything.
    pub fn take_all(&mut self) -> Vec<Item<W>> {
        std::mem::take(&mut self.items).into_values().collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn trim(&mut self) -> Vec<Item<W>> {
        let mut dropped = Vec::new();
        let mut queued: Vec<u64> =
            self.items.iter().filter(|(_, item)| item.state == State::Queued).map(|(s, _)| *s).collect();
        while queued.len() > self.limit {
            let oldest = queued.remove(0);
            dropped.extend(self.items.remove(&oldest));
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_refused_publish_goes_back_before_later_ones_of_its_room() {
        let mut outbox = Outbox::new(10);
        let (a, _) = outbox.push("chat:a", json!(1), "a");
        let (b, _) = outbox.push("chat:a", json!(2), "b");
        let (other, _) = outbox.push("chat:b", json!(3), "other");
        outbox.sent(a, 100);
        outbox.sent(b, 101);
        assert!(!outbox.has_queued("chat:a"));
        // The owner moved: both come back refused, the later one first.
        outbox.requeue(b);
        outbox.requeue(a);
        assert_eq!(outbox.queued("chat:a"), [a, b], "call order, not refusal order");
        assert_eq!(outbox.queued("chat:b"), [other]);
        assert_eq!(Outbox::<()>::idem(a), "p0", "a retry carries the same key");
    }

    #[test]
    fn over_the_limit_the_oldest_queued_publish_is_dropped() {
        let mut outbox = Outbox::new(2);
        let (first, _) = outbox.push("chat:a", json!(1), 1);
        outbox.sent(first, 7);
        let (second, dropped) = outbox.push("chat:a", json!(2), 2);
        assert!(dropped.is_empty());
        let (_, dropped) = outbox.push("chat:a", json!(3), 3);
        assert!(dropped.is_empty(), "in-flight publishes do not count");
        let (_, dropped) = outbox.push("chat:b", json!(4), 4);
        assert_eq!(dropped.iter().map(|i| i.waiter).collect::<Vec<_>>(), [2]);
        assert!(outbox.get(second).is_none());
        assert_eq!(outbox.in_flight(), [first]);
        assert_eq!(outbox.len(), 3);
    }

    #[test]
    fn leaving_a_room_takes_its_publishes_only() {
        let mut outbox = Outbox::new(10);
        outbox.push("chat:a", json!(1), 1);
        outbox.push("chat:b", json!(2), 2);
        outbox.push("chat:a", json!(3), 3);
        let taken: Vec<i32> = outbox.take_room("chat:a").into_iter().map(|i| i.waiter).collect();
        assert_eq!(taken, [1, 3]);
        assert_eq!(outbox.take_all().len(), 1);
        assert!(outbox.is_empty());
    }
}
