//! The `raft::Storage` contract at its boundaries.

use protobuf::Message as _;
use raft::{GetEntriesContext, Storage as _};
use raftkv_storage::{FileStorage, NodeIdentity};

use crate::{append_and_sync, entry, open, small_options, three_voters};

fn is_store_error(
    result: raft::Result<impl std::fmt::Debug>,
    expected: raft::StorageError,
) -> bool {
    matches!(result, Err(raft::Error::Store(actual)) if actual == expected)
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

#[test]
fn a_fresh_log_is_empty_and_starts_at_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    assert_eq!(storage.first_index().unwrap(), 1);
    assert_eq!(storage.last_index().unwrap(), 0);
    assert_eq!(storage.term(0).unwrap(), 0);
    assert!(is_store_error(
        storage.term(1),
        raft::StorageError::Unavailable
    ));
    assert!(storage.entries(1, 1, None, ctx()).unwrap().is_empty());
    assert!(!storage.initial_state().unwrap().initialized());
}

#[test]
fn term_and_entries_respect_the_snapshot_and_the_last_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path());
    storage
        .bootstrap(
            NodeIdentity {
                node_id: 1,
                cluster_id: 1,
                bootstrap_id: 0,
            },
            three_voters(),
        )
        .unwrap();
    append_and_sync(
        &mut storage,
        &[entry(2, 1, "b"), entry(3, 2, "c"), entry(4, 2, "d")],
    );

    assert!(is_store_error(
        storage.term(0),
        raft::StorageError::Compacted
    ));
    assert_eq!(storage.term(1).unwrap(), 1, "the snapshot's term is kept");
    assert_eq!(storage.term(3).unwrap(), 2);
    assert_eq!(storage.term(4).unwrap(), 2);
    assert!(is_store_error(
        storage.term(5),
        raft::StorageError::Unavailable
    ));

    assert!(is_store_error(
        storage.entries(1, 3, None, ctx()),
        raft::StorageError::Compacted
    ));
    assert!(is_store_error(
        storage.entries(2, 6, None, ctx()),
        raft::StorageError::Unavailable
    ));
    let all = storage.entries(2, 5, None, ctx()).unwrap();
    assert_eq!(
        all.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(
        storage.entries(3, 4, None, ctx()).unwrap()[0].data.as_ref(),
        b"c"
    );
}

#[test]
fn no_snapshot_is_offered_before_one_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    assert!(is_store_error(
        storage.snapshot(0, 2),
        raft::StorageError::SnapshotTemporarilyUnavailable
    ));
}

/// `entries` must cut exactly where `raft::util::limit_size` would, from the cache and
/// from disk alike.
#[test]
fn max_size_matches_raft_limit_size_from_cache_and_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=6)
        .map(|i| entry(i, 1, &"x".repeat(10 * i as usize)))
        .collect();
    let mut storage = FileStorage::open(dir.path(), small_options()).unwrap();
    storage.append(&entries).unwrap();
    let size = |i: usize| u64::from(entries[i].compute_size());
    let limits = [
        Some(0),
        Some(size(0)),
        Some(size(0) + size(1) - 1),
        Some(size(0) + size(1)),
        Some(size(0) + size(1) + size(2) + 1),
        Some(u64::MAX),
        None,
    ];

    let check = |storage: &FileStorage, source: &str| {
        for limit in limits {
            let mut expected = entries.clone();
            raft::util::limit_size(&mut expected, limit);
            let actual = storage.entries(1, 7, limit, ctx()).unwrap();
            assert_eq!(actual, expected, "limit {limit:?} reading from {source}");
            assert!(!actual.is_empty());
        }
    };
    check(&storage, "memory (unsynced)");
    storage.sync().unwrap();
    drop(storage);
    let storage = FileStorage::open(dir.path(), small_options()).unwrap();
    assert_eq!(storage.entry_cache_bytes(), 0);
    check(&storage, "disk");
}
