//! Property tests: a data dir damaged in random places — bytes flipped in a
//! WAL segment or a snapshot file, files cut short — is opened or refused,
//! never a panic, and damage is never taken for data. `PROPTEST_CASES=N`
//! runs more cases than the bounded default (the long mode).

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use raft::{GetEntriesContext, Storage as _};
use raftkv_storage::{FileStorage, SnapshotMeta, SnapshotStore};

use crate::{append_and_sync, entry, small_options};

/// Cases per property: PROPTEST_CASES, else `default` (each case writes
/// and reopens files).
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Damage: (position as a fraction of the file, byte to xor in), and an
/// optional cut (fraction of the file kept).
fn damage() -> impl Strategy<Value = (Vec<(f64, u8)>, Option<f64>)> {
    (
        proptest::collection::vec((0.0..1.0f64, 1..=255u8), 0..6),
        proptest::option::of(0.0..1.0f64),
    )
}

fn damage_file(path: &Path, flips: &[(f64, u8)], cut: Option<f64>) {
    let mut bytes = fs::read(path).unwrap();
    for (at, xor) in flips {
        if !bytes.is_empty() {
            let i = ((bytes.len() as f64) * at) as usize % bytes.len();
            bytes[i] ^= xor;
        }
    }
    if let Some(kept) = cut {
        bytes.truncate((bytes.len() as f64 * kept) as usize);
    }
    fs::write(path, bytes).unwrap();
}

fn wal_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn a_damaged_wal_is_repaired_or_refused_never_misread(
        which in 0..8usize,
        (flips, cut) in damage(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = FileStorage::open(dir.path(), small_options()).unwrap();
            for index in 1..=12 {
                append_and_sync(&mut storage, &[entry(index, 1, &format!("value-{index}"))]);
            }
        }
        let files = wal_files(dir.path());
        damage_file(&files[which % files.len()], &flips, cut);
        // Opened (a torn tail cut off) or refused: never a panic, and what
        // it serves is what was written.
        if let Ok(storage) = FileStorage::open(dir.path(), small_options()) {
            let first = storage.first_index().unwrap();
            let last = storage.last_index().unwrap();
            if let Ok(entries) = storage.entries(first, last + 1, None, GetEntriesContext::empty(false)) {
                for e in entries {
                    prop_assert_eq!(e.term, 1);
                    prop_assert_eq!(e.data.to_vec(), format!("value-{}", e.index).into_bytes());
                }
            }
        }
    }

    #[test]
    fn a_damaged_snapshot_file_is_refused_never_misread(
        (flips, cut) in damage(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..20u32).map(|i| i.to_le_bytes().repeat(50)).collect();
        let mut writer = store.create(SnapshotMeta { index: 7, term: 2 }).unwrap();
        for payload in &payloads {
            writer.write_record(payload).unwrap();
        }
        let info = writer.finish().unwrap();
        let path = fs::read_dir(dir.path().join(raftkv_storage::SNAPSHOT_DIR_NAME))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "snap"))
            .unwrap();
        let intact = flips.is_empty() && cut.is_none_or(|kept| kept >= 1.0);
        damage_file(&path, &flips, cut);
        let read = store.open_reader(&info).and_then(|mut reader| {
            let mut got = Vec::new();
            while let Some(payload) = reader.next_record()? {
                got.push(payload.to_vec());
            }
            Ok(got)
        });
        match read {
            Ok(got) => prop_assert_eq!(got, payloads, "damage was read as data"),
            Err(_) => prop_assert!(!intact, "an intact file was refused"),
        }
    }
}
