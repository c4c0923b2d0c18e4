//! The driver's publishes: sent at once when the room is joined and has
//! nothing queued, else queued in call order; each carries its `idem` key;
//! one answered `unavailable` or `rate_limited` goes back into the queue at
//! its place and the room's queue is sent again after `retry_after_ms`, so
//! retries keep the call order (G9).

use std::time::Duration;

use serde_json::{json, Value};

use super::{fail_all, parse, Driver, Pending, Reply, Timer};
use crate::outbox::Outbox;
use crate::room::Phase;
use crate::session::SessionError;
use crate::wire::PublishResult;

impl Driver {
    pub(super) fn publish(&mut self, name: &str, data: Value, reply: Reply<PublishResult>) {
        let Some(room) = self.rooms.get(name) else {
            let _ = reply.send(Err(SessionError::Left(name.to_string())));
            return;
        };
        // Never overtake a publish of the room that waits in the queue.
        let send_now = self.link.is_some() && room.phase == Phase::Joined && !self.outbox.has_queued(name);
        let (seq, dropped) = self.outbox.push(name, data, reply);
        fail_all(dropped, || SessionError::QueueOverflow);
        if self.outbox.get(seq).is_none() {
            return;
        }
        self.arm(self.options.request_timeout, Timer::PublishDeadline { seq });
        if send_now {
            self.send_publish(seq);
        }
    }

    fn send_publish(&mut self, seq: u64) {
        let Some(item) = self.outbox.get(seq) else { return };
        // `idem` names the publish on this connection: a retry carries the
        // same key, so the owner never sequences it twice, and the server
        // holds the room's later publishes back until it comes (G9).
        let frame =
            json!({"type": "publish", "room": item.room, "data": item.data, "idem": Outbox::<()>::idem(seq)});
        let id = self.send_request(frame, Pending::Publish { seq });
        self.outbox.sent(seq, id);
    }

    pub(super) fn flush_room(&mut self, room: &str) {
        for seq in self.outbox.queued(room) {
            self.send_publish(seq);
        }
    }

    pub(super) fn on_publish_reply(&mut self, seq: u64, outcome: Result<Value, SessionError>) {
        let retry = match &outcome {
            Err(error) => {
                self.options.retry_publish && matches!(error.code(), "unavailable" | "rate_limited")
            }
            Ok(_) => false,
        };
        if retry {
            // G9: the server refuses the room's later publishes too; they
            // all go back into the queue in call order and are sent again
            // together, so the retries keep the order.
            let Some(room) = self.outbox.get(seq).map(|item| item.room.clone()) else { return };
            let dropped = self.outbox.requeue(seq);
            fail_all(dropped, || SessionError::QueueOverflow);
            let wait = match &outcome {
                Err(SessionError::Server { retry_after_ms: Some(ms), .. }) => Duration::from_millis(*ms),
                _ => self.options.min_reconnect_delay,
            };
            self.arm_publish_retry(&room, wait);
            return;
        }
        let Some(item) = self.outbox.take(seq) else { return };
        let result = outcome.and_then(|value| parse::<PublishResult>(value, "publish"));
        let _ = item.waiter.send(result);
    }

    fn arm_publish_retry(&mut self, name: &str, wait: Duration) {
        let Some(room) = self.rooms.get_mut(name) else { return };
        if room.publish_retry_armed {
            return;
        }
        room.publish_retry_armed = true;
        self.arm(wait, Timer::PublishRetry { room: name.to_string() });
    }
}
