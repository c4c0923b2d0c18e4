//! The node's `data_dir` and the Raft log in it are readable by their owner
//! only, whether created now or left open by an older version.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use starling_cluster::raft::LogStore;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("starling-data-dir-{}-{}", std::process::id(), rand::random::<u64>()))
}

#[test]
fn a_new_data_dir_is_0700_and_the_raft_log_0600() {
    let root = temp_dir();
    let data_dir = root.join("data").join("node-1");
    let log = data_dir.join("raft.redb");
    let store = LogStore::open(&log).unwrap();
    assert_eq!(format!("{:o}", mode(&data_dir)), "700");
    assert_eq!(format!("{:o}", mode(&root.join("data"))), "700", "missing parents too");
    assert_eq!(format!("{:o}", mode(&log)), "600");
    drop(store);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn an_open_data_dir_left_by_an_older_version_is_tightened() {
    let data_dir = temp_dir();
    let log = data_dir.join("raft.redb");
    drop(LogStore::open(&log).unwrap());
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = LogStore::open(&log).unwrap();
    assert_eq!(format!("{:o}", mode(&data_dir)), "700");
    assert_eq!(format!("{:o}", mode(&log)), "600");
    drop(store);
    std::fs::remove_dir_all(data_dir).unwrap();
}
