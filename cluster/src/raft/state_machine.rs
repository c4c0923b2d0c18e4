//! The Raft state machine: applies committed commands through the
//! application's [`Applier`] and keeps the latest snapshot in redb.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership};
use redb::Database;
use serde::{Deserialize, Serialize};

use super::log_store::{read_meta, write_meta};
use super::{Applied, Entry, LogId, NodeId, PeerNode, StorageError, TypeConfig};

/// The application's side of the state machine. Commands and snapshots are
/// bytes the application encodes; the same commands in the same order must
/// produce the same state on every node.
pub trait Applier: Send + Sync + 'static {
    /// Applies the command at log `index`; returns the response for its proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The whole state, to be restored elsewhere by [`Applier::restore`].
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
    /// Log `index` held no command (a leader's blank entry or a membership
    /// change) and is now applied; readers waiting for it may go on.
    fn skipped(&mut self, _index: u64) {}
}

const SNAPSHOT: &str = "snapshot";

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, PeerNode>,
    data: Vec<u8>,
}

fn sm_error(message: impl std::fmt::Display) -> StorageError {
    let error = std::io::Error::other(message.to_string());
    StorageIOError::write_state_machine(AnyError::new(&error)).into()
}

pub struct StateMachine {
    applier: Box<dyn Applier>,
    db: Arc<Database>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership<NodeId, PeerNode>,
    /// Counts snapshots built by this process, to make snapshot ids unique.
    snapshots_built: u64,
}

impl StateMachine {
    /// Opens the state machine; restores `applier` from the stored snapshot
    /// if there is one (openraft then re-applies the committed log after it).
    pub fn open(db: Arc<Database>, mut applier: Box<dyn Applier>) -> Result<StateMachine, StorageError> {
        let stored: Option<StoredSnapshot> = read_meta(&db, SNAPSHOT)?;
        let (last_applied, last_membership) = match &stored {
            Some(snapshot) => {
                applier.restore(&snapshot.data).map_err(sm_error)?;
                (snapshot.meta.last_log_id, snapshot.meta.last_membership.clone())
            }
            None => (None, StoredMembership::default()),
        };
        Ok(StateMachine { applier, db, last_applied, last_membership, snapshots_built: 0 })
    }
}

/// Builds a snapshot from state captured when the builder was made.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    data: Vec<u8>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership<NodeId, PeerNode>,
    sequence: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snapshot_id = match self.last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, self.sequence),
            None => format!("empty-{}", self.sequence),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: std::mem::take(&mut self.data) };
        write_meta(&self.db, SNAPSHOT, &stored)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, PeerNode>), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => {
                    self.applier.skipped(entry.log_id.index);
                    Applied::default()
                }
                EntryPayload::Normal(command) => Applied(self.applier.apply(entry.log_id.index, &command.0)),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    self.applier.skipped(entry.log_id.index);
                    Applied::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder {
            db: Arc::clone(&self.db),
            data: self.applier.snapshot(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            sequence: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.applier.restore(&data).map_err(sm_error)?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        write_meta(&self.db, SNAPSHOT, &StoredSnapshot { meta: meta.clone(), data })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let stored: Option<StoredSnapshot> = read_meta(&self.db, SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}
