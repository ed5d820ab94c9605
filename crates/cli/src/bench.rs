//! `raftkv bench`: load from N concurrent clients — closed loop (each
//! client sends its next operation when the last returns) or open loop
//! (`--rate`: operations on a fixed schedule, latency counted from the
//! scheduled send time so a slow server cannot hide its queueing: no
//! coordinated omission). Ops: put, get, mixed (`--read-pct`), delete, scan;
//! `--batch N` sends N keys per operation (Batch / BatchGet). Latency per op
//! in HDR histograms (P50/P95/P99/P99.9/max), throughput, errors counted by
//! kind; `--warmup` load is not counted; a progress line each second; a
//! final table per op, or one JSON line with `--json`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raftkv_client::proto as pb;
use raftkv_client::{Client, Consistency, ScanOptions};
use rand::Rng;
use serde_json::json;

use crate::args::{BenchArgs, BenchOp, GlobalArgs};
use crate::failure::Failure;
use crate::kv_cmd::consistency;
use crate::output::print_json;

/// Latencies recorded up to this (microseconds); slower ones are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Concurrent loaders when filling keys before a read run.
const LOADERS: usize = 32;
/// Keys a scan asks for.
const SCAN_LIMIT: u32 = 10;

fn key_of(index: u64, key_size: usize) -> Bytes {
    let mut key = format!("bench/{index:010}").into_bytes();
    key.resize(key_size.max(key.len()), b'.');
    Bytes::from(key)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// The kinds of operation a run measures separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Put,
    Get,
    Delete,
    Scan,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Put => "put",
            Kind::Get => "get",
            Kind::Delete => "delete",
            Kind::Scan => "scan",
        }
    }
}

#[derive(Default)]
struct Counts {
    histograms: BTreeMap<Kind, Histogram<u64>>,
    ops: BTreeMap<Kind, u64>,
    errors: BTreeMap<String, u64>,
}

struct Shared {
    counts: Mutex<Counts>,
    /// Operations finished (ok or not) since the last progress line.
    done: AtomicU64,
    stop: AtomicBool,
    issued: AtomicU64,
    /// Set once the warmup is over: from then on results count.
    measuring: AtomicBool,
}

/// One client's results, merged into `Shared` every 1000 operations.
#[derive(Default)]
struct Local {
    histograms: BTreeMap<Kind, Histogram<u64>>,
    ops: BTreeMap<Kind, u64>,
    errors: BTreeMap<String, u64>,
    pending: u64,
}

impl Shared {
    fn merge(&self, local: &mut Local) {
        let mut counts = self.counts.lock().expect("counts lock");
        if self.measuring.load(Ordering::Relaxed) {
            for (kind, h) in &local.histograms {
                counts
                    .histograms
                    .entry(*kind)
                    .or_insert_with(new_histogram)
                    .add(h)
                    .expect("same bounds");
            }
            for (kind, n) in &local.ops {
                *counts.ops.entry(*kind).or_default() += n;
            }
            for (kind, n) in &local.errors {
                *counts.errors.entry(kind.clone()).or_default() += n;
            }
        }
        *local = Local::default();
    }
}

fn error_kind(e: &raftkv_client::Error) -> String {
    let text = e.to_string();
    text.split([':', ';'])
        .next()
        .unwrap_or("error")
        .trim()
        .to_string()
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

/// What one client needs to run operations.
struct Work {
    op: BenchOp,
    read_pct: u8,
    keys: u64,
    key_size: usize,
    batch: u64,
    value: Bytes,
    read_consistency: Consistency,
}

impl Work {
    fn kind(&self) -> Kind {
        match self.op {
            BenchOp::Put => Kind::Put,
            BenchOp::Get => Kind::Get,
            BenchOp::Delete => Kind::Delete,
            BenchOp::Scan => Kind::Scan,
            BenchOp::Mixed => {
                if rand::thread_rng().gen_range(0..100u8) < self.read_pct {
                    Kind::Get
                } else {
                    Kind::Put
                }
            }
        }
    }

    /// The next `batch` keys of this client's stride.
    fn keys(&self, index: &mut u64, stride: u64) -> Vec<Bytes> {
        (0..self.batch)
            .map(|_| {
                let key = key_of(*index % self.keys, self.key_size);
                *index = index.wrapping_add(stride);
                key
            })
            .collect()
    }

    async fn run(
        &self,
        client: &Client,
        kind: Kind,
        keys: Vec<Bytes>,
    ) -> Result<(), raftkv_client::Error> {
        match kind {
            Kind::Put if keys.len() == 1 => client.put(keys[0].clone(), self.value.clone()).await,
            Kind::Put => {
                let ops = keys
                    .into_iter()
                    .map(|key| pb::BatchOp {
                        op: Some(pb::batch_op::Op::Put(pb::PutRequest {
                            key,
                            value: self.value.clone(),
                            session: None,
                        })),
                    })
                    .collect();
                client.batch(ops).await
            }
            Kind::Get if keys.len() == 1 => client
                .get_with(keys[0].clone(), self.read_consistency)
                .await
                .map(|_| ()),
            Kind::Get => client
                .batch_get(keys, self.read_consistency)
                .await
                .map(|_| ()),
            Kind::Delete => client.delete(keys[0].clone()).await,
            Kind::Scan => {
                let options = ScanOptions {
                    limit: SCAN_LIMIT,
                    after: Some(keys[0].clone()),
                    consistency: self.read_consistency,
                    ..Default::default()
                };
                client.scan("bench/", options).await.map(|_| ())
            }
        }
    }
}

pub async fn run(global: &GlobalArgs, args: BenchArgs) -> Result<(), Failure> {
    if args.clients == 0 {
        return Err(Failure::Usage("--clients must be at least 1".into()));
    }
    if args.keys == 0 {
        return Err(Failure::Usage("--keys must be at least 1".into()));
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(Failure::Usage(
            "--rate must be a positive number of ops/s".into(),
        ));
    }
    if args.batch > 1 && matches!(args.op, BenchOp::Delete | BenchOp::Scan) {
        return Err(Failure::Usage(
            "--batch applies to put, get and mixed".into(),
        ));
    }
    let options = crate::client_options(global)?;
    let duration = raftkv_server::units::parse_duration(&args.duration)
        .map_err(|e| Failure::Usage(format!("--duration: {e}")))?;
    let warmup = raftkv_server::units::parse_duration(&args.warmup)
        .map_err(|e| Failure::Usage(format!("--warmup: {e}")))?;
    let value_size = raftkv_server::units::parse_size(&args.value_size)
        .map_err(|e| Failure::Usage(format!("--value-size: {e}")))? as usize;
    let value = Bytes::from(vec![b'x'; value_size]);
    let clients: Vec<Client> = (0..args.clients)
        .map(|_| Client::with_options(&global.endpoints, options.clone()))
        .collect::<Result<_, _>>()?;
    if args.op != BenchOp::Put {
        eprintln!("loading {} keys of {value_size} bytes...", args.keys);
        load_keys(&clients, &args, &value).await?;
    }
    let shared = Arc::new(Shared {
        counts: Mutex::new(Counts::default()),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        measuring: AtomicBool::new(warmup.is_zero()),
    });
    let work = Arc::new(Work {
        op: args.op,
        read_pct: args.read_pct,
        keys: args.keys,
        key_size: args.key_size,
        batch: args.batch,
        value,
        read_consistency: consistency(args.consistency),
    });
    let clients_count = clients.len() as u64;
    // Open loop: client i owns the slots i, i + clients, ... of one global
    // schedule at `rate`.
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(clients_count as f64 / rate));
    let schedule_start = Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let shared = shared.clone();
        let work = work.clone();
        let limit = args.ops;
        tasks.push(tokio::spawn(async move {
            let mut local = Local::default();
            let mut index = i as u64;
            let offset = interval.map(|iv| iv.mul_f64(i as f64 / clients_count as f64));
            let mut slot = 0u32;
            let mut measuring = shared.measuring.load(Ordering::Relaxed);
            while !shared.stop.load(Ordering::Relaxed) {
                if !measuring && shared.measuring.load(Ordering::Relaxed) {
                    // The warmup just ended: what this client did so far
                    // does not count.
                    local = Local::default();
                    measuring = true;
                }
                if let Some(limit) = limit {
                    if shared.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                // The time this operation is due: now (closed loop) or its
                // slot in the schedule (open loop), waited for if ahead.
                let due = match (interval, offset) {
                    (Some(iv), Some(off)) => {
                        let due = schedule_start + off + iv * slot;
                        slot += 1;
                        if due > Instant::now() {
                            tokio::time::sleep_until(due.into()).await;
                        }
                        due
                    }
                    _ => Instant::now(),
                };
                let kind = work.kind();
                let keys = work.keys(&mut index, clients_count);
                let result = work.run(&client, kind, keys).await;
                let micros = (due.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
                match result {
                    Ok(()) => {
                        local
                            .histograms
                            .entry(kind)
                            .or_insert_with(new_histogram)
                            .record(micros)
                            .expect("clamped into bounds");
                        *local.ops.entry(kind).or_default() += 1;
                    }
                    Err(e) => *local.errors.entry(error_kind(&e)).or_default() += 1,
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
                local.pending += 1;
                if local.pending >= 1000 {
                    shared.merge(&mut local);
                }
            }
            shared.merge(&mut local);
        }));
    }
    if !warmup.is_zero() {
        eprintln!("warming up for {warmup:?}...");
        tokio::time::sleep(warmup).await;
        shared.measuring.store(true, Ordering::Relaxed);
        shared.done.store(0, Ordering::Relaxed);
    }
    let started = Instant::now();
    let progress = {
        let shared = shared.clone();
        let limit = args.ops;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = shared.done.swap(0, Ordering::Relaxed);
                let (errors, p99) = {
                    let counts = shared.counts.lock().expect("counts lock");
                    let errors: u64 = counts.errors.values().sum();
                    let p99 = counts
                        .histograms
                        .values()
                        .map(|h| h.value_at_quantile(0.99))
                        .max()
                        .unwrap_or(0);
                    (errors, p99)
                };
                eprintln!(
                    "[{:>4.0}s] {:>9} ops/s  p99 {:>8.2} ms  errors {errors}",
                    started.elapsed().as_secs_f64(),
                    done,
                    p99 as f64 / 1000.0
                );
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
    let counts = shared.counts.lock().expect("counts lock");
    let mut all = new_histogram();
    for h in counts.histograms.values() {
        all.add(h).expect("same bounds");
    }
    let ops: u64 = counts.ops.values().sum();
    let error_count: u64 = counts.errors.values().sum();
    let ops_per_sec = ops as f64 / elapsed_s.max(1e-9);
    let latency = |h: &Histogram<u64>| {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        json!({"p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "p999": ms(0.999),
               "max": h.max() as f64 / 1000.0})
    };
    let op = format!("{:?}", args.op).to_lowercase();
    if json_out {
        let by_op: serde_json::Map<String, serde_json::Value> = counts
            .histograms
            .iter()
            .map(|(kind, h)| {
                let n = counts.ops.get(kind).copied().unwrap_or(0);
                (
                    kind.name().to_string(),
                    json!({"ops": n, "ops_per_sec": n as f64 / elapsed_s.max(1e-9),
                           "latency_ms": latency(h)}),
                )
            })
            .collect();
        print_json(&json!({
            "op": op,
            "clients": args.clients,
            "value_size": value_size,
            "keys": args.keys,
            "batch": args.batch,
            "rate": args.rate,
            "duration_s": elapsed_s,
            "ops": ops,
            "ops_per_sec": ops_per_sec,
            "keys_per_sec": ops_per_sec * args.batch as f64,
            "errors": error_count,
            "error_rate": error_count as f64 / (ops + error_count).max(1) as f64,
            "errors_by_kind": counts.errors,
            "latency_ms": latency(&all),
            "by_op": by_op,
        }))?;
    } else {
        let mode = match args.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_string(),
        };
        println!(
            "{op}: {ops} ops in {elapsed_s:.2}s = {ops_per_sec:.0} ops/s{}, {error_count} errors \
             ({} clients, {mode}, {value_size}-byte values)",
            if args.batch > 1 {
                format!(
                    " ({:.0} keys/s, batch {})",
                    ops_per_sec * args.batch as f64,
                    args.batch
                )
            } else {
                String::new()
            },
            args.clients
        );
        println!(
            "{:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "ops", "ops/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (kind, h) in &counts.histograms {
            let n = counts.ops.get(kind).copied().unwrap_or(0);
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{:<8} {:>10} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                kind.name(),
                n,
                n as f64 / elapsed_s.max(1e-9),
                ms(0.5),
                ms(0.95),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            );
        }
        for (kind, count) in &counts.errors {
            println!("errors: {kind}: {count}");
        }
    }
    Ok(())
}
