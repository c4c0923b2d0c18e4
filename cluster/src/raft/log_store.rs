//! The durable Raft log, vote and commit index, in redb.
//!
//! Every write is one redb transaction committed with fsync before openraft
//! is told it is done, so an acknowledged entry survives a crash.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::codec;

/// Log entries by index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small records: vote, committed, last purged, last snapshot.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

fn io_read(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

fn io_write(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&error)).into()
}

/// The log storage. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (or creates) the database at `path`. Its folder (the node's
    /// `data_dir`) is made 0700 and the file 0600, also when an older
    /// version left them open to others.
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            private::create_dir(parent).map_err(io_write)?;
        }
        let db = Database::create(path).map_err(io_write)?;
        private::restrict(path);
        let txn = db.begin_write().map_err(io_write)?;
        txn.open_table(LOG).map_err(io_write)?;
        txn.open_table(META).map_err(io_write)?;
        txn.commit().map_err(io_write)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// The database, shared with the state machine (which keeps snapshots in it).
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        read_meta(&self.db, key)
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        write_meta(&self.db, key, value)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let txn = self.db.begin_read().map_err(io_read)?;
        let table = txn.open_table(LOG).map_err(io_read)?;
        let Some(last) = table.last().map_err(io_read)? else {
            return Ok(None);
        };
        let entry: Entry = codec::decode(last.1.value()).map_err(io_read)?;
        Ok(Some(entry.log_id))
    }
}

/// Files of the Raft log hold the cluster's state: owner access only.
mod private {
    use std::path::Path;

    /// Creates `dir` and missing parents as 0700, and tightens it if it exists.
    #[cfg(unix)]
    pub(super) fn create_dir(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        restrict(dir);
        Ok(())
    }

    #[cfg(not(unix))]
    pub(super) fn create_dir(dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    /// Removes group and other permissions from `path`. A failure (a
    /// mounted volume owned by another user) is logged, not fatal: the node
    /// can still run, and the operator is told.
    #[cfg(unix)]
    pub(super) fn restrict(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let tightened = std::fs::metadata(path).and_then(|metadata| {
            let mode = metadata.permissions().mode();
            if mode & 0o077 == 0 {
                return Ok(());
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))
        });
        if let Err(error) = tightened {
            tracing::warn!(path = %path.display(), %error, "cannot restrict permissions to the owner");
        }
    }

    #[cfg(not(unix))]
    pub(super) fn restrict(_path: &Path) {}
}

pub(super) fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError> {
    let txn = db.begin_read().map_err(io_read)?;
    let table = txn.open_table(META).map_err(io_read)?;
    match table.get(key).map_err(io_read)? {
        Some(bytes) => Ok(Some(codec::decode(bytes.value()).map_err(io_read)?)),
        None => Ok(None),
    }
}

pub(super) fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), StorageError> {
    let bytes = codec::encode(value).map_err(io_write)?;
    let txn = db.begin_write().map_err(io_write)?;
    {
        let mut table = txn.open_table(META).map_err(io_write)?;
        table.insert(key, bytes.as_slice()).map_err(io_write)?;
    }
    txn.commit().map_err(io_write)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let txn = self.db.begin_read().map_err(io_read)?;
        let table = txn.open_table(LOG).map_err(io_read)?;
        let mut entries = Vec::new();
        for item in table.range(start..).map_err(io_read)? {
            let (index, bytes) = item.map_err(io_read)?;
            if !range.contains(&index.value()) {
                break;
            }
            entries.push(codec::decode(bytes.value()).map_err(io_read)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let txn = self.db.begin_write().map_err(io_write)?;
        {
            let mut table = txn.open_table(LOG).map_err(io_write)?;
            for entry in entries {
                let bytes = codec::encode(&entry).map_err(io_write)?;
                table.insert(entry.log_id.index, bytes.as_slice()).map_err(io_write)?;
            }
        }
        txn.commit().map_err(io_write)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(io_write)?;
        {
            let mut table = txn.open_table(LOG).map_err(io_write)?;
            table.retain_in(log_id.index.., |_, _| false).map_err(io_write)?;
        }
        txn.commit().map_err(io_write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = codec::encode(&log_id).map_err(io_write)?;
        let txn = self.db.begin_write().map_err(io_write)?;
        {
            let mut meta = txn.open_table(META).map_err(io_write)?;
            meta.insert(LAST_PURGED, bytes.as_slice()).map_err(io_write)?;
            let mut table = txn.open_table(LOG).map_err(io_write)?;
            table.retain_in(..=log_id.index, |_, _| false).map_err(io_write)?;
        }
        txn.commit().map_err(io_write)
    }
}
