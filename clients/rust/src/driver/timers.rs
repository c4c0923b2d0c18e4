//! The driver's timers: one ordered map of due times, fired in order from
//! the main loop. A timer of an older connection (its `generation`) does
//! nothing.

use std::time::Duration;

use tokio::time::Instant;

use super::{fail_all, Driver, Timer};
use crate::outbox::State as OutboxState;
use crate::room::Phase;
use crate::session::SessionError;

impl Driver {
    pub(super) fn arm(&mut self, after: Duration, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((Instant::now() + after, self.timer_seq), timer);
    }

    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.fire(timer);
        }
    }

    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Reconnect { generation } if generation == self.generation && !self.stopped => self.open(),
            Timer::RequestTimeout { id } if self.pending.contains_key(&id) => {
                self.on_reply(id, Err(SessionError::Timeout))
            }
            Timer::JoinRetry { room, generation }
                if generation == self.generation
                    && self
                        .rooms
                        .get(&room)
                        .is_some_and(|r| r.phase == Phase::Joining && !r.join_in_flight) =>
            {
                self.join_queue.push_back(room);
                self.pump_joins();
            }
            Timer::JoinResume { generation } if generation == self.generation => {
                self.joins_paused = false;
                self.pump_joins();
            }
            Timer::PublishRetry { room } => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return fail_all(self.outbox.take_room(&room), || SessionError::Left(room.clone()));
                };
                state.publish_retry_armed = false;
                // While re-joining, the queue is flushed after the join reply.
                if state.phase == Phase::Joined && self.link.is_some() {
                    self.flush_room(&room);
                }
            }
            Timer::PublishDeadline { seq } => {
                let Some(item) = self.outbox.take(seq) else { return };
                if let OutboxState::InFlight(id) = item.state {
                    self.pending.remove(&id);
                }
                let _ = item.waiter.send(Err(SessionError::Timeout));
            }
            _ => {}
        }
    }
}
