//! Acceptance (issue 23, upgrades) on real processes.
//!
//! A mixed-version cluster: "the next release" is this binary with the test
//! hook `RAFTKV_TEST_NEXT_LOG_VERSION=1`, which applies log entries one
//! version newer than today's build and has an entry kind today's build
//! cannot apply (a put under `test-next-kind/` whose value is stored
//! reversed). A rolling upgrade goes node by node; while any member runs
//! today's build the new kind is refused naming that member and everything
//! else works; once every member runs the next release it is taken and every
//! replica applies it alike. Today's build then can neither join the
//! upgraded cluster nor run a member whose log holds the new kind.
//!
//! And the settings every member must share are checked when a node joins,
//! and a member restarted with others is named in its peers' logs.

mod common;

use std::time::{Duration, Instant};

use raftkv_testkit::TestCluster;
use serde_json::Value;

use common::bin;

const NEXT: (&str, &str) = ("RAFTKV_TEST_NEXT_LOG_VERSION", "1");

fn status_json(cluster: &TestCluster, id: u64) -> Value {
    let out = cluster.cli_at(id, &["status", "--json"]);
    out.assert_ok();
    serde_json::from_str(out.stdout_text().trim()).expect("status --json")
}

/// Waits until node `id` leads and sees the cluster at log `version`.
fn wait_cluster_log_version(cluster: &TestCluster, id: u64, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_json(cluster, id);
        if status["cluster_log_version"].as_u64() == Some(version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never saw the cluster at log version {version}: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGTERM, then a start with whatever build (environment) the node has now.
fn restart_node(cluster: &mut TestCluster, id: u64) {
    cluster.stop(id);
    cluster.restart(id);
    cluster.wait_caught_up(Duration::from_secs(20));
}

fn stale_get(cluster: &TestCluster, id: u64, key: &str) -> String {
    let out = cluster.cli_at(id, &["get", key, "--consistency", "stale"]);
    out.assert_ok();
    out.stdout_text().trim().to_string()
}

#[test]
fn a_new_entry_kind_waits_until_every_member_can_apply_it() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "up/before", "1"]).assert_ok();
    let leader = cluster.leader();
    let status = status_json(&cluster, leader);
    assert_eq!(status["log_version"], 2, "{status}");
    assert_eq!(status["cluster_log_version"], 2, "{status}");

    // Rolling upgrade of two of the three members; one of them leads.
    for id in [1, 2] {
        cluster.set_node_env(id, &[NEXT]);
        restart_node(&mut cluster, id);
    }
    if cluster.leader() != 1 {
        cluster
            .cli(&["cluster", "transfer-leader", "1"])
            .assert_ok();
    }
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)), 1);
    let status = status_json(&cluster, 1);
    assert_eq!(status["log_version"], 3, "{status}");
    assert_eq!(status["cluster_log_version"], 2, "{status}");

    // The mixed cluster serves as before...
    cluster.cli(&["put", "up/mixed", "2"]).assert_ok();
    assert_eq!(stale_get(&cluster, 3, "up/mixed"), "2");
    // ...but refuses the entry kind member 3 could not apply, naming it.
    let refused = cluster.cli(&["put", "test-next-kind/a", "abc"]);
    refused.assert_error(3, "member 3 runs a build that applies up to log version 2");
    assert!(
        refused.stderr.contains("upgrade every member first"),
        "{}",
        refused.describe()
    );

    // The last member upgraded: the cluster moves to the new version, and
    // every replica applies the new kind alike.
    cluster.set_node_env(3, &[NEXT]);
    restart_node(&mut cluster, 3);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    wait_cluster_log_version(&cluster, leader, 3);
    cluster.cli(&["put", "test-next-kind/a", "abc"]).assert_ok();
    cluster.wait_caught_up(Duration::from_secs(20));
    for id in cluster.ids() {
        assert_eq!(
            stale_get(&cluster, id, "test-next-kind/a"),
            "cba",
            "node {id} applied the new kind"
        );
        assert_eq!(stale_get(&cluster, id, "up/before"), "1");
    }
    let check = cluster.cli(&["debug", "check"]);
    check.assert_ok();

    // Today's build cannot join a cluster whose log is at the next version.
    let old = cluster.add_joining_node(leader, false);
    let failed = cluster.start_expecting_failure(old, Duration::from_secs(30));
    assert!(failed.exited, "today's build was let in:\n{}", failed.log);
    assert_ne!(failed.code, Some(0), "{}", failed.log);
    assert!(
        failed
            .log
            .contains("applies log entries up to version 2, and the cluster's log is at version 3"),
        "{}",
        failed.log
    );

    // Nor can a member go back to today's build past an entry it cannot
    // apply: it stops at that entry, saying which build it needs.
    let back = cluster.followers()[0];
    cluster.kill(back);
    cluster.set_node_env(back, &[]);
    let failed = cluster.start_expecting_failure(back, Duration::from_secs(30));
    assert!(
        failed.exited,
        "a downgraded member kept running:\n{}",
        failed.log
    );
    assert_ne!(failed.code, Some(0), "{}", failed.log);
    assert!(
        failed
            .log
            .contains("has log version 3, and this build applies only up to log version 2"),
        "{}",
        failed.log
    );
}

#[test]
fn members_must_share_their_settings() {
    let mut cluster = TestCluster::start(bin(), 3);
    // A node joining with another --max-value-size is refused, naming it.
    let id = cluster.add_joining_node(1, false);
    cluster.next_start_with(id, &["--max-value-size", "1MiB"]);
    let failed = cluster.start_expecting_failure(id, Duration::from_secs(30));
    assert!(failed.exited, "the joiner was let in:\n{}", failed.log);
    assert_ne!(failed.code, Some(0), "{}", failed.log);
    assert!(
        failed
            .log
            .contains("this node's settings differ from the cluster's"),
        "{}",
        failed.log
    );
    assert!(
        failed
            .log
            .contains("--max-value-size is 1MiB on this node and 128MiB on member"),
        "{}",
        failed.log
    );
    // Nothing was added: the cluster still has its three members.
    let status = status_json(&cluster, 1);
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );

    // A member restarted with another --max-value-size is taken (a
    // setting is changed by restarting every member in turn), and the
    // members it talks to (the leader) say in their logs that it differs.
    cluster.stop(3);
    cluster.restart_with(3, &["--max-value-size", "64MiB"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let said = [1, 2].iter().any(|&id| {
            let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
            log.contains(&format!(
                "node 3 runs with other settings than this node: --max-value-size is 64MiB on \
                 node 3 and 128MiB on this node ({id})"
            ))
        });
        if said {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "neither node 1 nor node 2 said that node 3 runs with other settings"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
