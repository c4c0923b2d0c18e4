//! What a session remembers of one room across connections: the `meta` it
//! joins with, whether it is joined on the current connection, the position
//! of the last message delivered (the `since` of the next re-join), and the
//! messages that arrive while a join is in flight (wire contract section 10:
//! they precede the reply and belong to this member). Pure: it turns join
//! replies and frames into the events the caller sees.

use std::collections::VecDeque;

use serde_json::Value;

use crate::session::SessionEvent;
use crate::wire::{JoinResult, Message, StreamPosition};

/// Messages held per room while its join reply is awaited.
const EARLY_MESSAGE_LIMIT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not joined on the current connection (or no connection): a join is
    /// queued, in flight, or waits for a connection or a retry.
    Joining,
    /// The join reply of the current connection came.
    Joined,
}

#[derive(Debug)]
pub(crate) struct Room {
    pub name: String,
    /// Sent with every (re)join.
    pub meta: Option<Value>,
    pub phase: Phase,
    /// The last position delivered to the caller (join reply or message);
    /// `None` before the first join reply.
    position: Option<StreamPosition>,
    /// Messages that came before the join reply, oldest first.
    early: VecDeque<Message>,
    /// Some early messages were dropped over `EARLY_MESSAGE_LIMIT`.
    early_overflowed: bool,
    /// The connection generation this room's join was scheduled on, so it
    /// is scheduled once per connection.
    pub join_generation: Option<u64>,
    /// A join of this room awaits its reply on the current connection.
    pub join_in_flight: bool,
    /// `unavailable` answers in a row to this room's join.
    pub unavailable_retries: u32,
    /// A retry of this room's queued publishes is scheduled.
    pub publish_retry_armed: bool,
}

impl Room {
    pub fn new(name: &str, meta: Option<Value>) -> Room {
        Room {
            name: name.to_string(),
            meta,
            phase: Phase::Joining,
            position: None,
            early: VecDeque::new(),
            early_overflowed: false,
            join_generation: None,
            join_in_flight: false,
            unavailable_retries: 0,
            publish_retry_armed: false,
        }
    }

    /// Whether a join reply ever came (a later join is a re-join).
    pub fn joined_once(&self) -> bool {
        self.position.is_some()
    }

    /// The `since` of the next join: the last position delivered.
    pub fn since(&self) -> Option<StreamPosition> {
        self.position
    }

    /// The join frame for this room (without `id`).
    pub fn join_frame(&self) -> Value {
        let mut frame = serde_json::json!({"type": "join", "room": self.name});
        if let Some(meta) = &self.meta {
            frame["meta"] = meta.clone();
        }
        if let Some(since) = self.position {
            frame["since"] = serde_json::json!(since);
        }
        frame
    }

    /// A `message` frame for this room on the current connection: the
    /// events to emit (none while the join is in flight: it is held).
    pub fn message(&mut self, message: Message) -> Option<SessionEvent> {
        match self.phase {
            Phase::Joined => {
                self.position = Some(StreamPosition { epoch: message.epoch, offset: message.offset });
                Some(SessionEvent::Message(message))
            }
            Phase::Joining if self.join_in_flight => {
                if self.early.len() >= EARLY_MESSAGE_LIMIT {
                    self.early.pop_front();
                    self.early_overflowed = true;
                }
                self.early.push_back(message);
                None
            }
            Phase::Joining => None,
        }
    }

    /// The join reply: `Subscribed` (first join) or `Resubscribed`, then
    /// the messages held while it was awaited.
    pub fn joined(&mut self, result: &JoinResult) -> Vec<SessionEvent> {
        let previous = self.position;
        let early: Vec<Message> = self.early.drain(..).collect();
        let overflowed = std::mem::take(&mut self.early_overflowed);
        self.phase = Phase::Joined;
        self.unavailable_retries = 0;
        self.position = Some(StreamPosition { epoch: result.epoch, offset: result.offset });
        let mut events = Vec::with_capacity(early.len() + 1);
        let position = StreamPosition { epoch: result.epoch, offset: result.offset };
        match previous {
            None => events.push(SessionEvent::Subscribed {
                room: self.name.clone(),
                position,
                members: result.members.clone(),
            }),
            Some(previous) => {
                // Without `recovered`, nothing was missed only when this
                // connection continues exactly from the last position seen.
                let recovered = result.recovered == Some(true);
                let same_epoch =
                    result.epoch == previous.epoch && early.iter().all(|m| m.epoch == previous.epoch);
                let continued = same_epoch
                    && !overflowed
                    && match early.first() {
                        Some(first) => first.offset == previous.offset + 1,
                        None => result.offset == previous.offset,
                    };
                events.push(SessionEvent::Resubscribed {
                    room: self.name.clone(),
                    recovered,
                    missed: !recovered && !continued,
                    position,
                    previous,
                    members: result.members.clone(),
                });
            }
        }
        // Early messages precede the reply in the stream; the position
        // stays the reply's (their offsets are at most its offset).
        events.extend(early.into_iter().map(SessionEvent::Message));
        events
    }

    /// The connection is gone: joined again on the next one.
    pub fn disconnected(&mut self) {
        self.phase = Phase::Joining;
        self.early.clear();
        self.early_overflowed = false;
        self.join_generation = None;
        self.join_in_flight = false;
        self.unavailable_retries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(epoch: u64, offset: u64) -> Message {
        Message { room: "chat:a".into(), epoch, offset, data: json!(offset), from: None }
    }

    fn reply(epoch: u64, offset: u64, recovered: Option<bool>) -> JoinResult {
        JoinResult { room: "chat:a".into(), epoch, offset, members: None, recovered }
    }

    fn offsets(events: &[SessionEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Message(m) => Some(m.offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_rejoin_asks_since_the_last_delivered_message_and_reports_recovered() {
        let mut room = Room::new("chat:a", Some(json!({"n": 1})));
        assert_eq!(room.join_frame(), json!({"type": "join", "room": "chat:a", "meta": {"n": 1}}));
        room.join_in_flight = true;
        let first = room.joined(&reply(7, 3, None));
        assert!(matches!(first[0], SessionEvent::Subscribed { .. }));
        room.message(message(7, 4));
        room.disconnected();
        assert_eq!(room.join_frame()["since"], json!({"epoch": 7, "offset": 4}));
        room.join_in_flight = true;
        // The replay comes before the reply: held, then emitted after it.
        assert!(room.message(message(7, 5)).is_none());
        assert!(room.message(message(7, 6)).is_none());
        let events = room.joined(&reply(7, 6, Some(true)));
        match &events[0] {
            SessionEvent::Resubscribed { recovered, missed, previous, .. } => {
                assert!(*recovered && !*missed);
                assert_eq!(*previous, StreamPosition { epoch: 7, offset: 4 });
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(offsets(&events), [5, 6]);
        assert_eq!(room.since(), Some(StreamPosition { epoch: 7, offset: 6 }));
    }

    #[test]
    fn a_rejoin_that_did_not_recover_says_messages_may_be_missing() {
        let mut room = Room::new("chat:a", None);
        room.joined(&reply(1, 10, None));
        room.disconnected();
        room.join_in_flight = true;
        let events = room.joined(&reply(2, 3, Some(false)));
        assert!(matches!(events[0], SessionEvent::Resubscribed { recovered: false, missed: true, .. }));
    }

    #[test]
    fn a_rejoin_that_continues_exactly_misses_nothing_without_history() {
        let mut room = Room::new("chat:a", None);
        room.joined(&reply(1, 10, None));
        room.disconnected();
        room.join_in_flight = true;
        let events = room.joined(&reply(1, 10, None));
        assert!(matches!(events[0], SessionEvent::Resubscribed { recovered: false, missed: false, .. }));
    }

    #[test]
    fn messages_on_a_room_not_being_joined_are_ignored() {
        let mut room = Room::new("chat:a", None);
        assert!(room.message(message(1, 1)).is_none());
        room.join_in_flight = true;
        assert!(offsets(&room.joined(&reply(1, 1, None))).is_empty());
    }
}
