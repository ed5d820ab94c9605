//! `raftkv bench`: closed-loop load from N concurrent clients, latency in an
//! HDR histogram (P50/P95/P99/P99.9/max), throughput and errors by kind, a
//! progress line each second, and `--json` for one summary line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raftkv_client::{Client, Consistency};
use serde_json::json;

use crate::args::{BenchArgs, BenchOp, GlobalArgs};
use crate::failure::Failure;
use crate::kv_cmd::consistency;
use crate::output::print_json;

/// Latencies recorded up to this (microseconds); slower ones are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Concurrent loaders when filling keys before a get run.
const LOADERS: usize = 32;

fn key_of(index: u64, key_size: usize) -> Bytes {
    let mut key = format!("bench/{index:010}").into_bytes();
    key.resize(key_size.max(key.len()), b'.');
    Bytes::from(key)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

struct Shared {
    histogram: Mutex<Histogram<u64>>,
    ops: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
    issued: AtomicU64,
}

impl Shared {
    /// Moves a client's local latencies into the shared histogram.
    fn merge(&self, local: &mut Histogram<u64>) {
        self.histogram
            .lock()
            .expect("histogram lock")
            .add(&*local)
            .expect("same bounds");
        local.reset();
    }
}

fn error_kind(e: &raftkv_client::Error) -> String {
    let text = e.to_string();
    text.split(':').next().unwrap_or("error").trim().to_string()
}

async fn load_keys(clients: &[Client], args: &BenchArgs, value: &Bytes) -> Result<(), Failure> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..LOADERS {
        let client = clients[i % clients.len()].clone();
        let next = next.clone();
        let (keys, key_size, value) = (args.keys, args.key_size, value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys {
                    return Ok::<(), raftkv_client::Error>(());
                }
                client.put(key_of(index, key_size), value.clone()).await?;
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| Failure::Other(format!("loader failed: {e}")))?
            .map_err(|e| Failure::Other(format!("loading keys failed: {e}")))?;
    }
    Ok(())
}

pub async fn run(global: &GlobalArgs, args: BenchArgs) -> Result<(), Failure> {
    if args.clients == 0 {
        return Err(Failure::Usage("--clients must be at least 1".into()));
    }
    if args.keys == 0 {
        return Err(Failure::Usage("--keys must be at least 1".into()));
    }
    let options = crate::client_options(global)?;
    let duration = raftkv_server::units::parse_duration(&args.duration)
        .map_err(|e| Failure::Usage(format!("--duration: {e}")))?;
    let value_size = raftkv_server::units::parse_size(&args.value_size)
        .map_err(|e| Failure::Usage(format!("--value-size: {e}")))? as usize;
    let value = Bytes::from(vec![b'x'; value_size]);
    let clients: Vec<Client> = (0..args.clients)
        .map(|_| Client::with_options(&global.endpoints, options.clone()))
        .collect::<Result<_, _>>()?;
    if args.op == BenchOp::Get {
        eprintln!("loading {} keys of {value_size} bytes...", args.keys);
        load_keys(&clients, &args, &value).await?;
    }
    let read_consistency: Consistency = consistency(args.consistency);
    let shared = Arc::new(Shared {
        histogram: Mutex::new(new_histogram()),
        ops: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    let clients_count = clients.len();
    for (i, client) in clients.into_iter().enumerate() {
        let clients = clients_count;
        let shared = shared.clone();
        let value = value.clone();
        let (op, keys, key_size, limit) = (args.op, args.keys, args.key_size, args.ops);
        tasks.push(tokio::spawn(async move {
            let mut local = new_histogram();
            // Client i uses keys i, i + clients, i + 2 clients, ...: together
            // the clients cover every key once per `keys` operations.
            let stride = clients as u64;
            let mut index = i as u64;
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some(limit) = limit {
                    if shared.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                let key = key_of(index % keys, key_size);
                index = index.wrapping_add(stride);
                let t0 = Instant::now();
                let result = match op {
                    BenchOp::Put => client.put(key, value.clone()).await,
                    BenchOp::Get => client.get_with(key, read_consistency).await.map(|_| ()),
                };
                let micros = (t0.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
                match result {
                    Ok(()) => {
                        local.record(micros).expect("clamped into bounds");
                        shared.ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        *shared
                            .errors
                            .lock()
                            .expect("errors lock")
                            .entry(error_kind(&e))
                            .or_default() += 1;
                    }
                }
                if local.len() >= 1000 {
                    shared.merge(&mut local);
                }
            }
            shared.merge(&mut local);
        }));
    }
    let progress = {
        let shared = shared.clone();
        let limit = args.ops;
        tokio::spawn(async move {
            let mut last_ops = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let ops = shared.ops.load(Ordering::Relaxed);
                let errors: u64 = shared.errors.lock().expect("errors lock").values().sum();
                let p99 = shared
                    .histogram
                    .lock()
                    .expect("histogram lock")
                    .value_at_quantile(0.99);
                eprintln!(
                    "[{:>4.0}s] {:>9} ops/s  p99 {:>8.2} ms  errors {errors}",
                    started.elapsed().as_secs_f64(),
                    ops - last_ops,
                    p99 as f64 / 1000.0
                );
                last_ops = ops;
                if limit.is_none() && started.elapsed() >= duration {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    for task in tasks {
        task.await
            .map_err(|e| Failure::Other(format!("bench client failed: {e}")))?;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    report(&shared, &args, value_size, elapsed, global.json)
}

fn report(
    shared: &Shared,
    args: &BenchArgs,
    value_size: usize,
    elapsed_s: f64,
    json_out: bool,
) -> Result<(), Failure> {
    let histogram = shared.histogram.lock().expect("histogram lock");
    let ops = shared.ops.load(Ordering::Relaxed);
    let errors = shared.errors.lock().expect("errors lock").clone();
    let error_count: u64 = errors.values().sum();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let ops_per_sec = ops as f64 / elapsed_s.max(1e-9);
    let op = format!("{:?}", args.op).to_lowercase();
    if json_out {
        print_json(&json!({
            "op": op,
            "clients": args.clients,
            "value_size": value_size,
            "keys": args.keys,
            "duration_s": elapsed_s,
            "ops": ops,
            "ops_per_sec": ops_per_sec,
            "errors": error_count,
            "error_rate": error_count as f64 / (ops + error_count).max(1) as f64,
            "errors_by_kind": errors,
            "latency_ms": {
                "p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "p999": ms(0.999),
                "max": histogram.max() as f64 / 1000.0,
            },
        }))?;
    } else {
        println!(
            "{op}: {ops} ops in {elapsed_s:.2}s = {ops_per_sec:.0} ops/s, {error_count} errors ({} clients, {value_size}-byte values)",
            args.clients
        );
        println!(
            "latency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(0.50),
            ms(0.95),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0
        );
        for (kind, count) in &errors {
            println!("errors: {kind}: {count}");
        }
    }
    Ok(())
}
