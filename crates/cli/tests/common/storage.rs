//! Helpers for the storage acceptance tests (issue 4): the `debug storage`,
//! `debug snapshot`, `debug compact` and `debug check` commands parsed from
//! their `--json` lines (docs/REFERENCE.md §1), the `.snap` and `.wal` files a node has
//! on disk (docs/REFERENCE.md §5), a byte flipper, and an overwrite workload that
//! remembers the last acknowledged value of every key.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_client::Client;
use raftkv_testkit::{CliOutput, TestCluster};
use serde_json::Value;

use super::is_retryable;

/// How long one `debug ...` command may take (its `--timeout`).
const DEBUG_TIMEOUT: &str = "20s";

/// One `debug storage --json` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageInfo {
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub snapshot_bytes: u64,
    pub segments: u64,
    pub disk_bytes: u64,
}

/// One line of `debug check --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub address: String,
    pub id: u64,
    pub applied_index: u64,
    pub hash: String,
    pub keys: u64,
}

/// The single JSON object a `--json` command printed (panics otherwise).
#[track_caller]
pub fn single_json(out: &CliOutput) -> Value {
    out.assert_ok();
    let lines: Vec<String> = out
        .stdout_lines()
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "--json prints exactly one line\n{}",
        out.describe()
    );
    serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", out.describe()))
}

/// Field `name` of `json` as a number (panics naming the field and the line).
#[track_caller]
pub fn number(json: &Value, name: &str) -> u64 {
    json.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {name:?} missing or not a number in {json}"))
}

/// `raftkv debug ARGS --json` at node `id`: its one JSON object.
#[track_caller]
pub fn debug_json(cluster: &TestCluster, id: u64, args: &[&str]) -> Value {
    let mut all = vec!["debug"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--timeout", DEBUG_TIMEOUT]);
    let out = cluster.cli_at(id, &all);
    if out.code != 0 {
        cluster.fail(&format!("debug command failed\n{}", out.describe()));
    }
    single_json(&out)
}

/// `raftkv debug storage --json` at node `id`.
#[track_caller]
pub fn storage(cluster: &TestCluster, id: u64) -> StorageInfo {
    let json = debug_json(cluster, id, &["storage"]);
    StorageInfo {
        first_index: number(&json, "first_index"),
        last_index: number(&json, "last_index"),
        snapshot_index: number(&json, "snapshot_index"),
        snapshot_term: number(&json, "snapshot_term"),
        snapshot_bytes: number(&json, "snapshot_bytes"),
        segments: number(&json, "segments"),
        disk_bytes: number(&json, "disk_bytes"),
    }
}

/// `raftkv debug snapshot --json` at node `id`: the new snapshot's index.
#[track_caller]
pub fn take_snapshot(cluster: &TestCluster, id: u64) -> u64 {
    let json = debug_json(cluster, id, &["snapshot"]);
    let index = number(&json, "snapshot_index");
    let bytes = number(&json, "snapshot_bytes");
    eprintln!("node {id}: debug snapshot -> index {index}, {bytes} bytes");
    index
}

/// `raftkv debug compact --json` at node `id`: (first_index, segments_removed).
#[track_caller]
pub fn compact(cluster: &TestCluster, id: u64) -> (u64, u64) {
    let json = debug_json(cluster, id, &["compact"]);
    let first = number(&json, "first_index");
    let removed = number(&json, "segments_removed");
    eprintln!("node {id}: debug compact -> first_index {first}, {removed} segment(s) removed");
    (first, removed)
}

/// `raftkv debug check --json --endpoints <every node>`: one line per node
/// (Err with the output if the command failed — replicas not at one applied
/// index, say — or the object does not parse).
pub fn check(cluster: &TestCluster) -> Result<Vec<CheckLine>, String> {
    let out = cluster.cli(&["debug", "check", "--json", "--timeout", DEBUG_TIMEOUT]);
    if out.code != 0 {
        return Err(out.describe());
    }
    let json = single_json(&out);
    let mut lines = Vec::new();
    for node in json["nodes"].as_array().ok_or("no nodes array")? {
        let text = |name: &str| {
            node.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("field {name:?} missing or not a string in {node}"))
        };
        let num = |name: &str| {
            node.get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("field {name:?} missing or not a number in {node}"))
        };
        lines.push(CheckLine {
            address: text("address")?,
            id: num("id")?,
            applied_index: num("applied_index")?,
            hash: text("hash")?,
            keys: num("keys")?,
        });
    }
    if lines.len() != cluster.member_ids().len() {
        return Err(format!(
            "expected one line per member ({}), got {}\n{}",
            cluster.member_ids().len(),
            lines.len(),
            out.describe()
        ));
    }
    Ok(lines)
}

/// Files in `dir` whose names end in `.EXT`, sorted by name (empty if the
/// directory does not exist).
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// Node `id`'s snapshot files, `<data-dir>/snap/*.snap`, oldest first (the
/// names are `<term:016x>-<index:016x>.snap`).
pub fn snap_files(cluster: &TestCluster, id: u64) -> Vec<PathBuf> {
    files_with_ext(&cluster.data_dir(id).join("snap"), "snap")
}

/// Node `id`'s log segments, `<data-dir>/wal/*.wal`, sorted by name.
pub fn wal_files(cluster: &TestCluster, id: u64) -> Vec<PathBuf> {
    files_with_ext(&cluster.data_dir(id).join("wal"), "wal")
}

/// Total size of `files`.
pub fn total_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Inverts every bit of the byte at `offset` of `path`; returns the offset.
pub fn flip_byte(path: &Path, offset: u64) -> u64 {
    let mut bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let at = usize::try_from(offset).unwrap();
    assert!(
        at < bytes.len(),
        "{} has {} bytes, cannot flip byte {at}",
        path.display(),
        bytes.len()
    );
    bytes[at] ^= 0xff;
    fs::write(path, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!(
        "flipped byte {at} of {} ({} bytes)",
        path.display(),
        bytes.len()
    );
    offset
}

/// The file name of `path` as text (what an error message should name).
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// What [`overwrite_keys`] did.
#[derive(Debug)]
pub struct OverwriteLoad {
    /// Each key's last acknowledged value.
    pub last_acked: BTreeMap<Bytes, Bytes>,
    pub puts: usize,
    /// Retryable errors that were retried.
    pub retried: usize,
    /// Bytes of keys and values acknowledged (a lower bound of what the log
    /// had to hold before compaction).
    pub payload_bytes: u64,
    pub elapsed: Duration,
}

/// `puts` puts spread over `keys` keys (`PREFIXk0000` ...) by `tasks`
/// concurrent applications (one client each), values of `value_len` bytes.
/// Each key belongs to one task, which writes it sequentially and retries
/// a put until it is acknowledged, so each key's final value is its last
/// acknowledged one. Panics if the load does not finish within `deadline`.
pub async fn overwrite_keys(
    cluster: &TestCluster,
    prefix: &str,
    keys: usize,
    puts: usize,
    tasks: usize,
    value_len: usize,
    deadline: Duration,
) -> OverwriteLoad {
    assert!(tasks > 0 && tasks <= keys);
    let started = Instant::now();
    let give_up = started + deadline;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let client = cluster.client();
        let own_keys: Vec<usize> = (task..keys).step_by(tasks).collect();
        let count = puts / tasks + usize::from(task < puts % tasks);
        let prefix = prefix.to_string();
        handles.push(tokio::spawn(overwrite_task(
            client, prefix, task, own_keys, count, value_len, give_up,
        )));
    }
    let mut last_acked = BTreeMap::new();
    let mut retried = 0;
    let mut payload_bytes = 0;
    for handle in handles {
        let (acked, task_retried, task_bytes) = match handle.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("load task failed: {e}"),
        };
        last_acked.extend(acked);
        retried += task_retried;
        payload_bytes += task_bytes;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "load: {puts} puts over {keys} keys ({value_len}-byte values) by {tasks} clients \
         in {elapsed:?} ({:.0} puts/s), {retried} retried error(s)",
        puts as f64 / elapsed.as_secs_f64()
    );
    OverwriteLoad {
        last_acked,
        puts,
        retried,
        payload_bytes,
        elapsed,
    }
}

async fn overwrite_task(
    client: Client,
    prefix: String,
    task: usize,
    own_keys: Vec<usize>,
    count: usize,
    value_len: usize,
    give_up: Instant,
) -> (BTreeMap<Bytes, Bytes>, usize, u64) {
    let mut acked = BTreeMap::new();
    let mut retried = 0;
    let mut bytes = 0u64;
    for i in 0..count {
        let key_number = own_keys[i % own_keys.len()];
        let key = Bytes::from(format!("{prefix}k{key_number:04}"));
        let mut value = format!("{prefix}k{key_number:04}=t{task}/{i}|").into_bytes();
        value.resize(value_len.max(value.len()), b'v');
        let value = Bytes::from(value);
        loop {
            match client.put(key.clone(), value.clone()).await {
                Ok(()) => break,
                Err(error) if is_retryable(&error) && Instant::now() < give_up => {
                    eprintln!("load: put {key:?} failed, retrying: {error}");
                    retried += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("load: put {key:?} failed: {error:?}"),
            }
        }
        assert!(
            Instant::now() < give_up,
            "load: did not finish before its deadline (task {task} at put {i} of {count})"
        );
        bytes += (key.len() + value.len()) as u64;
        acked.insert(key, value);
    }
    (acked, retried, bytes)
}

/// Waits (at most `timeout`) until `debug check` over every node shows the
/// same applied index on all of them; then asserts their hashes are equal
/// and returns the lines. Meant for an idle cluster (no writes running).
pub fn assert_same_hash_when_idle(cluster: &TestCluster, timeout: Duration) -> Vec<CheckLine> {
    let started = Instant::now();
    loop {
        let last = match check(cluster) {
            Ok(lines) => {
                let applied = lines[0].applied_index;
                if lines.iter().all(|l| l.applied_index == applied) {
                    for line in &lines {
                        eprintln!(
                            "debug check: node {} at {}: applied {} hash {} keys {}",
                            line.id, line.address, line.applied_index, line.hash, line.keys
                        );
                    }
                    let hashes: Vec<&str> = lines.iter().map(|l| l.hash.as_str()).collect();
                    if hashes.iter().any(|h| *h != hashes[0]) {
                        cluster.fail(&format!(
                            "replicas differ at applied index {applied}: {lines:#?}"
                        ));
                    }
                    assert!(
                        lines.iter().all(|l| l.keys == lines[0].keys),
                        "same hash but different key counts: {lines:#?}"
                    );
                    return lines;
                }
                format!("{lines:#?}")
            }
            Err(e) => e,
        };
        if started.elapsed() >= timeout {
            cluster.fail(&format!(
                "debug check did not show one applied index on every node in {timeout:?}; \
                 last:\n{last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
