//! A new owner takes a room over (G8, epoch continuity): it asks every
//! other node where the room stands there, once that node has applied the
//! owner change (so it takes nothing more from the previous owner), and
//! continues the room's epoch from the highest offset any of them reached,
//! after making sure every live node holds every message up to it. When
//! the messages some node lacks are held nowhere, the room starts a new
//! epoch instead.

use std::time::Duration;

use futures_util::future::join_all;
use tracing::{debug, info};

use super::links::PeerLinks;
use super::wire::{AppAnswer, AppMessageOut};
use crate::fanout::{Hub, RoomMessage, RoomState, TakeoverOutcome};
use crate::protocol::RoomName;

/// How long a new owner waits for each node's answer. A node that does not
/// answer in time is left out: it is likely dead, and its members will
/// recover with `since` wherever they reconnect.
const QUESTION_TIMEOUT: Duration = Duration::from_secs(1);

impl PeerLinks {
    /// Settles `room`, which this node just took over, and tells the hub.
    pub(super) async fn settle_takeover(&self, hub: &Hub, room: RoomName) {
        let Some(own) = hub.room_state(&room) else { return };
        let outcome = self.takeover_outcome(&room, own).await;
        match &outcome {
            TakeoverOutcome::Continue { resend_after, fetched } => {
                debug!(room = %room, epoch = own.epoch, resend_after, fetched = fetched.len(),
                    "room taken over; its epoch continues");
            }
            TakeoverOutcome::NewEpoch => {
                info!(room = %room, epoch = own.epoch,
                    "room taken over; messages some node lacks are held nowhere, so a new epoch starts");
            }
        }
        hub.finish_takeover(&room, own.epoch, outcome);
    }

    async fn takeover_outcome(&self, room: &RoomName, own: RoomState) -> TakeoverOutcome {
        let min_index = self.shared.applied_index();
        let question = AppMessageOut::State { room, min_index };
        let directory = self.directory();
        let answers = join_all(directory.values().map(|addr| async {
            match self.ask(addr, &question, QUESTION_TIMEOUT).await {
                Ok(AppAnswer::State(Some(state))) => Some((addr.clone(), state)),
                _ => None,
            }
        }))
        .await;
        // Nodes of another epoch (they missed an earlier change) follow the
        // owner's epoch when its next message reaches them.
        let others: Vec<(String, RoomState)> =
            answers.into_iter().flatten().filter(|(_, state)| state.epoch == own.epoch).collect();
        let lasts = || others.iter().map(|(_, s)| s.last_offset).chain([own.last_offset]);
        let highest = lasts().max().unwrap_or(own.last_offset);
        let lowest = lasts().min().unwrap_or(own.last_offset);
        if lowest == highest || own.covers(lowest, highest) {
            return TakeoverOutcome::Continue { resend_after: lowest, fetched: Vec::new() };
        }
        for (addr, _) in others.iter().filter(|(_, state)| state.covers(lowest, highest)) {
            let ask = AppMessageOut::Messages { room, epoch: own.epoch, after: lowest, min_index };
            if let Ok(AppAnswer::Messages(Some(messages))) = self.ask(addr, &ask, QUESTION_TIMEOUT).await {
                if unbroken(&messages, room, own.epoch, lowest, highest) {
                    return TakeoverOutcome::Continue { resend_after: lowest, fetched: messages };
                }
            }
        }
        TakeoverOutcome::NewEpoch
    }
}

/// Whether `messages` are exactly the messages of `room`'s `epoch` after
/// `after` up to `to`, in order.
fn unbroken(messages: &[RoomMessage], room: &RoomName, epoch: u64, after: u64, to: u64) -> bool {
    messages.len() as u64 == to - after
        && messages.iter().zip(after + 1..).all(|(message, offset)| {
            message.room == *room && message.position.epoch == epoch && message.position.offset == offset
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::{Draft, Position};

    fn message(room: &str, epoch: u64, offset: u64) -> RoomMessage {
        let draft = Draft { publisher: None, event: None, data: bytes::Bytes::from_static(b"1") };
        RoomMessage::new(RoomName::parse(room).unwrap(), Position { epoch, offset }, draft, 0)
    }

    #[test]
    fn fetched_messages_must_be_exactly_the_range_asked_for() {
        let room = RoomName::parse("chat:x").unwrap();
        let good: Vec<_> = (4..=6).map(|o| message("chat:x", 7, o)).collect();
        assert!(unbroken(&good, &room, 7, 3, 6));
        assert!(!unbroken(&good, &room, 7, 2, 6), "one missing at the start");
        assert!(!unbroken(&good[..2], &room, 7, 3, 6), "one missing at the end");
        assert!(!unbroken(&good, &room, 8, 3, 6), "another epoch");
        let other_room: Vec<_> = (4..=6).map(|o| message("chat:y", 7, o)).collect();
        assert!(!unbroken(&other_room, &room, 7, 3, 6), "another room");
        let shuffled = vec![good[1].clone(), good[0].clone(), good[2].clone()];
        assert!(!unbroken(&shuffled, &room, 7, 3, 6), "out of order");
    }

    #[test]
    fn a_node_covers_a_range_when_it_holds_every_message_of_it_up_to_its_end() {
        let state = RoomState { epoch: 7, last_offset: 9, held: Some((5, 9)) };
        assert!(state.covers(4, 9));
        assert!(state.covers(9, 9));
        assert!(!state.covers(3, 9), "offset 4 is not held");
        assert!(!state.covers(4, 10), "it did not reach 10");
        let nothing_held = RoomState { epoch: 7, last_offset: 9, held: None };
        assert!(nothing_held.covers(9, 9), "nothing to give: covered");
        assert!(!nothing_held.covers(8, 9));
    }
}
