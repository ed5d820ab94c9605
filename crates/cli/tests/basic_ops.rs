//! Acceptance: the everyday commands through the `raftkv` CLI against real
//! servers — put/get/delete, scan with prefix, sorting and paging, and
//! `status --json` (issue 3, first and last Acceptance items).
//!
//! Each test checks what a user at a shell would check: exit codes, stdout,
//! the `error: ` line on stderr.

mod common;

use std::collections::BTreeMap;

use raftkv_testkit::TestCluster;
use serde_json::Value;

use common::bin;

#[test]
fn put_then_get_returns_the_value_from_any_endpoint() {
    let cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "greeting", "hello"]).assert_ok();
    assert_eq!(
        cluster.cli(&["get", "greeting"]).assert_ok().stdout,
        b"hello\n"
    );
    // Any node may be given: a follower forwards or redirects to the leader.
    for id in cluster.ids() {
        let out = cluster.cli_at(id, &["get", "greeting"]);
        assert_eq!(out.assert_ok().stdout, b"hello\n", "get via node {id}");
    }
    // Overwrite: the newest acknowledged value wins.
    cluster.cli(&["put", "greeting", "bonjour"]).assert_ok();
    assert_eq!(
        cluster.cli(&["get", "greeting"]).assert_ok().stdout,
        b"bonjour\n"
    );
}

#[test]
fn put_then_delete_then_get_is_key_not_found() {
    let cluster = TestCluster::start(bin(), 1);
    cluster.cli(&["put", "doomed", "x"]).assert_ok();
    cluster.cli(&["delete", "doomed"]).assert_ok();
    let out = cluster.cli(&["get", "doomed"]);
    out.assert_error(1, "key not found");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for a missing key\n{}",
        out.describe()
    );
    // Never-written keys are just as missing.
    cluster
        .cli(&["get", "never-written"])
        .assert_error(1, "key not found");
}

#[test]
fn delete_of_a_missing_key_succeeds() {
    let cluster = TestCluster::start(bin(), 1);
    cluster.cli(&["delete", "no-such-key"]).assert_ok();
    // Idempotent: deleting twice is fine too.
    cluster.cli(&["put", "twice", "v"]).assert_ok();
    cluster.cli(&["delete", "twice"]).assert_ok();
    cluster.cli(&["delete", "twice"]).assert_ok();
    cluster
        .cli(&["get", "twice"])
        .assert_error(1, "key not found");
}

/// `get --json` and `scan --json` show a key's revisions with etcd's
/// meaning, the same on every member: the store starts at revision 1 and a
/// write request that changes something takes the next one (a delete of a
/// missing key takes none); a delete ends the key's generation.
#[test]
fn get_and_scan_json_show_the_key_s_revisions() {
    let cluster = TestCluster::start(bin(), 3);
    let revisions = |line: &str| {
        let object: Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let n = |f: &str| {
            object[f]
                .as_u64()
                .unwrap_or_else(|| panic!("no {f} in {line}"))
        };
        (n("create_revision"), n("mod_revision"), n("version"))
    };
    let get = |id: u64| {
        let out = cluster.cli_at(
            id,
            &["get", "r/k", "--json", "--consistency", "linearizable"],
        );
        revisions(&out.assert_ok().stdout_text())
    };
    cluster.cli(&["put", "r/k", "a"]).assert_ok(); // revision 2
    cluster.cli(&["put", "r/k", "a"]).assert_ok(); // 3: the same value counts
    cluster.cli(&["delete", "r/missing"]).assert_ok(); // no revision
    cluster.cli(&["put", "r/other", "x"]).assert_ok(); // 4
    for id in cluster.ids() {
        assert_eq!(get(id), (2, 3, 2), "r/k via node {id}");
    }
    cluster.cli(&["delete", "r/k"]).assert_ok(); // 5
    cluster.cli(&["put", "r/k", "b"]).assert_ok(); // 6: a new generation
    assert_eq!(get(cluster.ids()[0]), (6, 6, 1));
    let out = cluster
        .cli(&["scan", "r/", "--json"])
        .assert_ok()
        .stdout_text();
    let lines: Vec<(u64, u64, u64)> = out.lines().map(revisions).collect();
    assert_eq!(lines, vec![(6, 6, 1), (4, 4, 1)], "r/k then r/other\n{out}");
}

#[test]
fn scan_returns_exactly_the_prefixed_keys_sorted() {
    let cluster = TestCluster::start(bin(), 3);
    let inside = [
        "app/z", "app/a", "app/m/1", "app/", "app/B", "app/a0", "app/m",
    ];
    // Neighbours that sort right before/after the prefix or share part of it.
    let outside = ["app", "apo/z", "app.", "app0", "apq/a", "App/a", "zz", "a"];
    for key in inside.iter().chain(outside.iter()).copied() {
        cluster.cli(&["put", key, &format!("v:{key}")]).assert_ok();
    }
    let mut expected: Vec<&str> = inside.to_vec();
    expected.sort(); // byte order; all ASCII here

    let out = cluster.cli(&["scan", "app/"]);
    out.assert_ok();
    let expected_lines: Vec<String> = expected.iter().map(|k| format!("{k}\tv:{k}")).collect();
    assert_eq!(
        out.stdout_lines(),
        expected_lines,
        "scan app/ (text)\n{}",
        out.describe()
    );

    let out = cluster.cli(&["scan", "app/", "--keys-only"]);
    assert_eq!(
        out.assert_ok().stdout_lines(),
        expected,
        "scan app/ --keys-only"
    );

    let out = cluster.cli(&["scan", "app/", "--json"]);
    out.assert_ok();
    let pairs: Vec<(String, String)> = out
        .stdout_lines()
        .iter()
        .map(String::as_str)
        .map(json_pair)
        .collect();
    let expected_pairs: Vec<(String, String)> = expected
        .iter()
        .map(|k| (k.to_string(), format!("v:{k}")))
        .collect();
    assert_eq!(pairs, expected_pairs, "scan app/ --json");

    // A prefix nothing has: empty output, still success.
    let out = cluster.cli(&["scan", "nothing-here/"]);
    assert!(out.assert_ok().stdout.is_empty(), "{}", out.describe());
}

/// 25 keys, pages of 7: every key exactly once, in order, by `--offset`.
#[test]
fn scan_paging_by_offset_visits_every_key_once() {
    let cluster = TestCluster::start(bin(), 1);
    let expected = put_page_keys(&cluster);
    let mut seen = Vec::new();
    for page_number in 0..=expected.len() {
        let offset = (page_number * PAGE_LIMIT).to_string();
        let out = cluster.cli(&[
            "scan",
            "page/",
            "--limit",
            &PAGE_LIMIT.to_string(),
            "--offset",
            &offset,
        ]);
        let page = out.assert_ok().stdout_lines();
        assert!(
            page.len() <= PAGE_LIMIT,
            "page longer than --limit\n{}",
            out.describe()
        );
        let full = page.len() == PAGE_LIMIT;
        seen.extend(page);
        if !full {
            break;
        }
    }
    assert_eq!(seen, expected, "pages by --offset");
}

/// The same keys, paged by `--after LAST_KEY_OF_PREVIOUS_PAGE`.
#[test]
fn scan_paging_by_after_visits_every_key_once() {
    let cluster = TestCluster::start(bin(), 3);
    let expected = put_page_keys(&cluster);
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..=expected.len() {
        let limit = PAGE_LIMIT.to_string();
        let last_key = seen
            .last()
            .map(|line| line.split('\t').next().unwrap_or_default().to_string());
        let mut args = vec!["scan", "page/", "--limit", limit.as_str()];
        if let Some(after) = last_key.as_deref() {
            args.extend(["--after", after]);
        }
        let out = cluster.cli(&args);
        let page = out.assert_ok().stdout_lines();
        assert!(
            page.len() <= PAGE_LIMIT,
            "page longer than --limit\n{}",
            out.describe()
        );
        let full = page.len() == PAGE_LIMIT;
        seen.extend(page);
        if !full {
            break;
        }
    }
    assert_eq!(seen, expected, "pages by --after");
}

const PAGE_LIMIT: usize = 7;

/// Puts `page/k00..page/k24` (in a scrambled order) plus neighbours outside
/// the prefix; returns the expected scan lines, sorted.
fn put_page_keys(cluster: &TestCluster) -> Vec<String> {
    let count = 25;
    let mut lines = BTreeMap::new();
    for i in 0..count {
        let n = (i * 11) % count; // 11 is coprime with 25: a permutation
        let key = format!("page/k{n:02}");
        let value = format!("value {n}");
        cluster.cli(&["put", &key, &value]).assert_ok();
        lines.insert(key.clone(), format!("{key}\t{value}"));
    }
    for key in ["page", "pagf/x", "page0"] {
        cluster.cli(&["put", key, "outside"]).assert_ok();
    }
    lines.into_values().collect()
}

#[test]
fn status_json_has_the_contract_fields_for_the_first_endpoint() {
    let cluster = TestCluster::start(bin(), 3);
    let mut leaders = Vec::new();
    for id in cluster.ids() {
        let out =
            cluster.cli_with_endpoints(&cluster.endpoints_starting_with(id), &["status", "--json"]);
        out.assert_ok();
        let text = out.stdout_text();
        assert_eq!(
            text.trim_end().lines().count(),
            1,
            "status --json is one line\n{}",
            out.describe()
        );
        let status: Value = serde_json::from_str(text.trim()).expect("status --json is JSON");
        assert!(status.is_object(), "status --json is an object: {text}");
        for field in ["id", "term", "leader_id", "commit_index", "applied_index"] {
            assert!(status[field].is_u64(), "field {field} is a number: {text}");
        }
        assert_eq!(
            status["id"].as_u64(),
            Some(id),
            "status answers for the FIRST endpoint: {text}"
        );
        let role = status["role"].as_str().expect("role is a string");
        assert!(
            ["leader", "follower", "candidate", "learner", "removed"].contains(&role),
            "role {role:?} is one of the contract's"
        );
        if role == "leader" {
            leaders.push(id);
        }
        let members = status["members"].as_array().expect("members is an array");
        let mut member_ids: Vec<u64> = members
            .iter()
            .map(|m| {
                assert!(m["address"].is_string(), "member has an address: {m}");
                m["id"].as_u64().expect("member has an id")
            })
            .collect();
        member_ids.sort_unstable();
        assert_eq!(member_ids, cluster.ids(), "members of node {id}'s status");
        for member in members {
            let member_id = member["id"].as_u64().unwrap();
            assert_eq!(
                member["address"].as_str(),
                Some(cluster.address(member_id).as_str())
            );
        }
    }
    assert_eq!(
        leaders.len(),
        1,
        "exactly one node reports role leader: {leaders:?}"
    );
    // Without --json it is human text, still success.
    cluster.cli(&["status"]).assert_ok();
}

/// `{"key":"...","value":"..."}` → (key, value).
fn json_pair(line: &str) -> (String, String) {
    let object: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let field = |name: &str| {
        object[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string {name:?} in {line}"))
            .to_string()
    };
    (field("key"), field("value"))
}

/// `watch --prefix --rev`, `get --rev` and `compact` with the real binary:
/// a watch from a past revision prints every change since, one line each;
/// a read at a past revision sees the value then; after `compact` both are
/// refused for older revisions, saying so.
#[test]
fn watch_get_at_a_revision_and_compact() {
    let cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "w/a", "1"]).assert_ok(); // revision 2
    cluster.cli(&["put", "w/b", "2"]).assert_ok(); // 3
    cluster.cli(&["put", "w/a", "3"]).assert_ok(); // 4
    cluster.cli(&["delete", "w/b"]).assert_ok(); // 5
    cluster.cli(&["put", "other", "x"]).assert_ok(); // 6
    let out = cluster.cli_bounded(
        &cluster.endpoints(),
        &["watch", "w/", "--prefix", "--rev", "2"],
        std::time::Duration::from_secs(3),
    );
    assert_eq!(
        out.stdout_text(),
        "PUT\tw/a\t1\nPUT\tw/b\t2\nPUT\tw/a\t3\nDELETE\tw/b\n",
        "{}",
        out.describe()
    );
    assert_eq!(
        cluster
            .cli(&["get", "w/a", "--rev", "3"])
            .assert_ok()
            .stdout,
        b"1\n"
    );
    cluster
        .cli(&["get", "w/b", "--rev", "5"])
        .assert_error(1, "key not found");
    cluster.cli(&["compact", "4"]).assert_ok();
    let out = cluster.cli(&["get", "w/a", "--rev", "3"]);
    out.assert_error(3, "mvcc: required revision has been compacted");
    let out = cluster.cli_bounded(
        &cluster.endpoints(),
        &["watch", "w/", "--prefix", "--rev", "2"],
        std::time::Duration::from_secs(5),
    );
    out.assert_error(3, "watch canceled");
}

/// Conditional puts and leases with the real binary: `put --if-absent`,
/// `--if-version`, `--if-value` write only when the condition holds (exit 1
/// otherwise, nothing written); a key put with `--lease` goes when the
/// lease is revoked.
#[test]
fn conditional_puts_and_leases() {
    let cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "c", "1", "--if-absent"]).assert_ok();
    cluster
        .cli(&["put", "c", "2", "--if-absent"])
        .assert_error(1, "the condition did not hold");
    cluster
        .cli(&["put", "c", "2", "--if-version", "1"])
        .assert_ok();
    cluster
        .cli(&["put", "c", "3", "--if-version", "1"])
        .assert_error(1, "the condition did not hold");
    cluster
        .cli(&["put", "c", "3", "--if-value", "2"])
        .assert_ok();
    assert_eq!(cluster.cli(&["get", "c"]).assert_ok().stdout, b"3\n");
    let granted = cluster
        .cli(&["lease", "grant", "60"])
        .assert_ok()
        .stdout_text();
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease ID granted ...")
        .to_string();
    cluster
        .cli(&["put", "leased", "v", "--lease", &id])
        .assert_ok();
    let ttl = cluster
        .cli(&["lease", "ttl", &id, "--keys"])
        .assert_ok()
        .stdout_text();
    assert!(ttl.contains("[leased]"), "{ttl}");
    // `get --json` names the lease as `lease grant` printed it.
    let got = cluster
        .cli(&["get", "leased", "--json"])
        .assert_ok()
        .stdout_text();
    assert!(got.contains(&format!("\"lease\":\"{id}\"")), "{got}");
    assert!(cluster
        .cli(&["lease", "list"])
        .assert_ok()
        .stdout_text()
        .contains(&id));
    cluster.cli(&["lease", "revoke", &id]).assert_ok();
    cluster
        .cli(&["get", "leased"])
        .assert_error(1, "key not found");
    cluster
        .cli(&["lease", "ttl", &id])
        .assert_error(1, &format!("lease {id} not found"));
    cluster
        .cli(&["put", "x", "v", "--lease", "zz"])
        .assert_error(2, "expected a hex id");
    cluster
        .cli(&["lease", "ttl", "ffffffffffffffff"])
        .assert_error(2, "out of range");
}

/// etcd's automatic compaction by revision: the leader compacts to the
/// current revision minus the retention, so older revisions are refused
/// and the retained ones served.
#[test]
fn auto_compaction_keeps_the_last_revisions() {
    let cluster = TestCluster::start_with(
        bin(),
        1,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "2",
        ],
    );
    for i in 0..6 {
        cluster.cli(&["put", "ac", &i.to_string()]).assert_ok(); // revisions 2..=7
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = cluster.cli(&["get", "ac", "--rev", "2"]);
        if out.code == 3 && out.stderr.contains("compacted") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not compacted in 30 s: {}",
            out.describe()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(
        cluster.cli(&["get", "ac", "--rev", "6"]).assert_ok().stdout,
        b"4\n"
    );
}
