//! Startup on a damaged log: a torn tail is cut off, anything else is refused with the
//! file and offset of the bad record. The active segment is preallocated, so a crash may
//! leave the last write's pages in any order: zeros after the data are free space, a
//! damaged last batch is a torn write, damage with an intact batch after it is not.

use std::fs;
use std::path::Path;

use raft::Storage as _;
use raftkv_storage::{FileStorage, StorageError, StorageOptions};

use crate::{append_and_sync, entry, log_contents, segment_path, small_options};

/// Preallocated segments of this size: big enough for every test's log to fit in one.
const SEGMENT_BYTES: u64 = 64 * 1024;

fn options() -> StorageOptions {
    StorageOptions {
        wal_segment_size_bytes: SEGMENT_BYTES,
        ..StorageOptions::default()
    }
}

fn open(dir: &Path) -> FileStorage {
    FileStorage::open(dir, options()).expect("open storage")
}

/// Writes entries 1..=count, one sync each; returns the segment length after each sync
/// (so `ends[i]` is where entry `i + 1`'s record ends and the next one starts).
fn write_one_record_per_sync(dir: &Path, count: u64) -> Vec<u64> {
    let mut storage = open(dir);
    let mut ends = Vec::new();
    for index in 1..=count {
        append_and_sync(
            &mut storage,
            &[entry(index, 1, &format!("payload-{index}"))],
        );
        ends.push(storage.stats().disk_bytes);
    }
    assert_eq!(storage.stats().segments, 1);
    ends
}

/// Writes entries 1 and 2 one sync each, then entries 3..=6 of ~3 KiB each in one write
/// (a batch spanning several pages); returns `write_one_record_per_sync`'s ends and the
/// storage, still open.
fn write_two_records_then_a_big_batch(dir: &Path) -> (Vec<u64>, FileStorage) {
    let ends = write_one_record_per_sync(dir, 2);
    let mut storage = open(dir);
    let big = "v".repeat(3000);
    let entries: Vec<_> = (3..=6).map(|index| entry(index, 1, &big)).collect();
    append_and_sync(&mut storage, &entries);
    (ends, storage)
}

/// Writes entries 1..=20 into tiny segments: three or more of them.
fn write_several_segments(dir: &Path) {
    let mut storage = FileStorage::open(dir, small_options()).unwrap();
    for index in 1..=20 {
        append_and_sync(&mut storage, &[entry(index, 1, "some value bytes")]);
    }
    assert!(storage.stats().segments >= 3);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to.join("wal")).unwrap();
    for file in fs::read_dir(from.join("wal")).unwrap() {
        let file = file.unwrap();
        fs::copy(file.path(), to.join("wal").join(file.file_name())).unwrap();
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn expect_corrupted(dir: &Path, expected_path: &Path, expected_offset: u64) {
    let err = FileStorage::open(dir, options()).unwrap_err();
    match &err {
        StorageError::Corrupted { path, offset, .. } => {
            assert_eq!(path, expected_path);
            assert_eq!(*offset, expected_offset);
        }
        other => panic!("expected Corrupted, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&expected_path.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("offset {expected_offset}")),
        "{message}"
    );
}

#[test]
fn cutting_the_last_record_at_every_byte_keeps_exactly_the_complete_records() {
    let original = tempfile::tempdir().unwrap();
    let ends = write_one_record_per_sync(original.path(), 4);
    let (previous_end, last_end) = (ends[2], ends[3]);
    for cut in previous_end..last_end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(original.path(), dir.path());
        let segment = segment_path(dir.path(), 1);
        fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(cut)
            .unwrap();

        let mut storage = open(dir.path());
        assert_eq!(storage.last_index().unwrap(), 3, "cut at {cut}");
        assert_eq!(storage.stats().disk_bytes, previous_end, "cut at {cut}");
        append_and_sync(&mut storage, &[entry(4, 2, "after-repair")]);
        drop(storage);

        let storage = open(dir.path());
        let contents = log_contents(&storage);
        assert_eq!(contents.len(), 4, "cut at {cut}");
        assert_eq!(
            contents[3],
            (4, 2, "after-repair".to_string()),
            "cut at {cut}"
        );
    }
}

#[test]
fn the_active_segment_is_preallocated_and_its_zeros_are_free_space_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_one_record_per_sync(dir.path(), 2);
    let segment = segment_path(dir.path(), 1);
    assert_eq!(fs::metadata(&segment).unwrap().len(), SEGMENT_BYTES);
    let mut storage = open(dir.path());
    assert_eq!(storage.last_index().unwrap(), 2);
    assert_eq!(storage.stats().disk_bytes, ends[1]);
    append_and_sync(&mut storage, &[entry(3, 1, "after-reopen")]);
    drop(storage);
    let storage = open(dir.path());
    assert_eq!(log_contents(&storage).len(), 3);
    assert_eq!(log_contents(&storage)[2].2, "after-reopen");
    assert_eq!(fs::metadata(&segment).unwrap().len(), SEGMENT_BYTES);
}

#[test]
fn a_flipped_payload_byte_in_a_middle_record_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_one_record_per_sync(dir.path(), 3);
    let segment = segment_path(dir.path(), 1);
    // Entry 2's batch starts where entry 1's ends: a 16-byte frame header and 16 bytes
    // naming the batch, then the entry's 16-byte record header and its payload.
    flip_byte(&segment, ends[0] + 32 + 16 + 3);
    expect_corrupted(dir.path(), &segment, ends[0]);
}

#[test]
fn a_flipped_length_byte_in_a_middle_record_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_one_record_per_sync(dir.path(), 3);
    let segment = segment_path(dir.path(), 1);
    // The high byte of the length: the record would seem to run past end of file.
    flip_byte(&segment, ends[0] + 3);
    expect_corrupted(dir.path(), &segment, ends[0]);
}

#[test]
fn a_damaged_header_of_the_final_batch_is_a_torn_write() {
    // In a preallocated file the header's page may be the one a crash lost.
    let dir = tempfile::tempdir().unwrap();
    let ends = write_one_record_per_sync(dir.path(), 3);
    let segment = segment_path(dir.path(), 1);
    flip_byte(&segment, ends[1]);
    let storage = open(dir.path());
    assert_eq!(storage.last_index().unwrap(), 2);
    assert_eq!(storage.stats().disk_bytes, ends[1]);
}

#[test]
fn a_flipped_payload_byte_in_the_final_record_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_one_record_per_sync(dir.path(), 3);
    let segment = segment_path(dir.path(), 1);
    flip_byte(&segment, ends[2] - 1);
    let storage = open(dir.path());
    assert_eq!(storage.last_index().unwrap(), 2);
    assert_eq!(storage.stats().disk_bytes, ends[1]);
}

fn zero_bytes(path: &Path, range: std::ops::Range<u64>) {
    let mut bytes = fs::read(path).unwrap();
    bytes[range.start as usize..range.end as usize].fill(0);
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_final_batch_whose_first_page_was_lost_is_cut_with_all_of_its_later_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (ends, storage) = write_two_records_then_a_big_batch(dir.path());
    drop(storage);
    let segment = segment_path(dir.path(), 1);
    // The crash persisted the batch's later pages (intact entry records among them) but
    // not its first one.
    zero_bytes(&segment, ends[1]..4096);
    let mut storage = open(dir.path());
    assert_eq!(storage.last_index().unwrap(), 2);
    assert_eq!(storage.stats().disk_bytes, ends[1]);
    // The repair leaves no remnant behind for a later scan to trip over.
    append_and_sync(&mut storage, &[entry(3, 2, "after-repair")]);
    drop(storage);
    let storage = open(dir.path());
    let contents = log_contents(&storage);
    assert_eq!(contents.len(), 3);
    assert_eq!(contents[2], (3, 2, "after-repair".to_string()));
}

#[test]
fn an_intact_batch_after_a_hole_in_the_last_segment_is_still_read() {
    // The start-up scan skips what the file system reports as holes; data after one
    // must still be seen.
    let dir = tempfile::tempdir().unwrap();
    let (ends, mut storage) = write_two_records_then_a_big_batch(dir.path());
    append_and_sync(&mut storage, &[entry(7, 1, "after the big batch")]);
    drop(storage);
    let segment = segment_path(dir.path(), 1);
    let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    // SAFETY: plain integer arguments on an fd open for writing.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            4096,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    drop(file);
    // The big batch lost a page, yet the batch after it is intact: not a torn write.
    expect_corrupted(dir.path(), &segment, ends[1]);
}

#[test]
fn a_zeroed_middle_batch_is_corruption_not_the_end_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_one_record_per_sync(dir.path(), 3);
    let segment = segment_path(dir.path(), 1);
    // Looks like preallocated space, but an intact (acknowledged) batch follows it.
    zero_bytes(&segment, ends[0]..ends[1]);
    expect_corrupted(dir.path(), &segment, ends[0]);
}

#[test]
fn a_damaged_final_record_of_an_older_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write_several_segments(dir.path());
    let first_segment = segment_path(dir.path(), 1);
    let len = fs::metadata(&first_segment).unwrap().len();
    flip_byte(&first_segment, len - 1);
    let err = FileStorage::open(dir.path(), small_options()).unwrap_err();
    match err {
        StorageError::Corrupted { path, offset, .. } => {
            assert_eq!(path, first_segment);
            assert!(offset < len);
        }
        other => panic!("expected Corrupted, got {other}"),
    }
}

#[test]
fn a_missing_middle_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_several_segments(dir.path());
    fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let err = FileStorage::open(dir.path(), small_options()).unwrap_err();
    assert!(matches!(err, StorageError::Inconsistent { .. }), "{err}");
}

#[test]
fn a_missing_first_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = FileStorage::open(dir.path(), small_options()).unwrap();
        for index in 1..=20 {
            append_and_sync(&mut storage, &[entry(index, 1, "some value bytes")]);
        }
    }
    fs::remove_file(segment_path(dir.path(), 1)).unwrap();
    let err = FileStorage::open(dir.path(), small_options()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
}

#[test]
fn an_empty_newest_segment_left_by_a_crash_during_rollover_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_one_record_per_sync(dir.path(), 2);
    // A crash after creating segment 2 but before its header reached the disk; the
    // rollover had already cut segment 1 back to its data.
    fs::OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 1))
        .unwrap()
        .set_len(ends[1])
        .unwrap();
    fs::File::create(segment_path(dir.path(), 2)).unwrap();
    {
        let mut storage = open(dir.path());
        assert_eq!(storage.last_index().unwrap(), 2);
        append_and_sync(&mut storage, &[entry(3, 1, "into-segment-2")]);
    }
    let storage = open(dir.path());
    assert_eq!(storage.stats().segments, 2);
    assert_eq!(
        fs::metadata(segment_path(dir.path(), 1)).unwrap().len(),
        ends[1]
    );
    assert_eq!(log_contents(&storage).last().unwrap().2, "into-segment-2");
}

#[test]
fn an_emptied_older_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write_several_segments(dir.path());
    let second_segment = segment_path(dir.path(), 2);
    fs::File::create(&second_segment).unwrap();
    expect_corrupted(dir.path(), &second_segment, 0);
}

#[test]
fn zeros_after_the_data_of_an_older_segment_are_corruption() {
    // A segment stops being written only after it was cut back to its data and fsynced,
    // so zeros there are lost records, not free space.
    let dir = tempfile::tempdir().unwrap();
    write_several_segments(dir.path());
    let first_segment = segment_path(dir.path(), 1);
    let len = fs::metadata(&first_segment).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&first_segment)
        .unwrap()
        .set_len(len + 100)
        .unwrap();
    let err = FileStorage::open(dir.path(), small_options()).unwrap_err();
    match err {
        StorageError::Corrupted { path, offset, .. } => {
            assert_eq!(path, first_segment);
            assert_eq!(offset, len);
        }
        other => panic!("expected Corrupted, got {other}"),
    }
}

#[test]
fn a_final_batch_cut_short_inside_preallocated_space_is_a_torn_write() {
    // The crash persisted the batch's first pages; the rest still reads as zeros.
    let dir = tempfile::tempdir().unwrap();
    let (ends, storage) = write_two_records_then_a_big_batch(dir.path());
    let end_of_big_batch = storage.stats().disk_bytes;
    drop(storage);
    let segment = segment_path(dir.path(), 1);
    assert_eq!(fs::metadata(&segment).unwrap().len(), SEGMENT_BYTES);
    zero_bytes(&segment, 8192..end_of_big_batch);
    let storage = open(dir.path());
    assert_eq!(storage.last_index().unwrap(), 2);
    assert_eq!(storage.stats().disk_bytes, ends[1]);
}
