//! Clusters can tell each other apart. Two clusters bootstrapped with the
//! same flags (ports, ids, peers) get different ids; a node started on a data
//! dir of another cluster is refused by the members and refuses them, serves
//! no client request (stale reads included) and says why, and `debug check`
//! reports the mismatch with a non-zero exit.

mod common;

use std::time::{Duration, Instant};

use raftkv_testkit::{poll_until, TestCluster};
use serde_json::Value;

use common::http_get;
use common::{bin, copy_dir};

const WAIT: Duration = Duration::from_secs(20);

/// Node `id`'s adopted cluster id (`status --json`), once it has one.
fn cluster_id(cluster: &TestCluster, id: u64) -> String {
    poll_until(WAIT, Duration::from_millis(100), || {
        let status = cluster.status(id).ok()?;
        let cluster_id = status.json["cluster_id"].as_str()?.to_string();
        (!cluster_id.trim_start_matches('0').is_empty()).then_some(cluster_id)
    })
    .unwrap_or_else(|_| cluster.fail(&format!("node {id} adopted no cluster id")))
}

#[test]
fn two_clusters_bootstrapped_with_the_same_flags_get_different_ids() {
    let mut cluster = TestCluster::start(bin(), 3);
    let first: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster_id(&cluster, *id))
        .collect();
    assert!(first.iter().all(|c| *c == first[0]), "one id: {first:?}");
    for id in cluster.ids() {
        cluster.kill(id);
        cluster.wipe(id);
    }
    // The same command lines, on the same ports: a new cluster.
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_leader(WAIT);
    let second: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster_id(&cluster, *id))
        .collect();
    assert!(second.iter().all(|c| *c == second[0]), "one id: {second:?}");
    assert_ne!(
        first[0], second[0],
        "two bootstraps with the same flags share an id"
    );
}

/// Polls node 3 with stale reads of the first cluster's key from now until it
/// says it is cut off from another cluster; it must never serve the key.
fn refuse_old_data(cluster: &TestCluster) -> raftkv_testkit::CliOutput {
    let started = Instant::now();
    // It never serves the old data: not even a stale read, from its start on.
    loop {
        let out = cluster.cli_at(
            3,
            &["get", "old", "--consistency", "stale", "--timeout", "1s"],
        );
        assert_ne!(
            out.code,
            0,
            "node 3 served the first cluster's data to a client of the second\n{}",
            out.describe()
        );
        if out.stderr.contains("another cluster") {
            break out;
        }
        assert!(
            started.elapsed() < WAIT,
            "node 3 never said why: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_with_another_cluster_s_data_dir_never_serves_it() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster
        .cli(&["put", "old", "from the first cluster"])
        .assert_ok();
    // Later writes make node 3's commit of "old" durable (a commit index is
    // synced with the next entries), so it holds "old" after a restart.
    for i in 0..3 {
        cluster
            .cli(&["put", &format!("later/{i}"), "x"])
            .assert_ok();
    }
    let old_id = cluster_id(&cluster, 1);
    cluster.wait_caught_up(WAIT);
    for id in cluster.ids() {
        cluster.kill(id);
    }
    let saved = cluster.dir().join("node-3-old-data");
    copy_dir(&cluster.data_dir(3), &saved);
    for id in cluster.ids() {
        cluster.wipe(id);
    }
    // A new cluster of nodes 1 and 2 with the same flags...
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_leader(WAIT);
    cluster
        .cli(&["put", "new", "from the second cluster"])
        .assert_ok();
    let new_id = cluster_id(&cluster, 1);
    assert_ne!(old_id, new_id);
    // ... and node 3 on the first cluster's data dir.
    copy_dir(&saved, &cluster.data_dir(3));
    cluster.restart(3);
    let refused = refuse_old_data(&cluster);
    assert!(refused.stderr.contains(&new_id), "{}", refused.describe());
    // It says why in status and /health.
    let status = cluster.status(3).unwrap_or_else(|e| cluster.fail(&e));
    let problem = status.json["problem"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        problem.contains("another cluster"),
        "status: {}",
        status.json
    );
    let (code, body) = http_get(&cluster.address(3), "/health");
    assert_eq!(code, 503, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert!(health["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("another cluster"));
    // The members refuse it and say so; the second cluster never sees the old data.
    let members_refused = poll_until(WAIT, Duration::from_millis(200), || {
        let log = std::fs::read_to_string(cluster.log_path(1)).unwrap_or_default();
        log.contains("refused raft traffic from node 3")
            .then_some(())
    });
    assert!(members_refused.is_ok(), "node 1 logs its refusal of node 3");
    let node3_log = std::fs::read_to_string(cluster.log_path(3)).unwrap_or_default();
    assert!(
        node3_log.contains("cluster id mismatch"),
        "node 3 logs that its peers refused it"
    );
    cluster.cli(&["get", "old"]).assert_code(1);
    for id in [1, 2] {
        cluster
            .cli_at(id, &["get", "old", "--consistency", "stale"])
            .assert_code(1);
    }
    // `debug check` sees it and fails.
    let out = cluster.cli(&["debug", "check", "--timeout", "3s"]);
    assert_eq!(out.code, 3, "{}", out.describe());
    assert!(out.stdout_text().contains("verdict:"), "{}", out.describe());
    assert!(
        out.stderr.contains("MISMATCH") || out.stderr.contains("unreachable"),
        "{}",
        out.describe()
    );
}

/// The same, with the old node started first, alone for a while: the new
/// cluster's nodes, which have no cluster id yet when they first reach it, do
/// not vouch for its data.
#[test]
fn a_node_with_another_cluster_s_data_dir_started_first_never_serves_it() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster
        .cli(&["put", "old", "from the first cluster"])
        .assert_ok();
    // Later writes make node 3's commit of "old" durable (a commit index is
    // synced with the next entries), so it holds "old" after a restart.
    for i in 0..3 {
        cluster
            .cli(&["put", &format!("later/{i}"), "x"])
            .assert_ok();
    }
    cluster.wait_caught_up(WAIT);
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in [1, 2] {
        cluster.wipe(id);
    }
    cluster.restart(3);
    cluster.set_removed(3); // not of the new cluster, for the kit's leader checks
                            // Alone, with its peers down, it has heard from no member since it
                            // started: it serves nothing; and once the new cluster's nodes run, never.
    std::thread::sleep(Duration::from_millis(1500));
    cluster
        .cli_at(3, &["get", "old", "--consistency", "stale"])
        .assert_error(3, "has not heard from a member of its cluster");
    cluster.restart(1);
    cluster.restart(2);
    let refused = refuse_old_data(&cluster);
    assert!(refused.stderr.contains("another cluster"));
    cluster.wait_leader(WAIT);
    cluster.cli_at(1, &["get", "old"]).assert_code(1);
}
