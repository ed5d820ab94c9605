//! Acceptance (issue 23, corruption alarms) on real processes: a follower
//! whose state is changed behind the log's back (the test-only hook) is
//! found by the leader's periodic check within an interval or so: the
//! CORRUPT alarm names it in `status`, in `/metrics`
//! (`raftkv_corruption_alarm`) and in etcd's `Alarm` API, while the healthy
//! cluster raised none.

mod common;

use std::time::Duration;

use raftkv_testkit::{poll_until, TestCluster};

use common::{bin, http_get, sample};

#[test]
fn a_corrupted_follower_raises_the_alarm_naming_it() {
    let cluster = TestCluster::start_with(bin(), 3, &["--corruption-check-interval", "1s"]);
    for i in 0..10 {
        cluster
            .cli(&["put", &format!("c/{i}"), &format!("v{i}")])
            .assert_ok();
    }
    let leader = cluster.leader();
    // Healthy: a few intervals pass without an alarm.
    std::thread::sleep(Duration::from_secs(3));
    let status = cluster.status(leader).unwrap();
    assert_eq!(
        status.json["alarms"],
        serde_json::json!([]),
        "{}",
        status.json
    );
    let (_, metrics) = http_get(&cluster.address(leader), "/metrics");
    assert_eq!(sample(&metrics, "raftkv_corruption_alarm"), 0.0);

    let victim = cluster.followers()[0];
    cluster.corrupt(victim, "c/3");
    let alarm = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let leader = cluster.leader();
        let status = cluster.status(leader).ok()?;
        let alarms = status.json["alarms"].as_array()?.clone();
        alarms
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.starts_with("CORRUPT"))
            .map(|a| (leader, a.to_string()))
    });
    let (leader, alarm) =
        alarm.unwrap_or_else(|_| cluster.fail("no CORRUPT alarm 20 s after the corruption"));
    assert!(
        alarm.contains(&format!("node {victim} at {}", cluster.address(victim))),
        "{alarm}"
    );
    let text = cluster.cli_at(leader, &["status"]);
    assert!(
        text.stdout_text().contains("ALARM:         CORRUPT"),
        "{}",
        text.describe()
    );
    let (_, metrics) = http_get(&cluster.address(leader), "/metrics");
    assert_eq!(sample(&metrics, "raftkv_corruption_alarm"), 1.0);
    if std::path::Path::new("/usr/bin/etcdctl").exists() {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &cluster.address(leader), "alarm", "list"])
            .output()
            .expect("etcdctl runs");
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            listed.contains("alarm:CORRUPT"),
            "etcdctl alarm list: {listed}"
        );
    }
}
