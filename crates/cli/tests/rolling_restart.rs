//! Acceptance (issue 23, rolling restart): every node of a 3-node cluster is
//! stopped as an operator stops it (SIGTERM) and started again, one at a
//! time and the leader last, while 8 clients write and read: no request
//! fails (a leader hands leadership over before it exits; the client library
//! retries what may be retried), and every acknowledged write is there
//! afterwards. The longest request of the run is printed: the pause a client
//! saw (BENCHMARKS.md records it from a release build).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_client::Consistency;
use raftkv_testkit::{poll_until, TestCluster};

use common::{bin, http_get, scan_all};

const CLIENTS: usize = 8;

/// What one client saw: its acknowledged writes, its failed requests, and
/// its longest request.
struct Seen {
    acked: Vec<(String, String)>,
    failures: Vec<String>,
    longest: Duration,
}

/// Puts a new key, then reads back the last acknowledged one, until told
/// to stop.
async fn client_loop(client: raftkv_client::Client, c: usize, running: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen {
        acked: Vec::new(),
        failures: Vec::new(),
        longest: Duration::ZERO,
    };
    let mut n = 0u64;
    while running.load(Ordering::Relaxed) {
        let (key, value) = (format!("roll/{c}/{n:06}"), format!("v{n}"));
        let started = Instant::now();
        match client.put(key.clone(), value.clone()).await {
            Ok(()) => seen.acked.push((key, value)),
            Err(e) => seen.failures.push(format!("put {key}: {e}")),
        }
        seen.longest = seen.longest.max(started.elapsed());
        if let Some((key, value)) = seen.acked.last() {
            let started = Instant::now();
            match client.get(key.clone()).await {
                Ok(got) if got == value.as_bytes() => {}
                Ok(got) => seen
                    .failures
                    .push(format!("get {key}: {got:?}, expected {value}")),
                Err(e) => seen.failures.push(format!("get {key}: {e}")),
            }
            seen.longest = seen.longest.max(started.elapsed());
        }
        n += 1;
    }
    seen
}

/// Waits until node `id` says it is ready (knows a leader, caught up).
fn wait_ready(cluster: &TestCluster, id: u64) {
    poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        (http_get(&cluster.address(id), "/readyz").0 == 200).then_some(())
    })
    .unwrap_or_else(|_| cluster.fail(&format!("node {id} not ready 30 s after its restart")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_request() {
    let mut cluster = TestCluster::start(bin(), 3);
    let running = Arc::new(AtomicBool::new(true));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client_loop(cluster.client(), c, running.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let leader = cluster.leader();
    let mut order = cluster.followers();
    order.push(leader);
    for id in order {
        // (Blocking: the clients go on on the other worker.)
        tokio::task::block_in_place(|| {
            cluster.stop(id);
            cluster.restart(id);
            wait_ready(&cluster, id);
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap_or_default();
    assert!(
        log.contains("handing leadership to node"),
        "the leader did not hand over leadership before it exited"
    );

    running.store(false, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    let mut longest = Duration::ZERO;
    for task in tasks {
        let seen = task.await.unwrap();
        acked.extend(seen.acked);
        failures.extend(seen.failures);
        longest = longest.max(seen.longest);
    }
    eprintln!(
        "rolling restart: {} writes acknowledged, longest request {longest:?}",
        acked.len()
    );
    assert!(
        failures.is_empty(),
        "{} requests failed during the rolling restart, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(acked.len() > CLIENTS, "the clients made progress");
    let state = scan_all(&cluster.client(), "roll/", Consistency::Linearizable).await;
    for (key, value) in &acked {
        assert_eq!(
            state.get(key.as_bytes()),
            Some(&Bytes::from(value.clone())),
            "acknowledged {key} = {value}"
        );
    }
}
