//! Acceptance: edge inputs (issue 3, "Edge inputs") — empty key, empty value,
//! spaces, newlines and UTF-8 through the CLI, NUL bytes through the client
//! library and through `--file`/`--out`, the 4 KiB key limit, a 2 MiB value
//! on three nodes, and the usage-error exit code.

mod common;

use std::fs;

use bytes::Bytes;
use raftkv_client::{Consistency, Error, ScanOptions};
use raftkv_testkit::{run_cli, TestCluster};
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::bin;

#[test]
fn empty_key_is_rejected_with_a_clear_error() {
    let cluster = TestCluster::start(bin(), 1);
    let out = cluster.cli(&["put", "", "value"]);
    out.assert_error(3, "invalid argument");
    out.assert_error(3, "key");
    cluster.cli(&["get", ""]).assert_error(3, "key");
}

#[test]
fn empty_value_is_stored_and_read_back() {
    let cluster = TestCluster::start(bin(), 1);
    cluster.cli(&["put", "empty", ""]).assert_ok();
    // Present but empty: exit 0 and just the newline, not "key not found".
    assert_eq!(cluster.cli(&["get", "empty"]).assert_ok().stdout, b"\n");
    let out_path = cluster.dir().join("empty.out");
    cluster
        .cli(&["get", "empty", "--out", out_path.to_str().unwrap()])
        .assert_ok();
    assert_eq!(fs::read(out_path).unwrap(), b"", "--out writes zero bytes");
    assert_eq!(
        cluster
            .cli(&["scan", "empty", "--keys-only"])
            .assert_ok()
            .stdout_lines(),
        ["empty"]
    );
}

/// Keys and values a shell user can type, with the bytes they must get back.
const TEXT_PAIRS: [(&str, &str); 5] = [
    ("edge/with space", "a value  with two  spaces "),
    ("edge/multi\nline", "first line\nsecond line\n"),
    ("edge/键", "值"),
    ("edge/emoji 🚀🔥", "😀 grin 👍🏽"),
    ("edge/\ttab", " \t leading and trailing whitespace \t "),
];

#[test]
fn spaces_newlines_and_utf8_round_trip_exactly_through_the_cli() {
    let cluster = TestCluster::start(bin(), 1);
    for (key, value) in TEXT_PAIRS {
        cluster.cli(&["put", key, value]).assert_ok();
    }
    for (i, (key, value)) in TEXT_PAIRS.into_iter().enumerate() {
        let out = cluster.cli(&["get", key]);
        assert_eq!(
            out.assert_ok().stdout,
            format!("{value}\n").as_bytes(),
            "get {key:?}"
        );
        let out_path = cluster.dir().join(format!("text-{i}.out"));
        cluster
            .cli(&["get", key, "--out", out_path.to_str().unwrap()])
            .assert_ok();
        assert_eq!(
            fs::read(out_path).unwrap(),
            value.as_bytes(),
            "get {key:?} --out"
        );
    }
    // JSON scan escapes what the text format cannot carry (newlines, tabs).
    let out = cluster.cli(&["scan", "edge/", "--json"]);
    let mut expected: Vec<(String, String)> = TEXT_PAIRS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    expected.sort(); // String order is byte order for UTF-8
    let scanned: Vec<(String, String)> = out
        .assert_ok()
        .stdout_lines()
        .iter()
        .map(|line| {
            let object: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (
                object["key"].as_str().unwrap().to_string(),
                object["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(scanned, expected, "scan edge/ --json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_in_keys_and_values_round_trip_through_the_client_library() {
    let cluster = TestCluster::start(bin(), 1);
    let client = cluster.client();
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let pairs: Vec<(Bytes, Bytes)> = vec![
        (Bytes::from_static(b"nul/a\0b"), Bytes::from_static(b"x\0y")),
        (Bytes::from_static(b"nul/\0"), Bytes::from_static(b"\0")),
        (
            Bytes::from_static(b"nul/\0\0\0"),
            Bytes::from_static(b"\0\0\0\0"),
        ),
        (Bytes::from_static(b"nul/a"), Bytes::from_static(b"plain")),
        (
            Bytes::from(b"nul/all\xff\x00".to_vec()),
            Bytes::from(every_byte),
        ),
    ];
    for (key, value) in &pairs {
        client
            .put(key.clone(), value.clone())
            .await
            .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
    }
    for (key, value) in &pairs {
        let got = client
            .get(key.clone())
            .await
            .unwrap_or_else(|e| panic!("get {key:?}: {e}"));
        assert_eq!(&got, value, "get {key:?}");
    }
    // "nul/a\0" is not "nul/a": a NUL does not end the key.
    match client.get(Bytes::from_static(b"nul/a\0")).await {
        Err(Error::KeyNotFound) => {}
        other => panic!("get nul/a\\0 should be KeyNotFound, got {other:?}"),
    }
    let mut expected = pairs.clone();
    expected.sort();
    let options = ScanOptions {
        consistency: Consistency::Linearizable,
        ..Default::default()
    };
    let page = client
        .scan(Bytes::from_static(b"nul/"), options)
        .await
        .expect("scan nul/");
    assert_eq!(
        page.pairs, expected,
        "scan nul/ returns the NUL keys, byte-sorted"
    );
    assert!(!page.more);
}

/// A value with NULs and every byte value, as the CLI can only carry it:
/// `put --file` (from a file and from stdin) and `get --out`.
#[test]
fn nul_bytes_in_values_round_trip_through_cli_file_and_out() {
    let cluster = TestCluster::start(bin(), 1);
    let mut value: Vec<u8> = b"\0starts with NUL\0".to_vec();
    value.extend((0..=255u8).cycle().take(4096));
    value.extend(b"\0\0ends with NULs\0\0");
    let in_path = cluster.dir().join("nul.in");
    fs::write(&in_path, &value).unwrap();
    cluster
        .cli(&["put", "nul-file", "--file", in_path.to_str().unwrap()])
        .assert_ok();
    cluster
        .cli_with_stdin(&["put", "nul-stdin", "--file", "-"], &value)
        .assert_ok();
    for key in ["nul-file", "nul-stdin"] {
        let out_path = cluster.dir().join(format!("{key}.out"));
        cluster
            .cli(&["get", key, "--out", out_path.to_str().unwrap()])
            .assert_ok();
        assert!(
            fs::read(out_path).unwrap() == value,
            "get {key} --out returns the exact bytes"
        );
    }
}

#[test]
fn a_4096_byte_key_works_and_a_4097_byte_key_is_rejected() {
    let cluster = TestCluster::start(bin(), 1);
    let longest = "k".repeat(4096);
    cluster.cli(&["put", &longest, "fits"]).assert_ok();
    assert_eq!(
        cluster.cli(&["get", &longest]).assert_ok().stdout,
        b"fits\n"
    );
    // 4 KiB counts bytes, not characters: 1024 four-byte emoji is the limit too.
    let longest_utf8 = "🚀".repeat(1024);
    cluster.cli(&["put", &longest_utf8, "fits too"]).assert_ok();

    let too_long = "k".repeat(4097);
    cluster
        .cli(&["put", &too_long, "too long"])
        .assert_error(3, "invalid argument");
    let too_long_utf8 = format!("x{longest_utf8}");
    cluster
        .cli(&["put", &too_long_utf8, "too long"])
        .assert_error(3, "invalid argument");
    // The rejected put stored nothing under its 4096-byte prefix either.
    let prefix_of_too_long = &too_long[..4096];
    assert_eq!(
        cluster.cli(&["get", prefix_of_too_long]).assert_ok().stdout,
        b"fits\n"
    );
}

#[test]
fn a_2_mib_value_round_trips_on_three_nodes() {
    let cluster = TestCluster::start(bin(), 3);
    let value = pseudo_random_bytes(2 * 1024 * 1024, 0x5eed);
    let in_path = cluster.dir().join("big.in");
    fs::write(&in_path, &value).unwrap();
    let expected_sha = Sha256::digest(&value);
    // Timing is not what this test checks, so a generous --timeout.
    cluster
        .cli(&[
            "put",
            "big",
            "--file",
            in_path.to_str().unwrap(),
            "--timeout",
            "60s",
        ])
        .assert_ok();

    let out_path = cluster.dir().join("big.out");
    cluster
        .cli(&[
            "get",
            "big",
            "--out",
            out_path.to_str().unwrap(),
            "--timeout",
            "60s",
        ])
        .assert_ok();
    let read_back = fs::read(out_path).unwrap();
    assert_eq!(
        read_back.len(),
        value.len(),
        "length of the value read back"
    );
    assert_eq!(
        Sha256::digest(read_back),
        expected_sha,
        "SHA-256 of the value read back"
    );

    // Replicated everywhere: each node's own copy is identical.
    cluster.wait_caught_up(std::time::Duration::from_secs(30));
    for id in cluster.ids() {
        let path = cluster.dir().join(format!("big-{id}.out"));
        cluster
            .cli_at(
                id,
                &[
                    "get",
                    "big",
                    "--consistency",
                    "stale",
                    "--out",
                    path.to_str().unwrap(),
                    "--timeout",
                    "60s",
                ],
            )
            .assert_ok();
        assert_eq!(
            Sha256::digest(fs::read(path).unwrap()),
            expected_sha,
            "node {id}'s copy"
        );
    }
}

/// Skipping walks the map, so a scan's offset is bounded (100,000); deeper
/// pages are reached with `--after`, which the error points to.
#[test]
fn a_scan_offset_over_the_bound_is_refused_and_points_to_after() {
    let cluster = TestCluster::start(bin(), 1);
    for key in ["o/a", "o/b", "o/c"] {
        cluster.cli(&["put", key, "v"]).assert_ok();
    }
    for offset in ["100001", "18446744073709551615"] {
        let out = cluster.cli(&["scan", "o/", "--offset", offset]);
        out.assert_error(3, "invalid argument");
        out.assert_error(3, "--after");
    }
    let out = cluster.cli(&["scan", "o/", "--offset", "100000", "--keys-only"]);
    out.assert_ok();
    assert_eq!(
        out.stdout_text(),
        "",
        "an offset past the matches is an empty page"
    );
    let out = cluster.cli(&["scan", "o/", "--offset", "1", "--keys-only"]);
    assert_eq!(out.assert_ok().stdout_text(), "o/b\no/c\n");
}

#[test]
fn bad_flags_are_a_usage_error_with_exit_2() {
    // No cluster needed: the arguments are rejected before any connection.
    let bin = bin();
    let missing_key = run_cli(&bin, &["get".to_string()]);
    missing_key.assert_code(2);
    let unknown_flag = run_cli(
        &bin,
        &[
            "get".to_string(),
            "k".to_string(),
            "--no-such-flag".to_string(),
        ],
    );
    unknown_flag.assert_code(2);
    let bad_consistency = run_cli(
        &bin,
        &[
            "get".to_string(),
            "k".to_string(),
            "--consistency".to_string(),
            "sometimes".to_string(),
        ],
    );
    bad_consistency.assert_code(2);
}

/// Deterministic incompressible bytes (xorshift64), NULs included.
fn pseudo_random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Issue 22 (limits per client): a client that holds more connections than
/// `--max-connections-per-client` allows has its requests on the extra ones
/// refused with a message saying so, and gets them back once it closes some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_connection_limit_is_told_so() {
    let cluster = TestCluster::start_with(bin(), 1, &["--max-connections-per-client", "2"]);
    let first = cluster.client();
    first.put("k", "v").await.expect("first connection");
    let second = cluster.client();
    second.get("k").await.expect("second connection");
    let third = cluster.client();
    let refused = third.get("k").await.expect_err("a third connection");
    assert!(
        matches!(&refused, Error::Rejected(m)
            if m.contains("too many connections from 127.0.0.1: 3 open, at most 2 per client")),
        "{refused:?}"
    );
    // Closing one frees its slot (the server notices the close).
    drop(first);
    drop(third);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match cluster.client().get("k").await {
            Ok(value) => {
                assert_eq!(&value[..], b"v");
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no slot came free after closing two connections: {e}"),
        }
    }
}
