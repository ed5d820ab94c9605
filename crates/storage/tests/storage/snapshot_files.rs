//! `SnapshotStore`: what a writer puts in comes back out exactly, any damage is refused
//! with the file's name, and a snapshot copied to a peer chunk by chunk arrives intact or
//! not at all.

use std::fs;
use std::path::Path;

use raftkv_storage::{read_chunk_at, SnapshotInfo, SnapshotMeta, SnapshotStore, StorageError};

const CHUNK_BYTES: usize = 1024 * 1024;

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index, term }
}

fn write_snapshot(store: &SnapshotStore, meta: SnapshotMeta, payloads: &[Vec<u8>]) -> SnapshotInfo {
    let mut writer = store.create(meta).unwrap();
    for payload in payloads {
        writer.write_record(payload).unwrap();
    }
    writer.finish().unwrap()
}

fn read_all(store: &SnapshotStore, info: &SnapshotInfo) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut reader = store.open_reader(info)?;
    assert_eq!(reader.meta(), info.meta);
    let mut payloads = Vec::new();
    while let Some(payload) = reader.next_record()? {
        payloads.push(payload.to_vec());
    }
    Ok(payloads)
}

/// A 5 MiB payload whose bytes differ from position to position.
fn big_payload() -> Vec<u8> {
    (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn assert_corrupted_naming(err: StorageError, path: &Path, context: &str) {
    match &err {
        StorageError::Corrupted { path: bad, .. } => assert_eq!(bad, path, "{context}"),
        other => panic!("{context}: expected Corrupted, got {other}"),
    }
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{context}: {err}"
    );
}

/// Copies `info`'s file into `to` the way a transfer does: raw chunks, then finish.
fn transfer(
    from: &SnapshotInfo,
    to: &SnapshotStore,
    damage: impl Fn(u64, &mut Vec<u8>),
) -> Result<SnapshotInfo, StorageError> {
    let mut receiver = to.receive(from.meta, from.size_bytes).unwrap();
    let mut offset = 0u64;
    loop {
        let mut chunk = read_chunk_at(from, offset, CHUNK_BYTES).unwrap().to_vec();
        if chunk.is_empty() {
            break;
        }
        damage(offset, &mut chunk);
        receiver.write_chunk(&chunk).unwrap();
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, from.size_bytes);
    receiver.finish()
}

#[test]
fn payloads_come_back_exactly_including_empty_and_large_ones() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    let payloads = vec![
        b"first".to_vec(),
        Vec::new(),
        big_payload(),
        b"last".to_vec(),
    ];
    let info = write_snapshot(&store, meta(42, 3), &payloads);

    assert_eq!(info.meta, meta(42, 3));
    assert_eq!(
        info.path,
        data_dir
            .path()
            .join("snap")
            .join("0000000000000003-000000000000002a.snap")
    );
    assert_eq!(info.size_bytes, fs::metadata(&info.path).unwrap().len());
    assert_eq!(store.list().unwrap(), vec![info.clone()]);
    assert_eq!(store.find(meta(42, 3)).unwrap(), Some(info.clone()));
    assert_eq!(store.find(meta(42, 4)).unwrap(), None);
    assert_eq!(read_all(&store, &info).unwrap(), payloads);
    store.verify(&info).unwrap();
    // Only the finished file is left.
    assert_eq!(
        file_names(store.dir()),
        vec!["0000000000000003-000000000000002a.snap"]
    );
}

#[test]
fn a_snapshot_without_records_reads_back_empty() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    let info = write_snapshot(&store, meta(1, 1), &[]);
    assert!(read_all(&store, &info).unwrap().is_empty());
    store.verify(&info).unwrap();
}

#[test]
fn flipping_any_byte_is_detected_by_verify_and_by_the_reader() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    let info = write_snapshot(
        &store,
        meta(9, 2),
        &[b"alpha".to_vec(), Vec::new(), b"gamma-gamma".to_vec()],
    );
    let original = fs::read(&info.path).unwrap();
    // Every byte: the header record, each data record and the trailer.
    for offset in 0..original.len() {
        let mut damaged = original.clone();
        damaged[offset] ^= 0x01;
        fs::write(&info.path, &damaged).unwrap();
        let context = format!("byte {offset} of {}", original.len());
        assert_corrupted_naming(store.verify(&info).unwrap_err(), &info.path, &context);
        assert_corrupted_naming(read_all(&store, &info).unwrap_err(), &info.path, &context);
    }
    fs::write(&info.path, &original).unwrap();
    store.verify(&info).unwrap();
}

#[test]
fn a_truncated_or_extended_file_is_corrupted() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    let info = write_snapshot(&store, meta(9, 2), &[b"alpha".to_vec(), b"beta".to_vec()]);
    let original = fs::read(&info.path).unwrap();
    for len in 0..original.len() {
        fs::write(&info.path, &original[..len]).unwrap();
        let context = format!("cut to {len} of {} bytes", original.len());
        assert_corrupted_naming(store.verify(&info).unwrap_err(), &info.path, &context);
    }
    let mut extended = original.clone();
    extended.extend_from_slice(&[0u8; 7]);
    fs::write(&info.path, &extended).unwrap();
    assert_corrupted_naming(
        store.verify(&info).unwrap_err(),
        &info.path,
        "7 bytes appended",
    );
}

#[test]
fn a_file_under_another_snapshots_name_is_refused() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    let info = write_snapshot(&store, meta(9, 2), &[b"alpha".to_vec()]);
    let renamed = store.dir().join(meta(10, 2).file_name());
    fs::rename(&info.path, &renamed).unwrap();
    let renamed_info = store.find(meta(10, 2)).unwrap().unwrap();
    assert_corrupted_naming(
        store.verify(&renamed_info).unwrap_err(),
        &renamed,
        "renamed",
    );
}

#[test]
fn a_snapshot_copied_in_chunks_arrives_verified_and_reads_the_same() {
    let sender_dir = tempfile::tempdir().unwrap();
    let receiver_dir = tempfile::tempdir().unwrap();
    let sender = SnapshotStore::open(sender_dir.path()).unwrap();
    let receiver = SnapshotStore::open(receiver_dir.path()).unwrap();
    let payloads = vec![big_payload(), b"tail".to_vec(), big_payload()];
    let sent = write_snapshot(&sender, meta(500, 7), &payloads);
    assert!(sent.size_bytes > 3 * CHUNK_BYTES as u64);

    let received = transfer(&sent, &receiver, |_, _| {}).unwrap();
    assert_eq!(received.meta, sent.meta);
    assert_eq!(received.size_bytes, sent.size_bytes);
    assert_eq!(receiver.list().unwrap(), vec![received.clone()]);
    assert_eq!(read_all(&receiver, &received).unwrap(), payloads);
    assert_eq!(file_names(receiver.dir()), vec![sent.meta.file_name()]);
}

#[test]
fn a_damaged_transfer_fails_at_finish_and_leaves_no_file() {
    let sender_dir = tempfile::tempdir().unwrap();
    let receiver_dir = tempfile::tempdir().unwrap();
    let sender = SnapshotStore::open(sender_dir.path()).unwrap();
    let receiver = SnapshotStore::open(receiver_dir.path()).unwrap();
    let sent = write_snapshot(&sender, meta(500, 7), &[big_payload(), b"tail".to_vec()]);

    // One byte flipped in the middle of the second chunk.
    let err = transfer(&sent, &receiver, |offset, chunk| {
        if offset == CHUNK_BYTES as u64 {
            chunk[1234] ^= 0x80;
        }
    })
    .unwrap_err();
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
    assert!(file_names(receiver.dir()).is_empty());
    assert!(receiver.list().unwrap().is_empty());
    assert_eq!(receiver.find(sent.meta).unwrap(), None);

    // The transfer can start over and succeed.
    transfer(&sent, &receiver, |_, _| {}).unwrap();
    assert_eq!(receiver.list().unwrap().len(), 1);
}

#[test]
fn a_short_or_mislabelled_or_abandoned_transfer_leaves_no_file() {
    let sender_dir = tempfile::tempdir().unwrap();
    let receiver_dir = tempfile::tempdir().unwrap();
    let sender = SnapshotStore::open(sender_dir.path()).unwrap();
    let receiver = SnapshotStore::open(receiver_dir.path()).unwrap();
    let sent = write_snapshot(&sender, meta(8, 2), &[b"abc".to_vec(), b"def".to_vec()]);
    let bytes = fs::read(&sent.path).unwrap();

    // Stops one byte short.
    let mut short = receiver.receive(sent.meta, sent.size_bytes).unwrap();
    short.write_chunk(&bytes[..bytes.len() - 1]).unwrap();
    assert!(short.finish().is_err());
    assert!(file_names(receiver.dir()).is_empty());

    // More bytes than announced are refused.
    let mut long = receiver.receive(sent.meta, sent.size_bytes).unwrap();
    long.write_chunk(&bytes).unwrap();
    assert!(long.write_chunk(b"x").is_err());
    drop(long);
    assert!(file_names(receiver.dir()).is_empty());

    // The bytes of snapshot (8, 2) offered as (9, 2).
    let mut mislabelled = receiver.receive(meta(9, 2), sent.size_bytes).unwrap();
    mislabelled.write_chunk(&bytes).unwrap();
    assert!(matches!(
        mislabelled.finish().unwrap_err(),
        StorageError::Corrupted { .. }
    ));
    assert!(file_names(receiver.dir()).is_empty());

    // Abandoned halfway.
    let mut abandoned = receiver.receive(sent.meta, sent.size_bytes).unwrap();
    abandoned.write_chunk(&bytes[..10]).unwrap();
    drop(abandoned);
    assert!(file_names(receiver.dir()).is_empty());
}

#[test]
fn retain_newest_keeps_the_highest_indexes() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    for (index, term) in [(30, 2), (10, 1), (40, 3), (20, 2)] {
        write_snapshot(
            &store,
            meta(index, term),
            &[format!("at {index}").into_bytes()],
        );
    }
    let listed: Vec<u64> = store.list().unwrap().iter().map(|i| i.meta.index).collect();
    assert_eq!(listed, vec![10, 20, 30, 40]);

    assert_eq!(store.retain_newest(2).unwrap(), 2);
    let kept = store.list().unwrap();
    assert_eq!(
        kept.iter().map(|i| i.meta).collect::<Vec<_>>(),
        vec![meta(30, 2), meta(40, 3)]
    );
    assert_eq!(read_all(&store, &kept[1]).unwrap(), vec![b"at 40".to_vec()]);
    assert_eq!(store.retain_newest(2).unwrap(), 0);
}

#[test]
fn unfinished_files_are_removed_by_drop_and_by_open() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    let mut writer = store.create(meta(5, 1)).unwrap();
    writer.write_record(b"half").unwrap();
    assert_eq!(
        file_names(store.dir()),
        vec!["0000000000000001-0000000000000005.snap.tmp"]
    );
    drop(writer);
    assert!(file_names(store.dir()).is_empty());

    // Leftovers of a crash: a half-written snapshot and a half-received one.
    let kept = write_snapshot(&store, meta(3, 1), &[b"complete".to_vec()]);
    fs::write(
        store
            .dir()
            .join("0000000000000001-0000000000000005.snap.tmp"),
        b"junk",
    )
    .unwrap();
    fs::write(
        store
            .dir()
            .join("0000000000000002-0000000000000009.snap.partial"),
        b"junk",
    )
    .unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    assert_eq!(file_names(store.dir()), vec![kept.meta.file_name()]);
    assert_eq!(store.list().unwrap(), vec![kept]);
}

#[test]
fn read_chunk_at_returns_the_file_bytes_and_refuses_offsets_past_the_end() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(data_dir.path()).unwrap();
    let info = write_snapshot(&store, meta(3, 1), &[b"0123456789".to_vec()]);
    let bytes = fs::read(&info.path).unwrap();
    assert_eq!(read_chunk_at(&info, 0, 5).unwrap().as_ref(), &bytes[..5]);
    assert_eq!(
        read_chunk_at(&info, 5, 1 << 20).unwrap().as_ref(),
        &bytes[5..]
    );
    assert!(read_chunk_at(&info, info.size_bytes, 5).unwrap().is_empty());
    assert!(read_chunk_at(&info, info.size_bytes + 1, 5).is_err());
}
