//! Acceptance: consistency under faults (issue 6), bounded mode. Each
//! scenario runs 6 clients doing puts, gets (linearizable and lease),
//! deletes and scans on 3 contended keys, and 3 clients of a register
//! workload (read, write, compare-and-swap through etcd `Txn`s, spread over
//! every member: issue 21) on 2 keys, against real servers while a
//! nemesis injects one fault and heals it; then every node must converge to
//! one state hash and the recorded history must be linearizable (checker in
//! `raftkv_testkit::history`). The long mode is `examples/soak.rs`.

mod common;

use std::time::Duration;

use raftkv_testkit::history::{check, Verdict};
use raftkv_testkit::jepsen::{run_scenario, Scenario, Timing, Workload, WorkloadConfig};
use raftkv_testkit::TestCluster;

use common::bin;

async fn scenario(scenario: Scenario) {
    let report = run_scenario(
        &bin(),
        scenario,
        Timing::default(),
        &WorkloadConfig::default(),
    )
    .await;
    assert!(
        report.ok > 50,
        "too few operations succeeded to say anything: {}",
        report.summary()
    );
    assert!(
        report.swaps.0 > 5 && report.swaps.1 > 5,
        "the register workload must both win and lose swaps: {}",
        report.summary()
    );
    if let Err(e) = &report.converged {
        panic!("{}: replicas did not converge: {e}", scenario.name());
    }
    match &report.verdict {
        Verdict::Linearizable => {}
        Verdict::Violation(text) => panic!("{}: {text}", scenario.name()),
        Verdict::Unknown(why) => panic!("{}: checker gave up: {why}", scenario.name()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_is_linearizable() {
    scenario(Scenario::LeaderCrash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitioned_from_the_majority_is_linearizable() {
    scenario(Scenario::LeaderPartition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_crash_is_linearizable() {
    scenario(Scenario::FollowerCrash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_partition_is_linearizable() {
    scenario(Scenario::FollowerPartition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_down_is_linearizable() {
    scenario(Scenario::TwoOfFiveDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_delay_is_linearizable() {
    scenario(Scenario::Delay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_loss_is_linearizable() {
    scenario(Scenario::Loss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_past_the_election_timeout_is_linearizable() {
    scenario(Scenario::LeaderPause).await;
}

/// The checker is not vacuous for swaps either: a client whose
/// compare-and-swap compares on a stale read and then puts apart from it
/// (two clients can both swap from one value) is caught, on a healthy
/// cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_compare_and_swap_on_a_stale_read() {
    let cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(Duration::from_secs(10));
    let config = WorkloadConfig {
        clients: 0,
        cas_clients: 6,
        registers: 1,
        broken_cas: true,
        ..Default::default()
    };
    let workload = Workload::start(&cluster.endpoint_list(), &config);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let history = workload.stop().await;
    match tokio::task::block_in_place(|| check(&history)) {
        Verdict::Violation(text) => eprintln!("caught, as expected:\n{text}"),
        other => panic!(
            "broken swaps went unnoticed ({} ops): {other:?}",
            history.len()
        ),
    }
}

/// The checker is not vacuous: stale reads from a partitioned follower,
/// run through the same workload and checker, are caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_stale_reads_from_a_partitioned_follower() {
    let cluster = TestCluster::start(bin(), 3);
    let leader = cluster.leader();
    let follower = *cluster.ids().iter().find(|id| **id != leader).unwrap();
    cluster.isolate(follower);
    let config = WorkloadConfig {
        stale_reads_from: Some(cluster.address(follower)),
        ..Default::default()
    };
    let workload = Workload::start(&cluster.endpoint_list(), &config);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let history = workload.stop().await;
    cluster.heal();
    match tokio::task::block_in_place(|| check(&history)) {
        Verdict::Violation(text) => eprintln!("caught, as expected:\n{text}"),
        other => panic!(
            "stale reads from an isolated follower went unnoticed ({} ops): {other:?}",
            history.len()
        ),
    }
}
