//! Acceptance: corruption on disk (issue 4, docs/REFERENCE.md §5).
//!
//! - One flipped byte inside a `.snap` file of a stopped node: it refuses to
//!   start (exits non-zero) with an error naming the file.
//! - One flipped byte inside a non-final record of the log (the middle of the
//!   first of several `.wal` segments): same, naming the `.wal` file.
//! - A torn final record (the newest segment's last bytes cut off) is repaired
//!   silently: the node starts, serves, and has everything before that record.

mod common;

use std::fs::OpenOptions;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_testkit::{FailedStart, TestCluster};

use common::bin;
use common::storage::{file_name, flip_byte, snap_files, take_snapshot, wal_files};

/// How long a node with a corrupted file may take to give up.
const REFUSE_WITHIN: Duration = Duration::from_secs(15);

/// Sequential puts `PREFIX000`, ... of `value_len`-byte values; returns them.
async fn put_keys(
    cluster: &TestCluster,
    prefix: &str,
    count: usize,
    value_len: usize,
) -> Vec<(Bytes, Bytes)> {
    let client = cluster.client();
    let started = Instant::now();
    let mut written = Vec::new();
    for i in 0..count {
        let key = Bytes::from(format!("{prefix}{i:03}"));
        let mut value = format!("{prefix}{i:03}=").into_bytes();
        value.resize(value_len.max(value.len()), b'0' + (i % 10) as u8);
        let value = Bytes::from(value);
        client
            .put(key.clone(), value.clone())
            .await
            .unwrap_or_else(|e| cluster.fail(&format!("put {key:?}: {e}")));
        written.push((key, value));
    }
    eprintln!(
        "{count} puts of {value_len} bytes in {:?}",
        started.elapsed()
    );
    written
}

/// Asserts the node refused to start, exiting non-zero with a log that names
/// `file_name`.
#[track_caller]
fn assert_refused_naming(cluster: &TestCluster, outcome: &FailedStart, file_name: &str) {
    eprintln!(
        "start with a corrupted {file_name}: exited={} code={:?} after {:?}; log:\n{}",
        outcome.exited, outcome.code, outcome.elapsed, outcome.log
    );
    if !outcome.exited {
        cluster.fail(&format!(
            "node with a corrupted {file_name} was still running after {REFUSE_WITHIN:?}; \
             it must refuse to start"
        ));
    }
    assert!(
        outcome.code.is_some_and(|c| c != 0),
        "node with a corrupted {file_name} must exit non-zero, got {:?}\n{}",
        outcome.code,
        outcome.log
    );
    assert!(
        outcome.log.contains(file_name),
        "the error names the corrupted file {file_name}; log of the failed start:\n{}",
        outcome.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_snapshot_file_refuses_to_start_naming_the_file() {
    let mut cluster = TestCluster::start(bin(), 1);
    put_keys(&cluster, "cs/", 300, 200).await;
    let snapshot_index = take_snapshot(&cluster, 1);
    assert!(
        snapshot_index >= 300,
        "snapshot covers the puts: {snapshot_index}"
    );
    cluster.kill(1);

    let snaps = snap_files(&cluster, 1);
    let newest = snaps
        .last()
        .unwrap_or_else(|| cluster.fail("no .snap file after debug snapshot"))
        .clone();
    let length = std::fs::metadata(&newest).unwrap().len();
    assert!(
        length > 300 * 200,
        "snapshot holds the values: {length} bytes"
    );
    flip_byte(&newest, length / 2);

    let outcome = cluster.start_expecting_failure(1, REFUSE_WITHIN);
    assert_refused_naming(&cluster, &outcome, &file_name(&newest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_non_final_log_record_refuses_to_start_naming_the_file() {
    // No snapshot (default --snapshot-entries 10000): the whole log is needed.
    let mut cluster = TestCluster::start_with(bin(), 1, &["--wal-segment-size", "1MiB"]);
    // ~3.2 MB of entries: at least three 1 MiB segments.
    put_keys(&cluster, "cw/", 200, 16 * 1024).await;
    cluster.kill(1);

    let wals = wal_files(&cluster, 1);
    assert!(
        wals.len() >= 3,
        "3.2 MB of log in 1 MiB segments, found {wals:?}"
    );
    assert!(
        snap_files(&cluster, 1).is_empty(),
        "no snapshot was taken, so the log holds everything"
    );
    // The middle of the first segment: inside a record that many follow.
    let first = wals[0].clone();
    let length = std::fs::metadata(&first).unwrap().len();
    flip_byte(&first, length / 2);

    let outcome = cluster.start_expecting_failure(1, REFUSE_WITHIN);
    assert_refused_naming(&cluster, &outcome, &file_name(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_final_log_record_is_repaired_silently() {
    let mut cluster = TestCluster::start_with(bin(), 1, &["--wal-segment-size", "1MiB"]);
    let written = put_keys(&cluster, "ct/", 100, 200).await;
    cluster.kill(1);

    let wals = wal_files(&cluster, 1);
    let newest = wals
        .last()
        .unwrap_or_else(|| cluster.fail("no .wal file"))
        .clone();
    // The segment is preallocated: its data ends at its last non-zero byte (or
    // a few zero bytes before that, which only makes the cut deeper).
    let bytes = std::fs::read(&newest).unwrap();
    let length = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |at| at + 1) as u64;
    assert!(
        length > 16,
        "newest segment {newest:?} has {length} bytes of data"
    );
    // Cut the last 5 bytes of data: the final record is now torn (as by a
    // crash in the middle of writing it).
    OpenOptions::new()
        .write(true)
        .open(&newest)
        .and_then(|f| f.set_len(length - 5))
        .unwrap_or_else(|e| panic!("truncate {newest:?}: {e}"));
    eprintln!(
        "truncated {newest:?} from {length} bytes of data to {}",
        length - 5
    );

    // Panics (with the log) if the node exits at start.
    cluster.restart(1);
    cluster.leader();
    let client = cluster.client();
    // Everything before the torn record is intact. The last put may or may
    // not have been in the torn record (the final record may also be raft
    // metadata), so it may be missing, but not wrong.
    let (last_key, last_value) = written.last().unwrap().clone();
    for (key, value) in &written[..written.len() - 1] {
        let got = client
            .get(key.clone())
            .await
            .unwrap_or_else(|e| cluster.fail(&format!("get {key:?} after torn tail: {e}")));
        assert_eq!(
            &got, value,
            "value of {key:?} after the torn tail was repaired"
        );
    }
    match client.get(last_key.clone()).await {
        Ok(got) => assert_eq!(got, last_value, "the last put, if kept, is intact"),
        Err(raftkv_client::Error::KeyNotFound) => {
            eprintln!("the last put ({last_key:?}) was in the torn record")
        }
        Err(e) => cluster.fail(&format!("get {last_key:?}: {e}")),
    }
    // And it serves writes.
    client
        .put("ct/after", "repaired")
        .await
        .unwrap_or_else(|e| cluster.fail(&format!("put after repair: {e}")));
    assert_eq!(client.get("ct/after").await.unwrap(), "repaired".as_bytes());
}
