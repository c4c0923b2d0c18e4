//! The registry of open sessions on this node, by connection and by user.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

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
}

impl Sessions {
    pub fn insert(&self, entry: Arc<SessionEntry>) {
        self.write().insert(entry.conn, entry);
    }

    pub fn remove(&self, conn: ConnId) {
        self.write().remove(&conn);
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
