//! What `sync` makes durable comes back after a reopen, exactly.

use raft::eraftpb::HardState;
use raft::Storage as _;
use raftkv_storage::{FileStorage, NodeIdentity, StorageError};

use crate::{append_and_sync, entry, log_contents, open, small_options, three_voters};

#[test]
fn entries_hard_state_and_membership_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let hard_state = HardState {
        term: 2,
        vote: 3,
        commit: 2,
        ..Default::default()
    };
    {
        let mut storage = open(dir.path());
        append_and_sync(
            &mut storage,
            &[entry(1, 1, "a"), entry(2, 2, "b"), entry(3, 2, "c")],
        );
        storage.set_hard_state(&hard_state);
        storage.set_membership(three_voters());
        storage.sync().unwrap();
    }
    let storage = open(dir.path());
    assert_eq!(
        log_contents(&storage),
        vec![(1, 1, "a".into()), (2, 2, "b".into()), (3, 2, "c".into())]
    );
    assert_eq!(storage.hard_state(), &hard_state);
    assert_eq!(storage.membership(), &three_voters());
    let initial = storage.initial_state().unwrap();
    assert_eq!(initial.hard_state, hard_state);
    assert_eq!(initial.conf_state.voters, vec![1, 2, 3]);
}

#[test]
fn conflicting_suffix_overwrite_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = open(dir.path());
        append_and_sync(
            &mut storage,
            &(1..=5).map(|i| entry(i, 1, "old")).collect::<Vec<_>>(),
        );
        // A new leader overwrites 3.. with a shorter suffix of its own term.
        append_and_sync(&mut storage, &[entry(3, 2, "new3")]);
        assert_eq!(storage.last_index().unwrap(), 3);
        // Overwritten again before the sync: only the last version may survive.
        storage
            .append(&[entry(4, 2, "lost"), entry(5, 2, "lost")])
            .unwrap();
        storage.append(&[entry(4, 3, "new4")]).unwrap();
        storage.sync().unwrap();
    }
    let storage = open(dir.path());
    assert_eq!(
        log_contents(&storage),
        vec![
            (1, 1, "old".into()),
            (2, 1, "old".into()),
            (3, 2, "new3".into()),
            (4, 3, "new4".into())
        ]
    );
}

#[test]
fn entries_are_read_back_from_disk_across_segments_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=40)
        .map(|i| entry(i, 1 + i / 10, &format!("value-{i}")))
        .collect();
    {
        let mut storage = FileStorage::open(dir.path(), small_options()).unwrap();
        for chunk in entries.chunks(3) {
            append_and_sync(&mut storage, chunk);
        }
        assert!(
            storage.stats().segments >= 4,
            "stats: {:?}",
            storage.stats()
        );
    }
    let storage = FileStorage::open(dir.path(), small_options()).unwrap();
    assert_eq!(
        storage.entry_cache_bytes(),
        0,
        "with no cache every read goes to disk"
    );
    let stats = storage.stats();
    assert!(stats.segments >= 4, "stats: {stats:?}");
    assert_eq!((stats.first_index, stats.last_index), (1, 40));
    let expected: Vec<_> = entries
        .iter()
        .map(|e| (e.index, e.term, String::from_utf8(e.data.to_vec()).unwrap()))
        .collect();
    assert_eq!(log_contents(&storage), expected);
    for e in &entries {
        assert_eq!(storage.term(e.index).unwrap(), e.term);
    }
}

#[test]
fn appended_entries_are_readable_before_sync_and_durable_only_after() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = FileStorage::open(dir.path(), small_options()).unwrap();
        append_and_sync(&mut storage, &[entry(1, 1, "synced")]);
        storage.append(&[entry(2, 1, "buffered")]).unwrap();
        // Served from memory even though the cache budget is zero.
        assert_eq!(log_contents(&storage).last().unwrap().2, "buffered");
    }
    let storage = open(dir.path());
    assert_eq!(log_contents(&storage), vec![(1, 1, "synced".into())]);
}

#[test]
fn an_unchanged_hard_state_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path());
    let hard_state = HardState {
        term: 4,
        ..Default::default()
    };
    storage.set_hard_state(&hard_state);
    storage.sync().unwrap();
    let disk_bytes = storage.stats().disk_bytes;
    storage.set_hard_state(&hard_state);
    storage.sync().unwrap();
    assert_eq!(storage.stats().disk_bytes, disk_bytes);
}

#[test]
fn a_gap_or_a_non_contiguous_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path());
    append_and_sync(&mut storage, &[entry(1, 1, "a")]);
    let gap = storage.append(&[entry(3, 1, "c")]).unwrap_err();
    assert!(matches!(gap, StorageError::InvalidRequest { .. }), "{gap}");
    let holes = storage
        .append(&[entry(2, 1, "b"), entry(4, 1, "d")])
        .unwrap_err();
    assert!(
        matches!(holes, StorageError::InvalidRequest { .. }),
        "{holes}"
    );
    assert_eq!(storage.last_index().unwrap(), 1);
}

#[test]
fn bootstrap_then_reopen_presents_the_initial_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let identity = NodeIdentity {
        node_id: 2,
        cluster_id: 77,
        bootstrap_id: 0,
    };
    {
        let mut storage = open(dir.path());
        assert!(!storage.is_initialized());
        assert_eq!(storage.identity(), None);
        storage.bootstrap(identity, three_voters()).unwrap();
        assert!(matches!(
            storage.bootstrap(identity, three_voters()),
            Err(StorageError::AlreadyInitialized)
        ));
    }
    let storage = open(dir.path());
    assert!(storage.is_initialized());
    assert_eq!(storage.identity(), Some(identity));
    let initial = storage.initial_state().unwrap();
    assert_eq!(
        (
            initial.hard_state.term,
            initial.hard_state.vote,
            initial.hard_state.commit
        ),
        (1, 0, 1)
    );
    assert_eq!(initial.conf_state, three_voters().conf_state);
    assert_eq!(storage.first_index().unwrap(), 2);
    assert_eq!(storage.last_index().unwrap(), 1);
    assert_eq!(storage.term(1).unwrap(), 1);
    assert_eq!(storage.membership(), &three_voters());
}

#[test]
fn a_bootstrapped_node_appends_after_the_bootstrap_log_start_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let identity = NodeIdentity {
        node_id: 1,
        cluster_id: 5,
        bootstrap_id: 0,
    };
    {
        let mut storage = open(dir.path());
        storage.bootstrap(identity, three_voters()).unwrap();
        append_and_sync(&mut storage, &[entry(2, 2, ""), entry(3, 2, "x")]);
    }
    let storage = open(dir.path());
    assert_eq!(
        log_contents(&storage),
        vec![(2, 2, "".into()), (3, 2, "x".into())]
    );
}

#[test]
fn a_data_dir_keeps_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mine = NodeIdentity {
        node_id: 4,
        cluster_id: 9,
        bootstrap_id: 0,
    };
    open(dir.path()).set_identity(mine).unwrap();
    let mut storage = open(dir.path());
    assert_eq!(storage.identity(), Some(mine));
    assert!(
        !storage.is_initialized(),
        "a joining node waits for a snapshot"
    );
    storage.set_identity(mine).unwrap();
    let other = NodeIdentity {
        node_id: 5,
        cluster_id: 9,
        bootstrap_id: 0,
    };
    let err = storage.set_identity(other).unwrap_err();
    assert!(
        matches!(err, StorageError::IdentityMismatch { .. }),
        "{err}"
    );
}
