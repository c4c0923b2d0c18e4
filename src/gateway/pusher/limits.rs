//! An app's limits on a subscription (`[[apps]]`: channels per connection,
//! users per presence channel, size of `user_info`), checked before the
//! join is proposed. The HTTP API's limits are checked in `api/pusher.rs`.

use std::collections::HashSet;
use std::sync::Arc;

use super::encode::user_info;
use super::session::close;
use super::{Channel, ChannelKind};
use crate::config::AppConfig;
use crate::protocol::RoomName;
use crate::rooms::MemberRecord;
use crate::service::ConnectionRooms;

/// A subscription over one of the app's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitRefusal {
    #[error("this connection is subscribed to {0} channels, the most this app allows")]
    Channels(usize),
    #[error("the presence channel has {0} users, the most this app allows")]
    Members(usize),
    #[error("user_info is over {0} bytes")]
    UserInfo(usize),
}

impl LimitRefusal {
    /// The subscription error's `status`: Pusher's 4100 (over capacity,
    /// retry later) for a full channel or connection; 400 for a member
    /// that can never fit.
    pub fn status(self) -> u16 {
        match self {
            LimitRefusal::Channels(_) | LimitRefusal::Members(_) => close::OVER_CAPACITY,
            LimitRefusal::UserInfo(_) => 400,
        }
    }
}

/// Checks a subscription of the connection with `rooms` to `room` as
/// `user` with `meta` against `app`'s limits. Users per presence channel
/// are counted in the table as applied on this node: simultaneous joins
/// through other nodes may pass the limit by a few.
pub fn check_subscription(
    app: &AppConfig,
    rooms: &ConnectionRooms,
    room: &RoomName,
    channel: Channel,
    user: &str,
    meta: &str,
) -> Result<(), LimitRefusal> {
    if let Some(max) = app.max_channels_per_connection {
        if !rooms.contains(room) && rooms.len() >= max {
            return Err(LimitRefusal::Channels(max));
        }
    }
    if channel.kind != ChannelKind::Presence {
        return Ok(());
    }
    let info_bytes = user_info(meta).map_or(0, |info| info.get().len());
    if info_bytes > app.max_presence_member_bytes {
        return Err(LimitRefusal::UserInfo(app.max_presence_member_bytes));
    }
    let max = app.max_presence_members_per_channel;
    let full = rooms.service().replicator().with_snapshot(room, |snapshot| {
        snapshot.is_some_and(|snapshot| presence_full(&snapshot.members, user, max))
    });
    if full {
        return Err(LimitRefusal::Members(max));
    }
    Ok(())
}

/// Whether `user` would be one user too many among `members` (a user
/// already in is never refused: its connections count once).
fn presence_full(members: &[Arc<MemberRecord>], user: &str, max: usize) -> bool {
    let users: HashSet<&str> = members.iter().map(|m| &*m.user).collect();
    !users.contains(user) && users.len() >= max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ConnId;

    fn member(user: &str, conn: u64) -> Arc<MemberRecord> {
        Arc::new(MemberRecord {
            user: Arc::from(user),
            conn: ConnId(conn),
            node: Arc::from("n1"),
            incarnation: 1,
            meta: Arc::from("{}"),
        })
    }

    #[test]
    fn a_presence_channel_is_full_at_max_users_not_connections_and_its_users_still_get_in() {
        let members = vec![member("ada", 1), member("ada", 2), member("bob", 3)];
        assert!(!presence_full(&members, "carol", 3), "two users of three");
        assert!(presence_full(&members, "carol", 2));
        assert!(!presence_full(&members, "ada", 2), "another connection of a user already in");
        assert!(!presence_full(&[], "ada", 1));
    }

    #[test]
    fn full_channels_and_connections_say_over_capacity_and_an_oversized_member_400() {
        assert_eq!(LimitRefusal::Members(100).status(), 4100);
        assert_eq!(LimitRefusal::Channels(10).status(), 4100);
        assert_eq!(LimitRefusal::UserInfo(1024).status(), 400);
    }
}
