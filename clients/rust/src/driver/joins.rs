//! The driver's joins: every room is joined on each new connection, with
//! `since` once it was joined before; at most `max_joins_in_flight` await
//! their reply at once; `rate_limited` pauses them all, `unavailable` (a
//! failover) is retried soon, a refusal fails the room.

use std::time::Duration;

use serde_json::Value;

use super::{fail_all, parse, retry_after, Driver, Pending, Timer};
use crate::room::{Phase, Room};
use crate::session::{SessionError, SessionEvent};
use crate::wire::JoinResult;

/// Ceiling of the first retry of a join answered `unavailable` (a failover).
const UNAVAILABLE_FIRST_RETRY: Duration = Duration::from_millis(200);

impl Driver {
    pub(super) fn schedule_join(&mut self, name: &str) {
        let generation = self.generation;
        let Some(room) = self.rooms.get_mut(name) else { return };
        if self.link.is_none() || room.join_generation == Some(generation) {
            return;
        }
        room.join_generation = Some(generation);
        self.join_queue.push_back(name.to_string());
        self.pump_joins();
    }

    pub(super) fn pump_joins(&mut self) {
        if self.link.is_none() || self.joins_paused {
            return;
        }
        while self.joins_in_flight < self.options.max_joins_in_flight {
            let Some(name) = self.join_queue.pop_front() else { return };
            let Some(room) = self.rooms.get_mut(&name) else { continue };
            if room.phase != Phase::Joining || room.join_in_flight {
                continue;
            }
            room.join_in_flight = true;
            let frame = room.join_frame();
            self.joins_in_flight += 1;
            self.send_request(frame, Pending::Join { room: name });
        }
    }

    pub(super) fn on_join_reply(&mut self, name: &str, outcome: Result<Value, SessionError>) {
        self.joins_in_flight = self.joins_in_flight.saturating_sub(1);
        let Some(room) = self.rooms.get_mut(name) else { return self.pump_joins() };
        room.join_in_flight = false;
        let outcome = outcome.and_then(|value| parse::<JoinResult>(value, "join"));
        match outcome {
            Ok(result) => {
                for event in room.joined(&result) {
                    self.emit(event);
                }
                for waiter in self.join_waiters.remove(name).unwrap_or_default() {
                    let _ = waiter.send(Ok(result.clone()));
                }
                self.flush_room(name);
            }
            Err(error) if error.code() == "rate_limited" => {
                self.join_queue.push_front(name.to_string());
                let base = retry_after(&error)
                    .unwrap_or(self.options.min_reconnect_delay)
                    .max(Duration::from_millis(1));
                let jitter = base.max(Duration::from_millis(50)).mul_f64(rand::random::<f64>());
                self.joins_paused = true;
                self.arm(base + jitter, Timer::JoinResume { generation: self.generation });
            }
            Err(error)
                if error.code() == "unavailable"
                    || (error == SessionError::Timeout && room.joined_once()) =>
            {
                // Joins are idempotent: retry (a first join that times out fails instead).
                let wait = if error.code() == "unavailable" {
                    unavailable_delay(room, retry_after(&error))
                } else {
                    self.options.min_reconnect_delay
                };
                self.arm(wait, Timer::JoinRetry { room: name.to_string(), generation: self.generation });
            }
            Err(error) => {
                self.rooms.remove(name);
                fail_all(self.outbox.take_room(name), || error.clone());
                for waiter in self.join_waiters.remove(name).unwrap_or_default() {
                    let _ = waiter.send(Err(error.clone()));
                }
                self.emit(SessionEvent::RoomFailed { room: name.to_string(), error });
            }
        }
        self.pump_joins();
    }
}

/// The wait before re-sending a join answered `unavailable` (no Raft leader
/// yet: a failover, usually over in 0.5 to 2 s): at most 200 ms first, not
/// the whole `retry_after_ms`, growing by a quarter on each repeat up to
/// it, jittered within [ceiling/2, ceiling] (as the JS client).
fn unavailable_delay(room: &mut Room, retry_after: Option<Duration>) -> Duration {
    let retries = room.unavailable_retries;
    room.unavailable_retries += 1;
    let first = retry_after.unwrap_or(UNAVAILABLE_FIRST_RETRY).min(UNAVAILABLE_FIRST_RETRY);
    let cap = retry_after.unwrap_or_default().max(first);
    let ceiling = first.mul_f64(1.25f64.powi(retries.min(20) as i32)).min(cap);
    ceiling / 2 + ceiling.mul_f64(rand::random::<f64>() / 2.0)
}
