//! The registry of open sessions on this node, by connection and by user.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use super::message::FrameEncoder;
use super::outbound::Outbound;
use crate::protocol::{CloseCode, ConnId};

/// What other parts of the node may reach of a session: its identity, its
/// outbound queue (to deliver frames or ask it to close), and the encoder
/// of its wire protocol.
pub struct SessionEntry {
    pub conn: ConnId,
    pub user: Arc<str>,
    pub outbound: Outbound,
    /// Shared by every session of the same protocol.
    pub encoder: Arc<dyn FrameEncoder>,
}

impl std::fmt::Debug for SessionEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEntry").field("conn", &self.conn).field("user", &self.user).finish()
    }
}

#[derive(Debug, Default)]
pub struct Sessions {
    by_conn: RwLock<HashMap<ConnId, Arc<SessionEntry>>>,
    /// The users sessions act as in a namespace besides their own (a
    /// Pusher connection's sign-in user and presence user ids), so that
    /// every connection of such a user can be closed.
    acting: Mutex<Acting>,
}

/// A namespace and a user id in it.
type NamespacedUser = (Arc<str>, Arc<str>);

#[derive(Debug, Default)]
struct Acting {
    by_user: HashMap<NamespacedUser, HashSet<ConnId>>,
    by_conn: HashMap<ConnId, Vec<NamespacedUser>>,
}

impl Sessions {
    pub fn insert(&self, entry: Arc<SessionEntry>) {
        self.write().insert(entry.conn, entry);
    }

    pub fn remove(&self, conn: ConnId) {
        self.write().remove(&conn);
        let mut acting = self.acting();
        for key in acting.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(conns) = acting.by_user.get_mut(&key) {
                conns.remove(&conn);
                if conns.is_empty() {
                    acting.by_user.remove(&key);
                }
            }
        }
    }

    /// Records that the session `conn` acts as `user` in `namespace`
    /// (until it is removed).
    pub fn act_as(&self, namespace: &str, user: &str, conn: ConnId) {
        let key: NamespacedUser = (Arc::from(namespace), Arc::from(user));
        let mut acting = self.acting();
        if acting.by_user.entry(key.clone()).or_default().insert(conn) {
            acting.by_conn.entry(conn).or_default().push(key);
        }
    }

    /// Asks every session acting as `user` in `namespace` to close with
    /// `code`; returns how many.
    pub fn close_acting(&self, namespace: &str, user: &str, code: CloseCode) -> usize {
        let key: NamespacedUser = (Arc::from(namespace), Arc::from(user));
        let conns: Vec<ConnId> =
            self.acting().by_user.get(&key).map(|c| c.iter().copied().collect()).unwrap_or_default();
        let mut closed = 0;
        for entry in conns.into_iter().filter_map(|conn| self.get(conn)) {
            entry.outbound.close(code);
            closed += 1;
        }
        closed
    }

    fn acting(&self) -> std::sync::MutexGuard<'_, Acting> {
        self.acting.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, conn: ConnId) -> Option<Arc<SessionEntry>> {
        self.read().get(&conn).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames and bytes waiting in every session's outbound queue.
    pub fn queued(&self) -> (usize, usize) {
        self.read().values().map(|e| e.outbound.depth()).fold((0, 0), |(f, b), (df, db)| (f + df, b + db))
    }

    /// Every open session, for draining.
    pub fn all(&self) -> Vec<Arc<SessionEntry>> {
        self.read().values().cloned().collect()
    }

    /// Asks every session of `user` to close with `code`; returns how many.
    pub fn close_user(&self, user: &str, code: CloseCode) -> usize {
        let sessions = self.read();
        let mut closed = 0;
        for entry in sessions.values().filter(|e| &*e.user == user) {
            entry.outbound.close(code);
            closed += 1;
        }
        closed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ConnId, Arc<SessionEntry>>> {
        self.by_conn.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ConnId, Arc<SessionEntry>>> {
        self.by_conn.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CoreNode, TextEncoder};

    #[test]
    fn closing_a_user_closes_the_sessions_acting_as_it_in_that_namespace_only() {
        let node = CoreNode::new("node-1", 1);
        let encoder: Arc<dyn FrameEncoder> = Arc::new(TextEncoder::default());
        let (a, b, c) =
            (node.session("s1", &encoder), node.session("s2", &encoder), node.session("s3", &encoder));
        node.sessions.act_as("pusher-app-1", "ada", a.conn);
        node.sessions.act_as("pusher-app-1", "ada", a.conn);
        node.sessions.act_as("pusher-app-1", "ada", b.conn);
        node.sessions.act_as("pusher-app-2", "ada", c.conn);
        node.sessions.remove(b.conn);
        assert_eq!(node.sessions.close_acting("pusher-app-1", "ada", CloseCode::Terminated), 1);
        assert_eq!(a.outbound.closing(), Some(CloseCode::Terminated));
        assert_eq!(c.outbound.closing(), None, "another app's user of the same id");
        node.sessions.remove(a.conn);
        assert_eq!(node.sessions.close_acting("pusher-app-1", "ada", CloseCode::Terminated), 0);
        assert!(
            node.sessions.acting().by_conn.keys().all(|conn| *conn == c.conn),
            "removed sessions are forgotten"
        );
    }
}
