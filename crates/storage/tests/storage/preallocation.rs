//! Preallocated WAL segments: the log moves into a prepared file of zeros as
//! soon as one is ready, appends go over the zeros, the finished segment is
//! trimmed to its records, and everything survives reopening.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use raft::Storage as _;
use raftkv_storage::{FileStorage, StorageOptions};

use crate::{append_and_sync, entry, log_contents, segment_path};

const SEGMENT_BYTES: u64 = 64 * 1024;

fn options() -> StorageOptions {
    StorageOptions {
        wal_segment_size_bytes: SEGMENT_BYTES,
        entry_cache_bytes: 0,
        preallocate_segments: true,
    }
}

fn wait_for_prepared_file(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("wal/next-segment.zeros").exists() {
        assert!(Instant::now() < deadline, "no prepared segment after 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_log_moves_into_prepared_segments_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let value = "v".repeat(1000);
    let mut storage = FileStorage::open(dir.path(), options()).unwrap();
    // A fresh log's first segment would grow with each append; the first
    // write after a prepared file is ready goes to a new, preallocated one.
    wait_for_prepared_file(dir.path());
    append_and_sync(&mut storage, &[entry(1, 1, &value)]);
    append_and_sync(&mut storage, &[entry(2, 1, &value)]);
    assert_eq!(storage.stats().segments, 2);
    let first_len = fs::metadata(segment_path(dir.path(), 1)).unwrap().len();
    assert!(
        first_len < 1000,
        "segment 1 holds only its header: {first_len} bytes"
    );
    assert_eq!(
        fs::metadata(segment_path(dir.path(), 2)).unwrap().len(),
        SEGMENT_BYTES,
        "segment 2 is the prepared file"
    );
    // Fill segment 2 past its end (the next one is prepared meanwhile).
    let mut index = 3;
    while storage.stats().segments < 3 {
        append_and_sync(&mut storage, &[entry(index, 1, &value)]);
        index += 1;
        assert!(index < 1000, "no rollover");
    }
    let second_len = fs::metadata(segment_path(dir.path(), 2)).unwrap().len();
    let mut seg2 = fs::read(segment_path(dir.path(), 2)).unwrap();
    assert!(second_len >= SEGMENT_BYTES, "full: {second_len}");
    assert_ne!(
        seg2.pop(),
        Some(0),
        "a finished segment ends in a record, not zeros"
    );
    drop(storage);

    let storage = FileStorage::open(dir.path(), options()).unwrap();
    let contents = log_contents(&storage);
    assert_eq!(contents.len() as u64, index - 1);
    assert!(contents.iter().all(|(_, _, data)| *data == value));
    assert_eq!(storage.last_index().unwrap(), index - 1);
}

#[test]
fn a_restart_inside_a_preallocated_segment_keeps_appending_into_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = FileStorage::open(dir.path(), options()).unwrap();
        wait_for_prepared_file(dir.path());
        append_and_sync(&mut storage, &[entry(1, 1, "one")]);
        append_and_sync(&mut storage, &[entry(2, 1, "two")]);
        assert_eq!(storage.stats().segments, 2);
    }
    {
        let mut storage = FileStorage::open(dir.path(), options()).unwrap();
        assert_eq!(storage.last_index().unwrap(), 2);
        append_and_sync(&mut storage, &[entry(3, 1, "three")]);
        assert_eq!(storage.stats().segments, 2, "no new segment needed");
        assert_eq!(
            fs::metadata(segment_path(dir.path(), 2)).unwrap().len(),
            SEGMENT_BYTES
        );
    }
    let storage = FileStorage::open(dir.path(), options()).unwrap();
    let data: Vec<String> = log_contents(&storage).into_iter().map(|e| e.2).collect();
    assert_eq!(data, ["one", "two", "three"]);
}
