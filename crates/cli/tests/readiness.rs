//! Acceptance (issue 23, readiness) on real processes: `/livez` answers while
//! the process serves; `/readyz` and the gRPC health service
//! (`grpc.health.v1`) say ready when the node knows a leader and has applied
//! what the cluster committed, and not ready on a node without a leader or
//! far behind (a follower whose disk the fault hook makes slow while writes
//! go on).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftkv_testkit::{poll_until, TestCluster};
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use common::{bin, grpc_channel, http_get};

/// `/readyz` of node `id`: the status code and the JSON body.
fn readyz(cluster: &TestCluster, id: u64) -> (u16, Value) {
    let (code, body) = http_get(&cluster.address(id), "/readyz");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code, json)
}

/// The gRPC health status of the whole server (service "").
async fn grpc_health(address: &str) -> i32 {
    let mut client = HealthClient::new(grpc_channel(address).await);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    client
        .check(request)
        .await
        .expect("health check answers")
        .into_inner()
        .status
}

/// Waits (up to 10 s) until the gRPC health status of node `id` is
/// `status` (it follows `/readyz` within a fraction of a second).
async fn wait_grpc_health(cluster: &TestCluster, id: u64, status: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while grpc_health(&cluster.address(id)).await != status as i32 {
        if tokio::time::Instant::now() > deadline {
            cluster.fail(&format!(
                "node {id}: gRPC health not {status:?} within 10 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to `within`) until `/readyz` of `id` answers `code`; the body.
fn wait_readyz(cluster: &TestCluster, id: u64, code: u16, within: Duration) -> Value {
    poll_until(within, Duration::from_millis(100), || {
        let (got, body) = readyz(cluster, id);
        (got == code).then_some(body)
    })
    .unwrap_or_else(|_| {
        let (got, body) = readyz(cluster, id);
        cluster.fail(&format!(
            "node {id}: /readyz stayed {got} ({body}), expected {code} within {within:?}"
        ))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_with_a_leader_and_caught_up() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "ready/k", "v"]).assert_ok();

    // A healthy cluster: every node live and ready, on HTTP and gRPC.
    for id in cluster.ids() {
        let (code, _) = http_get(&cluster.address(id), "/livez");
        assert_eq!(code, 200, "node {id} /livez");
        let body = wait_readyz(&cluster, id, 200, Duration::from_secs(10));
        assert_eq!(body["status"], "ready", "node {id}: {body}");
        wait_grpc_health(&cluster, id, ServingStatus::Serving).await;
    }

    // Far behind: a follower whose every fsync takes 20 s falls behind
    // while writes go on, and is not ready until it has caught up.
    let slow = cluster.followers()[0];
    cluster.set_disk_faults(slow, "fsync-delay 20000");
    let client = cluster.client();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while writing.load(Ordering::Relaxed) {
                let puts = (0..32).map(|i| client.put(format!("ready/w{n}-{i}"), "x"));
                for result in futures::future::join_all(puts).await {
                    result.expect("the other two nodes take writes");
                }
                n += 1;
            }
        })
    };
    // (Blocking polls: the writer goes on on the other worker.)
    let behind =
        tokio::task::block_in_place(|| wait_readyz(&cluster, slow, 503, Duration::from_secs(60)));
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
    let reason = behind["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("behind"), "{behind}");
    // Still live, and the others still ready.
    assert_eq!(http_get(&cluster.address(slow), "/livez").0, 200);
    for id in cluster.ids().into_iter().filter(|id| *id != slow) {
        assert_eq!(readyz(&cluster, id).0, 200, "node {id}");
    }
    cluster.set_disk_faults(slow, "");
    wait_readyz(&cluster, slow, 200, Duration::from_secs(90));

    // Without a leader: the last node of three left is not ready.
    let survivor = cluster.ids()[0];
    for id in cluster.ids().into_iter().filter(|id| *id != survivor) {
        cluster.kill(id);
    }
    let body = wait_readyz(&cluster, survivor, 503, Duration::from_secs(20));
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no leader"),
        "{body}"
    );
    wait_grpc_health(&cluster, survivor, ServingStatus::NotServing).await;
    assert_eq!(http_get(&cluster.address(survivor), "/livez").0, 200);
}
