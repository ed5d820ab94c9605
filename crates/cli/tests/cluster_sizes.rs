//! Acceptance: cluster sizes (issue 3) — a 5-node static cluster forms, elects
//! one leader, and keeps serving writes with two nodes (including the leader)
//! killed; a single node is a working cluster of its own.

mod common;

use std::time::{Duration, Instant};

use raftkv_testkit::{CliOutput, TestCluster};

use common::bin;

/// How long a write may keep failing while the survivors elect a leader.
const WRITE_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Runs a CLI write until it succeeds (or the window closes): right after a
/// kill the client may legitimately time out while a new leader is elected.
fn until_ok(cluster: &TestCluster, args: &[&str]) -> CliOutput {
    let started = Instant::now();
    loop {
        let out = cluster.cli(args);
        if out.code == 0 || started.elapsed() > WRITE_RETRY_WINDOW {
            return out;
        }
        eprintln!("retrying {args:?}: {}", out.stderr.trim());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn five_node_cluster_forms_and_survives_two_nodes_killed() {
    let mut cluster = TestCluster::start(bin(), 5);
    for id in cluster.ids() {
        let status = cluster.status(id).unwrap_or_else(|e| cluster.fail(&e));
        let members = status.json["members"].as_array().map(Vec::len);
        assert_eq!(
            members,
            Some(5),
            "node {id} sees 5 members: {}",
            status.json
        );
    }
    cluster.cli(&["put", "before", "5 nodes"]).assert_ok();

    // Take out the leader and one follower: 3 of 5 is still a quorum.
    let old_leader = cluster.leader();
    let follower = cluster.followers()[0];
    let killed_at = Instant::now();
    cluster.kill(old_leader);
    cluster.kill(follower);
    let new_leader = cluster.leader();
    eprintln!(
        "killed {old_leader} and {follower}; new leader {new_leader} after {:?}",
        killed_at.elapsed()
    );
    assert!(![old_leader, follower].contains(&new_leader));

    until_ok(&cluster, &["put", "after", "3 of 5 nodes"]).assert_ok();
    eprintln!(
        "first write after the kills acknowledged {:?} after them",
        killed_at.elapsed()
    );
    assert_eq!(
        cluster.cli(&["get", "before"]).assert_ok().stdout,
        b"5 nodes\n"
    );
    assert_eq!(
        cluster.cli(&["get", "after"]).assert_ok().stdout,
        b"3 of 5 nodes\n"
    );
    for id in cluster.live_ids() {
        cluster.cli_at(id, &["get", "after"]).assert_ok();
    }
}

#[test]
fn single_node_cluster_is_its_own_leader_and_serves() {
    let cluster = TestCluster::start(bin(), 1);
    assert_eq!(cluster.leader(), 1);
    let status = cluster.status(1).unwrap_or_else(|e| cluster.fail(&e));
    assert_eq!(status.role, "leader");
    assert_eq!(status.leader_id, 1);
    cluster.cli(&["put", "solo", "yes"]).assert_ok();
    assert_eq!(cluster.cli(&["get", "solo"]).assert_ok().stdout, b"yes\n");
}
