//! Acceptance: restarts (issue 3) — after `kill -9` of every node mid-load and
//! a restart on the same data dirs, every acknowledged write is there, on a
//! 3-node cluster and on a single node.

mod common;

use std::time::Duration;

use raftkv_client::Consistency;
use raftkv_testkit::TestCluster;

use common::{assert_all_acked_present, bin, scan_all, Writer};

/// Kills every node while a writer runs, restarts them all, and checks that
/// each acknowledged write survived.
async fn kill_all_mid_load_then_restart(nodes: usize) {
    let mut cluster = TestCluster::start(bin(), nodes);
    let writer = Writer::spawn(cluster.client(), "rs/");
    writer.wait_for_acks(200, Duration::from_secs(60)).await;
    // kill -9 with writes in flight: whatever was acknowledged is on disk.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    let report = writer.stop().await;
    eprintln!("{} writes acknowledged before the kill", report.acked.len());

    for id in cluster.ids() {
        cluster.restart(id);
    }
    let leader = cluster.leader();
    eprintln!("leader after restart: {leader}");
    let client = cluster.client();
    let state = scan_all(&client, "rs/", Consistency::Linearizable).await;
    assert_all_acked_present(&report.acked, &state, "after restarting every node");
    // Unacknowledged writes may or may not be there, but nothing else is.
    assert!(
        state.len() <= report.acked.len() + 1,
        "at most the one in-flight write is extra"
    );

    // And it works as before: a new write on the restarted cluster.
    client
        .put("rs/after-restart", "yes")
        .await
        .expect("put after restart");
    assert_eq!(
        client
            .get("rs/after-restart")
            .await
            .expect("get after restart"),
        "yes".as_bytes()
    );
    if nodes > 1 {
        cluster.wait_caught_up(Duration::from_secs(60));
        for id in cluster.ids() {
            let node_state = scan_all(&cluster.client_at(id), "rs/", Consistency::Stale).await;
            assert_eq!(
                node_state.len(),
                state.len() + 1,
                "node {id} has every key after restart"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_killed_mid_load_keep_every_acknowledged_write() {
    kill_all_mid_load_then_restart(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_killed_mid_load_keeps_every_acknowledged_write() {
    kill_all_mid_load_then_restart(1).await;
}
