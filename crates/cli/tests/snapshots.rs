//! Acceptance: snapshots and log compaction (issue 4).
//!
//! - 50,000 puts overwriting 1,000 keys on a 3-node cluster with
//!   `--snapshot-entries 1000 --wal-segment-size 1MiB`: snapshots are taken
//!   (at most two `.snap` files kept per node), old `.wal` segments are deleted
//!   (counted on disk), `debug compact` compacts up to the snapshot, and after
//!   `kill -9` of every node and a restart every key holds its last
//!   acknowledged value.
//! - A follower stopped before the writes and restarted after the leader
//!   compacted its log catches up by snapshot install and then by log; every
//!   node then reports the same state hash at the same applied index
//!   (`debug check`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_client::Consistency;
use raftkv_testkit::TestCluster;

use common::storage::{
    assert_same_hash_when_idle, compact, file_name, overwrite_keys, snap_files, storage,
    take_snapshot, total_bytes, wal_files, StorageInfo,
};
use common::{bin, scan_all};

const SNAPSHOT_FLAGS: &[&str] = &["--snapshot-entries", "1000", "--wal-segment-size", "1MiB"];
const SEGMENT_BYTES: u64 = 1024 * 1024;
const KEYS: usize = 1000;
const VALUE_LEN: usize = 200;
/// Concurrent applications writing (each owns 1/CLIENTS of the keys).
const CLIENTS: usize = 32;
/// The 50,000 entries: about 25 s in a debug build on 2 cores
/// (~2,000 puts/s with 32 clients).
const PUTS: usize = 50_000;
/// Entries the follower misses in the catch-up test: ~5 MB of log, enough
/// for several automatic snapshots and segment rolls.
const CATCH_UP_PUTS: usize = 20_000;
const LOAD_DEADLINE: Duration = Duration::from_secs(240);
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);

/// Waits (bounded) until node `id` has a snapshot within a few snapshot
/// intervals of `applied` (snapshots are written in the background).
fn wait_for_snapshot(cluster: &TestCluster, id: u64, applied: u64) -> StorageInfo {
    let started = Instant::now();
    loop {
        let info = storage(cluster, id);
        if info.snapshot_index >= 1000 && info.snapshot_index + 3000 >= applied {
            return info;
        }
        if started.elapsed() > Duration::from_secs(30) {
            cluster.fail(&format!(
                "node {id} has no recent snapshot 30 s after applying {applied}: {info:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks one node's storage after the load, before any manual compaction.
fn check_compacted_on_disk(cluster: &TestCluster, id: u64, applied: u64, payload_bytes: u64) {
    let info = wait_for_snapshot(cluster, id, applied);
    let snaps = snap_files(cluster, id);
    let wals = wal_files(cluster, id);
    let wal_bytes = total_bytes(&wals);
    eprintln!(
        "node {id}: {info:?}; on disk {} .snap file(s) {:?}, {} .wal file(s) of {wal_bytes} bytes",
        snaps.len(),
        snaps.iter().map(|p| file_name(p)).collect::<Vec<_>>(),
        wals.len()
    );
    assert!(
        (1..=2).contains(&snaps.len()),
        "node {id}: 1 or 2 .snap files (newest two kept), found {snaps:?}"
    );
    assert!(
        info.snapshot_bytes > 0,
        "node {id}: snapshot_bytes > 0: {info:?}"
    );
    assert!(
        info.first_index > 1,
        "node {id}: the log was compacted (first_index > 1): {info:?}"
    );
    assert!(
        info.first_index <= info.snapshot_index + 1,
        "node {id}: no gap between snapshot and log: {info:?}"
    );
    assert!(
        info.last_index >= applied,
        "node {id}: last_index {} < applied {applied}",
        info.last_index
    );
    assert_eq!(
        info.segments,
        wals.len() as u64,
        "node {id}: debug storage `segments` equals the .wal files on disk"
    );
    // Without compaction the log would need at least this many segments.
    let needed_without_compaction = payload_bytes / SEGMENT_BYTES;
    // Kept: <= 5000 entries below the snapshot + <= ~1000 above it, each
    // ~250 bytes: about 1.5 MB, i.e. at most a few 1 MiB segments.
    assert!(
        (wals.len() as u64) < needed_without_compaction && wals.len() <= 5,
        "node {id}: old segments deleted: {} .wal files on disk, the writes alone \
         need {needed_without_compaction}",
        wals.len()
    );
    assert!(
        wal_bytes < payload_bytes / 2,
        "node {id}: {wal_bytes} bytes of .wal on disk for {payload_bytes} bytes written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_compaction_bound_the_log_and_data_survives_full_restart() {
    let mut cluster = TestCluster::start_with(bin(), 3, SNAPSHOT_FLAGS);
    let load = overwrite_keys(
        &cluster,
        "sn/",
        KEYS,
        PUTS,
        CLIENTS,
        VALUE_LEN,
        LOAD_DEADLINE,
    )
    .await;
    assert_eq!(load.last_acked.len(), KEYS);
    let applied = cluster.wait_caught_up(Duration::from_secs(60));
    assert!(applied >= PUTS as u64, "applied {applied} < {PUTS} puts");

    for id in cluster.ids() {
        check_compacted_on_disk(&cluster, id, applied, load.payload_bytes);
    }

    // `debug compact` compacts right up to the latest snapshot.
    for id in cluster.ids() {
        let before = storage(&cluster, id);
        let wals_before = wal_files(&cluster, id);
        let (first_index, removed) = compact(&cluster, id);
        let after = storage(&cluster, id);
        let wals_after = wal_files(&cluster, id);
        // Compaction may also open a fresh segment, so count the files that
        // disappeared rather than compare totals.
        let gone: Vec<String> = wals_before
            .iter()
            .filter(|p| !wals_after.contains(p))
            .map(|p| file_name(p))
            .collect();
        eprintln!(
            "node {id}: compact: {} -> {} .wal files ({gone:?} deleted); \
             storage before {before:?}, after {after:?}",
            wals_before.len(),
            wals_after.len()
        );
        assert_eq!(
            first_index, after.first_index,
            "node {id}: compact's first_index is what debug storage reports"
        );
        assert_eq!(
            after.first_index,
            after.snapshot_index + 1,
            "node {id}: after debug compact the log starts right after the snapshot"
        );
        assert!(
            after.first_index >= before.first_index,
            "node {id}: compaction never moves first_index back"
        );
        assert_eq!(
            removed,
            gone.len() as u64,
            "node {id}: segments_removed equals the .wal files that disappeared"
        );
        assert!(
            after.disk_bytes <= before.disk_bytes,
            "node {id}: compaction does not grow the log on disk"
        );
        assert_eq!(after.segments, wals_after.len() as u64);
    }

    // kill -9 every node; restart; every key's last acknowledged value is there.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    let restarted = Instant::now();
    for id in cluster.ids() {
        cluster.restart(id);
    }
    let leader = cluster.leader();
    eprintln!(
        "after full restart: leader {leader} in {:?}",
        restarted.elapsed()
    );
    let state = scan_all(&cluster.client(), "sn/", Consistency::Linearizable).await;
    assert_state_equals(
        &state,
        &load.last_acked,
        "linearizable scan after full restart",
    );
    cluster.wait_caught_up(Duration::from_secs(60));
    for id in cluster.ids() {
        let node_state = scan_all(&cluster.client_at(id), "sn/", Consistency::Stale).await;
        assert_state_equals(
            &node_state,
            &load.last_acked,
            &format!("node {id}'s stale scan after full restart"),
        );
        let info = storage(&cluster, id);
        eprintln!("node {id} after restart: {info:?}");
        assert!(
            info.snapshot_index >= 1000,
            "node {id} recovered from its snapshot: {info:?}"
        );
        assert!(info.first_index > 1, "node {id}: {info:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_compacted_log_catches_up_by_snapshot_then_log() {
    let mut cluster = TestCluster::start_with(bin(), 3, SNAPSHOT_FLAGS);
    let leader = cluster.leader();
    let lagging = cluster.followers()[0];
    let lagging_applied = cluster
        .status(lagging)
        .unwrap_or_else(|e| cluster.fail(&e))
        .applied_index;
    cluster.kill(lagging);
    eprintln!("leader {leader}; stopped follower {lagging} at applied index {lagging_applied}");

    let load = overwrite_keys(
        &cluster,
        "cu/",
        KEYS,
        CATCH_UP_PUTS,
        CLIENTS,
        VALUE_LEN,
        LOAD_DEADLINE,
    )
    .await;
    let applied = cluster.wait_caught_up(Duration::from_secs(60));

    // Snapshot at the newest applied index and compact up to it on every
    // live node, so that whichever leads has dropped the follower's next entry.
    let mut compacted_to = u64::MAX;
    for id in cluster.live_ids() {
        let snapshot_index = take_snapshot(&cluster, id);
        assert!(
            snapshot_index >= applied,
            "node {id}: debug snapshot at {snapshot_index}, applied was {applied}"
        );
        let (first_index, _) = compact(&cluster, id);
        assert!(
            first_index > lagging_applied + 1,
            "node {id}: entry {} that follower {lagging} needs next was compacted away \
             (first_index {first_index})",
            lagging_applied + 1
        );
        compacted_to = compacted_to.min(first_index);
    }

    let restarted = Instant::now();
    cluster.restart(lagging);
    cluster.wait_caught_up(CATCH_UP_WAIT);
    eprintln!(
        "follower {lagging} caught up {:?} after its restart",
        restarted.elapsed()
    );
    let info = storage(&cluster, lagging);
    eprintln!("follower {lagging}: {info:?}");
    assert!(
        info.snapshot_index + 1 >= compacted_to,
        "follower {lagging} installed a snapshot at least as new as the leader's \
         compaction point {compacted_to}: {info:?}"
    );
    assert!(
        !snap_files(&cluster, lagging).is_empty(),
        "follower {lagging} has the installed snapshot on disk"
    );
    print_snapshot_log_lines(&cluster, lagging);

    let view = scan_all(&cluster.client_at(lagging), "cu/", Consistency::Stale).await;
    assert_state_equals(
        &view,
        &load.last_acked,
        &format!("follower {lagging}'s stale scan after catch-up"),
    );
    assert_same_hash_when_idle(&cluster, Duration::from_secs(30));

    // Then by log: later writes reach the follower as ordinary entries.
    let client = cluster.client();
    let mut later = BTreeMap::new();
    for i in 0..200 {
        let key = Bytes::from(format!("cu/after{i:03}"));
        let value = Bytes::from(format!("after-{i}"));
        client
            .put(key.clone(), value.clone())
            .await
            .unwrap_or_else(|e| cluster.fail(&format!("put {key:?} after catch-up: {e}")));
        later.insert(key, value);
    }
    cluster.wait_caught_up(Duration::from_secs(60));
    let view = scan_all(&cluster.client_at(lagging), "cu/after", Consistency::Stale).await;
    assert_state_equals(
        &view,
        &later,
        &format!("follower {lagging} after the writes that followed its catch-up"),
    );
    let lines = assert_same_hash_when_idle(&cluster, Duration::from_secs(30));
    assert_eq!(
        lines[0].keys as usize,
        KEYS + later.len(),
        "every node holds the 1,000 overwritten keys and the later ones"
    );
}

/// Prints (for the record) the follower's log lines about snapshots.
fn print_snapshot_log_lines(cluster: &TestCluster, id: u64) {
    let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
    let start = log.rfind("=== testkit: starting").unwrap_or(0);
    let lines: Vec<&str> = log[start..]
        .lines()
        .filter(|l| l.to_lowercase().contains("snapshot"))
        .take(10)
        .collect();
    eprintln!(
        "node {id}'s log lines about snapshots since its restart:\n{}",
        lines.join("\n")
    );
}

/// Panics unless `state` holds exactly `expected` (reports the differences).
#[track_caller]
fn assert_state_equals(
    state: &BTreeMap<Bytes, Bytes>,
    expected: &BTreeMap<Bytes, Bytes>,
    context: &str,
) {
    if state == expected {
        return;
    }
    let missing: Vec<&Bytes> = expected
        .keys()
        .filter(|k| !state.contains_key(*k))
        .collect();
    let extra: Vec<&Bytes> = state
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let wrong: Vec<(&Bytes, &Bytes, &Bytes)> = expected
        .iter()
        .filter_map(|(k, v)| state.get(k).filter(|got| *got != v).map(|got| (k, v, got)))
        .collect();
    panic!(
        "{context}: {} keys expected, {} found; {} missing (first {:?}), {} unexpected \
         (first {:?}), {} with a value other than the last acknowledged one (first: key, \
         expected, found = {:?})",
        expected.len(),
        state.len(),
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first(),
        wrong.len(),
        wrong.first()
    );
}

/// Makes a file undeletable (`chattr +i`) until dropped; `None` where the file
/// system or the user cannot (the test then says so and stops).
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &std::path::Path) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// A follower installs the leader's snapshot but one of its old WAL segments
/// cannot be deleted (`chattr +i`); it is killed right after. Once the
/// segment is deletable again it must start, catch up, and hold every
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarts_after_an_install_that_could_not_delete_its_old_segments() {
    let mut cluster = TestCluster::start_with(
        bin(),
        3,
        &["--snapshot-entries", "1000", "--wal-segment-size", "4KiB"],
    );
    overwrite_keys(&cluster, "in/", 100, 300, 8, 200, LOAD_DEADLINE).await;
    let lagging = cluster.followers()[0];
    cluster.wait_caught_up(Duration::from_secs(30));
    cluster.kill(lagging);
    let load = overwrite_keys(&cluster, "in/", 100, 8_000, CLIENTS, 200, LOAD_DEADLINE).await;
    cluster.wait_caught_up(Duration::from_secs(60));
    for id in cluster.live_ids() {
        take_snapshot(&cluster, id);
        compact(&cluster, id);
    }
    let mut segments = wal_files(&cluster, lagging);
    segments.sort();
    assert!(
        segments.len() >= 3,
        "follower {lagging} has several old segments: {segments:?}"
    );
    let Some(stuck) = Immutable::set(&segments[1]) else {
        eprintln!("SKIPPED: `chattr +i` is not available here (needs root and ext4 or similar)");
        return;
    };
    cluster.restart(lagging);
    cluster.wait_caught_up(CATCH_UP_WAIT);
    let log = std::fs::read_to_string(cluster.log_path(lagging)).unwrap_or_default();
    assert!(
        log.contains("could not delete obsolete WAL segments"),
        "follower {lagging} installed a snapshot and failed to delete {}",
        segments[1].display()
    );
    cluster.kill(lagging);
    drop(stuck);
    cluster.restart(lagging);
    cluster.wait_caught_up(CATCH_UP_WAIT);
    let view = scan_all(&cluster.client_at(lagging), "in/", Consistency::Stale).await;
    assert_state_equals(
        &view,
        &load.last_acked,
        &format!("follower {lagging} after a restart over the install's leftovers"),
    );
    assert!(
        !segments[1].exists(),
        "the leftover segment is deleted at the start after the install"
    );
}
