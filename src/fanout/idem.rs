//! Publish keys (`idem`): a retried publish names itself with the key of
//! the first attempt, and the room's owner sequences each key once (G9).
//!
//! Every node that sees a room's messages remembers, per room, the
//! position each recent key got, so a new owner that took the room over
//! answers a retry of a message its dead predecessor sequenced with that
//! message's position instead of sequencing it again. Keys are scoped to
//! the publishing connection: two connections may use the same key.
//!
//! A window holds the keys of the last [`IDEM_WINDOW`] and at most
//! [`IDEM_KEYS_PER_ROOM`] of them: a retry comes within the publish
//! deadlines (seconds), and a hostile client cannot make a room hold more.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::Position;
use crate::protocol::ConnId;

/// How long a key is remembered: longer than a client waits for a reply
/// (the forward timeout) plus how long the server holds a refused queue.
pub const IDEM_WINDOW: Duration = Duration::from_secs(30);

/// The most keys one room remembers; the oldest go first.
pub const IDEM_KEYS_PER_ROOM: usize = 1024;

type Key = (ConnId, Arc<str>);

/// The recent publish keys of one room and the positions they got.
#[derive(Debug, Default)]
pub struct IdemWindow {
    order: VecDeque<(Instant, Key)>,
    positions: HashMap<Key, Position>,
}

impl IdemWindow {
    /// The position the key's first publish got, if it is remembered.
    pub fn find(&mut self, conn: ConnId, key: &Arc<str>, now: Instant) -> Option<Position> {
        self.expire(now);
        self.positions.get(&(conn, Arc::clone(key))).copied()
    }

    /// Remembers that `conn`'s publish `key` got `position`. A key already
    /// remembered keeps its first position.
    pub fn record(&mut self, conn: ConnId, key: &Arc<str>, position: Position, now: Instant) {
        self.expire(now);
        let key = (conn, Arc::clone(key));
        if self.positions.contains_key(&key) {
            return;
        }
        if self.order.len() >= IDEM_KEYS_PER_ROOM {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.positions.remove(&oldest);
            }
        }
        self.positions.insert(key.clone(), position);
        self.order.push_back((now, key));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < IDEM_WINDOW {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.positions.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, offset: u64) -> Position {
        Position { epoch, offset }
    }

    #[test]
    fn a_key_keeps_its_first_position_and_is_scoped_to_its_connection() {
        let mut window = IdemWindow::default();
        let now = Instant::now();
        let key: Arc<str> = Arc::from("p-1");
        window.record(ConnId(1), &key, at(1, 5), now);
        window.record(ConnId(1), &key, at(1, 9), now);
        assert_eq!(window.find(ConnId(1), &key, now), Some(at(1, 5)));
        assert_eq!(window.find(ConnId(2), &key, now), None, "another connection's key is its own");
    }

    #[test]
    fn keys_are_forgotten_after_the_window_and_beyond_the_per_room_bound() {
        let mut window = IdemWindow::default();
        let start = Instant::now();
        let first: Arc<str> = Arc::from("first");
        window.record(ConnId(1), &first, at(1, 1), start);
        assert_eq!(
            window.find(ConnId(1), &first, start + IDEM_WINDOW - Duration::from_millis(1)),
            Some(at(1, 1))
        );
        assert_eq!(window.find(ConnId(1), &first, start + IDEM_WINDOW), None);
        assert!(window.is_empty());

        for n in 0..=IDEM_KEYS_PER_ROOM as u64 {
            window.record(ConnId(1), &Arc::from(format!("k{n}")), at(1, n), start);
        }
        assert_eq!(window.order.len(), IDEM_KEYS_PER_ROOM);
        assert_eq!(window.positions.len(), IDEM_KEYS_PER_ROOM);
        assert_eq!(window.find(ConnId(1), &Arc::from("k0"), start), None, "the oldest key went first");
        assert_eq!(window.find(ConnId(1), &Arc::from("k1"), start), Some(at(1, 1)));
    }
}
