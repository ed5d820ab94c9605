//! Snapshots recorded in the log, compaction deleting segment files, and installing a
//! leader's snapshot — and that all of it survives a restart.

use std::fs;
use std::path::Path;

use raft::eraftpb::{ConfState, HardState};
use raft::{GetEntriesContext, Storage as _};
use raftkv_storage::{FileStorage, MembershipRecord, NodeIdentity, SnapshotMeta, StorageError};

use crate::{append_and_sync, entry, log_contents, small_options, three_voters};

fn open_small(dir: &Path) -> FileStorage {
    FileStorage::open(dir, small_options()).expect("open storage")
}

/// Term of entry `index` in the logs these tests write: it grows every 50 entries.
fn term_of(index: u64) -> u64 {
    1 + index / 50
}

/// A bootstrapped node with entries 2..=last (one sync per 3 entries) all committed.
fn node_with_entries(dir: &Path, last: u64) -> FileStorage {
    node_with_log(dir, last, last)
}

/// Like [`node_with_entries`], with only entries up to `commit` committed.
fn node_with_log(dir: &Path, last: u64, commit: u64) -> FileStorage {
    let mut storage = open_small(dir);
    storage
        .bootstrap(
            NodeIdentity {
                node_id: 1,
                cluster_id: 7,
                bootstrap_id: 0,
            },
            three_voters(),
        )
        .unwrap();
    let entries: Vec<_> = (2..=last)
        .map(|i| entry(i, term_of(i), &format!("value-{i}")))
        .collect();
    for chunk in entries.chunks(3) {
        append_and_sync(&mut storage, chunk);
    }
    storage.set_hard_state(&HardState {
        term: term_of(last),
        vote: 1,
        commit,
        ..Default::default()
    });
    storage.sync().unwrap();
    storage
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

fn snapshot_meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: term_of(index),
    }
}

fn expected_contents(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64, String)> {
    range
        .map(|i| (i, term_of(i), format!("value-{i}")))
        .collect()
}

fn is_store_error(
    result: raft::Result<impl std::fmt::Debug>,
    expected: raft::StorageError,
) -> bool {
    matches!(result, Err(raft::Error::Store(actual)) if actual == expected)
}

fn four_voters() -> MembershipRecord {
    MembershipRecord {
        index: 90,
        conf_state: ConfState {
            voters: vec![1, 2, 3, 4],
            ..Default::default()
        },
        addresses: (1..=4)
            .map(|id| (id, format!("127.0.0.1:{}", 7000 + id)))
            .collect(),
        peer_addresses: Default::default(),
        max_node_id: 4,
    }
}

/// (first, last, latest snapshot, hard state) — what must survive a restart.
fn observable(
    storage: &FileStorage,
) -> (
    u64,
    u64,
    Option<(SnapshotMeta, MembershipRecord)>,
    HardState,
) {
    (
        storage.first_index().unwrap(),
        storage.last_index().unwrap(),
        storage.latest_snapshot(),
        storage.hard_state().clone(),
    )
}

#[test]
fn compaction_deletes_old_segments_and_the_log_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = node_with_entries(dir.path(), 200);
    let files_before = segment_files(dir.path());
    assert!(files_before.len() > 20, "{} segments", files_before.len());

    storage
        .record_snapshot(snapshot_meta(150), three_voters())
        .unwrap();
    let deleted = storage.compact(130).unwrap();
    let files_after = segment_files(dir.path());
    assert!(deleted > 10, "deleted {deleted}");
    // One new segment carries the new log start.
    assert_eq!(
        files_after.len() as u64,
        files_before.len() as u64 - deleted + 1
    );
    assert_eq!(storage.stats().segments, files_after.len() as u64);
    assert!(!files_after.contains(&files_before[0]));

    assert_eq!(storage.first_index().unwrap(), 131);
    assert_eq!(storage.term(130).unwrap(), term_of(130));
    assert!(is_store_error(
        storage.term(129),
        raft::StorageError::Compacted
    ));
    assert!(is_store_error(
        storage.entries(130, 132, None, GetEntriesContext::empty(false)),
        raft::StorageError::Compacted
    ));
    assert_eq!(storage.entry_cache_bytes(), 0, "reads below come from disk");
    assert_eq!(log_contents(&storage), expected_contents(131..=200));
    let stats = storage.stats();
    assert_eq!(
        (
            stats.log_start_index,
            stats.snapshot_index,
            stats.snapshot_term
        ),
        (130, 150, term_of(150))
    );
    let before_restart = observable(&storage);
    drop(storage);

    let mut storage = open_small(dir.path());
    assert_eq!(observable(&storage), before_restart);
    assert_eq!(storage.term(130).unwrap(), term_of(130));
    assert_eq!(log_contents(&storage), expected_contents(131..=200));
    assert_eq!(storage.membership(), &three_voters());

    let more: Vec<_> = (201..=230)
        .map(|i| entry(i, term_of(i), &format!("value-{i}")))
        .collect();
    for chunk in more.chunks(4) {
        append_and_sync(&mut storage, chunk);
    }
    drop(storage);
    let storage = open_small(dir.path());
    assert_eq!(storage.first_index().unwrap(), 131);
    assert_eq!(log_contents(&storage), expected_contents(131..=230));
    assert_eq!(storage.latest_snapshot(), before_restart.2);
}

#[test]
fn compaction_is_bounded_by_the_log_start_and_the_latest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = node_with_entries(dir.path(), 60);
    // No snapshot yet: only the no-op at the current start is allowed.
    assert!(matches!(
        storage.compact(10),
        Err(StorageError::InvalidRequest { .. })
    ));
    assert_eq!(storage.compact(1).unwrap(), 0);

    storage
        .record_snapshot(snapshot_meta(40), three_voters())
        .unwrap();
    assert!(matches!(
        storage.compact(41),
        Err(StorageError::InvalidRequest { .. })
    ));
    storage.compact(30).unwrap();
    assert!(matches!(
        storage.compact(29),
        Err(StorageError::InvalidRequest { .. })
    ));
    assert_eq!(storage.compact(30).unwrap(), 0);
    assert_eq!(storage.first_index().unwrap(), 31);
    storage.compact(40).unwrap();
    assert_eq!(storage.first_index().unwrap(), 41);
    assert_eq!(log_contents(&storage), expected_contents(41..=60));
}

#[test]
fn a_crash_before_the_old_segments_were_deleted_recovers_and_the_next_compaction_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let mut storage = node_with_entries(dir.path(), 120);
    storage
        .record_snapshot(snapshot_meta(100), three_voters())
        .unwrap();
    for name in segment_files(dir.path()) {
        fs::copy(dir.path().join("wal").join(&name), saved.path().join(&name)).unwrap();
    }
    let deleted = storage.compact(90).unwrap();
    assert!(deleted > 0);
    let expected = observable(&storage);
    drop(storage);

    // As if the crash came after the new log start was synced but before the unlinks.
    let mut restored = 0;
    for entry in fs::read_dir(saved.path()).unwrap() {
        let entry = entry.unwrap();
        let target = dir.path().join("wal").join(entry.file_name());
        if !target.exists() {
            fs::copy(entry.path(), target).unwrap();
            restored += 1;
        }
    }
    assert_eq!(restored, deleted);

    let mut storage = open_small(dir.path());
    assert_eq!(observable(&storage), expected);
    assert_eq!(log_contents(&storage), expected_contents(91..=120));
    let files_before = segment_files(dir.path()).len() as u64;
    let deleted_now = storage.compact(100).unwrap();
    assert!(deleted_now >= restored, "deleted {deleted_now}");
    assert!((segment_files(dir.path()).len() as u64) < files_before);
    drop(storage);
    let storage = open_small(dir.path());
    assert_eq!(storage.first_index().unwrap(), 101);
    assert_eq!(log_contents(&storage), expected_contents(101..=120));
}

#[test]
fn a_gap_before_the_oldest_segment_without_a_covering_log_start_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    drop(node_with_entries(dir.path(), 60));
    // Deleting old segments by hand (no compaction recorded the log start).
    let files = segment_files(dir.path());
    for name in &files[..3] {
        fs::remove_file(dir.path().join("wal").join(name)).unwrap();
    }
    let err = FileStorage::open(dir.path(), small_options()).unwrap_err();
    match err {
        StorageError::Corrupted { path, .. } => {
            assert_eq!(path, dir.path().join("wal").join(&files[3]))
        }
        other => panic!("expected Corrupted, got {other}"),
    }
}

#[test]
fn raft_is_offered_the_recorded_snapshot_and_the_commit_index_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = node_with_entries(dir.path(), 30);
    // The durable commit lags behind what the state machine has applied.
    storage.set_hard_state(&HardState {
        term: 1,
        vote: 1,
        commit: 12,
        ..Default::default()
    });
    storage.sync().unwrap();
    assert!(is_store_error(
        storage.snapshot(0, 2),
        raft::StorageError::SnapshotTemporarilyUnavailable
    ));
    assert_eq!(storage.latest_snapshot(), None);
    assert_eq!(
        storage.stats().snapshot_index,
        0,
        "bootstrap is not a snapshot"
    );

    storage
        .record_snapshot(snapshot_meta(20), three_voters())
        .unwrap();
    let snapshot = storage.snapshot(0, 2).unwrap();
    assert_eq!(snapshot.get_metadata().index, 20);
    assert_eq!(snapshot.get_metadata().term, term_of(20));
    assert_eq!(
        snapshot.get_metadata().get_conf_state().voters,
        vec![1, 2, 3]
    );
    assert!(snapshot.data.is_empty());
    assert_eq!(storage.snapshot(20, 2).unwrap().get_metadata().index, 20);
    assert!(is_store_error(
        storage.snapshot(21, 2),
        raft::StorageError::SnapshotTemporarilyUnavailable
    ));
    assert_eq!(storage.hard_state().commit, 20);
    assert_eq!(storage.initial_state().unwrap().hard_state.commit, 20);
    // A stale hard state cannot take the commit index below the snapshot.
    storage.set_hard_state(&HardState {
        term: 1,
        vote: 1,
        commit: 15,
        ..Default::default()
    });
    storage.sync().unwrap();
    assert_eq!(storage.hard_state().commit, 20);
    drop(storage);

    let storage = open_small(dir.path());
    assert_eq!(storage.hard_state().commit, 20);
    assert_eq!(
        storage.latest_snapshot(),
        Some((snapshot_meta(20), three_voters()))
    );
    assert_eq!(storage.snapshot(0, 2).unwrap().get_metadata().index, 20);
}

#[test]
fn record_snapshot_refuses_a_snapshot_the_log_cannot_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = node_with_entries(dir.path(), 30);
    for bad in [
        SnapshotMeta {
            index: 31,
            term: term_of(30),
        },
        SnapshotMeta { index: 20, term: 9 },
    ] {
        assert!(matches!(
            storage.record_snapshot(bad, three_voters()),
            Err(StorageError::InvalidRequest { .. })
        ));
    }
    storage
        .record_snapshot(snapshot_meta(25), three_voters())
        .unwrap();
    assert!(matches!(
        storage.record_snapshot(snapshot_meta(24), three_voters()),
        Err(StorageError::InvalidRequest { .. })
    ));
    assert_eq!(storage.latest_snapshot().unwrap().0, snapshot_meta(25));
}

#[test]
fn installing_a_snapshot_replaces_an_older_log_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = node_with_entries(dir.path(), 60);
    let installed = SnapshotMeta {
        index: 100,
        term: 5,
    };
    storage.apply_snapshot(installed, four_voters()).unwrap();

    assert_eq!(storage.first_index().unwrap(), 101);
    assert_eq!(storage.last_index().unwrap(), 100);
    assert_eq!(storage.term(100).unwrap(), 5);
    assert!(log_contents(&storage).is_empty());
    assert_eq!(storage.hard_state().commit, 100);
    assert_eq!(storage.membership(), &four_voters());
    assert_eq!(storage.latest_snapshot(), Some((installed, four_voters())));
    assert_eq!(storage.snapshot(0, 2).unwrap().get_metadata().index, 100);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "older segments are obsolete"
    );
    let expected = observable(&storage);
    drop(storage);

    let mut storage = open_small(dir.path());
    assert_eq!(observable(&storage), expected);
    assert_eq!(storage.membership(), &four_voters());
    assert_eq!(
        storage.initial_state().unwrap().conf_state.voters,
        vec![1, 2, 3, 4]
    );
    let entries: Vec<_> = (101..=110)
        .map(|i| entry(i, 5, &format!("after-{i}")))
        .collect();
    append_and_sync(&mut storage, &entries);
    drop(storage);

    let storage = open_small(dir.path());
    assert_eq!(storage.first_index().unwrap(), 101);
    let contents = log_contents(&storage);
    assert_eq!(contents.len(), 10);
    assert_eq!(contents[0], (101, 5, "after-101".to_string()));
    assert_eq!(contents[9], (110, 5, "after-110".to_string()));
}

#[test]
fn an_install_whose_old_segments_survived_a_crash_still_drops_the_old_log() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    // The old log runs past the snapshot index with uncommitted entries of a losing term.
    let mut storage = node_with_log(dir.path(), 150, 60);
    // Never below the commit index (raft refuses that too).
    assert!(matches!(
        storage.apply_snapshot(SnapshotMeta { index: 59, term: 2 }, four_voters()),
        Err(StorageError::InvalidRequest { .. })
    ));
    for name in segment_files(dir.path()) {
        fs::copy(dir.path().join("wal").join(&name), saved.path().join(&name)).unwrap();
    }
    let installed = SnapshotMeta {
        index: 100,
        term: 9,
    };
    storage.apply_snapshot(installed, four_voters()).unwrap();
    let expected = observable(&storage);
    drop(storage);
    for entry in fs::read_dir(saved.path()).unwrap() {
        let entry = entry.unwrap();
        let target = dir.path().join("wal").join(entry.file_name());
        if !target.exists() {
            fs::copy(entry.path(), target).unwrap();
        }
    }

    let storage = open_small(dir.path());
    assert_eq!(observable(&storage), expected);
    assert!(log_contents(&storage).is_empty());
    assert_eq!(storage.term(100).unwrap(), 9);
    assert_eq!(storage.membership(), &four_voters());
}

#[test]
fn a_fresh_node_is_initialized_by_an_installed_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open_small(dir.path());
    assert!(!storage.is_initialized());
    let installed = SnapshotMeta { index: 40, term: 3 };
    storage.apply_snapshot(installed, four_voters()).unwrap();
    assert!(storage.is_initialized());
    drop(storage);
    let storage = open_small(dir.path());
    assert!(storage.is_initialized());
    assert_eq!(storage.first_index().unwrap(), 41);
    assert_eq!(storage.hard_state().commit, 40);
    assert_eq!(storage.latest_snapshot(), Some((installed, four_voters())));
}

/// The snapshot the tests below install over a log of 150 entries.
const INSTALLED_OVER_OLD_LOG: SnapshotMeta = SnapshotMeta {
    index: 100,
    term: 9,
};

/// Installs a snapshot at 100 over a log of 150 entries (committed to 60) in many
/// small segments, and returns the old segments' names and bytes as they were before
/// the install, with what a restart must show.
type Installed = (
    Vec<(String, Vec<u8>)>,
    (
        u64,
        u64,
        Option<(SnapshotMeta, MembershipRecord)>,
        HardState,
    ),
);

fn install_over_many_segments(dir: &Path) -> Installed {
    let mut storage = node_with_log(dir, 150, 60);
    let old: Vec<(String, Vec<u8>)> = segment_files(dir)
        .into_iter()
        .map(|name| {
            let bytes = fs::read(dir.join("wal").join(&name)).unwrap();
            (name, bytes)
        })
        .collect();
    assert!(old.len() >= 4, "the test needs several old segments");
    storage
        .apply_snapshot(INSTALLED_OVER_OLD_LOG, four_voters())
        .unwrap();
    let expected = observable(&storage);
    (old, expected)
}

fn assert_restarts_as_installed(dir: &Path, expected: &Installed, what: &str) {
    let storage = FileStorage::open(dir, small_options())
        .unwrap_or_else(|e| panic!("{what}: the node must start, but: {e}"));
    assert_eq!(observable(&storage), expected.1, "{what}");
    assert!(log_contents(&storage).is_empty(), "{what}");
    assert_eq!(storage.term(100).unwrap(), 9, "{what}");
    assert_eq!(storage.membership(), &four_voters(), "{what}");
}

/// Old segments are deleted (oldest first) after the install is durable; a crash
/// can stop that after any number of deletions. Every such data dir must start — and
/// so must one where the newest old segments went first, or only some in the middle.
#[test]
fn a_crash_between_any_two_deletions_of_an_install_leaves_a_data_dir_that_starts() {
    let dir = tempfile::tempdir().unwrap();
    let installed = install_over_many_segments(dir.path());
    let old = &installed.0;
    let n = old.len();
    let mut leftovers: Vec<Vec<usize>> = Vec::new();
    for deleted in 0..=n {
        leftovers.push((deleted..n).collect()); // crash after `deleted`, oldest first
        leftovers.push((0..n - deleted).collect()); // newest first
    }
    leftovers.push(vec![1, 3, n - 2]);
    for left in &leftovers {
        let left: Vec<&(String, Vec<u8>)> = left.iter().map(|i| &old[*i]).collect();
        for (name, bytes) in left.iter().copied() {
            fs::write(dir.path().join("wal").join(name), bytes).unwrap();
        }
        let names: Vec<&str> = left.iter().map(|(name, _)| name.as_str()).collect();
        assert_restarts_as_installed(
            dir.path(),
            &installed,
            &format!("old segments left: {names:?}"),
        );
        // A restart with leftovers must start again too (and the next run of
        // this loop starts from the install's own segment only).
        assert_restarts_as_installed(dir.path(), &installed, "second restart");
        for (name, _) in left {
            assert!(
                !dir.path().join("wal").join(name).exists(),
                "a start deletes obsolete segments"
            );
        }
    }
}

/// An old segment that cannot be unlinked stops the deletions; the install still
/// succeeds, and the data dir with that segment (and every later one) left over
/// starts. The segment is made undeletable by putting a directory in its place
/// while the storage is open (unlink fails with EISDIR), then restored, as an
/// operator clearing `chattr +i` would.
#[test]
fn an_unlink_error_during_an_install_leaves_a_data_dir_that_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = node_with_log(dir.path(), 150, 60);
    let names = segment_files(dir.path());
    assert!(names.len() >= 4, "the test needs several old segments");
    let stuck = &names[1];
    let stuck_path = dir.path().join("wal").join(stuck);
    let saved = fs::read(&stuck_path).unwrap();
    fs::remove_file(&stuck_path).unwrap();
    fs::create_dir(&stuck_path).unwrap();
    fs::write(stuck_path.join("keep"), b"x").unwrap();
    storage
        .apply_snapshot(INSTALLED_OVER_OLD_LOG, four_voters())
        .expect("the install is durable even if a deletion fails");
    let expected = observable(&storage);
    drop(storage);
    let left: Vec<String> = segment_files(dir.path());
    assert!(
        !left.contains(&names[0]) && left.contains(&names[2]),
        "deletion (oldest first) stopped at the stuck segment: {left:?}"
    );
    fs::remove_dir_all(&stuck_path).unwrap();
    fs::write(&stuck_path, saved).unwrap();
    assert_restarts_as_installed(dir.path(), &(Vec::new(), expected), "unlink error");
}

/// An obsolete segment that still cannot be deleted when the node starts again
/// is skipped, and no later compaction deletes the segment that marks it
/// obsolete: once it can be deleted, the data dir still starts.
#[test]
fn an_obsolete_segment_stuck_across_restarts_never_outlives_its_marker() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = node_with_log(dir.path(), 150, 60);
    let names = segment_files(dir.path());
    let stuck_path = dir.path().join("wal").join(&names[1]);
    let saved = fs::read(&stuck_path).unwrap();
    fs::remove_file(&stuck_path).unwrap();
    fs::create_dir(&stuck_path).unwrap();
    fs::write(stuck_path.join("keep"), b"x").unwrap();
    storage
        .apply_snapshot(INSTALLED_OVER_OLD_LOG, four_voters())
        .unwrap();
    drop(storage);
    // Restarted with the segment still stuck; the log grows past several
    // segments and is compacted to a snapshot well past the install.
    let mut storage = open_small(dir.path());
    let entries: Vec<_> = (101..=300)
        .map(|i| entry(i, 9, &format!("after-{i}")))
        .collect();
    for chunk in entries.chunks(5) {
        append_and_sync(&mut storage, chunk);
    }
    storage.set_hard_state(&HardState {
        term: 9,
        vote: 1,
        commit: 300,
        ..Default::default()
    });
    storage.sync().unwrap();
    let snapshot = SnapshotMeta {
        index: 290,
        term: 9,
    };
    storage.record_snapshot(snapshot, four_voters()).unwrap();
    storage.compact(290).unwrap();
    let expected = observable(&storage);
    drop(storage);
    fs::remove_dir_all(&stuck_path).unwrap();
    fs::write(&stuck_path, saved).unwrap();
    let storage = open_small(dir.path());
    assert_eq!(observable(&storage), expected);
    assert_eq!(log_contents(&storage).len(), 10, "entries 291..=300");
}
