//! One connection's rooms, as every wire protocol keeps them: joins, leaves
//! and publishes checked against what the connection is in, and the final
//! removal from every room when the connection ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{PublishOrigin, RoomService, ServiceError, Space};
use crate::fanout::{Draft, LastMessage, Position, Publisher, Recover};
use crate::protocol::{ConnId, RoomName};
use crate::rooms::RoomCommand;

/// What a join did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The room's epoch as the join applied.
    pub epoch: u64,
    /// Whether the `since` position asked for was served (every message
    /// after it was queued before any live one).
    pub recovered: bool,
    /// With [`Recover::Last`]: the room's last message as the member
    /// became a subscriber (`None`: it was already one).
    pub last: Option<LastMessage>,
}

/// How long later publishes to a room are held back after one was refused
/// retryably, when the refused one carried no `idem` key (G9): longer than
/// the publishes sent before the client saw the refusal take to arrive on
/// a sound link, shorter than any `retry_after_ms` it was given plus a
/// round trip.
const HELD_BACK_WITHOUT_KEY: Duration = Duration::from_millis(200);
/// The same when it carried a key: until its retry (same key) comes, at most.
const HELD_BACK_WITH_KEY: Duration = Duration::from_secs(5);

/// A room whose publishes are held back behind a refused one (G9).
#[derive(Debug)]
struct HeldBack {
    until: Instant,
    /// The refused publish's `idem` key: its retry ends the hold.
    idem: Option<String>,
}

/// The rooms of one connection.
pub struct ConnectionRooms {
    service: Arc<RoomService>,
    /// The rooms this connection may reach.
    space: Space,
    conn: ConnId,
    user: Arc<str>,
    /// Rooms this connection is in, as confirmed by applied joins.
    rooms: HashSet<RoomName>,
    /// The rooms it joined as another user than its own (`join_as`).
    room_users: HashMap<RoomName, Arc<str>>,
    /// Whether a join was ever proposed (it may have committed even if the
    /// connection ended before its reply).
    proposed_join: bool,
    /// The join proposal under way. It runs as its own task so that a
    /// connection ending mid-join can wait for it before proposing its
    /// disconnect (otherwise the two could commit in either order).
    pending_join: Option<JoinHandle<Result<JoinOutcome, ServiceError>>>,
    /// Rooms whose next publishes are refused until the refused one is
    /// retried (G9: a connection's publishes to a room are one queue).
    held_back: HashMap<RoomName, HeldBack>,
}

impl ConnectionRooms {
    /// The rooms of a connection in Starling's space.
    pub fn new(service: Arc<RoomService>, conn: ConnId, user: Arc<str>) -> ConnectionRooms {
        ConnectionRooms::in_space(service, Space::Starling, conn, user)
    }

    /// The rooms of a connection that reaches `space`'s rooms only.
    pub fn in_space(
        service: Arc<RoomService>,
        space: Space,
        conn: ConnId,
        user: Arc<str>,
    ) -> ConnectionRooms {
        ConnectionRooms {
            service,
            space,
            conn,
            user,
            rooms: HashSet::new(),
            room_users: HashMap::new(),
            proposed_join: false,
            pending_join: None,
            held_back: HashMap::new(),
        }
    }

    pub fn service(&self) -> &Arc<RoomService> {
        &self.service
    }

    pub fn contains(&self, room: &RoomName) -> bool {
        self.rooms.contains(room)
    }

    /// How many rooms the connection is in.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Joins `room` with `meta` (JSON object text); the member is in
    /// presence on every node once this returns. With `recover`, the
    /// messages it asks for are queued to the connection before any live
    /// message of the room. The caller sends its reply from
    /// [`RoomService::join_point`].
    pub async fn join(
        &mut self,
        room: &RoomName,
        meta: String,
        recover: Option<Recover>,
    ) -> Result<JoinOutcome, ServiceError> {
        let user = Arc::clone(&self.user);
        self.join_as(room, user, meta, recover).await
    }

    /// The user this connection is in `room` as (its own unless it
    /// joined with `join_as`).
    pub fn user_in(&self, room: &RoomName) -> &Arc<str> {
        self.room_users.get(room).unwrap_or(&self.user)
    }

    /// [`ConnectionRooms::join`] as a member of `user` rather than the
    /// connection's own user (Pusher presence: the channel's `user_id`).
    pub async fn join_as(
        &mut self,
        room: &RoomName,
        user: Arc<str>,
        meta: String,
        recover: Option<Recover>,
    ) -> Result<JoinOutcome, ServiceError> {
        let service = &self.service;
        let (held, already_in) = (self.rooms.len(), self.rooms.contains(room));
        let max_members = service.check_join(&self.space, room, &meta, held, already_in)?;
        self.proposed_join = true;
        if let Some(request) = recover {
            service.hub.expect_join(self.conn, room, request);
        }
        let (service, room_name, conn) = (Arc::clone(service), room.clone(), self.conn);
        let member_user = Arc::clone(&user);
        let task = tokio::spawn(async move {
            if let Some(Recover::Since(since)) = recover {
                service.hub.catch_up(&room_name, since).await;
            }
            let proposed = service.propose_join(&room_name, conn, &user, meta, max_members).await;
            // Taken here, not by the caller: the task runs to its end even
            // when the connection ends first, so no request is left behind.
            let (recovered, last) = match recover {
                None => (false, None),
                Some(Recover::Last) => (false, service.hub.join_last(conn, &room_name)),
                Some(_) => (service.hub.join_recovered(conn, &room_name), None),
            };
            proposed.map(|epoch| JoinOutcome { epoch, recovered, last })
        });
        let proposed = self.pending_join.insert(task).await;
        self.pending_join = None;
        let outcome = proposed.unwrap_or_else(|_| {
            Err(ServiceError::Unavailable(crate::replicate::ReplicateError::Unavailable(
                "join task failed".into(),
            )))
        })?;
        self.rooms.insert(room.clone());
        if member_user != self.user {
            self.room_users.insert(room.clone(), member_user);
        }
        self.service.metrics.joins.increment(1);
        Ok(outcome)
    }

    /// Leaves `room`; the member is gone from presence on every node once
    /// this returns.
    pub async fn leave(&mut self, room: &RoomName) -> Result<(), ServiceError> {
        if !self.rooms.contains(room) {
            return Err(ServiceError::NotJoined);
        }
        let command = RoomCommand::Leave { room: room.clone(), conn: self.conn };
        self.service.replicator.propose(command).await?;
        self.rooms.remove(room);
        self.room_users.remove(room);
        self.held_back.remove(room);
        self.service.metrics.leaves.increment(1);
        Ok(())
    }

    /// The checks of a member publish that come before anything else: the
    /// namespace lets members publish, the data fits, and the connection is
    /// in the room.
    pub fn check_publish(&self, room: &RoomName, data_len: usize) -> Result<(), ServiceError> {
        self.service.check_publish_in(&self.space, room, data_len, PublishOrigin::Member)?;
        if !self.rooms.contains(room) {
            return Err(ServiceError::NotJoined);
        }
        Ok(())
    }

    /// Publishes to a room this connection is in, as this connection.
    ///
    /// G9: the connection's publishes to one room form one queue. When one
    /// is refused retryably, the ones after it that already arrived are
    /// refused too (`HeldBack`) until the refused one is retried (a publish
    /// with its `idem` key), or for a short while when it had none, so a
    /// client that retries the refused ones in order keeps its order.
    pub async fn publish(
        &mut self,
        room: &RoomName,
        event: Option<Arc<str>>,
        data: bytes::Bytes,
        received_at: Instant,
        idem: Option<&str>,
    ) -> Result<Position, ServiceError> {
        self.check_publish(room, data.len())?;
        if let Some(held) = self.held_back.get(room) {
            let is_the_retry = held.idem.is_some() && held.idem.as_deref() == idem;
            if !is_the_retry && received_at < held.until {
                return Err(ServiceError::HeldBack);
            }
            self.held_back.remove(room);
        }
        let user = Arc::clone(self.user_in(room));
        let publisher = Publisher { user, conn: self.conn, idem: idem.map(Arc::from) };
        let draft = Draft { publisher: Some(publisher), event, data };
        let result = self.service.route(room, draft, received_at).await;
        if result.as_ref().is_err_and(ServiceError::retryable) {
            self.hold_back(room, idem);
        }
        result
    }

    /// A publish to `room` was refused retryably (here, or by the gateway's
    /// rate limit before it got here): the connection's later publishes to
    /// the room are held back until it is retried. A hold already in force
    /// stays: it is for an earlier publish, which must go first.
    pub fn hold_back(&mut self, room: &RoomName, idem: Option<&str>) {
        let now = Instant::now();
        if !self.rooms.contains(room) || self.held_back.get(room).is_some_and(|held| held.until > now) {
            return;
        }
        let hold = if idem.is_some() { HELD_BACK_WITH_KEY } else { HELD_BACK_WITHOUT_KEY };
        self.held_back.insert(room.clone(), HeldBack { until: now + hold, idem: idem.map(str::to_owned) });
    }

    /// Removes the connection from every room it is in. Retried a few
    /// times (a cluster may be electing a leader); if it still fails the
    /// members stay until this node's incarnation is evicted. `stopping`
    /// says whether the node is going away, which a stopping node does not
    /// wait out: presence is ephemeral, and its incarnation is evicted when
    /// it is gone.
    pub async fn leave_all(&mut self, stopping: impl Fn() -> bool) {
        if self.rooms.is_empty() && !self.proposed_join {
            return;
        }
        if let Some(join) = self.pending_join.take() {
            let _ = join.await;
        }
        for attempt in 1..=5u32 {
            let command = RoomCommand::ConnGone { conn: self.conn };
            match self.service.replicator.propose(command).await {
                Ok(_) => {
                    self.rooms.clear();
                    return;
                }
                Err(error) if stopping() => {
                    debug!(%error, "node stopping; connection left in its rooms");
                    return;
                }
                Err(error) => {
                    debug!(%error, attempt, "could not remove the connection from its rooms yet");
                    tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                }
            }
        }
        warn!("gave up removing a closed connection from its rooms");
    }
}
