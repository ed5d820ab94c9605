//! Acceptance (issue 23, slow requests) on real processes: a request slower
//! than `--slow-request-threshold` is logged once, with its op, key and value
//! sizes and where its time went, and counted in
//! `raftkv_slow_requests_total`. The disk-fault hook's `fsync-delay` makes
//! writes slow: on the leader the time shows in "propose" (the leader's own
//! log fsync), on the followers in "commit" (the quorum's fsyncs).

mod common;

use std::time::{Duration, Instant};

use raftkv_testkit::TestCluster;

use common::{bin, http_get, sample};

/// The lines of node `id`'s log that contain `needle`, waiting (at most
/// 10 s) for at least one.
fn wait_lines(cluster: &TestCluster, id: u64, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        let lines: Vec<String> = log
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The milliseconds a slow-request line gives `stage` ("propose 401.2ms").
fn stage_ms(line: &str, stage: &str) -> f64 {
    let after = line
        .split(&format!("{stage} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {stage:?} in {line}"));
    after
        .split("ms")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no milliseconds after {stage:?} in {line}"))
}

/// Sets `fsync-delay` on `nodes`, then waits past the hook's reread period
/// (100 ms) so the next fsync takes it.
fn slow_disks(cluster: &TestCluster, nodes: &[u64], rules: &str) {
    for &id in nodes {
        cluster.set_disk_faults(id, rules);
    }
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_write_slowed_by_fsync_is_logged_once_with_where_its_time_went() {
    let cluster = TestCluster::start_with(bin(), 3, &["--slow-request-threshold", "150ms"]);
    cluster.cli(&["put", "slow/warm", "1"]).assert_ok();
    let leader = cluster.leader();
    let followers = cluster.followers();

    // The leader's disk is slow: the time goes to "propose".
    slow_disks(&cluster, &[leader], "fsync-delay 400");
    let value = "v".repeat(777);
    cluster
        .cli_at(leader, &["put", "slow/leader-disk", &value])
        .assert_ok();
    let lines = wait_lines(&cluster, leader, "key 16 B, value 777 B");
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    let line = &lines[0];
    assert!(line.contains("slow request: put took"), "{line}");
    assert!(stage_ms(line, "propose") >= 350.0, "{line}");
    for stage in ["queue", "commit", "apply", "read index", "other"] {
        stage_ms(line, stage);
    }
    slow_disks(&cluster, &[leader], "");

    // The followers' disks are slow: the time goes to "commit".
    slow_disks(&cluster, &followers, "fsync-delay 400");
    let value = "w".repeat(555);
    cluster
        .cli_at(leader, &["put", "slow/follower-disk", &value])
        .assert_ok();
    let lines = wait_lines(&cluster, leader, "key 18 B, value 555 B");
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    assert!(stage_ms(&lines[0], "commit") >= 350.0, "{}", lines[0]);
    slow_disks(&cluster, &followers, "");

    // Counted by op.
    let (_, metrics) = http_get(&cluster.address(leader), "/metrics");
    assert!(
        sample(&metrics, r#"raftkv_slow_requests_total{op="put"}"#) >= 2.0,
        "{metrics}"
    );
}

#[test]
fn a_threshold_of_zero_logs_nothing() {
    let cluster = TestCluster::start_with(bin(), 1, &["--slow-request-threshold", "0"]);
    slow_disks(&cluster, &[1], "fsync-delay 300");
    cluster.cli(&["put", "slow/k", "v"]).assert_ok();
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    assert!(!log.contains("slow request"), "{log}");
    let (_, metrics) = http_get(&cluster.address(1), "/metrics");
    assert!(
        !metrics.contains(r#"raftkv_slow_requests_total{op="put"}"#),
        "{metrics}"
    );
}
