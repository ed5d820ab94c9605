//! Failover benchmark: how long a 3-node cluster is without a leader serving
//! writes after its leader is killed with SIGKILL, over many trials.
//!
//! A writer (the client library, as an application uses it) puts keys in a
//! loop. Each trial kills the current leader and measures the time from the
//! kill to the acknowledgement of the first write started after it (a write
//! the new leader served), then restarts the killed
//! node and waits until it has caught up. Prints each trial and the median
//! and maximum; this is a benchmark program, not a test.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p raftkv-testkit --example failover -- [--trials 20] [--bin target/release/raftkv]
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientOptions};
use raftkv_testkit::TestCluster;

fn parse_args() -> (usize, PathBuf) {
    let mut trials = 20;
    let mut bin = PathBuf::from("target/release/raftkv");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--trials" => {
                trials = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--trials N")
            }
            "--bin" => bin = PathBuf::from(args.next().expect("--bin PATH")),
            other => panic!("unknown argument {other}; use --trials N --bin PATH"),
        }
    }
    (trials, bin)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (trials, bin) = parse_args();
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release)",
        bin.display()
    );
    let mut cluster = TestCluster::start(&bin, 3);
    let client = Client::with_options(
        &cluster.endpoint_list(),
        ClientOptions {
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .expect("client");

    // (start, acknowledgement) of the latest acknowledged write, as
    // nanoseconds since `origin`.
    let origin = Instant::now();
    let last_ack = Arc::new(Mutex::new((0u64, 0u64)));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (client, last_ack, stop, errors) = (
            client.clone(),
            last_ack.clone(),
            stop.clone(),
            errors.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let started_ns = origin.elapsed().as_nanos() as u64;
                let key = format!("failover/{:08}", i % 1000);
                match client.put(key, format!("{i}")).await {
                    Ok(()) => {
                        let acked_ns = origin.elapsed().as_nanos() as u64;
                        *last_ack.lock().unwrap() = (started_ns, acked_ns);
                    }
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
            }
        })
    };

    let mut gaps = Vec::new();
    for trial in 1..=trials {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leader = cluster.leader();
        let killed_at = origin.elapsed().as_nanos() as u64;
        cluster.kill(leader);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The first write started after the kill and acknowledged.
        let acked_ns = loop {
            let (started_ns, acked_ns) = *last_ack.lock().unwrap();
            if started_ns > killed_at {
                break acked_ns;
            }
            assert!(
                Instant::now() < deadline,
                "no write acknowledged within 30 s of the kill"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let gap = Duration::from_nanos(acked_ns - killed_at);
        println!(
            "trial {trial:>2}: killed leader {leader}, writes resumed after {:.3} s",
            gap.as_secs_f64()
        );
        gaps.push(gap);
        cluster.restart(leader);
        // Writes go on, so "caught up" means: has applied what the new
        // leader had committed when we looked.
        let new_leader = cluster.leader();
        let target = cluster
            .status(new_leader)
            .expect("leader status")
            .commit_index;
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.status(leader).map_or(0, |s| s.applied_index) < target {
            assert!(
                Instant::now() < deadline,
                "node {leader} did not catch up in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    let max = *gaps.last().unwrap();
    println!(
        "{trials} trials: median {:.3} s, max {:.3} s, min {:.3} s; writer errors returned to the application: {}",
        median.as_secs_f64(),
        max.as_secs_f64(),
        gaps[0].as_secs_f64(),
        errors.lock().unwrap().len()
    );
}
