//! Acceptance (issue 23, disaster recovery) on real processes: a 3-node
//! cluster loses two data dirs for good; `raftkv server --force-new-cluster`
//! on the survivor serves its data as a one-member cluster under a new
//! cluster id, two fresh nodes join and the cluster is back to three
//! voters, and the third old member, started with its old data dir, is
//! refused as another cluster's. While the quorum lives, the flag is refused.

mod common;

use std::time::Duration;

use raftkv_testkit::{poll_until, TestCluster};
use serde_json::Value;

use common::bin;

fn voters(cluster: &TestCluster) -> Option<Vec<u64>> {
    let out = cluster.cli(&["cluster", "members", "--json", "--timeout", "2s"]);
    let json: Value = serde_json::from_str(out.stdout_text().trim()).ok()?;
    let mut ids: Vec<u64> = json["members"]
        .as_array()?
        .iter()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["id"].as_u64())
        .collect();
    ids.sort_unstable();
    Some(ids)
}

#[test]
fn a_survivor_forced_into_a_new_cluster_serves_its_data_and_takes_new_members() {
    let mut cluster = TestCluster::start(bin(), 3);
    for i in 0..20 {
        cluster
            .cli(&["put", &format!("dr/{i:02}"), &format!("v{i}")])
            .assert_ok();
    }
    let old_id = cluster.status(1).unwrap().json["cluster_id"].clone();
    cluster.wait_caught_up(Duration::from_secs(20));

    // While the others answer with a leader, the flag is refused.
    cluster.kill(1);
    cluster.next_start_with(1, &["--force-new-cluster"]);
    let refused = cluster.start_expecting_failure(1, Duration::from_secs(20));
    assert!(
        refused.log.contains("quorum is not lost"),
        "{}",
        refused.log
    );

    // Two data dirs gone for good.
    for id in [2, 3] {
        cluster.kill(id);
    }
    cluster.wipe(2);
    cluster.set_removed(2);
    cluster.set_removed(3);
    cluster.restart_with(1, &["--force-new-cluster"]);
    cluster.wait_leader(Duration::from_secs(20));
    for i in [0, 7, 19] {
        let got = cluster.cli(&["get", &format!("dr/{i:02}")]);
        got.assert_ok();
        assert_eq!(got.stdout_text().trim(), format!("v{i}"));
    }
    let new_id = cluster.status(1).unwrap().json["cluster_id"].clone();
    assert_ne!(new_id, old_id, "a new cluster id");
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    assert!(
        log.contains("becomes the only member of a NEW cluster"),
        "logged loudly"
    );

    // Two fresh nodes join: three voters again.
    let a = cluster.join_node(1, false);
    let b = cluster.join_node(1, false);
    poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        (voters(&cluster)? == vec![1, a, b]).then_some(())
    })
    .unwrap_or_else(|_| cluster.fail("the cluster did not get back to three voters"));
    cluster.cli(&["put", "dr/after", "x"]).assert_ok();
    let got = cluster.cli_at(a, &["get", "dr/07", "--consistency", "stale"]);
    assert_eq!(got.stdout_text().trim(), "v7");

    // The old member 3 comes back with its old data dir: refused.
    cluster.restart(3);
    poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let status = cluster.status(3).ok()?;
        let problem = status.json["problem"].as_str()?.to_string();
        problem.contains("cluster").then_some(())
    })
    .unwrap_or_else(|_| cluster.fail("old member 3 was not told it is another cluster's"));
    assert_eq!(voters(&cluster).unwrap(), vec![1, a, b]);

    // The flag left on a later start is refused: it would fork the cluster.
    cluster.kill(1);
    cluster.next_start_with(1, &["--force-new-cluster"]);
    let again = cluster.start_expecting_failure(1, Duration::from_secs(20));
    assert!(
        again
            .log
            .contains("was made a new cluster by --force-new-cluster already"),
        "{}",
        again.log
    );
    cluster.restart(1);
    cluster.wait_leader(Duration::from_secs(20));

    // The old data dir was kept beside the new one.
    let data_dir = cluster.data_dir(1);
    let kept = data_dir.with_file_name("data.before-force-new-cluster");
    assert!(kept.join("raftkv.id").exists(), "{} kept", kept.display());
}
