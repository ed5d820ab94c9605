//! Acceptance: large values (issue 4, docs/REFERENCE.md §2).
//!
//! - 1 MiB, 10 MiB and 100 MiB values put through the CLI (`put --file`, with
//!   the default flags: `--timeout` bounds waiting, not transferring) on a
//!   3-node cluster, then read back from every node with
//!   `get --out --consistency stale` once the cluster is idle: identical
//!   SHA-256 everywhere.
//! - With `--max-value-size 1MiB`, a value of exactly 1 MiB is accepted and one
//!   byte more is rejected (exit 3, `error: invalid argument: ...` naming the
//!   limit), through the CLI and through the client library.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use raftkv_testkit::TestCluster;

use common::bin;

const MIB: usize = 1024 * 1024;

/// Kill bound of one CLI command moving a 100 MiB value in a debug build.
const LARGE_CLI_KILL_AFTER: Duration = Duration::from_secs(300);

/// Deterministic pseudo-random bytes (xorshift64*): incompressible, and fast
/// enough in a debug build for 100 MiB.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Puts a `size`-byte random value under `key` with `put --file` (default
/// flags), then reads it back from every node with a stale `get --out` once
/// the cluster is idle, and compares SHA-256s. Prints the times.
fn round_trip_on_every_node(cluster: &TestCluster, key: &str, size: usize, seed: u64) {
    let value = pseudo_random_bytes(size, seed);
    let expected = hex(&Sha256::digest(&value));
    let in_path = cluster.dir().join(format!("{key}.in"));
    fs::write(&in_path, &value).unwrap();
    drop(value);

    let started = Instant::now();
    let put = cluster.cli_bounded(
        &cluster.endpoints(),
        &["put", key, "--file", in_path.to_str().unwrap()],
        LARGE_CLI_KILL_AFTER,
    );
    let put_time = started.elapsed();
    if put.code != 0 {
        cluster.fail(&format!(
            "put --file of {size} bytes failed\n{}",
            put.describe()
        ));
    }
    eprintln!(
        "{key}: put --file of {size} bytes took {put_time:?} ({:.1} MiB/s)",
        size as f64 / MIB as f64 / put_time.as_secs_f64()
    );

    // Linearizable read through any endpoint.
    let out_path = cluster.dir().join(format!("{key}.out"));
    let started = Instant::now();
    let get = cluster.cli_bounded(
        &cluster.endpoints(),
        &["get", key, "--out", out_path.to_str().unwrap()],
        LARGE_CLI_KILL_AFTER,
    );
    if get.code != 0 {
        cluster.fail(&format!("get --out of {key} failed\n{}", get.describe()));
    }
    eprintln!("{key}: linearizable get --out took {:?}", started.elapsed());
    assert_eq!(
        fs::metadata(&out_path).unwrap().len(),
        size as u64,
        "length of {key} read back"
    );
    assert_eq!(
        hex(&Sha256::digest(fs::read(&out_path).unwrap())),
        expected,
        "SHA-256 of {key} read back (linearizable)"
    );
    fs::remove_file(&out_path).unwrap();

    let started = Instant::now();
    cluster.wait_caught_up(Duration::from_secs(120));
    eprintln!("{key}: every node applied it {:?} later", started.elapsed());
    for id in cluster.ids() {
        let path = cluster.dir().join(format!("{key}-node{id}.out"));
        let started = Instant::now();
        let get = cluster.cli_bounded(
            &cluster.address(id),
            &[
                "get",
                key,
                "--consistency",
                "stale",
                "--out",
                path.to_str().unwrap(),
            ],
            LARGE_CLI_KILL_AFTER,
        );
        if get.code != 0 {
            cluster.fail(&format!(
                "stale get --out of {key} at node {id} failed\n{}",
                get.describe()
            ));
        }
        let get_time = started.elapsed();
        let bytes = fs::read(&path).unwrap();
        eprintln!(
            "{key}: stale get --out at node {id} took {get_time:?}, {} bytes",
            bytes.len()
        );
        assert_eq!(bytes.len(), size, "length of node {id}'s copy of {key}");
        assert_eq!(
            hex(&Sha256::digest(&bytes)),
            expected,
            "SHA-256 of node {id}'s copy of {key}"
        );
        fs::remove_file(&path).unwrap();
    }
    fs::remove_file(&in_path).unwrap();
}

#[test]
fn values_of_1_and_10_mib_put_by_cli_read_back_identically_from_every_node() {
    let cluster = TestCluster::start(bin(), 3);
    let started = Instant::now();
    round_trip_on_every_node(&cluster, "large-1mib", MIB, 1);
    eprintln!("1 MiB case: {:?}", started.elapsed());
    let started = Instant::now();
    round_trip_on_every_node(&cluster, "large-10mib", 10 * MIB, 10);
    eprintln!("10 MiB case: {:?}", started.elapsed());
    // A smaller value next to them still works.
    cluster.cli(&["put", "small", "v"]).assert_ok();
    assert_eq!(cluster.cli(&["get", "small"]).assert_ok().stdout, b"v\n");
}

// A 100 MiB value, with default flags: `--timeout` bounds waiting, not the
// transfer, and replicating it must not cost the cluster its leader.
#[test]
fn a_100_mib_value_put_by_cli_reads_back_identically_from_every_node() {
    let cluster = TestCluster::start(bin(), 3);
    let started = Instant::now();
    round_trip_on_every_node(&cluster, "large-100mib", 100 * MIB, 100);
    eprintln!("100 MiB case: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_one_byte_over_max_value_size_is_rejected_naming_the_limit() {
    let cluster = TestCluster::start_with(bin(), 3, &["--max-value-size", "1MiB"]);

    // Exactly at the limit: accepted.
    let at_limit = pseudo_random_bytes(MIB, 7);
    let at_path = cluster.dir().join("at-limit.in");
    fs::write(&at_path, &at_limit).unwrap();
    cluster
        .cli(&["put", "at-limit", "--file", at_path.to_str().unwrap()])
        .assert_ok();
    let out_path = cluster.dir().join("at-limit.out");
    cluster
        .cli(&["get", "at-limit", "--out", out_path.to_str().unwrap()])
        .assert_ok();
    assert_eq!(
        Sha256::digest(fs::read(&out_path).unwrap()),
        Sha256::digest(&at_limit),
        "the 1 MiB value reads back intact"
    );

    // One byte over: rejected, naming the limit, and nothing stored.
    let over = pseudo_random_bytes(MIB + 1, 8);
    let over_path = cluster.dir().join("over-limit.in");
    fs::write(&over_path, &over).unwrap();
    let put = cluster.cli(&["put", "over-limit", "--file", over_path.to_str().unwrap()]);
    put.assert_error(3, "invalid argument");
    let line = put.error_line().unwrap().to_lowercase();
    assert!(
        ["1048576", "1mib", "1 mib"]
            .iter()
            .any(|limit| line.contains(limit)),
        "the error names the limit (1 MiB = 1048576 bytes)\n{}",
        put.describe()
    );
    cluster.cli(&["get", "over-limit"]).assert_code(1);

    // The client library gets the typed error.
    let client = cluster.client();
    match client.put("over-limit-lib", over.clone()).await {
        Err(raftkv_client::Error::InvalidArgument(message)) => {
            eprintln!("client library: invalid argument: {message}")
        }
        other => cluster.fail(&format!(
            "put of 1 MiB + 1 through the client library: expected InvalidArgument, got {other:?}"
        )),
    }
    // The same value minus one byte is fine through the library too.
    client
        .put("at-limit-lib", over[..MIB].to_vec())
        .await
        .unwrap_or_else(|e| cluster.fail(&format!("put of exactly 1 MiB via the library: {e}")));
    // The limit did not break the cluster: a small write still works.
    cluster.cli(&["put", "after-limit", "ok"]).assert_ok();
}
