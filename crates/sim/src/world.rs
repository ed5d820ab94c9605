//! One simulated cluster, run from a seed: N replicas (the real replica
//! code, `raftkv_replica::ReplicaCore`) in this thread, a simulated
//! network, disks and clocks, clients, and the faults. Time moves in steps
//! of one millisecond; in each step the due faults happen, the due messages
//! are delivered, every running node that has something to do takes a
//! turn, and clients see their answers.
//!
//! Every random choice comes from the seed, drawn from separate generators
//! per concern (faults, network, clients, disks, each node, leases,
//! watchers), so a seed replays exactly.
//!
//! Besides the map's clients: compare-and-swaps (etcd `Txn`s) in the
//! clients' mix, checked with the rest of the history; a lease actor and a
//! keep-alive loop (`world/leases.rs`); watchers that follow the applied
//! history of one node after another (`world/watchers.rs`).

mod etcd;
mod leases;
mod watchers;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use raft::eraftpb::EntryType;
use raftkv_replica::{
    bootstrap_membership, Bugs, ChangePlan, Lane, Op, PeerMessage, RaftView, Replica,
    ReplicaConfig, ReplicaCore, ReplicaError, SnapshotStore, Transport, Write, WriteResult,
    WriteSession,
};
use raftkv_testkit::history::{self, KvOp, Operation, Outcome, Swap, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::SimClock;
use crate::disk::{SimDisk, SimStorage};
use crate::trace::{fnv, Trace};

const STEP_US: u64 = 1_000;
/// The bootstrap id every simulated node starts with.
const BOOTSTRAP_ID: u64 = 0x5eed;
/// How long a client waits for one attempt before it tries elsewhere.
const ATTEMPT_TIMEOUT_US: u64 = 1_500_000;
/// How long a client keeps retrying one operation.
const OP_DEADLINE_US: u64 = 6_000_000;
/// After the faulty phase: everything healed, this long for the cluster to
/// settle before the final reads and checks.
const SETTLE_US: u64 = 8_000_000;
/// After the final reads, how long members may take to converge.
const CONVERGE_US: u64 = 10_000_000;

/// What one seed's cluster looks like and which faults it suffers (drawn
/// from the seed, swarm-style: each seed has its own mix).
#[derive(Clone, Debug)]
pub struct Params {
    pub nodes: u64,
    pub clients: u64,
    pub keys: u64,
    /// Per mille of messages lost, duplicated, delayed a long time.
    pub drop_permille: u32,
    pub duplicate_permille: u32,
    pub slow_permille: u32,
    pub delay_min_us: u64,
    pub delay_jitter_us: u64,
    pub partitions: bool,
    pub crashes: bool,
    pub pauses: bool,
    pub disk_faults: bool,
    pub max_drift_ppm: i64,
    pub lease_reads: bool,
    /// Bytes of committed entries a node applies per `Ready` (small: apply
    /// lags commit over several turns).
    pub apply_batch_bytes: u64,
    /// Restarts within a few milliseconds of a crash, not only after long
    /// outages.
    pub quick_restarts: bool,
    /// A node that has just granted a vote is sometimes killed at once (and
    /// restarted within milliseconds): what it persisted before answering
    /// is all it keeps.
    pub crash_after_vote: bool,
    /// Snapshot every this many applied entries (`u64::MAX`: never), and
    /// entries kept below one: small values make lagging followers catch up
    /// by snapshot transfer.
    pub snapshot_entries: u64,
    pub snapshot_catch_up_entries: u64,
    /// Membership changes: voters removed (the node then retired) and
    /// replaced by fresh nodes that join, leadership transfers.
    pub membership: bool,
    /// Mean time between faults.
    pub fault_every_us: u64,
}

impl Params {
    pub fn draw(rng: &mut StdRng) -> Params {
        let pick = |rng: &mut StdRng, choices: &[u32]| choices[rng.gen_range(0..choices.len())];
        Params {
            nodes: if rng.gen_bool(0.7) { 3 } else { 5 },
            clients: rng.gen_range(2..=5),
            keys: rng.gen_range(1..=4),
            drop_permille: pick(rng, &[0, 0, 10, 50, 200]),
            duplicate_permille: pick(rng, &[0, 0, 10, 50]),
            slow_permille: pick(rng, &[0, 5, 50, 300]),
            delay_min_us: rng.gen_range(50..2_000),
            delay_jitter_us: pick(rng, &[0, 500, 5_000, 20_000]) as u64,
            partitions: rng.gen_bool(0.6),
            crashes: rng.gen_bool(0.6),
            pauses: rng.gen_bool(0.4),
            disk_faults: rng.gen_bool(0.2),
            max_drift_ppm: pick(rng, &[0, 100, 10_000]) as i64,
            lease_reads: rng.gen_bool(0.8),
            apply_batch_bytes: pick(rng, &[16 << 20, 16 << 20, 512, 64]) as u64,
            quick_restarts: rng.gen_bool(0.3),
            crash_after_vote: rng.gen_bool(0.3),
            snapshot_entries: [u64::MAX, 100, 300, 1_000][rng.gen_range(0..4)],
            snapshot_catch_up_entries: [5, 20, 200][rng.gen_range(0..3)],
            membership: rng.gen_bool(0.4),
            fault_every_us: rng.gen_range(300_000..3_000_000),
        }
    }
}

/// The outcome of one seed.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub params: Params,
    /// Hash of every event: equal for two runs of one seed.
    pub trace_hash: u64,
    pub events: u64,
    pub operations: u64,
    pub acknowledged: u64,
    pub faults: BTreeMap<&'static str, u64>,
    /// Snapshots streamed to a follower that was behind the leader's log.
    pub snapshots_sent: u64,
    /// Empty when every check passed.
    pub violations: Vec<String>,
    /// The readable event log (replays only).
    pub log: Vec<String>,
}

/// Messages the replicas sent, waiting for the simulator to route them.
#[derive(Default)]
struct Outbox(Mutex<Vec<PeerMessage>>);

/// Which links are cut and which nodes are down: what a node's transport
/// reports as reachable.
#[derive(Default)]
struct Links {
    cut: BTreeSet<(u64, u64)>,
    down: BTreeSet<u64>,
}

struct SimTransport {
    from: u64,
    outbox: Arc<Outbox>,
    links: Arc<Mutex<Links>>,
}

impl Transport for SimTransport {
    fn send(&self, messages: Vec<PeerMessage>) {
        self.outbox.0.lock().expect("outbox").extend(messages);
    }

    fn update_peers(&self, _addresses: &BTreeMap<u64, String>) {}

    fn is_reachable(&self, id: u64) -> bool {
        let links = self.links.lock().expect("links");
        !links.down.contains(&id) && !links.cut.contains(&(self.from, id))
    }
}

struct Running {
    replica: Replica,
    core: ReplicaCore<SimStorage>,
    /// True time this process started: messages sent to it earlier went
    /// to its previous process's connections and are lost.
    started_us: u64,
    last_view: Option<RaftView>,
}

struct SimNode {
    id: u64,
    disk: SimDisk,
    clock: Arc<SimClock>,
    outbox: Arc<Outbox>,
    running: Option<Running>,
    paused_until: Option<u64>,
    restart_at: Option<u64>,
    incarnation: u64,
    /// Removed from the cluster and stopped for good.
    retired: bool,
}

impl SimNode {
    /// A node that is not running yet, on `disk`, with a clock of its own
    /// (offset and drift drawn from `rng`, in that order).
    fn new(id: u64, disk: SimDisk, base: Instant, rng: &mut StdRng, max_drift_ppm: i64) -> SimNode {
        let drift = if max_drift_ppm == 0 {
            0
        } else {
            rng.gen_range(-max_drift_ppm..=max_drift_ppm)
        };
        let offset = rng.gen_range(0..10_000_000);
        SimNode {
            id,
            disk,
            clock: Arc::new(SimClock::new(base, offset, drift)),
            outbox: Arc::new(Outbox::default()),
            running: None,
            paused_until: None,
            restart_at: None,
            incarnation: 0,
            retired: false,
        }
    }
}

/// A membership request in flight, and what follows it.
struct Admin {
    what: String,
    answer: Answer,
    /// The voter a removal takes out: once it is out, it is retired and a
    /// fresh node joins in its place.
    replaces: Option<u64>,
}

/// Nodes a run may add in all (replacements of removed voters).
const MAX_REPLACEMENTS: usize = 4;

struct InFlight {
    sent_us: u64,
    message: PeerMessage,
}

/// A reply the simulator polls (with a no-op waker) after every turn.
type Pollable<T> = Pin<Box<dyn Future<Output = T>>>;

type Answer = Pollable<Result<(), ReplicaError>>;

/// What an acknowledged client operation was told.
#[derive(Clone, Debug, Default)]
struct OpReply {
    /// A write's: the store revision once it was applied (every state that
    /// holds the write is at this revision or later).
    revision: Option<u64>,
    /// A compare-and-swap's outcome.
    swap: Option<Swap>,
}

type OpAnswer = Pollable<Result<OpReply, ReplicaError>>;

fn written(result: WriteResult) -> OpReply {
    OpReply {
        revision: Some(result.revision),
        swap: None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadLevel {
    Linearizable,
    Lease,
}

#[derive(Clone, Debug)]
enum ClientOp {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
        level: ReadLevel,
    },
    /// An etcd `Txn`: if `key` holds `expected` (`None`: absent), put
    /// `value`, else read `key`.
    Cas {
        key: String,
        expected: Option<String>,
        value: String,
    },
    /// The lease actor's (see `world/leases.rs`): grant lease `id` for
    /// `ttl` seconds (`kept`: for the keep-alive loop) ...
    LeaseGrant {
        id: u64,
        ttl: u64,
        kept: bool,
    },
    /// ... and put `key` attached to `lease` (an etcd `Txn` put).
    LeasePut {
        lease: u64,
        key: String,
        value: String,
    },
}

impl ClientOp {
    /// Proposed with the client's write session, so a retry after an
    /// unknown outcome applies once. The rest of the writes go without one,
    /// as the etcd API proposes them (`WriteSession::default()`): one whose
    /// attempt may have been applied is not retried (it could apply twice);
    /// its outcome stays unknown.
    fn has_session(&self) -> bool {
        matches!(self, ClientOp::Put { .. } | ClientOp::Delete { .. })
    }

    fn is_read(&self) -> bool {
        matches!(self, ClientOp::Get { .. })
    }
}

struct Attempt {
    node: u64,
    started_us: u64,
    answer: OpAnswer,
}

struct Pending {
    op: ClientOp,
    invoked_us: u64,
    session: WriteSession,
    /// An attempt may have been applied (its outcome was unknown).
    maybe_applied: bool,
    attempt: Option<Attempt>,
    retry_at: u64,
    /// The highest revision a write acknowledged before this operation was
    /// invoked left: a linearizable read must see at least that revision.
    floor: u64,
}

struct Client {
    id: u64,
    session_id: u64,
    seq: u64,
    leader_hint: u64,
    next_op_at: u64,
    pending: Option<Pending>,
    values: u64,
    /// The value this client last saw each key hold (what its swaps expect).
    seen: BTreeMap<String, Option<String>>,
    /// The lease actor (not a client of the map: its operations are not
    /// in the history).
    lease_actor: bool,
}

pub struct World {
    seed: u64,
    params: Params,
    now_us: u64,
    nodes: Vec<SimNode>,
    links: Arc<Mutex<Links>>,
    network: BTreeMap<(u64, u64), (u64, InFlight)>,
    message_seq: u64,
    clients: Vec<Client>,
    history: Vec<Operation>,
    fault_rng: StdRng,
    net_rng: StdRng,
    client_rng: StdRng,
    disk_rng: StdRng,
    trace: Trace,
    faults: BTreeMap<&'static str, u64>,
    snapshots_sent: u64,
    next_fault_at: u64,
    heal_at: Option<u64>,
    crash_leader_at: Option<u64>,
    admin: Option<Admin>,
    violations: Vec<String>,
    /// term -> the node that led in it.
    leaders: BTreeMap<u64, u64>,
    /// (term, true time won) of every leadership, for the lease check.
    won: Vec<(u64, u64, u64)>,
    /// index -> (term, data) of every entry any node reported committed.
    committed: BTreeMap<u64, (u64, Vec<u8>)>,
    /// applied index -> state hash, across nodes.
    states: BTreeMap<u64, u64>,
    checked_commit: BTreeMap<u64, u64>,
    /// (index, term) -> (hash of the data, term of the entry before) of
    /// every entry seen in any node's log, committed or not: log matching.
    log_entries: BTreeMap<(u64, u64), (u64, u64)>,
    /// Nodes found over a bound once (reported once, not every turn).
    over_bounds: BTreeSet<u64>,
    snap_dir: tempfile::TempDir,
    faults_on: bool,
    bugs: Bugs,
    /// The highest store revision an acknowledged write left.
    acked_revision: u64,
    lease_rng: StdRng,
    watch_rng: StdRng,
    leases: leases::Leases,
    watchers: Vec<watchers::Watcher>,
    /// `won.len()` when the watchers last looked (a new leader since?).
    watch_won_seen: usize,
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn noop_poll<T>(answer: &mut Pollable<T>) -> Poll<T> {
    let mut cx = Context::from_waker(Waker::noop());
    answer.as_mut().poll(&mut cx)
}

impl World {
    /// The cluster of `seed`, its replicas running with `bugs` (none, but
    /// to show that the checks catch them).
    pub fn new(seed: u64, keep_log: bool, bugs: Bugs) -> World {
        let mut root = StdRng::seed_from_u64(seed);
        let params = Params::draw(&mut root);
        let fault_rng = StdRng::seed_from_u64(root.gen());
        let net_rng = StdRng::seed_from_u64(root.gen());
        let mut client_rng = StdRng::seed_from_u64(root.gen());
        let disk_rng = StdRng::seed_from_u64(root.gen());
        let base = Instant::now();
        let peers: BTreeMap<u64, String> = (1..=params.nodes)
            .map(|id| (id, format!("sim-node-{id}")))
            .collect();
        let membership = bootstrap_membership(&peers, &Default::default());
        let nodes = (1..=params.nodes)
            .map(|id| {
                let disk = SimDisk::bootstrapped(membership.clone(), BOOTSTRAP_ID);
                SimNode::new(id, disk, base, &mut root, params.max_drift_ppm)
            })
            .collect();
        let mut lease_rng = StdRng::seed_from_u64(root.gen());
        let mut watch_rng = StdRng::seed_from_u64(root.gen());
        let mut clients: Vec<Client> = (1..=params.clients)
            .map(|id| Client {
                id,
                session_id: client_rng.gen::<u64>() | 1,
                seq: 0,
                leader_hint: 0,
                next_op_at: client_rng.gen_range(0..200_000),
                pending: None,
                values: 0,
                seen: BTreeMap::new(),
                lease_actor: false,
            })
            .collect();
        clients.push(Client {
            id: params.clients + 1,
            session_id: 0,
            seq: 0,
            leader_hint: 0,
            next_op_at: lease_rng.gen_range(0..500_000),
            pending: None,
            values: 0,
            seen: BTreeMap::new(),
            lease_actor: true,
        });
        let watchers = watchers::initial(&mut watch_rng);
        let mut world = World {
            seed,
            params,
            now_us: 0,
            nodes,
            links: Arc::new(Mutex::new(Links::default())),
            network: BTreeMap::new(),
            message_seq: 0,
            clients,
            history: Vec::new(),
            fault_rng,
            net_rng,
            client_rng,
            disk_rng,
            trace: Trace::new(keep_log),
            faults: BTreeMap::new(),
            snapshots_sent: 0,
            next_fault_at: 0,
            heal_at: None,
            crash_leader_at: None,
            admin: None,
            violations: Vec::new(),
            leaders: BTreeMap::new(),
            won: Vec::new(),
            committed: BTreeMap::new(),
            states: BTreeMap::new(),
            checked_commit: BTreeMap::new(),
            log_entries: BTreeMap::new(),
            over_bounds: BTreeSet::new(),
            snap_dir: tempfile::tempdir().expect("temp dir for snapshot stores"),
            faults_on: true,
            bugs,
            acked_revision: 0,
            lease_rng,
            watch_rng,
            leases: leases::Leases::default(),
            watchers,
            watch_won_seen: 0,
        };
        world.next_fault_at = world.draw_fault_gap();
        for index in 0..world.nodes.len() {
            world.start_node(index);
        }
        world
    }

    /// Runs `steps` milliseconds of faults and load, then heals everything,
    /// lets the cluster settle, reads every key and checks the history.
    pub fn run(mut self, steps: u64) -> Report {
        let params = self.params.clone();
        self.trace
            .note(0, || format!("seed {} params {params:?}", self.seed));
        for _ in 0..steps {
            self.step();
        }
        self.heal_all();
        let settle_end = self.now_us + SETTLE_US;
        while self.now_us < settle_end {
            self.step();
        }
        self.final_reads();
        self.final_checks();
        let operations = self.history.len() as u64;
        let acknowledged = self
            .history
            .iter()
            .filter(|o| o.outcome == Outcome::Ok)
            .count() as u64;
        Report {
            seed: self.seed,
            params: self.params.clone(),
            trace_hash: self.trace.hash(),
            events: self.trace.events(),
            operations,
            acknowledged,
            faults: self.faults.clone(),
            snapshots_sent: self.snapshots_sent,
            violations: std::mem::take(&mut self.violations),
            log: self.trace.take_log(),
        }
    }

    fn violation(&mut self, text: String) {
        let t = self.now_us;
        self.trace.note(t, || format!("VIOLATION: {text}"));
        // The same finding again (a second leader seen on every turn) is
        // in the event log; the report names it once.
        let repeated = self.violations.iter().any(|v| v.ends_with(&text));
        if self.violations.len() < 20 && !repeated {
            self.violations
                .push(format!("at {:.3}s: {text}", t as f64 / 1e6));
        }
    }

    fn config(&self, id: u64, cluster_id: u64, incarnation: u64) -> ReplicaConfig {
        let mut config = ReplicaConfig::new(id, cluster_id);
        config.bootstrap_id = BOOTSTRAP_ID;
        config.election_timeout = Duration::from_millis(300);
        config.heartbeat_interval = Duration::from_millis(30);
        config.lease_reads = self.params.lease_reads;
        config.max_committed_bytes_per_ready = self.params.apply_batch_bytes;
        config.snapshot_entries = self.params.snapshot_entries;
        config.snapshot_catch_up_entries = self.params.snapshot_catch_up_entries;
        config.write_snapshots_inline = true;
        config.bugs = self.bugs;
        config.seed = Some(
            self.seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(id << 32 | incarnation),
        );
        config
    }

    fn start_node(&mut self, index: usize) {
        let node = &self.nodes[index];
        let (id, incarnation) = (node.id, node.incarnation + 1);
        let storage = node.disk.open();
        let cluster_id = node.disk.durable().cluster_id;
        let config = self.config(id, cluster_id, incarnation);
        let node = &mut self.nodes[index];
        node.clock.set_true_time(self.now_us);
        node.incarnation = incarnation;
        let snapshots = SnapshotStore::open(&self.snap_dir.path().join(format!("n{id}")))
            .expect("snapshot store");
        let transport = Arc::new(SimTransport {
            from: id,
            outbox: node.outbox.clone(),
            links: self.links.clone(),
        });
        let clock = node.clock.clone();
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ReplicaCore::new(storage, snapshots, config, transport, clock)
        }));
        let node = &mut self.nodes[index];
        let started = match started {
            Ok(started) => started,
            Err(panic) => {
                node.restart_at = None;
                let message = panic_message(panic);
                self.violation(format!("node {id} panicked while starting: {message}"));
                return;
            }
        };
        match started {
            Ok((replica, core)) => {
                // Every build in the simulation takes etcd writes a follower
                // passes on through raft (the server learns it from peers'
                // envelopes).
                for peer in 1..=(self.params.nodes + MAX_REPLACEMENTS as u64) {
                    if peer != id {
                        replica.note_peer_takes_proposals(peer, true);
                    }
                }
                let node = &mut self.nodes[index];
                node.running = Some(Running {
                    replica,
                    core,
                    started_us: self.now_us,
                    last_view: None,
                });
                node.restart_at = None;
                self.links.lock().expect("links").down.remove(&id);
                self.trace
                    .note(self.now_us, || format!("node {id} started"));
            }
            Err(e) => {
                node.restart_at = None;
                let text = format!("node {id} cannot start: {e}");
                self.violation(text);
            }
        }
    }

    fn crash_node(&mut self, index: usize, why: &str) {
        self.crash_node_restarting(index, why, false);
    }

    /// Crashes a node; `quick`: it restarts within milliseconds.
    fn crash_node_restarting(&mut self, index: usize, why: &str, quick: bool) {
        let id = self.nodes[index].id;
        if self.nodes[index].running.take().is_none() {
            return;
        }
        let lost = self.nodes[index].disk.crash(&mut self.disk_rng);
        self.nodes[index].paused_until = None;
        self.links.lock().expect("links").down.insert(id);
        self.nodes[index].outbox.0.lock().expect("outbox").clear();
        let restart_in = if quick {
            self.fault_rng.gen_range(1_000..20_000)
        } else if self.params.quick_restarts && self.fault_rng.gen_bool(0.5) {
            self.fault_rng.gen_range(1_000..50_000)
        } else {
            self.fault_rng.gen_range(100_000..3_000_000)
        };
        self.nodes[index].restart_at = Some(self.now_us + restart_in);
        self.trace.note(self.now_us, || {
            format!("node {id} crashed ({why}); {lost} unsynced writes lost")
        });
    }

    fn draw_fault_gap(&mut self) -> u64 {
        let mean = self.params.fault_every_us;
        self.fault_rng.gen_range(mean / 2..mean * 3 / 2)
    }

    fn count(&mut self, fault: &'static str) {
        *self.faults.entry(fault).or_default() += 1;
    }

    fn maybe_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        if self.heal_at.is_some_and(|at| self.now_us >= at) {
            self.heal_at = None;
            self.links.lock().expect("links").cut.clear();
            self.trace.note(self.now_us, || "network healed".into());
            if self.params.crashes && self.fault_rng.gen_bool(0.5) {
                // Faults in quick succession: the followers that were cut
                // off are catching up (and applying) when the leader dies.
                self.crash_leader_at = Some(self.now_us + self.fault_rng.gen_range(5_000..150_000));
            }
        }
        if self.crash_leader_at.is_some_and(|at| self.now_us >= at) {
            self.crash_leader_at = None;
            let leader = self.nodes.iter().position(|n| {
                n.running
                    .as_ref()
                    .is_some_and(|r| r.last_view.is_some_and(|v| v.is_leader))
            });
            if let Some(index) = leader {
                self.count("crash-leader-after-heal");
                self.crash_node(index, "killed soon after the network healed");
            }
        }
        if self.now_us < self.next_fault_at {
            return;
        }
        self.next_fault_at = self.now_us + self.draw_fault_gap();
        let n = self.nodes.len();
        let mut kinds: Vec<&'static str> = Vec::new();
        if self.params.partitions {
            kinds.extend(["partition", "partition", "one-way"]);
        }
        if self.params.crashes {
            kinds.extend(["crash", "crash"]);
        }
        if self.params.pauses {
            kinds.push("pause");
        }
        if self.params.disk_faults {
            kinds.extend(["fsync-error", "disk-full"]);
        }
        if self.params.membership {
            kinds.extend(["replace-voter", "transfer-leader"]);
        }
        if kinds.is_empty() {
            return;
        }
        let kind = kinds[self.fault_rng.gen_range(0..kinds.len())];
        let live: Vec<usize> = (0..n).filter(|i| !self.nodes[*i].retired).collect();
        let target = live[self.fault_rng.gen_range(0..live.len())];
        let target_id = self.nodes[target].id;
        match kind {
            "partition" => {
                // One node cut off, or a random split into two sides.
                let side: BTreeSet<u64> = if self.fault_rng.gen_bool(0.5) {
                    [target_id].into()
                } else {
                    (1..=n as u64)
                        .filter(|_| self.fault_rng.gen_bool(0.5))
                        .collect()
                };
                let mut links = self.links.lock().expect("links");
                links.cut.clear();
                for a in 1..=n as u64 {
                    for b in 1..=n as u64 {
                        if side.contains(&a) != side.contains(&b) {
                            links.cut.insert((a, b));
                        }
                    }
                }
                drop(links);
                self.heal_at = Some(self.now_us + self.fault_rng.gen_range(100_000..4_000_000));
                self.trace
                    .note(self.now_us, || format!("partition: {side:?} | the rest"));
            }
            "one-way" => {
                let other = self.fault_rng.gen_range(1..=n as u64);
                if other == target_id {
                    return;
                }
                self.links
                    .lock()
                    .expect("links")
                    .cut
                    .insert((target_id, other));
                self.heal_at = Some(self.now_us + self.fault_rng.gen_range(100_000..4_000_000));
                self.trace
                    .note(self.now_us, || format!("link {target_id} -> {other} cut"));
            }
            "crash" => {
                if self.nodes[target].running.is_none() {
                    return;
                }
                self.crash_node(target, "killed");
            }
            "pause" => {
                // Half the time the leader: it resumes believing it leads.
                let target = match self.leader_index() {
                    Some(leader) if self.fault_rng.gen_bool(0.5) => leader,
                    _ => target,
                };
                let target_id = self.nodes[target].id;
                if self.nodes[target].running.is_none() {
                    return;
                }
                let until = self.now_us + self.fault_rng.gen_range(100_000..3_000_000);
                self.nodes[target].paused_until = Some(until);
                self.trace.note(self.now_us, || {
                    format!(
                        "node {target_id} paused for {:.3}s",
                        (until - self.now_us) as f64 / 1e6
                    )
                });
            }
            "fsync-error" => {
                self.nodes[target].disk.fail_next_fsync();
                self.trace.note(self.now_us, || {
                    format!("node {target_id}: next fsync fails")
                });
            }
            "disk-full" => {
                // Below the reserve for a while, then space again.
                self.nodes[target].disk.set_free_bytes(1 << 20);
                self.trace
                    .note(self.now_us, || format!("node {target_id}: disk full"));
            }
            "replace-voter" | "transfer-leader" => {
                if !self.start_admin(kind) {
                    return;
                }
            }
            _ => unreachable!(),
        }
        self.count(kind);
    }

    /// The node that leads (as of its last turn), running and not paused.
    fn leader_index(&self) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.paused_until.is_none()
                && n.running
                    .as_ref()
                    .is_some_and(|r| r.last_view.is_some_and(|v| v.is_leader))
        })
    }

    /// The leader's handle (see `leader_index`).
    fn leader_replica(&self) -> Option<(usize, Replica)> {
        let leader = self.leader_index()?;
        let running = self.nodes[leader].running.as_ref().expect("running");
        Some((leader, running.replica.clone()))
    }

    /// Sends a membership request to the leader, as an operator would.
    fn start_admin(&mut self, kind: &str) -> bool {
        if self.admin.is_some() {
            return false;
        }
        let Some((leader, replica)) = self.leader_replica() else {
            return false;
        };
        let voters = replica.membership().conf_state.voters;
        let pick = voters[self.fault_rng.gen_range(0..voters.len())];
        let leader_id = self.nodes[leader].id;
        let (what, answer, replaces): (String, Answer, Option<u64>) = match kind {
            "replace-voter" => {
                if self.nodes.len() >= self.params.nodes as usize + MAX_REPLACEMENTS
                    || voters.len() < 3
                {
                    return false;
                }
                let plan = ChangePlan {
                    remove: vec![pick],
                    ..Default::default()
                };
                (
                    format!("remove node {pick} (at node {leader_id})"),
                    Box::pin(async move { replica.change(plan, Duration::from_secs(10)).await }),
                    Some(pick),
                )
            }
            _ => {
                if pick == leader_id {
                    return false;
                }
                (
                    format!("transfer leadership from node {leader_id} to node {pick}"),
                    Box::pin(async move { replica.transfer(pick, Duration::from_secs(3)).await }),
                    None,
                )
            }
        };
        self.trace.note(self.now_us, || format!("asked: {what}"));
        self.admin = Some(Admin {
            what,
            answer,
            replaces,
        });
        true
    }

    /// Follows the membership request in flight; a removed voter is retired
    /// and a fresh node joins in its place.
    fn poll_admin(&mut self) {
        let Some(mut admin) = self.admin.take() else {
            return;
        };
        let Poll::Ready(result) = noop_poll(&mut admin.answer) else {
            self.admin = Some(admin);
            return;
        };
        let what = admin.what.clone();
        self.trace
            .note(self.now_us, || format!("{what}: {result:?}"));
        let (Ok(()), Some(removed)) = (&result, admin.replaces) else {
            return;
        };
        let index = (removed - 1) as usize;
        self.nodes[index].running = None;
        self.nodes[index].retired = true;
        self.nodes[index].restart_at = None;
        self.nodes[index].paused_until = None;
        self.links.lock().expect("links").down.insert(removed);
        self.trace
            .note(self.now_us, || format!("node {removed} retired"));
        let Some(leader) = self.leader_index() else {
            return;
        };
        let id = self.nodes.len() as u64 + 1;
        let cluster_id = self.nodes[leader].disk.durable().cluster_id;
        let base = self.nodes[0].clock.base();
        let disk = SimDisk::joining(cluster_id, BOOTSTRAP_ID);
        let node = SimNode::new(
            id,
            disk,
            base,
            &mut self.fault_rng,
            self.params.max_drift_ppm,
        );
        self.nodes.push(node);
        self.start_node(id as usize - 1);
        let replica = self.nodes[leader]
            .running
            .as_ref()
            .expect("running")
            .replica
            .clone();
        let plan = ChangePlan {
            voters: [(id, format!("sim-node-{id}"))].into(),
            empty: true,
            ..Default::default()
        };
        let what = format!("add node {id} as a voter");
        self.trace.note(self.now_us, || format!("asked: {what}"));
        self.admin = Some(Admin {
            what,
            answer: Box::pin(async move { replica.change(plan, Duration::from_secs(10)).await }),
            replaces: None,
        });
    }

    fn heal_all(&mut self) {
        self.faults_on = false;
        self.heal_at = None;
        self.links.lock().expect("links").cut.clear();
        for index in 0..self.nodes.len() {
            self.nodes[index].paused_until = None;
            self.nodes[index].disk.set_free_bytes(1 << 40);
            if self.nodes[index].running.is_none() && !self.nodes[index].retired {
                self.start_node(index);
            }
        }
        self.trace.note(self.now_us, || "everything healed".into());
    }

    fn step(&mut self) {
        self.now_us += STEP_US;
        self.maybe_fault();
        for index in 0..self.nodes.len() {
            // Clocks run whether or not their process does.
            self.nodes[index].clock.set_true_time(self.now_us);
            if self.nodes[index]
                .restart_at
                .is_some_and(|at| self.now_us >= at)
            {
                self.start_node(index);
            }
            if self.nodes[index]
                .paused_until
                .is_some_and(|at| self.now_us >= at)
            {
                self.nodes[index].paused_until = None;
                let id = self.nodes[index].id;
                self.trace
                    .note(self.now_us, || format!("node {id} resumed"));
            }
            if self.faults_on
                && self.nodes[index].disk.free_bytes_low()
                && self.fault_rng.gen_ratio(1, 2_000)
            {
                self.nodes[index].disk.set_free_bytes(1 << 40);
            }
        }
        self.deliver();
        self.poll_admin();
        self.start_client_ops();
        // Clients are served before and after the nodes' turns: a server
        // answers lease reads and stale reads from other threads than the
        // node's, so a node resuming from a pause may serve one before it
        // has read what arrived meanwhile.
        self.poll_clients();
        for index in 0..self.nodes.len() {
            self.turn(index);
        }
        self.poll_clients();
        self.poll_watchers();
    }

    fn deliver(&mut self) {
        let due: Vec<(u64, u64)> = self
            .network
            .range(..(self.now_us + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let (to, flight) = self.network.remove(&key).expect("listed");
            let index = (to - 1) as usize;
            let lost = match &self.nodes[index].running {
                None => true,
                Some(running) => flight.sent_us < running.started_us,
            };
            if lost {
                if flight.message.lane() == Lane::Snapshot {
                    // The stream broke: the sender hears of it (raft keeps
                    // the follower paused until it does).
                    self.report_snapshot_failure(flight.message.from(), to);
                }
                continue;
            }
            let running = self.nodes[index].running.as_ref().expect("running");
            let bytes = flight.message.encode().expect("encodable");
            self.trace.event(self.now_us, to, b'd', &bytes);
            if flight.message.lane() == Lane::Snapshot {
                self.transfer_snapshot(flight.message);
                continue;
            }
            // A vote request from outside the receiver's configuration is
            // refused with its configuration index, and the candidate learns
            // it was removed (what the peer service and transport do).
            if let Err(config_index) = running.replica.check_candidate_is_member(&flight.message) {
                let from = flight.message.from();
                if let Some(sender) = self.nodes[(from - 1) as usize].running.as_ref() {
                    sender.replica.report_removed(to, config_index);
                }
                continue;
            }
            running.replica.step(flight.message);
        }
    }

    /// Streams the snapshot a `MsgSnapshot` names from its sender's snapshot
    /// directory into the receiver's (checked as the real receiver checks
    /// it), hands the message to the receiver, and tells the sender how it
    /// went, as the real transport does.
    fn transfer_snapshot(&mut self, message: PeerMessage) {
        let (from, to) = (message.from(), message.to());
        let meta = message.snapshot_meta().expect("a snapshot message");
        let source = self.snap_dir.path().join(format!("n{from}"));
        let target = self.snap_dir.path().join(format!("n{to}"));
        let copied = (|| -> Result<(), String> {
            let source = SnapshotStore::open(&source).map_err(|e| e.to_string())?;
            let info = source
                .find(meta)
                .map_err(|e| e.to_string())?
                .ok_or("the snapshot is no longer on the sender's disk")?;
            let receiver = self.nodes[(to - 1) as usize]
                .running
                .as_ref()
                .ok_or("the receiver is down")?;
            receiver
                .replica
                .check_room_for_snapshot(info.size_bytes)
                .map_err(|e| e.to_string())?;
            let target = SnapshotStore::open(&target).map_err(|e| e.to_string())?;
            let mut incoming = target
                .receive(meta, info.size_bytes)
                .map_err(|e| e.to_string())?;
            let mut offset = 0;
            while offset < info.size_bytes {
                let chunk = raftkv_replica::read_snapshot_chunk(&info, offset, 1 << 20)
                    .map_err(|e| e.to_string())?;
                incoming.write_chunk(&chunk).map_err(|e| e.to_string())?;
                offset += chunk.len() as u64;
            }
            incoming.finish().map_err(|e| e.to_string())?;
            receiver.replica.step(message);
            Ok(())
        })();
        let delivered = copied.is_ok();
        self.trace.note(self.now_us, || match &copied {
            Ok(()) => format!("snapshot at {} sent from {from} to {to}", meta.index),
            Err(e) => format!("snapshot at {} from {from} to {to} failed: {e}", meta.index),
        });
        if delivered {
            self.snapshots_sent += 1;
        }
        if let Some(sender) = &self.nodes[(from - 1) as usize].running {
            sender.replica.report_snapshot(to, delivered);
        }
    }

    fn report_snapshot_failure(&self, from: u64, to: u64) {
        if let Some(sender) = &self.nodes[(from - 1) as usize].running {
            sender.replica.report_snapshot(to, false);
        }
    }

    /// Routes what node `index` sent: lost, duplicated, delayed per link.
    fn route(&mut self, index: usize) {
        let messages = std::mem::take(&mut *self.nodes[index].outbox.0.lock().expect("outbox"));
        let from = self.nodes[index].id;
        for message in messages {
            let to = message.to();
            let blocked = {
                let links = self.links.lock().expect("links");
                links.down.contains(&to) || links.cut.contains(&(from, to))
            };
            let snapshot = message.lane() == Lane::Snapshot;
            if blocked {
                if let Some(running) = &self.nodes[index].running {
                    running.replica.report_unreachable(to);
                }
                if snapshot {
                    self.report_snapshot_failure(from, to);
                }
                continue;
            }
            if self.net_rng.gen_ratio(self.params.drop_permille, 1000) {
                if snapshot {
                    self.report_snapshot_failure(from, to);
                }
                continue;
            }
            let copies = if self.net_rng.gen_ratio(self.params.duplicate_permille, 1000) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let mut delay = self.params.delay_min_us;
                if self.params.delay_jitter_us > 0 {
                    delay += self.net_rng.gen_range(0..self.params.delay_jitter_us);
                }
                if self.net_rng.gen_ratio(self.params.slow_permille, 1000) {
                    delay += self.net_rng.gen_range(0..1_000_000);
                }
                self.message_seq += 1;
                self.network.insert(
                    (self.now_us + delay, self.message_seq),
                    (
                        to,
                        InFlight {
                            sent_us: self.now_us,
                            message: message.clone(),
                        },
                    ),
                );
            }
        }
    }

    fn turn(&mut self, index: usize) {
        if self.nodes[index].paused_until.is_some() {
            return;
        }
        let now = self.now_us;
        let node = &mut self.nodes[index];
        let id = node.id;
        let Some(running) = &mut node.running else {
            return;
        };
        node.clock.set_true_time(now);
        if !running.core.wants_turn() {
            return;
        }
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| running.core.turn()));
        match turn {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => unreachable!("no node is asked to shut down"),
            Ok(Err(e)) => {
                let why = format!("fatal: {e}");
                self.route(index);
                self.crash_node(index, &why);
                return;
            }
            Err(panic) => {
                // A real node stops on a panic; here it is a finding.
                let message = panic_message(panic);
                self.violation(format!("node {id} panicked: {message}"));
                self.crash_node(index, "panicked");
                return;
            }
        }
        self.route(index);
        let running = self.nodes[index].running.as_mut().expect("running");
        let view = running.core.raft_view();
        if let Some(before) = running.last_view {
            self.check_queues(index, before.applied_index, view);
        }
        let running = self.nodes[index].running.as_mut().expect("running");
        let changed = running.last_view != Some(view);
        let voted = view.vote != 0
            && view.vote != id
            && running
                .last_view
                .is_none_or(|last| (last.term, last.vote) != (view.term, view.vote));
        running.last_view = Some(view);
        if changed {
            self.trace.event(
                now,
                id,
                b'v',
                &[
                    view.term,
                    view.vote,
                    view.leader_id,
                    view.commit_index,
                    view.applied_index,
                    view.last_index,
                    view.is_leader as u64,
                ]
                .map(u64::to_le_bytes)
                .concat(),
            );
            self.check_view(index, view);
        }
        if voted && self.faults_on && self.params.crash_after_vote && self.fault_rng.gen_ratio(2, 3)
        {
            self.count("crash-after-vote");
            let why = format!(
                "killed right after voting for {} in term {}",
                view.vote, view.term
            );
            self.crash_node_restarting(index, &why, true);
            // ... and what the candidate it voted for sends it is held back
            // for a while, so the restarted voter hears of no leader.
            self.links
                .lock()
                .expect("links")
                .cut
                .insert((view.vote, id));
            let until = self.now_us + self.fault_rng.gen_range(300_000..2_000_000);
            self.heal_at = Some(self.heal_at.map_or(until, |at| at.max(until)));
        }
    }

    /// Invariants after a node's turn: one leader per term; every committed
    /// index holds the same entry on every node; equal applied index, equal
    /// state.
    fn check_view(&mut self, index: usize, view: RaftView) {
        let id = self.nodes[index].id;
        if view.is_leader {
            let leader = *self.leaders.entry(view.term).or_insert(id);
            if leader != id {
                self.violation(format!(
                    "two leaders in term {}: nodes {leader} and {id}",
                    view.term
                ));
            } else if !self.won.iter().any(|w| w.0 == view.term) {
                self.won.push((view.term, id, self.now_us));
                self.trace.note(self.now_us, || {
                    format!("node {id} leads term {}", view.term)
                });
            }
        }
        let checked = self.checked_commit.get(&id).copied().unwrap_or(0);
        if view.commit_index > checked {
            let running = self.nodes[index].running.as_ref().expect("running");
            let entries = running
                .core
                .store()
                .entries_in(checked + 1, view.commit_index + 1);
            let mut conflicts = Vec::new();
            // Commands seen committed for the first time (the lease checks
            // look at grants and revokes).
            let mut fresh = Vec::new();
            for entry in entries {
                let first = !self.committed.contains_key(&entry.index);
                let seen = self
                    .committed
                    .entry(entry.index)
                    .or_insert_with(|| (entry.term, entry.data.to_vec()));
                if seen.0 != entry.term || seen.1 != entry.data.as_ref() {
                    conflicts.push((entry.index, seen.0, entry.term));
                }
                if first
                    && entry.get_entry_type() == EntryType::EntryNormal
                    && !entry.data.is_empty()
                {
                    fresh.push((entry.index, entry.term, entry.data.clone()));
                }
            }
            self.checked_commit.insert(id, view.commit_index);
            for (i, t1, t2) in conflicts {
                self.violation(format!(
                    "committed entry {i} differs: term {t1} elsewhere, term {t2} on node {id}"
                ));
            }
            for (entry_index, entry_term, data) in fresh {
                self.note_committed_command(entry_index, entry_term, &data);
            }
        }
        self.check_log_matching(index, view);
        let running = self.nodes[index].running.as_ref().expect("running");
        let hash = running.replica.kv().content_hash();
        let seen = *self.states.entry(view.applied_index).or_insert(hash);
        if seen != hash {
            self.violation(format!(
                "node {id} has another state at applied index {} than a node before it",
                view.applied_index
            ));
        }
    }

    /// Log matching on the uncommitted suffix too (committed entries are
    /// compared whole above): two entries with the same index and term hold
    /// the same data and follow an entry of the same term, so two logs that
    /// share an entry share everything before it.
    fn check_log_matching(&mut self, index: usize, view: RaftView) {
        let id = self.nodes[index].id;
        let store = self.nodes[index]
            .running
            .as_ref()
            .expect("running")
            .core
            .store();
        let Ok(mut prev_term) = raft::Storage::term(store, view.commit_index) else {
            return;
        };
        let mut differ = Vec::new();
        for entry in store.entries_in(view.commit_index + 1, view.last_index + 1) {
            let this = (fnv(&entry.data), prev_term);
            let seen = *self
                .log_entries
                .entry((entry.index, entry.term))
                .or_insert(this);
            if seen != this {
                differ.push((entry.index, entry.term, seen.1 != this.1));
            }
            prev_term = entry.term;
        }
        for (i, t, after_other) in differ {
            let what = if after_other {
                "follows an entry of another term"
            } else {
                "holds other data"
            };
            self.violation(format!(
                "log matching: entry {i} of term {t} on node {id} {what} than on a node before"
            ));
        }
    }

    /// Bounds on what a node holds after a turn: its queues within their
    /// capacities, its per-peer tables no larger than the membership (a
    /// replaced node is forgotten), and — once snapshots are taken and the
    /// disk is not made to fail — the log compacted to within the catch-up
    /// margin of the last snapshot (what memory the log holds).
    fn check_queues(&mut self, index: usize, applied_before: u64, view: RaftView) {
        let id = self.nodes[index].id;
        if self.over_bounds.contains(&id) {
            return;
        }
        let running = self.nodes[index].running.as_ref().expect("running");
        let q = running.core.queue_sizes();
        let members = raftkv_replica::member_ids(
            &raftkv_replica::LogStore::membership(running.core.store()).conf_state,
        );
        let config = ReplicaConfig::new(id, 0);
        let mut over = Vec::new();
        if q.proposals > config.max_pending_proposals {
            over.push(format!("{} proposals pending", q.proposals));
        }
        if q.inputs > config.max_queued_inputs || q.peer_inputs > config.max_queued_peer_messages {
            over.push(format!(
                "{} inputs, {} peer inputs queued",
                q.inputs, q.peer_inputs
            ));
        }
        if q.peer_table_entries > members.len().max(1) {
            over.push(format!(
                "a per-peer table holds {} nodes, the membership {:?}",
                q.peer_table_entries, members
            ));
        }
        if self.params.snapshot_entries != u64::MAX && !self.params.disk_faults {
            let bound = self.params.snapshot_entries
                + self.params.snapshot_catch_up_entries
                + view.applied_index.saturating_sub(applied_before);
            if q.log_entries_below_applied > bound {
                over.push(format!(
                    "{} log entries kept at or below the applied index {} (last snapshot {}; \
                     at most {bound} expected)",
                    q.log_entries_below_applied, view.applied_index, q.last_snapshot_index
                ));
            }
        }
        if !over.is_empty() {
            self.over_bounds.insert(id);
            self.violation(format!("node {id}: {}", over.join("; ")));
        }
    }

    fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.running.is_some())
            .map(|n| n.id)
            .collect()
    }

    fn start_client_ops(&mut self) {
        if !self.faults_on {
            return;
        }
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if client.pending.is_some() || self.now_us < client.next_op_at {
                continue;
            }
            if client.lease_actor {
                match self.next_lease_op() {
                    Some(op) => self.invoke(c, op),
                    None => self.clients[c].next_op_at = self.now_us + 500_000,
                }
                continue;
            }
            let key = format!("k{}", self.client_rng.gen_range(0..self.params.keys));
            // Half writes (a quarter of all operations compare-and-swaps),
            // half reads, as many lease reads as before swaps came in.
            let op = match self.client_rng.gen_range(0..20) {
                0..=2 => {
                    let value = self.next_value(c);
                    ClientOp::Put { key, value }
                }
                3..=4 => ClientOp::Delete { key },
                5..=9 => {
                    let value = self.next_value(c);
                    let expected = self.clients[c].seen.get(&key).cloned().flatten();
                    ClientOp::Cas {
                        key,
                        expected,
                        value,
                    }
                }
                10..=15 if self.params.lease_reads => ClientOp::Get {
                    key,
                    level: ReadLevel::Lease,
                },
                _ => ClientOp::Get {
                    key,
                    level: ReadLevel::Linearizable,
                },
            };
            self.invoke(c, op);
        }
    }

    /// A value client `c` never wrote before (values written are unique).
    fn next_value(&mut self, c: usize) -> String {
        let client = &mut self.clients[c];
        client.values += 1;
        format!("{}.{}", client.id, client.values)
    }

    fn invoke(&mut self, c: usize, op: ClientOp) {
        let floor = self.acked_revision;
        let client = &mut self.clients[c];
        let session = if !op.has_session() {
            WriteSession::default()
        } else {
            client.seq += 1;
            WriteSession {
                client_id: client.session_id,
                seq: client.seq,
                first_incomplete_seq: client.seq,
            }
        };
        client.pending = Some(Pending {
            op,
            invoked_us: self.now_us,
            session,
            maybe_applied: false,
            attempt: None,
            retry_at: self.now_us,
            floor,
        });
    }

    fn poll_clients(&mut self) {
        for c in 0..self.clients.len() {
            self.poll_client(c);
        }
        self.poll_keeper();
    }

    fn poll_client(&mut self, c: usize) {
        let now = self.now_us;
        let Some(mut pending) = self.clients[c].pending.take() else {
            return;
        };
        if pending.attempt.is_none() && now >= pending.retry_at {
            if now - pending.invoked_us > OP_DEADLINE_US {
                let outcome = if pending.maybe_applied {
                    Outcome::Unknown
                } else {
                    Outcome::Failed
                };
                self.complete(c, pending, outcome, None, OpReply::default());
                return;
            }
            self.attempt(c, &mut pending);
        }
        let Some(attempt) = pending.attempt.as_mut() else {
            self.clients[c].pending = Some(pending);
            return;
        };
        let result = match noop_poll(&mut attempt.answer) {
            Poll::Pending if now - attempt.started_us > ATTEMPT_TIMEOUT_US => {
                Err(ReplicaError::UnknownOutcome("the attempt timed out".into()))
            }
            Poll::Pending => {
                self.clients[c].pending = Some(pending);
                return;
            }
            Poll::Ready(result) => result,
        };
        let node = attempt.node;
        pending.attempt = None;
        let is_read = pending.op.is_read();
        match result {
            Ok(reply) => {
                let read = if let ClientOp::Get { key, .. } = &pending.op {
                    let index = (node - 1) as usize;
                    let state = self.nodes[index].running.as_ref().map(|running| {
                        let kv = running.replica.kv();
                        let value = kv
                            .get(key.as_bytes())
                            .map(|v| String::from_utf8_lossy(&v).into_owned());
                        (value, kv.revision())
                    });
                    let Some((value, revision)) = state else {
                        // The node died between its answer and the read.
                        pending.retry_at = now + 1_000;
                        self.clients[c].pending = Some(pending);
                        return;
                    };
                    // Every write acknowledged before the read began is in
                    // the state it reads, so is the revision that write left
                    // (stronger than the value of the one key: any write
                    // missed shows).
                    if revision < pending.floor {
                        let text = format!(
                            "node {node} served a linearizable read of {key} from revision \
                             {revision}, older than revision {} that a write acknowledged \
                             before the read began left",
                            pending.floor
                        );
                        self.violation(text);
                    }
                    Some(value)
                } else {
                    None
                };
                if reply.swap == Some(Swap::Unknown) {
                    self.violation(format!(
                        "node {node} acknowledged a compare-and-swap without a transaction \
                         response"
                    ));
                    self.complete(c, pending, Outcome::Unknown, None, OpReply::default());
                    return;
                }
                self.complete(c, pending, Outcome::Ok, read, reply);
            }
            Err(ReplicaError::NotLeader { leader_id, .. }) => {
                self.clients[c].leader_hint = leader_id;
                pending.retry_at = now + if leader_id == 0 { 20_000 } else { 1_000 };
                self.clients[c].pending = Some(pending);
            }
            Err(ReplicaError::UnknownOutcome(_)) | Err(ReplicaError::Stopped(_)) => {
                if !is_read {
                    pending.maybe_applied = true;
                    if !pending.op.has_session() {
                        // No session: a retry could apply it a second time.
                        self.clients[c].leader_hint = 0;
                        self.complete(c, pending, Outcome::Unknown, None, OpReply::default());
                        return;
                    }
                }
                self.clients[c].leader_hint = 0;
                pending.retry_at = now + 10_000;
                self.clients[c].pending = Some(pending);
            }
            Err(ReplicaError::SessionExpired(_)) => {
                let outcome = if pending.maybe_applied {
                    Outcome::Unknown
                } else {
                    Outcome::Failed
                };
                self.complete(c, pending, outcome, None, OpReply::default());
            }
            Err(ReplicaError::Rejected(_)) if !is_read && !pending.op.has_session() => {
                // The state machine refused it without effect (a put on a
                // lease that has expired).
                self.complete(c, pending, Outcome::Failed, None, OpReply::default());
            }
            Err(_) => {
                // Refused without effect (overloaded, no space, ...).
                self.clients[c].leader_hint = 0;
                pending.retry_at = now + 20_000;
                self.clients[c].pending = Some(pending);
            }
        }
    }

    /// Sends one attempt of the pending op to the node the client believes
    /// leads (or any running one).
    fn attempt(&mut self, c: usize, pending: &mut Pending) {
        let running = self.running_ids();
        let hint = self.clients[c].leader_hint;
        let node = if hint != 0 && running.contains(&hint) {
            hint
        } else if running.is_empty() {
            pending.retry_at = self.now_us + 50_000;
            return;
        } else {
            running[self.client_rng.gen_range(0..running.len())]
        };
        let index = (node - 1) as usize;
        if let Some(until) = self.nodes[index].paused_until {
            // A stopped process answers nothing: the request waits in its
            // socket until the process resumes.
            self.clients[c].leader_hint = node;
            pending.retry_at = until;
            return;
        }
        let replica = self.nodes[index]
            .running
            .as_ref()
            .expect("running")
            .replica
            .clone();
        let session = pending.session;
        let answer: OpAnswer = match &pending.op {
            ClientOp::Put { key, value } => {
                let ops = vec![Op {
                    key: key.clone().into_bytes().into(),
                    value: value.clone().into_bytes().into(),
                    delete: false,
                }];
                Box::pin(async move { replica.propose(ops, session).await.map(written) })
            }
            ClientOp::Delete { key } => {
                let ops = vec![Op {
                    key: key.clone().into_bytes().into(),
                    value: Default::default(),
                    delete: true,
                }];
                Box::pin(async move { replica.propose(ops, session).await.map(written) })
            }
            ClientOp::Get { level, .. } => {
                if *level == ReadLevel::Lease && replica.has_read_lease() {
                    let term = replica.status().term;
                    self.check_lease_read(node, term);
                    Box::pin(std::future::ready(Ok(OpReply::default())))
                } else {
                    Box::pin(async move { replica.read_index().await.map(|()| OpReply::default()) })
                }
            }
            ClientOp::Cas {
                key,
                expected,
                value,
            } => {
                // As the etcd API's server does: a follower passes it to
                // the leader through raft.
                let write = Write::EtcdTxn(etcd::cas(key, expected.as_deref(), value));
                Box::pin(async move {
                    replica
                        .write_through_leader(write, WriteSession::default(), Default::default())
                        .await
                        .map(|result| OpReply {
                            revision: Some(result.revision),
                            swap: Some(etcd::swap_of(result.txn.as_deref())),
                        })
                })
            }
            ClientOp::LeaseGrant { id, ttl, .. } => {
                let write = Write::LeaseGrant { id: *id, ttl: *ttl };
                Box::pin(async move {
                    replica
                        .write(write, WriteSession::default())
                        .await
                        .map(written)
                })
            }
            ClientOp::LeasePut { lease, key, value } => {
                let write = Write::EtcdTxn(etcd::put_with_lease(key, value, *lease));
                Box::pin(async move {
                    replica
                        .write_through_leader(write, WriteSession::default(), Default::default())
                        .await
                        .map(written)
                })
            }
        };
        pending.attempt = Some(Attempt {
            node,
            started_us: self.now_us,
            answer,
        });
    }

    /// A lease read served by `node` as leader of `term` now: no other node
    /// may have won a later term before now (on the true time axis).
    fn check_lease_read(&mut self, node: u64, term: u64) {
        let now = self.now_us;
        let rival = self
            .won
            .iter()
            .find(|(t, _, at)| *t > term && *at <= now)
            .copied();
        if let Some((t, winner, at)) = rival {
            self.violation(format!(
                "node {node} served a lease read as leader of term {term} after node \
                 {winner} had won term {t} at {:.3}s",
                at as f64 / 1e6
            ));
        }
    }

    fn complete(
        &mut self,
        c: usize,
        pending: Pending,
        outcome: Outcome,
        read: Option<Option<String>>,
        reply: OpReply,
    ) {
        let ok = outcome == Outcome::Ok;
        if let (true, Some(revision)) = (ok, reply.revision) {
            self.acked_revision = self.acked_revision.max(revision);
        }
        if self.clients[c].lease_actor {
            self.complete_lease_op(pending.op, outcome);
            self.clients[c].next_op_at = self.now_us + self.lease_rng.gen_range(100_000..600_000);
            return;
        }
        let client = self.clients[c].id;
        let seen = &mut self.clients[c].seen;
        let op = match pending.op {
            ClientOp::Put { key, value } => {
                if ok {
                    seen.insert(key.clone(), Some(value.clone()));
                }
                KvOp::Put { key, value }
            }
            ClientOp::Delete { key } => {
                if ok {
                    seen.insert(key.clone(), None);
                }
                KvOp::Delete { key }
            }
            ClientOp::Get { key, .. } => {
                let value = read.flatten();
                if ok {
                    seen.insert(key.clone(), value.clone());
                }
                KvOp::Get { key, value }
            }
            ClientOp::Cas {
                key,
                expected,
                value,
            } => {
                let swap = match reply.swap {
                    Some(swap) if ok => swap,
                    _ => Swap::Unknown,
                };
                match &swap {
                    Swap::Swapped => {
                        seen.insert(key.clone(), Some(value.clone()));
                    }
                    Swap::Refused(found) => {
                        seen.insert(key.clone(), found.clone());
                    }
                    Swap::Unknown => {}
                }
                KvOp::Cas {
                    key,
                    expected,
                    value,
                    swap,
                }
            }
            op @ (ClientOp::LeaseGrant { .. } | ClientOp::LeasePut { .. }) => {
                unreachable!("{op:?} is the lease actor's")
            }
        };
        let operation = Operation {
            client,
            op,
            invoked: Duration::from_micros(pending.invoked_us),
            completed: Duration::from_micros(self.now_us),
            outcome,
        };
        self.trace.note(self.now_us, || operation.to_string());
        self.history.push(operation);
        self.clients[c].next_op_at = self.now_us + self.client_rng.gen_range(0..30_000);
    }

    /// After the settle phase: one linearizable read of every key by each
    /// client in turn, so every acknowledged write must show.
    fn final_reads(&mut self) {
        // Let clients finish what they were doing.
        let deadline = self.now_us + OP_DEADLINE_US + ATTEMPT_TIMEOUT_US;
        while (self.clients.iter().any(|c| c.pending.is_some()) || self.admin.is_some())
            && self.now_us < deadline
        {
            self.step();
        }
        for k in 0..self.params.keys {
            let c = (k % self.params.clients) as usize;
            self.invoke(
                c,
                ClientOp::Get {
                    key: format!("k{k}"),
                    level: ReadLevel::Linearizable,
                },
            );
            let deadline = self.now_us + OP_DEADLINE_US + ATTEMPT_TIMEOUT_US;
            while self.clients[c].pending.is_some() && self.now_us < deadline {
                self.step();
            }
            if let Some(last) = self.history.last() {
                if last.outcome != Outcome::Ok {
                    self.violation(format!(
                        "the healed cluster did not serve a read of k{k} within {}s",
                        OP_DEADLINE_US / 1_000_000
                    ));
                }
            }
        }
    }

    /// (applied index, state hash) of every running member.
    fn member_states(&self) -> BTreeMap<u64, (u64, u64)> {
        let mut applied = BTreeMap::new();
        for index in self.member_indexes() {
            let node = &self.nodes[index];
            let running = node.running.as_ref().expect("a running member");
            let kv = running.replica.kv();
            applied.insert(node.id, (kv.applied_index(), kv.content_hash()));
        }
        applied
    }

    /// The indexes of the running members (as the leader, if any, sees the
    /// membership), in id order.
    fn member_indexes(&self) -> Vec<usize> {
        // A node the cluster removed stops applying where it left.
        let members: Option<Vec<u64>> = self
            .leader_replica()
            .map(|(_, replica)| raftkv_replica::member_ids(&replica.membership().conf_state));
        let mut indexes = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if let Some(running) = &node.running {
                let member = members.as_ref().is_none_or(|m| m.contains(&node.id));
                if !member || running.replica.status().role == raftkv_replica::Role::Removed {
                    continue;
                }
                indexes.push(index);
            }
        }
        indexes
    }

    fn final_checks(&mut self) {
        // Leases no one keeps alive expire (see `world/leases.rs`).
        self.settle_leases();
        // Convergence: every member has applied the same index and holds
        // the same state — at once, or within CONVERGE_US more (message loss
        // and delays go on after the heal, and a cluster that elected its
        // leader late, after several lost elections, still has followers
        // catching up).
        let deadline = self.now_us + CONVERGE_US;
        let mut applied = self.member_states();
        loop {
            let distinct: BTreeSet<(u64, u64)> = applied.values().copied().collect();
            if distinct.len() <= 1 || self.now_us >= deadline {
                break;
            }
            self.step();
            applied = self.member_states();
        }
        let distinct: BTreeSet<(u64, u64)> = applied.values().copied().collect();
        // Nothing leaked: once the cluster is quiet, every caller was answered.
        let mut owed = Vec::new();
        for node in &self.nodes {
            if let Some(running) = &node.running {
                let waiting = running.core.waiting();
                if waiting != (0, 0, false) {
                    owed.push((node.id, waiting));
                }
            }
        }
        if !owed.is_empty() {
            self.violation(format!(
                "callers never answered after the cluster went quiet, as (node, (proposals, \
                 reads, membership job)): {owed:?}"
            ));
        }
        if distinct.len() > 1 {
            self.violation(format!(
                "replicas did not converge within {}s of the final reads: (applied index, \
                 state hash) by node {applied:?}",
                CONVERGE_US / 1_000_000
            ));
        }
        if distinct.len() == 1 {
            // Members that applied everything, in the same state: what the
            // committed log says happened.
            let members: Vec<usize> = applied.keys().map(|id| (*id - 1) as usize).collect();
            self.check_watchers(members[0]);
            self.check_leases_at_end(&members);
        }
        match history::check(&self.history) {
            Verdict::Linearizable => {}
            Verdict::Violation(why) => self.violation(format!("not linearizable: {why}")),
            Verdict::Unknown(why) => self.violation(format!("checker gave up: {why}")),
        }
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64, steps: u64, keep_log: bool) -> Report {
    World::new(seed, keep_log, Bugs::default()).run(steps)
}

/// Runs one seed with deliberate bugs in the replicas.
pub fn run_seed_with_bugs(seed: u64, steps: u64, keep_log: bool, bugs: Bugs) -> Report {
    World::new(seed, keep_log, bugs).run(steps)
}
