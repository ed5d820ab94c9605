//! Behaviour of `FileStorage` as its users see it: what survives a reopen, how a
//! damaged log is repaired or refused, and the `raft::Storage` contract.

mod compaction;
mod raft_semantics;
mod recovery;
mod round_trip;
mod snapshot_files;
mod untrusted_bytes;

use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry};
use raft::{GetEntriesContext, Storage as _};
use raftkv_storage::{FileStorage, MembershipRecord, StorageOptions};

pub fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index,
        term,
        data: bytes::Bytes::copy_from_slice(data.as_bytes()),
        ..Default::default()
    }
}

pub fn open(dir: &Path) -> FileStorage {
    FileStorage::open(dir, StorageOptions::default()).expect("open storage")
}

/// Tiny segments and no cache: reads after a reopen must come from the segment files.
pub fn small_options() -> StorageOptions {
    StorageOptions {
        wal_segment_size_bytes: 256,
        entry_cache_bytes: 0,
    }
}

pub fn append_and_sync(storage: &mut FileStorage, entries: &[Entry]) {
    storage.append(entries).expect("append");
    storage.sync().expect("sync");
}

/// (index, term, data) of every entry in the log, read through `raft::Storage`.
pub fn log_contents(storage: &FileStorage) -> Vec<(u64, u64, String)> {
    let first = storage.first_index().unwrap();
    let last = storage.last_index().unwrap();
    storage
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .expect("entries")
        .into_iter()
        .map(|e| (e.index, e.term, String::from_utf8(e.data.to_vec()).unwrap()))
        .collect()
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join("wal").join(format!("{seq:016x}.wal"))
}

pub fn three_voters() -> MembershipRecord {
    MembershipRecord {
        index: 1,
        conf_state: ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        },
        addresses: (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", 7000 + id)))
            .collect(),
        peer_addresses: Default::default(),
        max_node_id: 3,
    }
}
