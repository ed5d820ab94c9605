//! Fault scenarios in the style of Jepsen: concurrent clients run puts,
//! gets (linearizable and lease), deletes and scans on a few contended keys,
//! and other clients run a compare-and-swap register workload (read, write
//! and compare-and-swap, each an etcd `Txn`, spread over every member) on
//! keys of their own, and record every operation; a nemesis injects one kind of fault (crash,
//! pause, partition, delay, loss) and heals it; afterwards every node must
//! converge to the same state hash and the history must be linearizable.
//!
//! Used by the bounded suite (`crates/cli/tests/fault_suite.rs`, in CI) and
//! by the long soak (`examples/soak.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_client::{Client, ClientOptions, Consistency, Error, ScanOptions};
use rand::Rng;
use serde_json::Value;

use crate::etcd_ops::{put, range, read_value, txn, value_is};
use crate::history::{check, KvOp, Operation, Outcome, Swap, Verdict};
use crate::TestCluster;

/// The faults of feature list §3 and §8.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// kill -9 of the leader, restarted later.
    LeaderCrash,
    /// The leader cut off from the majority, then healed.
    LeaderPartition,
    /// kill -9 of a follower, restarted later.
    FollowerCrash,
    /// A follower cut off from everyone, then healed.
    FollowerPartition,
    /// Two of five nodes killed, restarted later.
    TwoOfFiveDown,
    /// Every peer message delayed 50 ms +- 25 ms.
    Delay,
    /// 10% of peer messages lost.
    Loss,
    /// The leader paused (SIGSTOP) for longer than the election timeout.
    LeaderPause,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::LeaderCrash,
        Scenario::LeaderPartition,
        Scenario::FollowerCrash,
        Scenario::FollowerPartition,
        Scenario::TwoOfFiveDown,
        Scenario::Delay,
        Scenario::Loss,
        Scenario::LeaderPause,
    ];

    pub fn nodes(self) -> usize {
        match self {
            Scenario::TwoOfFiveDown => 5,
            _ => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaderCrash => "leader-crash",
            Scenario::LeaderPartition => "leader-partition",
            Scenario::FollowerCrash => "follower-crash",
            Scenario::FollowerPartition => "follower-partition",
            Scenario::TwoOfFiveDown => "two-of-five-down",
            Scenario::Delay => "delay-50ms",
            Scenario::Loss => "loss-10pct",
            Scenario::LeaderPause => "leader-pause",
        }
    }

    /// Injects the fault, holds it for `hold`, heals it. Returns a line
    /// describing what was done.
    pub fn inject(self, cluster: &mut TestCluster, hold: Duration) -> String {
        let leader = cluster.leader();
        let follower = cluster
            .live_ids()
            .into_iter()
            .find(|id| *id != leader)
            .expect("a follower");
        let what = match self {
            Scenario::LeaderCrash => {
                cluster.kill(leader);
                std::thread::sleep(hold);
                cluster.restart(leader);
                format!("killed leader {leader}, restarted it after {hold:?}")
            }
            Scenario::LeaderPartition => {
                let others = cluster.isolate(leader);
                std::thread::sleep(hold);
                cluster.heal();
                format!("isolated leader {leader} from {others:?} for {hold:?}")
            }
            Scenario::FollowerCrash => {
                cluster.kill(follower);
                std::thread::sleep(hold);
                cluster.restart(follower);
                format!("killed follower {follower}, restarted it after {hold:?}")
            }
            Scenario::FollowerPartition => {
                cluster.isolate(follower);
                std::thread::sleep(hold);
                cluster.heal();
                format!("isolated follower {follower} for {hold:?}")
            }
            Scenario::TwoOfFiveDown => {
                let down: Vec<u64> = cluster
                    .live_ids()
                    .into_iter()
                    .filter(|i| *i != leader)
                    .take(2)
                    .collect();
                for id in &down {
                    cluster.kill(*id);
                }
                std::thread::sleep(hold);
                for id in &down {
                    cluster.restart(*id);
                }
                format!("killed {down:?} of 5, restarted them after {hold:?}")
            }
            Scenario::Delay => {
                for id in cluster.ids() {
                    cluster.set_net_faults(id, "delay 50 25\n");
                }
                std::thread::sleep(hold);
                cluster.heal();
                format!("delayed every peer message 50ms +-25ms for {hold:?}")
            }
            Scenario::Loss => {
                for id in cluster.ids() {
                    cluster.set_net_faults(id, "loss 10\n");
                }
                std::thread::sleep(hold);
                cluster.heal();
                format!("dropped 10% of peer messages for {hold:?}")
            }
            Scenario::LeaderPause => {
                cluster.pause(leader);
                std::thread::sleep(hold);
                cluster.resume(leader);
                format!("paused leader {leader} for {hold:?}")
            }
        };
        eprintln!("nemesis: {what}");
        what
    }
}

/// What the clients do.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub clients: usize,
    /// Keys `PREFIXk0`..: few, so clients contend.
    pub keys: usize,
    pub prefix: String,
    /// Deadline of one operation (retries included).
    pub op_timeout: Duration,
    /// Read gets at stale consistency from this endpoint (to show that the
    /// checker catches stale reads); `None` = linearizable and lease reads.
    pub stale_reads_from: Option<String>,
    /// Clients of the compare-and-swap register workload (etcd `Txn`s on
    /// keys `CAS_PREFIXr0`..), each starting at another member.
    pub cas_clients: usize,
    pub registers: usize,
    pub cas_prefix: String,
    /// A planted client bug, to show the checker catches a broken swap:
    /// the compare is evaluated on a stale read of the client's first
    /// member, then the value is put unconditionally.
    pub broken_cas: bool,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 6,
            keys: 3,
            prefix: "j/".into(),
            op_timeout: Duration::from_secs(2),
            stale_reads_from: None,
            cas_clients: 3,
            registers: 2,
            cas_prefix: "r/".into(),
            broken_cas: false,
        }
    }
}

/// Clients running in the background, recording their history.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    history: Arc<Mutex<Vec<Operation>>>,
}

impl Workload {
    /// Starts the clients on the current tokio runtime.
    pub fn start(endpoints: &[String], config: &WorkloadConfig) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks: Vec<_> = (0..config.clients as u64)
            .map(|client| {
                let mut list = endpoints.to_vec();
                if let Some(stale) = &config.stale_reads_from {
                    list.retain(|e| e != stale);
                    list.insert(0, stale.clone());
                }
                let options = ClientOptions {
                    timeout: config.op_timeout,
                    ..Default::default()
                };
                let handle = Client::with_options(&list, options).expect("client");
                tokio::spawn(client_loop(
                    client,
                    handle,
                    config.clone(),
                    started,
                    stop.clone(),
                    history.clone(),
                ))
            })
            .collect();
        for n in 0..config.cas_clients {
            // Each swapper starts at another member: followers forward.
            let mut list = endpoints.to_vec();
            list.rotate_left(n % endpoints.len().max(1));
            tasks.push(tokio::spawn(cas_client_loop(
                (config.clients + n) as u64,
                list,
                config.clone(),
                started,
                stop.clone(),
                history.clone(),
            )));
        }
        Workload {
            stop,
            tasks,
            history,
        }
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.history.lock().expect("history lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the clients (each finishes its operation in flight) and
    /// returns the history.
    pub async fn stop(self) -> Vec<Operation> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("client task");
        }
        let mut history = std::mem::take(&mut *self.history.lock().expect("history lock"));
        history.sort_by_key(|o| o.invoked);
        history
    }
}

async fn client_loop(
    client: u64,
    handle: Client,
    config: WorkloadConfig,
    started: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Operation>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let (key, roll) = {
            let mut rng = rand::thread_rng();
            let key = format!("{}k{}", config.prefix, rng.gen_range(0..config.keys));
            (key, rng.gen_range(0..100u32))
        };
        let invoked = started.elapsed();
        let (op, outcome) = if roll < 40 {
            let value = format!("c{client}-{n}");
            let result = handle
                .put(Bytes::from(key.clone()), Bytes::from(value.clone()))
                .await;
            (KvOp::Put { key, value }, write_outcome(&result))
        } else if roll < 48 {
            let result = handle.delete(Bytes::from(key.clone())).await;
            (KvOp::Delete { key }, write_outcome(&result))
        } else if roll < 90 {
            let consistency = if config.stale_reads_from.is_some() {
                Consistency::Stale
            } else if roll % 2 == 0 {
                Consistency::Lease
            } else {
                Consistency::Linearizable
            };
            match handle.get_with(Bytes::from(key.clone()), consistency).await {
                Ok(v) => (
                    KvOp::Get {
                        key,
                        value: Some(String::from_utf8_lossy(&v).into_owned()),
                    },
                    Outcome::Ok,
                ),
                Err(Error::KeyNotFound) => (KvOp::Get { key, value: None }, Outcome::Ok),
                Err(_) => (KvOp::Get { key, value: None }, Outcome::Unknown),
            }
        } else {
            let options = ScanOptions {
                limit: 100,
                consistency: if config.stale_reads_from.is_some() {
                    Consistency::Stale
                } else {
                    Consistency::Linearizable
                },
                ..Default::default()
            };
            let prefix = config.prefix.clone();
            match handle.scan(Bytes::from(prefix.clone()), options).await {
                Ok(page) => (
                    KvOp::Scan {
                        prefix,
                        pairs: page
                            .pairs
                            .iter()
                            .map(|(k, v)| {
                                (
                                    String::from_utf8_lossy(k).into_owned(),
                                    String::from_utf8_lossy(v).into_owned(),
                                )
                            })
                            .collect(),
                    },
                    Outcome::Ok,
                ),
                Err(_) => (
                    KvOp::Scan {
                        prefix,
                        pairs: Vec::new(),
                    },
                    Outcome::Unknown,
                ),
            }
        };
        let completed = started.elapsed();
        history.lock().expect("history lock").push(Operation {
            client,
            op,
            invoked,
            completed,
            outcome,
        });
        if outcome == Outcome::Unknown {
            // Do not hammer a cluster that is down.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One client of the register workload: reads, writes and swaps, each
/// one etcd `Txn` (a swap's failure branch reads the value it lost to, the
/// next swap's expectation). On an error it moves to the next member.
async fn cas_client_loop(
    client: u64,
    mut endpoints: Vec<String>,
    config: WorkloadConfig,
    started: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Operation>>>,
) {
    let options = ClientOptions {
        timeout: config.op_timeout,
        ..Default::default()
    };
    let mut handle = Client::with_options(&endpoints, options.clone()).expect("client");
    let mut seen: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let (key, roll) = {
            let mut rng = rand::thread_rng();
            let key = format!(
                "{}r{}",
                config.cas_prefix,
                rng.gen_range(0..config.registers)
            );
            (key, rng.gen_range(0..100u32))
        };
        let value = format!("s{client}-{n}");
        let expected = seen.get(&key).cloned().flatten();
        let invoked = started.elapsed();
        let (op, outcome) = if roll < 30 {
            let read = handle
                .txn(txn(Vec::new(), vec![range(&key)], Vec::new()))
                .await;
            match read.map(|r| read_value(&r.responses)) {
                Ok(value) => {
                    seen.insert(key.clone(), value.clone());
                    (KvOp::Get { key, value }, Outcome::Ok)
                }
                Err(e) => (KvOp::Get { key, value: None }, error_outcome(&e)),
            }
        } else if roll < 50 {
            let write = handle
                .txn(txn(Vec::new(), vec![put(&key, &value, 0)], Vec::new()))
                .await;
            if write.is_ok() {
                seen.insert(key.clone(), Some(value.clone()));
            }
            let outcome = write.as_ref().map_or_else(error_outcome, |_| Outcome::Ok);
            (KvOp::Put { key, value }, outcome)
        } else {
            let result = if config.broken_cas {
                broken_swap(&handle, &key, expected.as_deref(), &value).await
            } else {
                let swap = txn(
                    vec![value_is(&key, expected.as_deref())],
                    vec![put(&key, &value, 0)],
                    vec![range(&key)],
                );
                handle.txn(swap).await.map(|r| {
                    if r.succeeded {
                        Swap::Swapped
                    } else {
                        Swap::Refused(read_value(&r.responses))
                    }
                })
            };
            let (swap, outcome) = match result {
                Ok(swap) => {
                    let now = match &swap {
                        Swap::Refused(found) => found.clone(),
                        _ => Some(value.clone()),
                    };
                    seen.insert(key.clone(), now);
                    (swap, Outcome::Ok)
                }
                Err(e) => (Swap::Unknown, error_outcome(&e)),
            };
            let op = KvOp::Cas {
                key,
                expected,
                value,
                swap,
            };
            (op, outcome)
        };
        let completed = started.elapsed();
        history.lock().expect("history lock").push(Operation {
            client,
            op,
            invoked,
            completed,
            outcome,
        });
        if outcome != Outcome::Ok {
            endpoints.rotate_left(1);
            handle = Client::with_options(&endpoints, options.clone()).expect("client");
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            // A few hundred operations a second in all: contended, and a
            // history the checker searches in seconds.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The planted bug: the compare on a stale read, the put apart from it.
async fn broken_swap(
    handle: &Client,
    key: &str,
    expected: Option<&str>,
    value: &str,
) -> Result<Swap, Error> {
    let local = match handle
        .get_with(Bytes::from(key.to_string()), Consistency::Stale)
        .await
    {
        Ok(v) => Some(String::from_utf8_lossy(&v).into_owned()),
        Err(Error::KeyNotFound) => None,
        Err(e) => return Err(e),
    };
    if local.as_deref() != expected {
        return Ok(Swap::Refused(local));
    }
    handle
        .txn(txn(Vec::new(), vec![put(key, value, 0)], Vec::new()))
        .await?;
    Ok(Swap::Swapped)
}

/// An operation's outcome from its error: refused before anything was
/// proposed, or unknown.
fn error_outcome(error: &Error) -> Outcome {
    match error {
        Error::InvalidArgument(_) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// A write's outcome: only a refusal before anything was proposed is a
/// definite failure; everything else may have been applied.
fn write_outcome(result: &Result<(), Error>) -> Outcome {
    result.as_ref().map_or_else(error_outcome, |()| Outcome::Ok)
}

/// The result of one scenario.
#[derive(Debug)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub fault: String,
    pub ops: usize,
    pub ok: usize,
    pub unknown: usize,
    /// Acknowledged compare-and-swaps that swapped, and that did not.
    pub swaps: (usize, usize),
    pub verdict: Verdict,
    /// Applied index and state hash every node converged to.
    pub converged: Result<(u64, String), String>,
    pub check_time: Duration,
}

impl ScenarioReport {
    pub fn summary(&self) -> String {
        format!(
            "{:<20} ops {:>5} (ok {:>5}, unknown {:>4}, swaps {}/{})  {:<14} converged: {}  ({})",
            self.scenario.name(),
            self.ops,
            self.ok,
            self.unknown,
            self.swaps.0,
            self.swaps.0 + self.swaps.1,
            match &self.verdict {
                Verdict::Linearizable => "linearizable".to_string(),
                Verdict::Violation(_) => "NOT LINEARIZABLE".to_string(),
                Verdict::Unknown(_) => "unknown".to_string(),
            },
            match &self.converged {
                Ok((index, hash)) => format!("index {index} hash {hash}"),
                Err(e) => format!("NO: {e}"),
            },
            self.fault
        )
    }
}

/// Timing of one scenario run.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Load before the fault.
    pub before: Duration,
    /// How long the fault is held.
    pub hold: Duration,
    /// Load after healing.
    pub after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            before: Duration::from_secs(2),
            hold: Duration::from_secs(4),
            after: Duration::from_secs(3),
        }
    }
}

/// Runs `scenario` on a fresh cluster of real servers: load, fault, heal,
/// load, convergence, check.
pub async fn run_scenario(
    bin: &std::path::Path,
    scenario: Scenario,
    timing: Timing,
    config: &WorkloadConfig,
) -> ScenarioReport {
    let mut cluster = TestCluster::start(bin, scenario.nodes());
    let workload = Workload::start(&cluster.endpoint_list(), config);
    tokio::time::sleep(timing.before).await;
    let fault = tokio::task::block_in_place(|| scenario.inject(&mut cluster, timing.hold));
    tokio::time::sleep(timing.after).await;
    let history = workload.stop().await;
    let converged = tokio::task::block_in_place(|| converge(&cluster, Duration::from_secs(60)));
    let checking = Instant::now();
    let verdict = tokio::task::block_in_place(|| check(&history));
    let report = ScenarioReport {
        scenario,
        fault,
        ops: history.len(),
        ok: history.iter().filter(|o| o.outcome == Outcome::Ok).count(),
        unknown: history
            .iter()
            .filter(|o| o.outcome == Outcome::Unknown)
            .count(),
        swaps: swaps(&history),
        verdict,
        converged,
        check_time: checking.elapsed(),
    };
    eprintln!("scenario {}", report.summary());
    if let Verdict::Violation(text) = &report.verdict {
        eprintln!("{text}");
    }
    report
}

/// Acknowledged compare-and-swaps of `history` that swapped, and that did
/// not.
pub fn swaps(history: &[Operation]) -> (usize, usize) {
    let verdicts = history.iter().filter_map(|o| match &o.op {
        KvOp::Cas { swap, .. } if o.outcome == Outcome::Ok => Some(*swap == Swap::Swapped),
        _ => None,
    });
    verdicts.fold(
        (0, 0),
        |(yes, no), s| if s { (yes + 1, no) } else { (yes, no + 1) },
    )
}

/// Waits until every node has applied the same index, then compares their
/// state hashes (`raftkv debug check`). Ok((index, hash)) when equal.
pub fn converge(cluster: &TestCluster, timeout: Duration) -> Result<(u64, String), String> {
    cluster.wait_caught_up(timeout);
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        // `debug check` waits (within its --timeout) for one applied index on
        // every member and gives the verdict; exit 0 only when they agree.
        let out = cluster.cli(&["debug", "check", "--json", "--timeout", "2s"]);
        let report: Option<Value> = out
            .stdout_lines()
            .iter()
            .find_map(|l| serde_json::from_str(l).ok());
        if let Some(report) = &report {
            let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
            if out.code == 0 && nodes.len() == cluster.member_ids().len() {
                let index = nodes[0]["applied_index"].as_u64().unwrap_or(0);
                let hash = nodes[0]["hash"].as_str().unwrap_or("").to_string();
                return Ok((index, hash));
            }
            if report["verdict"]
                .as_str()
                .is_some_and(|v| v.starts_with("MISMATCH"))
            {
                return Err(format!("replicas differ: {report}"));
            }
        }
        last = out.stdout_text();
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("nodes did not reach one applied index: {last}"))
}
