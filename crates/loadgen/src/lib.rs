//! The load generator behind `raftkv bench`, generic over the store it
//! drives (a [`Target`]), so the same engine — same key choice, same
//! schedule, same histograms — also drives etcd for the side-by-side figures
//! in BENCHMARKS.md (the `etcd-bench` crate).
//!
//! Closed loop: each client sends its next operation when the last one
//! returns. Open loop (`rate`): operations go out on one fixed schedule
//! shared by the clients, and latency counts from the *scheduled* send time,
//! so a slow server cannot hide the queueing it causes (no coordinated
//! omission). tokio's timer has millisecond ticks, so a client asks to be
//! woken half a millisecond before its slot; one that the tick lets out
//! early counts from when it really went out. Latency per op kind in HDR
//! histograms (1 µs .. 60 s, 3 significant digits); errors counted by kind,
//! never hidden; warmup load is not counted; a progress line each second on
//! stderr.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;

/// tokio's timer fires on the first whole millisecond at or after a
/// deadline. An open-loop client asks to be woken this much before its slot,
/// so it goes out within half a millisecond either side of the slot instead
/// of up to a millisecond after it.
const TIMER_ROUNDING: Duration = Duration::from_micros(500);

/// When an open-loop client due at `due` should ask tokio to wake it, or
/// `None` if it should go at once (the slot is near or past: the client is
/// late, and its latency counts from the slot).
fn timer_deadline(due: Instant, now: Instant) -> Option<Instant> {
    let wake = due.checked_sub(TIMER_ROUNDING)?;
    (wake > now).then_some(wake)
}

/// Latencies recorded up to this (microseconds); slower ones are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Concurrent loaders when filling keys before a read run.
const LOADERS: usize = 32;

/// What one operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Put,
    Get,
    Delete,
    Scan,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Put => "put",
            Kind::Get => "get",
            Kind::Delete => "delete",
            Kind::Scan => "scan",
        }
    }
}

/// The operation mix of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Only(Kind),
    /// Gets with this probability (percent), puts otherwise.
    Mixed {
        read_pct: u8,
    },
}

/// A store the engine can drive: one connection per client.
pub trait Target: Send + Sync + 'static {
    type Conn: Send + Sync + 'static;
    fn connect(&self, client: usize) -> Result<Self::Conn, String>;
    /// Runs one operation on `keys` (several with a batch); the error is
    /// its kind, as counted in the report ("timeout", "not leader", ...).
    fn run(
        conn: &Self::Conn,
        kind: Kind,
        keys: Vec<Bytes>,
        value: &Bytes,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Connections a bench shares among its clients unless told otherwise: a
/// few HTTP/2 connections carry many concurrent requests, as gRPC clients
/// (and etcd's `benchmark --conns`) use them, and more than one lets a
/// multi-core server spread the connection tasks over its workers.
pub const DEFAULT_CONNECTIONS: usize = 4;

#[derive(Clone, Debug)]
pub struct Settings {
    /// What every key starts with (followed by the key's index, 10 digits).
    pub prefix: String,
    pub clients: usize,
    /// Connections the clients share (client i uses connection i mod
    /// `connections`; never more than one per client); 0 = one per client.
    pub connections: usize,
    pub workload: Workload,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Keys per operation.
    pub batch: u64,
    pub duration: Duration,
    /// Stop after this many operations instead of `duration`.
    pub ops: Option<u64>,
    pub warmup: Duration,
    /// Open loop at this many operations per second in total.
    pub rate: Option<f64>,
}

impl Settings {
    /// How many connections the run opens.
    pub fn connection_count(&self) -> usize {
        match self.connections {
            0 => self.clients,
            n => n.min(self.clients),
        }
    }
}

/// The key of index `index`: `prefix`, the index in 10 digits, then dots up
/// to `key_size` bytes (never shorter than the prefix and the digits).
pub fn key_of(prefix: &str, index: u64, key_size: usize) -> Bytes {
    let mut key = format!("{prefix}{index:010}").into_bytes();
    key.resize(key_size.max(key.len()), b'.');
    Bytes::from(key)
}

/// A line on standard error; a closed stderr (`bench 2>&1 | head`) is ignored.
fn note(line: std::fmt::Arguments) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Results of a run (what was measured after the warmup).
#[derive(Default)]
pub struct Report {
    pub histograms: BTreeMap<Kind, Histogram<u64>>,
    pub ops: BTreeMap<Kind, u64>,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// One client's results, merged into the shared report every 1000 ops or
/// [`MERGE_INTERVAL`], whichever comes first.
#[derive(Default)]
struct Local {
    histograms: BTreeMap<Kind, Histogram<u64>>,
    ops: BTreeMap<Kind, u64>,
    errors: BTreeMap<String, u64>,
    pending: u64,
    /// When it was last merged (`None`: not yet).
    merged_at: Option<Instant>,
}

/// A client's results reach the progress line at least this often.
const MERGE_INTERVAL: Duration = Duration::from_millis(250);

struct Shared {
    report: Mutex<Report>,
    /// Operations finished (ok or not) since the last progress line.
    done: AtomicU64,
    stop: AtomicBool,
    /// Set with `stop`: wakes open-loop clients waiting for their next slot,
    /// so that a run ends when its time is up, not a slot interval later.
    stopped: tokio::sync::watch::Sender<bool>,
    issued: AtomicU64,
    measuring: AtomicBool,
}

impl Shared {
    fn merge(&self, local: &mut Local) {
        let mut report = self.report.lock().expect("report lock");
        for (kind, h) in &local.histograms {
            report
                .histograms
                .entry(*kind)
                .or_insert_with(new_histogram)
                .add(h)
                .expect("same bounds");
        }
        for (kind, n) in &local.ops {
            *report.ops.entry(*kind).or_default() += n;
        }
        for (kind, n) in &local.errors {
            *report.errors.entry(kind.clone()).or_default() += n;
        }
        *local = Local::default();
    }
}

/// Writes `keys` keys (for read, delete and scan runs).
pub async fn load<T: Target>(target: &T, settings: &Settings) -> Result<(), String> {
    let target_conns: Vec<Arc<T::Conn>> = (0..LOADERS)
        .map(|i| target.connect(i).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let next = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'x'; settings.value_size]);
    let mut tasks = Vec::new();
    for conn in target_conns {
        let next = next.clone();
        let (keys, key_size, value) = (settings.keys, settings.key_size, value.clone());
        let prefix = settings.prefix.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys {
                    return Ok::<(), String>(());
                }
                T::run(
                    &conn,
                    Kind::Put,
                    vec![key_of(&prefix, index, key_size)],
                    &value,
                )
                .await?;
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("loader failed: {e}"))?
            .map_err(|e| format!("loading keys failed: {e}"))?;
    }
    Ok(())
}

/// Runs the load and returns what was measured.
pub async fn run<T: Target>(target: &T, settings: &Settings) -> Result<Report, String> {
    let connections = settings.connection_count();
    let conns: Vec<Arc<T::Conn>> = (0..connections)
        .map(|i| target.connect(i).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let shared = Arc::new(Shared {
        report: Mutex::new(Report::default()),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stopped: tokio::sync::watch::channel(false).0,
        issued: AtomicU64::new(0),
        measuring: AtomicBool::new(settings.warmup.is_zero()),
    });
    let clients = settings.clients as u64;
    // Open loop: client i owns the slots i, i + clients, ... of one global
    // schedule at `rate`.
    let interval = settings
        .rate
        .map(|rate| Duration::from_secs_f64(clients as f64 / rate));
    let schedule_start = Instant::now() + Duration::from_millis(10);
    let value = Bytes::from(vec![b'x'; settings.value_size]);
    let mut tasks = Vec::new();
    for i in 0..settings.clients {
        let conn = conns[i % connections].clone();
        let shared = shared.clone();
        let settings = settings.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = Local::default();
            let mut index = i as u64;
            let offset = interval.map(|iv| iv.mul_f64(i as f64 / clients as f64));
            let mut slot = 0u32;
            let mut measuring = shared.measuring.load(Ordering::Relaxed);
            let mut stopped = shared.stopped.subscribe();
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some(limit) = settings.ops {
                    if shared.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                let start = match (interval, offset) {
                    (Some(iv), Some(off)) => {
                        let due = schedule_start + off + iv * slot;
                        slot += 1;
                        if let Some(wake) = timer_deadline(due, Instant::now()) {
                            tokio::select! {
                                () = tokio::time::sleep_until(wake.into()) => {}
                                _ = stopped.wait_for(|stop| *stop) => break,
                            }
                        }
                        due.min(Instant::now())
                    }
                    _ => Instant::now(),
                };
                // Checked when the operation is about to go out (an open-loop
                // client may have slept into the measured time): an operation
                // counts if it starts after the warmup.
                if !measuring && shared.measuring.load(Ordering::Relaxed) {
                    local = Local::default();
                    measuring = true;
                }
                let kind = match settings.workload {
                    Workload::Only(kind) => kind,
                    Workload::Mixed { read_pct } => {
                        if rand::thread_rng().gen_range(0..100u8) < read_pct {
                            Kind::Get
                        } else {
                            Kind::Put
                        }
                    }
                };
                // Client i uses keys i, i + clients, ...: together the
                // clients cover every key once per `keys` operations.
                let keys: Vec<Bytes> = (0..settings.batch)
                    .map(|_| {
                        let key =
                            key_of(&settings.prefix, index % settings.keys, settings.key_size);
                        index = index.wrapping_add(clients);
                        key
                    })
                    .collect();
                let result = T::run(&conn, kind, keys, &value).await;
                let micros = (start.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
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
                    Err(kind) => *local.errors.entry(kind).or_default() += 1,
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
                local.pending += 1;
                let merged_at = *local.merged_at.get_or_insert(start);
                if local.pending >= 1000 || merged_at.elapsed() >= MERGE_INTERVAL {
                    shared.merge(&mut local);
                    local.merged_at = Some(Instant::now());
                }
            }
            if measuring {
                shared.merge(&mut local);
            }
        }));
    }
    if !settings.warmup.is_zero() {
        note(format_args!("warming up for {:?}...", settings.warmup));
        tokio::time::sleep(settings.warmup).await;
        *shared.report.lock().expect("report lock") = Report::default();
        shared.measuring.store(true, Ordering::Relaxed);
        shared.done.store(0, Ordering::Relaxed);
    }
    let started = Instant::now();
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = shared.done.swap(0, Ordering::Relaxed);
                let (errors, p99) = {
                    let report = shared.report.lock().expect("report lock");
                    let errors: u64 = report.errors.values().sum();
                    let p99 = report
                        .histograms
                        .values()
                        .filter(|h| !h.is_empty())
                        .map(|h| h.value_at_quantile(0.99))
                        .max();
                    (errors, p99)
                };
                // No figure before the first operation has finished.
                let p99 = p99.map_or("-".to_string(), |us| format!("{:.2}", us as f64 / 1000.0));
                note(format_args!(
                    "[{:>4.0}s] {:>9} ops/s  p99 {p99:>8} ms  errors {errors}",
                    started.elapsed().as_secs_f64(),
                    done,
                ));
            }
        })
    };
    // Without an operation count the run ends when its time is up.
    let timer = settings.ops.is_none().then(|| {
        let shared = shared.clone();
        let duration = settings.duration;
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            shared.stop.store(true, Ordering::Relaxed);
            shared.stopped.send_replace(true);
        })
    });
    for task in tasks {
        task.await
            .map_err(|e| format!("bench client failed: {e}"))?;
    }
    progress.abort();
    if let Some(timer) = timer {
        timer.abort();
    }
    let mut report = std::mem::take(&mut *shared.report.lock().expect("report lock"));
    report.elapsed = started.elapsed();
    Ok(report)
}

impl Report {
    pub fn total_ops(&self) -> u64 {
        self.ops.values().sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.total_ops() as f64 / self.seconds()
    }

    /// All op kinds together.
    pub fn overall(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for h in self.histograms.values() {
            all.add(h).expect("same bounds");
        }
        all
    }

    /// `{p50, p95, p99, p999, max}` in milliseconds.
    pub fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        json!({"p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "p999": ms(0.999),
               "max": h.max() as f64 / 1000.0})
    }

    /// Per op kind: ops, ops/s and latency.
    pub fn by_op_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .histograms
            .iter()
            .map(|(kind, h)| {
                let n = self.ops.get(kind).copied().unwrap_or(0);
                (
                    kind.name().to_string(),
                    json!({"ops": n, "ops_per_sec": n as f64 / self.seconds(),
                           "latency_ms": Report::latency_json(h)}),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }

    /// The table of op kinds, one line each, with a header line.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "op", "ops", "ops/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (kind, h) in &self.histograms {
            let n = self.ops.get(kind).copied().unwrap_or(0);
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            out.push_str(&format!(
                "{:<8} {:>10} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                kind.name(),
                n,
                n as f64 / self.seconds(),
                ms(0.5),
                ms(0.95),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            ));
        }
        for (kind, count) in &self.errors {
            out.push_str(&format!("errors: {kind}: {count}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that answers every op after a fixed delay, failing every
    /// tenth get.
    struct Fake;

    impl Target for Fake {
        type Conn = AtomicU64;
        fn connect(&self, _: usize) -> Result<AtomicU64, String> {
            Ok(AtomicU64::new(0))
        }
        async fn run(conn: &AtomicU64, kind: Kind, _: Vec<Bytes>, _: &Bytes) -> Result<(), String> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let n = conn.fetch_add(1, Ordering::Relaxed);
            if kind == Kind::Get && n % 10 == 9 {
                return Err("unavailable".into());
            }
            Ok(())
        }
    }

    fn settings() -> Settings {
        Settings {
            prefix: "bench/".into(),
            clients: 4,
            connections: 0,
            workload: Workload::Only(Kind::Put),
            keys: 100,
            key_size: 16,
            value_size: 8,
            batch: 1,
            duration: Duration::from_secs(10),
            ops: Some(400),
            warmup: Duration::ZERO,
            rate: None,
        }
    }

    #[tokio::test]
    async fn every_operation_is_counted_once_as_ok_or_as_an_error() {
        let mut s = settings();
        s.workload = Workload::Only(Kind::Get);
        let report = run(&Fake, &s).await.unwrap();
        assert_eq!(report.total_ops() + report.total_errors(), 400);
        assert_eq!(report.errors.get("unavailable"), Some(&40));
        assert!(
            report.overall().value_at_quantile(0.5) >= 1000,
            "at least 1 ms each"
        );
    }

    #[test]
    fn an_open_loop_client_wakes_half_a_tick_before_its_slot_or_goes_at_once() {
        let now = Instant::now();
        let due = now + Duration::from_millis(3);
        assert_eq!(
            timer_deadline(due, now),
            Some(due - TIMER_ROUNDING),
            "a slot 3 ms away"
        );
        // Within half a tick of the slot, or past it: no sleep.
        assert_eq!(timer_deadline(now + Duration::from_micros(400), now), None);
        assert_eq!(timer_deadline(now, now + Duration::from_millis(2)), None);
    }

    #[tokio::test]
    async fn mixed_runs_measure_gets_and_puts_separately() {
        let mut s = settings();
        s.workload = Workload::Mixed { read_pct: 50 };
        let report = run(&Fake, &s).await.unwrap();
        assert!(report.ops.get(&Kind::Get).copied().unwrap_or(0) > 0);
        assert!(report.ops.get(&Kind::Put).copied().unwrap_or(0) > 0);
        assert!(report.table().contains("put") && report.table().contains("get"));
    }

    #[tokio::test]
    async fn open_loop_operations_keep_to_the_schedule() {
        // 100 operations at 100 ops/s: the last is due 0.99 s after start
        // (and may go out half a millisecond early).
        let mut s = settings();
        s.rate = Some(100.0);
        s.ops = Some(100);
        let report = run(&Fake, &s).await.unwrap();
        assert_eq!(report.total_ops(), 100);
        assert!(
            report.elapsed >= Duration::from_millis(980),
            "{:?}",
            report.elapsed
        );
    }

    #[tokio::test]
    async fn an_open_loop_run_ends_when_its_time_is_up_not_at_a_later_slot() {
        // 2 clients at 2 ops/s in total: each has a slot every second
        // (client 0 at 0 s, 1 s, 2 s; client 1 at 0.5 s, 1.5 s, 2.5 s).
        let mut s = settings();
        s.clients = 2;
        s.rate = Some(2.0);
        s.ops = None;
        s.duration = Duration::from_millis(1500);
        let report = run(&Fake, &s).await.unwrap();
        assert!(
            (3..=4).contains(&report.total_ops()),
            "{} ops",
            report.total_ops()
        );
        assert!(
            report.elapsed < Duration::from_millis(2200),
            "waited for a slot after the end: {:?}",
            report.elapsed
        );
    }

    #[tokio::test]
    async fn after_a_warmup_an_open_loop_counts_every_scheduled_operation() {
        // 4 clients at 8 ops/s in total (a slot every 0.5 s each): in a
        // 2 s run after a 1 s warmup, 16 operations are due.
        let mut s = settings();
        s.rate = Some(8.0);
        s.ops = None;
        s.warmup = Duration::from_secs(1);
        s.duration = Duration::from_secs(2);
        let report = run(&Fake, &s).await.unwrap();
        assert!(
            (15..=17).contains(&report.total_ops()),
            "{} ops counted",
            report.total_ops()
        );
    }
}
