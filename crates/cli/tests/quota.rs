//! Acceptance (issue 23, space quota) on real processes: with a small
//! `--quota-bytes`, writes are refused with NOSPACE once the state passes
//! it (the alarm shows in `alarm list`, `status` and `/metrics`), reads go
//! on, deletes are taken, and deletes plus compaction plus `alarm disarm`
//! restore writes; while the state is still over the quota a disarmed
//! alarm is raised again by the next write.

mod common;

use raftkv_testkit::TestCluster;
use serde_json::Value;

use common::{bin, http_get, sample};

#[test]
fn writes_stop_at_the_quota_and_resume_after_deletes_compaction_and_disarm() {
    let cluster = TestCluster::start_with(bin(), 3, &["--quota-bytes", "64KiB"]);
    let value = "x".repeat(4000);
    let marker = cluster.cli(&["put", "q/marker", "m", "--json"]);
    marker.assert_ok();
    let got = cluster.cli(&["get", "q/marker", "--json"]);
    let start: Value = serde_json::from_str(got.stdout_text().trim()).unwrap();
    let start_revision = start["mod_revision"].as_u64().unwrap();

    // Fill until refused.
    let mut written = 0u64;
    let refused = loop {
        assert!(
            written < 100,
            "64 KiB of quota took 100 values of 4000 bytes"
        );
        let out = cluster.cli(&["put", &format!("q/{written:03}"), &value]);
        if out.code != 0 {
            break out;
        }
        written += 1;
    };
    assert!(written >= 10, "refused after only {written} puts");
    refused.assert_error(3, "no space: database space exceeded");

    // Reads go on; the alarm shows.
    let got = cluster.cli(&["get", "q/000"]);
    got.assert_ok();
    assert_eq!(got.stdout_text().trim(), value);
    let alarms = cluster.cli(&["alarm", "list"]);
    alarms.assert_ok();
    assert!(
        alarms.stdout_text().contains("alarm:NOSPACE"),
        "{}",
        alarms.describe()
    );
    let leader = cluster.leader();
    let status = cluster.cli_at(leader, &["status"]);
    assert!(
        status.stdout_text().contains("ALARM:         NOSPACE"),
        "{}",
        status.describe()
    );
    let (_, metrics) = http_get(&cluster.address(leader), "/metrics");
    assert_eq!(sample(&metrics, "raftkv_nospace_alarm"), 1.0);

    // Deletes are taken; the history still holds the values until compaction,
    // and the alarm stays until it is disarmed.
    for i in 0..written {
        cluster.cli(&["delete", &format!("q/{i:03}")]).assert_ok();
    }
    cluster
        .cli(&["put", "q/again", "1"])
        .assert_error(3, "database space exceeded");
    let current = start_revision + 2 * written;
    cluster.cli(&["compact", &current.to_string()]).assert_ok();
    cluster.cli(&["alarm", "disarm"]).assert_ok();
    cluster.cli(&["put", "q/again", "1"]).assert_ok();
    let alarms = cluster.cli(&["alarm", "list"]);
    assert!(
        !alarms.stdout_text().contains("NOSPACE"),
        "{}",
        alarms.describe()
    );
    let (_, metrics) = http_get(&cluster.address(cluster.leader()), "/metrics");
    assert_eq!(sample(&metrics, "raftkv_nospace_alarm"), 0.0);
}
