//! The one place room commands meet replication.
//!
//! Everything that changes room membership is a [`RoomCommand`] proposed
//! here; the command is given a log index, applied to the [`RoomTable`], and
//! its effects are mirrored into the local fan-out [`Hub`] in the same order
//! on every node. Today the log is local to this process (a single node);
//! the cluster replaces [`Backend::Local`] with Raft behind the same
//! `propose` and read functions, so the gateway does not change.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::gateway::Hub;
use crate::protocol::{ConnId, RoomName};
use crate::rooms::{Effect, RoomCommand, RoomSnapshot, RoomTable};

/// Why a command was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicateError {
    /// Retryable: no quorum or no leader right now.
    #[error("room state is unavailable: {0}")]
    Unavailable(&'static str),
}

/// Counts over the whole room table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    pub rooms: usize,
    pub members: usize,
    /// Connections in at least one room.
    pub connections: usize,
}

pub struct Replicator {
    backend: Backend,
}

enum Backend {
    /// A single node: the log is this process's apply order.
    Local(LocalLog),
}

struct LocalLog {
    state: Mutex<LocalState>,
    hub: Arc<Hub>,
}

struct LocalState {
    last_index: u64,
    table: RoomTable,
}

impl Replicator {
    pub fn local(hub: Arc<Hub>) -> Replicator {
        let state = LocalState { last_index: 0, table: RoomTable::new() };
        Replicator { backend: Backend::Local(LocalLog { state: Mutex::new(state), hub }) }
    }

    /// Proposes `command` and waits until it is applied; returns its effects.
    pub async fn propose(&self, command: RoomCommand) -> Result<Vec<Effect>, ReplicateError> {
        match &self.backend {
            Backend::Local(log) => Ok(log.apply(command)),
        }
    }

    /// A room as of the latest applied command, which includes every command
    /// this node has had a reply for.
    pub fn snapshot(&self, room: &RoomName) -> Option<RoomSnapshot> {
        match &self.backend {
            Backend::Local(log) => log.lock().table.snapshot(room),
        }
    }

    /// Calls `f` with the room as of the latest applied command while no
    /// further command can apply, so that what `f` queues for a connection
    /// lands exactly between the effects already mirrored and later ones.
    pub fn with_snapshot<R>(&self, room: &RoomName, f: impl FnOnce(Option<RoomSnapshot>) -> R) -> R {
        match &self.backend {
            Backend::Local(log) => {
                let state = log.lock();
                f(state.table.snapshot(room))
            }
        }
    }

    pub fn is_member(&self, room: &RoomName, conn: ConnId) -> bool {
        match &self.backend {
            Backend::Local(log) => log.lock().table.is_member(room, conn),
        }
    }

    pub fn stats(&self) -> TableStats {
        match &self.backend {
            Backend::Local(log) => {
                let state = log.lock();
                TableStats {
                    rooms: state.table.room_count(),
                    members: state.table.member_count(),
                    connections: state.table.connection_count(),
                }
            }
        }
    }

    /// Whether this node can change room state now (single node: always).
    pub fn is_ready(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
    }
}

impl LocalLog {
    fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn apply(&self, command: RoomCommand) -> Vec<Effect> {
        let mut state = self.lock();
        state.last_index += 1;
        let index = state.last_index;
        let effects = state.table.apply(index, command);
        // Under the same lock, so the hub sees effects in log order.
        self.hub.apply_effects(&effects);
        effects
    }
}
