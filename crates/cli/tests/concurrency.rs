//! Acceptance: concurrency (issue 3) — 32 clients × 200 puts to 50 shared keys
//! on a 3-node cluster; once idle, every node's own (stale) view equals the
//! leader's, and each key holds a value some client actually wrote.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_client::{Client, Consistency};
use raftkv_testkit::TestCluster;

use common::{bin, is_retryable, scan_all};

const CLIENTS: usize = 32;
const PUTS_PER_CLIENT: usize = 200;
const KEYS: usize = 50;

/// Every value any client tried to write, per key.
type AttemptedValues = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

fn key_name(index: usize) -> String {
    format!("cc/k{index:02}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_to_overlapping_keys_converge_on_every_node() {
    let cluster = TestCluster::start(bin(), 3);
    // Every value any client *tried* to write, per key: an unacknowledged
    // write may still have been applied, so it is a legal final value too.
    let attempted: AttemptedValues = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_number in 0..CLIENTS {
        // Separate clients, as 32 separate applications would be.
        let client = cluster.client();
        let attempted = attempted.clone();
        tasks.push(tokio::spawn(run_client(client, client_number, attempted)));
    }
    let mut acked = 0;
    let mut retried = 0;
    for task in tasks {
        let (task_acked, task_retried) = task.await.expect("client task panicked");
        acked += task_acked;
        retried += task_retried;
    }
    eprintln!(
        "{acked} of {} puts acknowledged, {retried} retryable errors, in {:?}",
        CLIENTS * PUTS_PER_CLIENT,
        started.elapsed()
    );
    assert!(acked > 0, "no put was acknowledged");

    cluster.wait_caught_up(Duration::from_secs(60));
    let leader = cluster.leader();
    let leader_view = scan_all(&cluster.client_at(leader), "cc/", Consistency::Stale).await;
    let linearizable_view = scan_all(&cluster.client(), "cc/", Consistency::Linearizable).await;
    assert_eq!(
        linearizable_view, leader_view,
        "linearizable scan equals the leader's local state"
    );
    for id in cluster.ids() {
        let node_view = scan_all(&cluster.client_at(id), "cc/", Consistency::Stale).await;
        assert_eq!(
            node_view, leader_view,
            "node {id}'s stale scan equals leader {leader}'s"
        );
    }

    let attempted = attempted.lock().unwrap();
    assert_eq!(
        leader_view.len(),
        KEYS,
        "every shared key exists: {:?}",
        leader_view.keys()
    );
    for (key, value) in &leader_view {
        let key = String::from_utf8(key.to_vec()).expect("UTF-8 key");
        let value = String::from_utf8(value.to_vec()).expect("UTF-8 value");
        let written = attempted
            .get(&key)
            .unwrap_or_else(|| panic!("{key} was never written"));
        assert!(
            written.contains(&value),
            "{key} = {value:?}, which no client wrote"
        );
    }
}

/// One application: 200 puts over the shared keys. Returns (acked, retried).
async fn run_client(
    client: Client,
    client_number: usize,
    attempted: AttemptedValues,
) -> (usize, usize) {
    let mut acked = 0;
    let mut retried = 0;
    for put_number in 0..PUTS_PER_CLIENT {
        // Different strides per client make the clients collide on keys.
        let key = key_name((client_number * 13 + put_number * 7) % KEYS);
        let value = format!("client {client_number} put {put_number}");
        attempted
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .insert(value.clone());
        match client
            .put(Bytes::from(key.clone()), Bytes::from(value))
            .await
        {
            Ok(()) => acked += 1,
            // A healthy cluster may still time out on a loaded 2-core box;
            // that is not what this test is about, so count and go on.
            Err(error) if is_retryable(&error) => {
                eprintln!("client {client_number}: put {key}: {error}");
                retried += 1;
            }
            Err(error) => panic!("client {client_number}: put {key} failed: {error:?}"),
        }
    }
    (acked, retried)
}
