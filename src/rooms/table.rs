//! The room table and its `apply` function.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::outbox::HookOutbox;
use crate::protocol::{ConnId, RoomName};

/// One member of one room: a connection of a user on a node incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub user: Arc<str>,
    pub conn: ConnId,
    pub node: Arc<str>,
    /// The node's incarnation (boot generation) when the member joined, so
    /// that a restarted node can evict its predecessor's members.
    pub incarnation: u64,
    /// The member's `meta`, as JSON object text.
    pub meta: Arc<str>,
}

/// A change to the table. Commands carry every input they need (limits
/// included), so that applying them is deterministic on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomCommand {
    Join {
        room: RoomName,
        member: MemberRecord,
        /// The room's namespace limit at proposal time; `None` is unlimited.
        max_members: Option<u32>,
    },
    Leave {
        room: RoomName,
        conn: ConnId,
    },
    /// A connection closed: it leaves every room it was in.
    ConnGone {
        conn: ConnId,
    },
    /// A node incarnation died or restarted: every member it hosted with an
    /// incarnation up to `incarnation` leaves.
    EvictNode {
        node: Arc<str>,
        incarnation: u64,
    },
    /// A webhook sender delivered (or gave up on) every event of the app
    /// namespace `app` up to id `up_to`: the outbox forgets them.
    HooksDelivered {
        app: Arc<str>,
        up_to: u64,
    },
}

/// The most bytes of a member's user id, node name and meta that a command
/// may carry (the gateway's own limits are lower; these bound what any
/// committed entry can make every node hold).
pub const MAX_USER_BYTES: usize = 256;
pub const MAX_NODE_BYTES: usize = 64;
pub const MAX_META_BYTES: usize = 64 * 1024;

impl RoomCommand {
    /// Checks what the types cannot: sizes, and that `meta` is a JSON
    /// object. Commands that fail are never proposed, and a committed one
    /// that fails is skipped on every node alike.
    pub fn check(&self) -> Result<(), &'static str> {
        match self {
            RoomCommand::Join { member, .. } => {
                if member.user.is_empty() || member.user.len() > MAX_USER_BYTES {
                    return Err("member user id is empty or too long");
                }
                if member.node.is_empty() || member.node.len() > MAX_NODE_BYTES {
                    return Err("member node name is empty or too long");
                }
                if member.meta.len() > MAX_META_BYTES || !is_json_object(&member.meta) {
                    return Err("member meta is not a JSON object of at most 64 KiB");
                }
                Ok(())
            }
            RoomCommand::EvictNode { node, .. } if node.is_empty() || node.len() > MAX_NODE_BYTES => {
                Err("node name is empty or too long")
            }
            RoomCommand::HooksDelivered { app, .. } if app.is_empty() || app.len() > MAX_NODE_BYTES => {
                Err("webhook app namespace is empty or too long")
            }
            RoomCommand::Leave { .. }
            | RoomCommand::ConnGone { .. }
            | RoomCommand::EvictNode { .. }
            | RoomCommand::HooksDelivered { .. } => Ok(()),
        }
    }
}

fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    RoomFull { max_members: u32 },
}

/// Why a member left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    Left,
    Disconnected,
    NodeEvicted,
}

/// What applying a command did, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// A room came into existence with its first member.
    RoomOpened {
        room: RoomName,
        epoch: u64,
        owner: Arc<str>,
        owner_incarnation: u64,
    },
    Joined {
        room: RoomName,
        epoch: u64,
        member: Arc<MemberRecord>,
        /// Whether no other connection of the member's user was in the
        /// room (presence per user: Pusher's `member_added`).
        first_of_user: bool,
    },
    /// The connection was already a member; nothing changed.
    AlreadyJoined {
        room: RoomName,
        epoch: u64,
        conn: ConnId,
    },
    Rejected {
        room: RoomName,
        conn: ConnId,
        rejection: Rejection,
    },
    Left {
        room: RoomName,
        member: Arc<MemberRecord>,
        reason: LeaveReason,
        /// Whether no other connection of the member's user is left in the
        /// room (Pusher's `member_removed`).
        last_of_user: bool,
    },
    /// A leave for a connection that was not a member; nothing changed.
    NotMember {
        room: RoomName,
        conn: ConnId,
    },
    /// The owner's incarnation was evicted while the room still had
    /// members: a new owner sequences the room from offset 1 in a new epoch.
    OwnerChanged {
        room: RoomName,
        epoch: u64,
        owner: Arc<str>,
        owner_incarnation: u64,
    },
    /// The last member left; the room no longer exists.
    RoomClosed {
        room: RoomName,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Room {
    /// The log index at which the room opened or last changed owner. Epochs
    /// only grow, so a client can tell a restarted sequence from a gap.
    epoch: u64,
    owner: Arc<str>,
    /// The owner's incarnation: a restarted node does not own its earlier
    /// incarnation's rooms.
    owner_incarnation: u64,
    members: BTreeMap<ConnId, Arc<MemberRecord>>,
    /// Connections per user among `members` (derived: rebuilt from them
    /// when a snapshot is loaded, so snapshots do not carry it).
    #[serde(skip)]
    users: HashMap<Arc<str>, u32>,
}

impl Room {
    /// Adds one connection of `user`; returns whether it is the user's first.
    fn add_user(&mut self, user: &Arc<str>) -> bool {
        let count = self.users.entry(Arc::clone(user)).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Removes one connection of `user`; returns whether it was the last.
    fn remove_user(&mut self, user: &str) -> bool {
        match self.users.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                self.users.remove(user);
                true
            }
        }
    }
}

/// The whole table in a serializable form (see [`RoomTable::to_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSnapshot {
    rooms: Vec<(RoomName, Room)>,
    outbox: HookOutbox,
}

/// A snapshot as nodes before the webhook outbox wrote it (peer protocol
/// 6): read so that a node upgraded in place can load its own snapshot.
#[derive(Debug, Deserialize)]
pub struct LegacyTableSnapshot {
    rooms: Vec<(RoomName, Room)>,
}

impl From<LegacyTableSnapshot> for TableSnapshot {
    fn from(legacy: LegacyTableSnapshot) -> TableSnapshot {
        TableSnapshot { rooms: legacy.rooms, outbox: HookOutbox::default() }
    }
}

/// How many members (connections) and distinct users a room has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    pub room: RoomName,
    pub connections: usize,
    pub users: usize,
}

/// One room as an operator's listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: RoomName,
    pub epoch: u64,
    pub owner: Arc<str>,
    /// Connections in the room.
    pub members: usize,
    /// Distinct users among them.
    pub users: usize,
}

/// A consistent copy of one room, for presence reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSnapshot {
    pub epoch: u64,
    pub owner: Arc<str>,
    pub owner_incarnation: u64,
    pub members: Vec<Arc<MemberRecord>>,
}

/// Every room and its members.
#[derive(Debug, Default, Clone)]
pub struct RoomTable {
    rooms: HashMap<RoomName, Room>,
    /// The rooms of each connection, so `ConnGone` does not scan every room.
    rooms_by_conn: HashMap<ConnId, Vec<RoomName>>,
    /// Pusher apps' membership events not yet delivered as webhooks.
    outbox: HookOutbox,
}

impl RoomTable {
    pub fn new() -> RoomTable {
        RoomTable::default()
    }

    /// Applies `command` as the log entry at `index` (strictly increasing
    /// between calls) and returns what changed.
    pub fn apply(&mut self, index: u64, command: RoomCommand) -> Vec<Effect> {
        let mut effects = Vec::new();
        match command {
            RoomCommand::Join { room, member, max_members } => {
                self.join(index, room, member, max_members, &mut effects)
            }
            RoomCommand::Leave { room, conn } => {
                if !self.remove_member(&room, conn, LeaveReason::Left, &mut effects) {
                    effects.push(Effect::NotMember { room, conn });
                }
            }
            RoomCommand::ConnGone { conn } => {
                let rooms = self.rooms_by_conn.get(&conn).cloned().unwrap_or_default();
                for room in rooms {
                    self.remove_member(&room, conn, LeaveReason::Disconnected, &mut effects);
                }
            }
            RoomCommand::EvictNode { node, incarnation } => {
                self.evict_node(index, &node, incarnation, &mut effects)
            }
            RoomCommand::HooksDelivered { app, up_to } => self.outbox.delivered(&app, up_to),
        }
        self.outbox.record(&effects);
        effects
    }

    fn join(
        &mut self,
        index: u64,
        room: RoomName,
        member: MemberRecord,
        max_members: Option<u32>,
        effects: &mut Vec<Effect>,
    ) {
        let conn = member.conn;
        if let Some(existing) = self.rooms.get(&room) {
            if existing.members.contains_key(&conn) {
                effects.push(Effect::AlreadyJoined { room, epoch: existing.epoch, conn });
                return;
            }
            if let Some(max) = max_members {
                if existing.members.len() >= max as usize {
                    let rejection = Rejection::RoomFull { max_members: max };
                    effects.push(Effect::Rejected { room, conn, rejection });
                    return;
                }
            }
        } else if max_members == Some(0) {
            let rejection = Rejection::RoomFull { max_members: 0 };
            effects.push(Effect::Rejected { room, conn, rejection });
            return;
        }
        let entry = self.rooms.entry(room.clone()).or_insert_with(|| {
            effects.push(Effect::RoomOpened {
                room: room.clone(),
                epoch: index,
                owner: member.node.clone(),
                owner_incarnation: member.incarnation,
            });
            Room {
                epoch: index,
                owner: member.node.clone(),
                owner_incarnation: member.incarnation,
                members: BTreeMap::new(),
                users: HashMap::new(),
            }
        });
        let member = Arc::new(member);
        let first_of_user = entry.add_user(&member.user);
        entry.members.insert(conn, member.clone());
        self.rooms_by_conn.entry(conn).or_default().push(room.clone());
        effects.push(Effect::Joined { room, epoch: entry.epoch, member, first_of_user });
    }

    /// Removes one member; returns false when it was not a member.
    fn remove_member(
        &mut self,
        room_name: &RoomName,
        conn: ConnId,
        reason: LeaveReason,
        effects: &mut Vec<Effect>,
    ) -> bool {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return false;
        };
        let Some(member) = room.members.remove(&conn) else {
            return false;
        };
        if let Some(rooms) = self.rooms_by_conn.get_mut(&conn) {
            rooms.retain(|r| r != room_name);
            if rooms.is_empty() {
                self.rooms_by_conn.remove(&conn);
            }
        }
        let last_of_user = room.remove_user(&member.user);
        effects.push(Effect::Left { room: room_name.clone(), member, reason, last_of_user });
        if room.members.is_empty() {
            self.rooms.remove(room_name);
            effects.push(Effect::RoomClosed { room: room_name.clone() });
        }
        true
    }

    fn evict_node(&mut self, index: u64, node: &str, incarnation: u64, effects: &mut Vec<Effect>) {
        let evicted = |m: &MemberRecord| &*m.node == node && m.incarnation <= incarnation;
        // Sorted, so every node emits the effects in the same order.
        let mut affected: Vec<(RoomName, Vec<ConnId>)> = self
            .rooms
            .iter()
            .filter_map(|(name, room)| {
                let conns: Vec<ConnId> =
                    room.members.values().filter(|m| evicted(m)).map(|m| m.conn).collect();
                (!conns.is_empty()).then(|| (name.clone(), conns))
            })
            .collect();
        affected.sort_by(|a, b| a.0.cmp(&b.0));
        for (room, conns) in affected {
            for conn in conns {
                self.remove_member(&room, conn, LeaveReason::NodeEvicted, effects);
            }
        }
        // Rooms the evicted incarnation owned (with or without members of
        // its own left in them) move to a live member's node.
        let mut orphaned: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, r)| &*r.owner == node && r.owner_incarnation <= incarnation)
            .map(|(name, _)| name.clone())
            .collect();
        orphaned.sort();
        for room in orphaned {
            self.reassign_owner(index, &room, effects);
        }
    }

    /// Gives a room a new owner: the node of its member with the lowest
    /// connection id, in a new epoch (the log index).
    fn reassign_owner(&mut self, index: u64, room_name: &RoomName, effects: &mut Vec<Effect>) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(first) = room.members.values().next() else {
            return;
        };
        room.owner = first.node.clone();
        room.owner_incarnation = first.incarnation;
        room.epoch = index;
        effects.push(Effect::OwnerChanged {
            room: room_name.clone(),
            epoch: index,
            owner: room.owner.clone(),
            owner_incarnation: room.owner_incarnation,
        });
    }

    /// The whole table, for a Raft snapshot. Rooms are sorted, so equal
    /// tables give equal snapshots.
    pub fn to_snapshot(&self) -> TableSnapshot {
        let mut rooms: Vec<(RoomName, Room)> =
            self.rooms.iter().map(|(name, room)| (name.clone(), room.clone())).collect();
        rooms.sort_by(|a, b| a.0.cmp(&b.0));
        TableSnapshot { rooms, outbox: self.outbox.clone() }
    }

    /// Rebuilds a table from [`RoomTable::to_snapshot`].
    pub fn from_snapshot(snapshot: TableSnapshot) -> RoomTable {
        let mut table = RoomTable { outbox: snapshot.outbox, ..RoomTable::new() };
        for (name, mut room) in snapshot.rooms {
            // Counted afresh: a snapshot that never left memory still has them.
            room.users.clear();
            for (conn, member) in &room.members {
                table.rooms_by_conn.entry(*conn).or_default().push(name.clone());
                room.users.entry(Arc::clone(&member.user)).and_modify(|n| *n += 1).or_insert(1);
            }
            table.rooms.insert(name, room);
        }
        table
    }

    pub fn snapshot(&self, room: &RoomName) -> Option<RoomSnapshot> {
        self.rooms.get(room).map(|r| RoomSnapshot {
            epoch: r.epoch,
            owner: r.owner.clone(),
            owner_incarnation: r.owner_incarnation,
            members: r.members.values().cloned().collect(),
        })
    }

    /// The webhook events not yet delivered.
    pub fn outbox(&self) -> &HookOutbox {
        &self.outbox
    }

    pub fn is_member(&self, room: &RoomName, conn: ConnId) -> bool {
        self.rooms.get(room).is_some_and(|r| r.members.contains_key(&conn))
    }

    /// Every room's name (for rebuilding a mirror after a snapshot restore).
    /// The rooms of `namespace` with their connection and user counts,
    /// sorted by name.
    pub fn room_counts(&self, namespace: &str) -> Vec<RoomCount> {
        let mut counts: Vec<RoomCount> = self
            .rooms
            .iter()
            .filter(|(name, _)| name.namespace() == namespace)
            .map(|(name, room)| RoomCount {
                room: name.clone(),
                connections: room.members.len(),
                users: room.users.len(),
            })
            .collect();
        counts.sort_by(|a, b| a.room.cmp(&b.room));
        counts
    }

    /// The first `limit` rooms in name order whose names start with
    /// `prefix`, and how many rooms match in all. One pass over the rooms;
    /// only the matches are sorted, and only the first `limit` of them fully.
    pub fn rooms_with_prefix(&self, prefix: &str, limit: usize) -> (Vec<RoomSummary>, usize) {
        let mut matching: Vec<(&RoomName, &Room)> =
            self.rooms.iter().filter(|(name, _)| name.as_str().starts_with(prefix)).collect();
        let total = matching.len();
        if limit == 0 {
            return (Vec::new(), total);
        }
        if matching.len() > limit {
            matching.select_nth_unstable_by(limit - 1, |a, b| a.0.cmp(b.0));
            matching.truncate(limit);
        }
        matching.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let summaries = matching
            .into_iter()
            .map(|(name, room)| RoomSummary {
                room: name.clone(),
                epoch: room.epoch,
                owner: room.owner.clone(),
                members: room.members.len(),
                users: room.users.len(),
            })
            .collect();
        (summaries, total)
    }

    pub fn room_names(&self) -> Vec<RoomName> {
        self.rooms.keys().cloned().collect()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Every (node, incarnation) that hosts at least one member.
    pub fn node_incarnations(&self) -> std::collections::BTreeSet<(Arc<str>, u64)> {
        self.rooms
            .values()
            .flat_map(|room| room.members.values().map(|m| (m.node.clone(), m.incarnation)))
            .collect()
    }

    pub fn member_count(&self) -> usize {
        self.rooms.values().map(|r| r.members.len()).sum()
    }

    /// How many connections are in at least one room.
    pub fn connection_count(&self) -> usize {
        self.rooms_by_conn.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn member(user: &str, conn: u64, node: &str, incarnation: u64) -> MemberRecord {
        MemberRecord {
            user: user.into(),
            conn: ConnId(conn),
            node: node.into(),
            incarnation,
            meta: "{}".into(),
        }
    }

    fn join(name: &str, m: MemberRecord) -> RoomCommand {
        RoomCommand::Join { room: room(name), member: m, max_members: None }
    }

    #[test]
    fn rooms_with_a_prefix_are_listed_in_name_order_up_to_the_limit() {
        let mut table = RoomTable::new();
        for (index, name) in ["chat:c", "chat:a", "news:x", "chat:b", "chat:d"].into_iter().enumerate() {
            let index = index as u64 + 1;
            table.apply(index, join(name, member("u", index, "n1", 1)));
        }
        table.apply(9, join("chat:b", member("v", 9, "n2", 1)));
        let (rooms, total) = table.rooms_with_prefix("chat:", 3);
        let names: Vec<&str> = rooms.iter().map(|r| r.room.as_str()).collect();
        assert_eq!((names, total), (vec!["chat:a", "chat:b", "chat:c"], 4));
        assert_eq!((rooms[1].members, rooms[1].users, rooms[1].epoch), (2, 2, 4));
        assert_eq!(rooms[1].owner.as_ref(), "n1");
        assert_eq!(table.rooms_with_prefix("", 10).1, 5);
        assert_eq!(table.rooms_with_prefix("chat:", 0), (Vec::new(), 4));
        assert_eq!(table.rooms_with_prefix("nope", 10), (Vec::new(), 0));
    }

    #[test]
    fn first_join_opens_the_room_owned_by_the_joiners_node() {
        let mut table = RoomTable::new();
        let alice = member("alice", 1, "n1", 7);
        let effects = table.apply(10, join("chat:a", alice.clone()));
        assert_eq!(
            effects,
            vec![
                Effect::RoomOpened {
                    room: room("chat:a"),
                    epoch: 10,
                    owner: "n1".into(),
                    owner_incarnation: 7
                },
                Effect::Joined {
                    room: room("chat:a"),
                    epoch: 10,
                    member: Arc::new(alice),
                    first_of_user: true
                },
            ]
        );
        let bob = member("bob", 2, "n2", 1);
        assert_eq!(
            table.apply(11, join("chat:a", bob.clone())),
            vec![Effect::Joined {
                room: room("chat:a"),
                epoch: 10,
                member: Arc::new(bob),
                first_of_user: true
            }]
        );
        let snapshot = table.snapshot(&room("chat:a")).unwrap();
        assert_eq!(snapshot.owner.as_ref(), "n1");
        assert_eq!(snapshot.members.len(), 2);
    }

    #[test]
    fn joining_twice_changes_nothing() {
        let mut table = RoomTable::new();
        table.apply(1, join("chat:a", member("alice", 1, "n1", 1)));
        assert_eq!(
            table.apply(2, join("chat:a", member("alice", 1, "n1", 1))),
            vec![Effect::AlreadyJoined { room: room("chat:a"), epoch: 1, conn: ConnId(1) }]
        );
        assert_eq!(table.member_count(), 1);
    }

    #[test]
    fn same_user_on_two_connections_is_two_members() {
        let mut table = RoomTable::new();
        table.apply(1, join("chat:a", member("alice", 1, "n1", 1)));
        table.apply(2, join("chat:a", member("alice", 2, "n1", 1)));
        let users: Vec<_> = table.snapshot(&room("chat:a")).unwrap().members.iter().map(|m| m.conn).collect();
        assert_eq!(users, vec![ConnId(1), ConnId(2)]);
    }

    #[test]
    fn a_full_room_rejects_joins() {
        let mut table = RoomTable::new();
        let limited = |m| RoomCommand::Join { room: room("chat:a"), member: m, max_members: Some(1) };
        table.apply(1, limited(member("alice", 1, "n1", 1)));
        assert_eq!(
            table.apply(2, limited(member("bob", 2, "n1", 1))),
            vec![Effect::Rejected {
                room: room("chat:a"),
                conn: ConnId(2),
                rejection: Rejection::RoomFull { max_members: 1 }
            }]
        );
        assert!(!table.is_member(&room("chat:a"), ConnId(2)));
    }

    /// Presence per user: a user's first connection is `first_of_user`, the
    /// last one to leave is `last_of_user`, whatever order they go in, and
    /// a table rebuilt from a snapshot counts the same.
    #[test]
    fn a_users_first_join_and_last_leave_are_marked_once() {
        let first_of = |effects: Vec<Effect>| {
            effects.into_iter().find_map(|e| match e {
                Effect::Joined { first_of_user, .. } => Some(first_of_user),
                _ => None,
            })
        };
        let last_of = |effects: Vec<Effect>| {
            effects.into_iter().find_map(|e| match e {
                Effect::Left { last_of_user, .. } => Some(last_of_user),
                _ => None,
            })
        };
        let mut table = RoomTable::new();
        assert_eq!(first_of(table.apply(1, join("chat:a", member("alice", 1, "n1", 1)))), Some(true));
        assert_eq!(first_of(table.apply(2, join("chat:a", member("alice", 2, "n2", 1)))), Some(false));
        assert_eq!(first_of(table.apply(3, join("chat:a", member("bob", 3, "n2", 1)))), Some(true));
        let mut table = RoomTable::from_snapshot(table.to_snapshot());
        assert_eq!(last_of(table.apply(4, RoomCommand::ConnGone { conn: ConnId(1) })), Some(false));
        assert_eq!(first_of(table.apply(5, join("chat:a", member("alice", 4, "n1", 1)))), Some(false));
        assert_eq!(
            last_of(table.apply(6, RoomCommand::EvictNode { node: "n2".into(), incarnation: 1 })),
            Some(false)
        );
        let effects = table.apply(7, RoomCommand::Leave { room: room("chat:a"), conn: ConnId(4) });
        assert_eq!(last_of(effects), Some(true));
        assert_eq!(table.room_count(), 0);
    }

    #[test]
    fn last_leave_closes_the_room_and_a_new_join_gets_a_new_epoch() {
        let mut table = RoomTable::new();
        let alice = member("alice", 1, "n1", 1);
        table.apply(1, join("chat:a", alice.clone()));
        assert_eq!(
            table.apply(2, RoomCommand::Leave { room: room("chat:a"), conn: ConnId(1) }),
            vec![
                Effect::Left {
                    room: room("chat:a"),
                    member: Arc::new(alice.clone()),
                    reason: LeaveReason::Left,
                    last_of_user: true
                },
                Effect::RoomClosed { room: room("chat:a") },
            ]
        );
        assert_eq!(table.room_count(), 0);
        assert_eq!(table.connection_count(), 0);
        let effects = table.apply(3, join("chat:a", alice));
        assert!(matches!(effects[0], Effect::RoomOpened { epoch: 3, .. }));
    }

    #[test]
    fn leave_of_a_non_member_is_reported_and_harmless() {
        let mut table = RoomTable::new();
        assert_eq!(
            table.apply(1, RoomCommand::Leave { room: room("chat:a"), conn: ConnId(9) }),
            vec![Effect::NotMember { room: room("chat:a"), conn: ConnId(9) }]
        );
    }

    #[test]
    fn conn_gone_leaves_every_room_of_that_connection_only() {
        let mut table = RoomTable::new();
        table.apply(1, join("chat:a", member("alice", 1, "n1", 1)));
        table.apply(2, join("chat:b", member("alice", 1, "n1", 1)));
        table.apply(3, join("chat:b", member("bob", 2, "n1", 1)));
        let effects = table.apply(4, RoomCommand::ConnGone { conn: ConnId(1) });
        let left: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Left { room, reason: LeaveReason::Disconnected, .. } => Some(room.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(left, vec!["chat:a", "chat:b"]);
        assert_eq!(table.room_count(), 1);
        assert_eq!(table.member_count(), 1);
        assert_eq!(table.connection_count(), 1);
    }

    #[test]
    fn a_table_rebuilt_from_its_snapshot_behaves_the_same() {
        let mut table = RoomTable::new();
        table.apply(1, join("chat:a", member("alice", 1, "n1", 1)));
        table.apply(2, join("chat:b", member("alice", 1, "n1", 1)));
        table.apply(3, join("chat:b", member("bob", 2, "n2", 1)));
        let snapshot = table.to_snapshot();
        let text = serde_json::to_string(&snapshot).unwrap();
        let mut copy = RoomTable::from_snapshot(serde_json::from_str(&text).unwrap());
        assert_eq!(copy.to_snapshot(), snapshot);
        let command = RoomCommand::ConnGone { conn: ConnId(1) };
        assert_eq!(copy.apply(4, command.clone()), table.apply(4, command));
        assert_eq!(copy.to_snapshot(), table.to_snapshot());
        assert_eq!(copy.connection_count(), 1);
    }

    #[test]
    fn evicting_a_node_removes_its_members_and_moves_ownership_with_a_new_epoch() {
        let mut table = RoomTable::new();
        table.apply(1, join("chat:a", member("alice", 5, "n1", 3)));
        table.apply(2, join("chat:a", member("bob", 7, "n2", 1)));
        table.apply(3, join("chat:b", member("carol", 6, "n1", 3)));
        // A newer incarnation of n1 is untouched by evicting incarnation 3.
        table.apply(4, join("chat:a", member("dave", 8, "n1", 4)));
        let effects = table.apply(9, RoomCommand::EvictNode { node: "n1".into(), incarnation: 3 });
        assert_eq!(
            effects,
            vec![
                Effect::Left {
                    room: room("chat:a"),
                    member: Arc::new(member("alice", 5, "n1", 3)),
                    reason: LeaveReason::NodeEvicted,
                    last_of_user: true
                },
                Effect::Left {
                    room: room("chat:b"),
                    member: Arc::new(member("carol", 6, "n1", 3)),
                    reason: LeaveReason::NodeEvicted,
                    last_of_user: true
                },
                Effect::RoomClosed { room: room("chat:b") },
                // chat:a was owned by (n1, 3): it moves to the lowest
                // remaining connection, bob's, in a new epoch.
                Effect::OwnerChanged {
                    room: room("chat:a"),
                    epoch: 9,
                    owner: "n2".into(),
                    owner_incarnation: 1
                },
            ]
        );
        let snapshot = table.snapshot(&room("chat:a")).unwrap();
        assert_eq!((snapshot.epoch, snapshot.owner.as_ref(), snapshot.owner_incarnation), (9, "n2", 1));
    }

    #[test]
    fn a_room_owned_by_an_evicted_incarnation_moves_even_without_its_members_in_it() {
        let mut table = RoomTable::new();
        table.apply(1, join("chat:c", member("alice", 1, "n1", 3)));
        table.apply(2, join("chat:c", member("bob", 2, "n2", 1)));
        table.apply(3, RoomCommand::Leave { room: room("chat:c"), conn: ConnId(1) });
        // Alice left, n1 is alive: n1 still owns the room.
        assert_eq!(table.snapshot(&room("chat:c")).unwrap().owner.as_ref(), "n1");
        let effects = table.apply(4, RoomCommand::EvictNode { node: "n1".into(), incarnation: 3 });
        assert_eq!(
            effects,
            vec![Effect::OwnerChanged {
                room: room("chat:c"),
                epoch: 4,
                owner: "n2".into(),
                owner_incarnation: 1
            }]
        );
    }
}
