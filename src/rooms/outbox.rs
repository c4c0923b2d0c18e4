//! The webhook outbox: membership events of Pusher apps, held in the
//! replicated state until a sender reports them delivered.
//!
//! Every node applies the same commands, so every node holds the same
//! outbox: when the node that sends webhooks (the Raft leader) dies, the
//! next one resends exactly what was never acknowledged, and nothing that
//! was acknowledged. The outbox records events of rooms in a Pusher app's
//! namespace (`pusher-{id}`); it decides nothing about where or whether
//! they are sent (that is configuration, read by `webhooks`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::table::Effect;
use crate::protocol::RoomName;

/// The namespace prefix of Pusher apps' rooms (`config::APP_NAMESPACE_PREFIX`,
/// repeated here so the state machine reads no configuration module).
const APP_PREFIX: &str = "pusher-";

/// The channel prefix whose rooms have per-user presence events.
const PRESENCE_PREFIX: &str = "presence-";

/// The most events one app's outbox holds: past it the oldest are dropped
/// (counted), so a receiver that is down for hours cannot exhaust memory.
pub const MAX_PENDING_PER_APP: usize = 65_536;

/// What happened, in Pusher's webhook vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded { user: Arc<str> },
    MemberRemoved { user: Arc<str> },
}

/// One event waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingHook {
    /// Increases by one per event across all apps: a sender acknowledges
    /// "everything of this app up to id N".
    pub id: u64,
    pub room: RoomName,
    pub kind: HookKind,
}

/// The events of every app not yet acknowledged, per app namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutbox {
    apps: BTreeMap<Arc<str>, VecDeque<PendingHook>>,
    next_id: u64,
    /// Events dropped because an app's outbox was full.
    dropped: u64,
}

impl HookOutbox {
    /// Records the webhook events among one command's `effects`.
    pub fn record(&mut self, effects: &[Effect]) {
        for effect in effects {
            let (room, kind) = match effect {
                Effect::RoomOpened { room, .. } => (room, HookKind::ChannelOccupied),
                Effect::RoomClosed { room } => (room, HookKind::ChannelVacated),
                Effect::Joined { room, member, first_of_user: true, .. } if is_presence(room) => {
                    (room, HookKind::MemberAdded { user: Arc::clone(&member.user) })
                }
                Effect::Left { room, member, last_of_user: true, .. } if is_presence(room) => {
                    (room, HookKind::MemberRemoved { user: Arc::clone(&member.user) })
                }
                _ => continue,
            };
            let namespace = room.namespace();
            if !namespace.starts_with(APP_PREFIX) {
                continue;
            }
            self.next_id += 1;
            let hook = PendingHook { id: self.next_id, room: room.clone(), kind };
            let queue = match self.apps.get_mut(namespace) {
                Some(queue) => queue,
                None => self.apps.entry(Arc::from(namespace)).or_default(),
            };
            if queue.len() >= MAX_PENDING_PER_APP {
                queue.pop_front();
                self.dropped += 1;
            }
            queue.push_back(hook);
        }
    }

    /// Forgets the events of `app` up to and including id `up_to`.
    pub fn delivered(&mut self, app: &str, up_to: u64) {
        let Some(queue) = self.apps.get_mut(app) else {
            return;
        };
        while queue.front().is_some_and(|hook| hook.id <= up_to) {
            queue.pop_front();
        }
        if queue.is_empty() {
            self.apps.remove(app);
        }
    }

    /// Up to `max` events of `app` with ids above `after`, oldest first.
    pub fn pending(&self, app: &str, after: u64, max: usize) -> Vec<PendingHook> {
        let Some(queue) = self.apps.get(app) else {
            return Vec::new();
        };
        let start = queue.partition_point(|hook| hook.id <= after);
        queue.range(start..).take(max).cloned().collect()
    }

    /// How many events `app` has waiting.
    pub fn len(&self, app: &str) -> usize {
        self.apps.get(app).map_or(0, VecDeque::len)
    }

    /// Events dropped so far because an outbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

fn is_presence(room: &RoomName) -> bool {
    room.as_str().split_once(':').is_some_and(|(_, channel)| channel.starts_with(PRESENCE_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ConnId;
    use crate::rooms::{LeaveReason, MemberRecord};

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn member(user: &str) -> Arc<MemberRecord> {
        Arc::new(MemberRecord {
            user: user.into(),
            conn: ConnId(1),
            node: "n1".into(),
            incarnation: 1,
            meta: "{}".into(),
        })
    }

    fn opened(name: &str) -> Effect {
        Effect::RoomOpened { room: room(name), epoch: 1, owner: "n1".into(), owner_incarnation: 1 }
    }

    fn joined(name: &str, user: &str, first_of_user: bool) -> Effect {
        Effect::Joined { room: room(name), epoch: 1, member: member(user), first_of_user }
    }

    fn left(name: &str, user: &str, last_of_user: bool) -> Effect {
        Effect::Left { room: room(name), member: member(user), reason: LeaveReason::Left, last_of_user }
    }

    fn kinds(outbox: &HookOutbox, app: &str) -> Vec<(u64, String, HookKind)> {
        outbox.pending(app, 0, usize::MAX).into_iter().map(|h| (h.id, h.room.to_string(), h.kind)).collect()
    }

    #[test]
    fn app_rooms_record_occupied_vacated_and_per_user_presence_events_other_rooms_none() {
        let mut outbox = HookOutbox::default();
        outbox.record(&[opened("chat:a"), joined("chat:a", "u", true)]);
        outbox.record(&[opened("pusher-a1:presence-x"), joined("pusher-a1:presence-x", "u", true)]);
        // A second connection of the same user, then one of two leaving:
        // no presence event.
        outbox
            .record(&[joined("pusher-a1:presence-x", "u", false), left("pusher-a1:presence-x", "u", false)]);
        // Public channels have no member events, only occupied/vacated.
        outbox.record(&[opened("pusher-a1:news"), joined("pusher-a1:news", "u", true)]);
        outbox.record(&[
            left("pusher-a1:presence-x", "u", true),
            Effect::RoomClosed { room: room("pusher-a1:presence-x") },
        ]);
        let user = || Arc::<str>::from("u");
        assert_eq!(
            kinds(&outbox, "pusher-a1"),
            vec![
                (1, "pusher-a1:presence-x".into(), HookKind::ChannelOccupied),
                (2, "pusher-a1:presence-x".into(), HookKind::MemberAdded { user: user() }),
                (3, "pusher-a1:news".into(), HookKind::ChannelOccupied),
                (4, "pusher-a1:presence-x".into(), HookKind::MemberRemoved { user: user() }),
                (5, "pusher-a1:presence-x".into(), HookKind::ChannelVacated),
            ]
        );
        assert_eq!(outbox.len("chat"), 0);
    }

    #[test]
    fn delivered_forgets_up_to_the_id_and_pending_starts_after_a_cursor() {
        let mut outbox = HookOutbox::default();
        for n in 0..5 {
            outbox.record(&[opened(&format!("pusher-a1:c{n}"))]);
        }
        outbox.record(&[opened("pusher-b2:c")]);
        let ids = |hooks: Vec<PendingHook>| hooks.into_iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(outbox.pending("pusher-a1", 2, 2)), vec![3, 4]);
        outbox.delivered("pusher-a1", 3);
        assert_eq!(ids(outbox.pending("pusher-a1", 0, 10)), vec![4, 5]);
        // Another app's acknowledgement does not touch this one.
        outbox.delivered("pusher-b2", 100);
        assert_eq!(outbox.len("pusher-a1"), 2);
        assert_eq!(outbox.len("pusher-b2"), 0);
        outbox.delivered("pusher-a1", 5);
        assert_eq!(outbox, HookOutbox { apps: BTreeMap::new(), next_id: 6, dropped: 0 });
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_events_and_counts_them() {
        let mut outbox = HookOutbox::default();
        for n in 0..MAX_PENDING_PER_APP + 3 {
            outbox.record(&[opened(&format!("pusher-a1:c{n}"))]);
        }
        assert_eq!(outbox.len("pusher-a1"), MAX_PENDING_PER_APP);
        assert_eq!(outbox.dropped(), 3);
        assert_eq!(outbox.pending("pusher-a1", 0, 1)[0].id, 4);
    }
}
