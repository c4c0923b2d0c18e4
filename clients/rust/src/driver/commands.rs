//! The driver's answers to the `Session` handle: join (a room kept joined
//! across reconnects), leave, publish, any request, close. After the
//! session is closed every command is answered `closed`.

use serde_json::{json, Value};

use super::{fail_all, refuse_closed, Driver, Pending, Reply};
use crate::room::{Phase, Room};
use crate::session::{Command, SessionError};
use crate::wire::JoinResult;

impl Driver {
    pub(super) fn on_command(&mut self, command: Command) {
        if self.stopped {
            return refuse_closed(command);
        }
        match command {
            Command::Join { room, meta, reply } => self.join(room, meta, reply),
            Command::Leave { room, reply } => self.leave(&room, reply),
            Command::Publish { room, data, reply } => self.publish(&room, data, reply),
            Command::Request { frame, reply } => {
                if self.link.is_none() {
                    let _ = reply.send(Err(SessionError::Disconnected));
                    return;
                }
                self.send_request(frame, Pending::Request { reply });
            }
            Command::Close => self.stop(None, "client closed", true),
        }
    }

    fn join(&mut self, name: String, meta: Option<Value>, reply: Reply<JoinResult>) {
        if let Some(room) = self.rooms.get(&name) {
            match (room.phase, room.since()) {
                (Phase::Joined, Some(at)) => {
                    let result = JoinResult {
                        room: name,
                        epoch: at.epoch,
                        offset: at.offset,
                        members: None,
                        recovered: None,
                    };
                    let _ = reply.send(Ok(result));
                }
                _ => self.join_waiters.entry(name).or_default().push(reply),
            }
            return;
        }
        self.rooms.insert(name.clone(), Room::new(&name, meta));
        self.join_waiters.entry(name.clone()).or_default().push(reply);
        self.schedule_join(&name);
    }

    fn leave(&mut self, name: &str, reply: Reply<()>) {
        let Some(room) = self.rooms.remove(name) else {
            let _ = reply.send(Ok(()));
            return;
        };
        fail_all(self.outbox.take_room(name), || SessionError::Left(name.to_string()));
        for waiter in self.join_waiters.remove(name).unwrap_or_default() {
            let _ = waiter.send(Err(SessionError::Left(name.to_string())));
        }
        // A join in flight takes effect first: the server handles one
        // connection's requests in order, so this leave removes it.
        let on_server = room.phase == Phase::Joined || room.join_in_flight;
        if !on_server || self.link.is_none() {
            let _ = reply.send(Ok(()));
            return;
        }
        self.send_request(json!({"type": "leave", "room": name}), Pending::Leave { reply });
    }
}
