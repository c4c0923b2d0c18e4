//! The redb log store and the state machine pass openraft's storage
//! conformance suite, and keep their state across a reopen.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder, Vote};
use starling_cluster::codec;
use starling_cluster::raft::{Applier, Command, Entry, LogStore, StateMachine, StorageError, TypeConfig};

type Record = Vec<(u64, Vec<u8>)>;

/// Appends every command; its snapshot is the list. `restored` shows what
/// a restore brought back.
#[derive(Default)]
struct Recorder {
    applied: Record,
    restored: Arc<Mutex<Option<Record>>>,
}

impl Applier for Recorder {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.applied.push((index, command.to_vec()));
        index.to_be_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.applied).unwrap()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.applied = codec::decode(snapshot).map_err(|e| e.to_string())?;
        *self.restored.lock().unwrap() = Some(self.applied.clone());
        Ok(())
    }
}

/// A directory removed when the test's store is dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("starling-raft-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new();
        let log = LogStore::open(&dir.0.join("raft.redb"))?;
        let sm = StateMachine::open(log.database(), Box::new(Recorder::default()))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn the_storage_passes_openrafts_conformance_suite() {
    if let Err(error) = Suite::test_all(Builder) {
        panic!("storage suite failed: {error}");
    }
}

fn entry(term: u64, index: u64, data: &[u8]) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Command(data.to_vec())),
    }
}

#[tokio::test]
async fn vote_and_snapshot_survive_a_reopen_and_the_snapshot_is_restored() {
    let dir = TempDir::new();
    let path = dir.0.join("raft.redb");
    {
        let mut log = LogStore::open(&path).unwrap();
        log.save_vote(&Vote::new(3, 7)).await.unwrap();
        let mut sm = StateMachine::open(log.database(), Box::new(Recorder::default())).unwrap();
        let responses = sm.apply(vec![entry(3, 1, b"a"), entry(3, 2, b"b")]).await.unwrap();
        assert_eq!(responses[1].0, 2u64.to_be_bytes().to_vec());
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    let restored = Arc::new(Mutex::new(None));
    let recorder = Recorder { applied: Vec::new(), restored: Arc::clone(&restored) };
    let mut sm = StateMachine::open(log.database(), Box::new(recorder)).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(2));
    assert_eq!(restored.lock().unwrap().clone().unwrap(), vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
}
