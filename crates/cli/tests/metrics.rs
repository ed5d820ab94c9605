//! Acceptance: `GET /metrics` and `GET /health` on a node's port (issue 7):
//! every metric family the operator dashboard needs is there, and the
//! counters move with the traffic.

mod common;

use std::time::Duration;

use raftkv_testkit::TestCluster;

use common::{bin, http_get, sample};

const FAMILIES: &[&str] = &[
    "raftkv_raft_term",
    "raftkv_raft_is_leader",
    "raftkv_raft_leader_changes_total",
    "raftkv_raft_election_duration_seconds",
    "raftkv_raft_commit_index",
    "raftkv_raft_applied_index",
    "raftkv_replication_match_index",
    "raftkv_replication_lag_entries",
    "raftkv_peer_reachable",
    "raftkv_cluster_members",
    "raftkv_wal_segments",
    "raftkv_wal_disk_bytes",
    "raftkv_log_first_index",
    "raftkv_snapshot_index",
    "raftkv_snapshot_bytes",
    "raftkv_keys",
    "raftkv_data_bytes",
    "raftkv_requests_total",
    "raftkv_request_duration_seconds",
    "raftkv_network_peer_sent_bytes_total",
    "raftkv_network_peer_received_bytes_total",
    "raftkv_process_cpu_seconds_total",
    "raftkv_process_resident_memory_bytes",
    "raftkv_process_open_fds",
    "raftkv_wal_sync_duration_seconds",
    "raftkv_wal_entries_per_sync",
    "raftkv_peer_messages_rejected_total",
];

#[test]
fn metrics_and_health_are_served_and_move_with_traffic() {
    let cluster = TestCluster::start(bin(), 3);
    let leader = cluster.leader();
    let address = cluster.address(leader);
    cluster.cli(&["put", "m/0", "x"]).assert_ok();
    let (code, before) = http_get(&address, "/metrics");
    assert_eq!(code, 200, "{before}");
    for family in FAMILIES {
        assert!(
            before.contains(&format!("# TYPE {family} ")),
            "metric {family} missing:\n{before}"
        );
    }
    let puts_before = sample(&before, r#"raftkv_requests_total{op="put",result="ok"}"#);
    let sent_before = sample(&before, "raftkv_network_peer_sent_bytes_total");
    let applied_before = sample(&before, "raftkv_raft_applied_index");
    let syncs_before = sample(&before, "raftkv_wal_sync_duration_seconds_count");
    let synced_entries_before = sample(&before, "raftkv_wal_entries_per_sync_sum");
    for i in 0..20 {
        cluster
            .cli(&["put", &format!("m/{i}"), "value"])
            .assert_ok();
    }
    cluster.cli(&["get", "m/missing"]).assert_code(1);
    let (_, after) = http_get(&address, "/metrics");
    assert_eq!(
        sample(&after, r#"raftkv_requests_total{op="put",result="ok"}"#),
        puts_before + 20.0
    );
    assert!(
        sample(
            &after,
            r#"raftkv_requests_total{op="get",result="not_found"}"#
        ) >= 1.0
    );
    assert!(sample(&after, "raftkv_network_peer_sent_bytes_total") > sent_before);
    assert!(sample(&after, "raftkv_raft_applied_index") >= applied_before + 20.0);
    // One put at a time: each waited for at least one WAL write + fdatasync
    // on the leader, which made its entry durable.
    assert!(sample(&after, "raftkv_wal_sync_duration_seconds_count") >= syncs_before + 20.0);
    assert!(sample(&after, "raftkv_wal_entries_per_sync_sum") >= synced_entries_before + 20.0);
    assert_eq!(sample(&after, "raftkv_raft_is_leader"), 1.0);
    assert_eq!(sample(&after, "raftkv_keys"), 20.0);
    assert!(sample(&after, "raftkv_process_resident_memory_bytes") > 0.0);
    assert!(
        after.contains("raftkv_replication_match_index{peer="),
        "{after}"
    );

    // Every metric the Grafana dashboard in the repo queries exists.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../ops/grafana/raftkv-dashboard.json"
    ))
    .expect("dashboard JSON");
    let mut queried = 0;
    for (at, _) in dashboard.match_indices("raftkv_") {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.as_str(), |n, suffix| {
                n.strip_suffix(suffix).unwrap_or(n)
            });
        assert!(
            after.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which /metrics does not have"
        );
        queried += 1;
    }
    assert!(queried >= 12, "the dashboard queries {queried} metrics");

    for id in cluster.ids() {
        let (code, body) = http_get(&cluster.address(id), "/health");
        assert_eq!(code, 200, "node {id}: {body}");
        assert!(body.contains(r#""status":"ok""#), "node {id}: {body}");
    }
}

#[test]
fn followers_fdatasync_only_to_make_entries_durable() {
    // A commit index that moved on its own (carried by a heartbeat or an
    // empty append) is not worth a disk flush: it is written with the next
    // entries. So on a follower nearly every WAL sync carries entries.
    let cluster = TestCluster::start(bin(), 3);
    let leader = cluster.leader();
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    let address = cluster.address(follower);
    cluster.cli(&["put", "f/0", "x"]).assert_ok();
    let (_, before) = http_get(&address, "/metrics");
    let syncs_before = sample(&before, "raftkv_wal_sync_duration_seconds_count");
    let entry_syncs_before = sample(&before, "raftkv_wal_entries_per_sync_count");
    let entries_before = sample(&before, "raftkv_wal_entries_per_sync_sum");
    for i in 0..30 {
        cluster
            .cli(&["put", &format!("f/{i}"), "value"])
            .assert_ok();
    }
    // This follower may not be in the quorum that acknowledged the puts:
    // wait until it has made all 30 entries durable too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (_, after) = http_get(&address, "/metrics");
        if sample(&after, "raftkv_wal_entries_per_sync_sum") - entries_before >= 30.0 {
            break after;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not sync the 30 entries:\n{after}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let syncs = sample(&after, "raftkv_wal_sync_duration_seconds_count") - syncs_before;
    let entry_syncs = sample(&after, "raftkv_wal_entries_per_sync_count") - entry_syncs_before;
    // Each put also moved the commit index; at most an election's worth
    // (term and vote) of syncs without entries.
    assert!(
        syncs - entry_syncs <= 3.0,
        "{syncs} syncs, {entry_syncs} with entries"
    );
}

#[test]
fn with_metrics_listen_the_probes_move_and_the_main_port_says_where() {
    let port = raftkv_testkit::free_ports(1)[0];
    let metrics_address = format!("127.0.0.1:{port}");
    let cluster = TestCluster::start_with(bin(), 1, &["--metrics-listen", &metrics_address]);
    for path in ["/metrics", "/health", "/livez", "/readyz"] {
        let (code, body) = http_get(&metrics_address, path);
        assert_eq!(code, 200, "{path} on --metrics-listen: {body}");
        // The main port must not let a probe take gRPC's answer for "ready".
        let (code, body) = http_get(&cluster.address(1), path);
        assert_eq!(code, 404, "{path} on the main port: {body}");
        assert!(body.contains(&metrics_address), "{path}: {body}");
    }
}
