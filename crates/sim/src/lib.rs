//! Deterministic simulation testing of RaftKV's replica.
//!
//! One seed is one run: a cluster of 3 or 5 replicas — the real
//! `raftkv_replica` node code, driven turn by turn through `ReplicaCore` —
//! in one thread, with a simulated network (delay, loss, duplication,
//! reordering, partitions of every shape, one-way links), simulated disks
//! with the WAL's crash semantics (unsynced writes lost or kept as a
//! prefix; failing fsyncs; full disks), a clock per node with bounded
//! drift, process crashes, restarts and pauses, and clients issuing puts,
//! deletes and reads (linearizable and lease) with sessions and retries, and
//! compare-and-swaps (etcd `Txn`s). The history goes to the test kit's
//! linearizability checker; raft's invariants are checked after every turn
//! (see [`world`]). etcd leases (granted, kept alive or left to expire) and
//! watchers (following the applied history from node to node) run beside
//! them, with checks of their own.
//!
//! The same seed gives the same run, bit for bit (`Report::trace_hash`).

pub mod clock;
pub mod disk;
pub mod trace;
pub mod world;

pub use raftkv_replica::Bugs;
pub use world::{run_seed, run_seed_with_bugs, Params, Report};

/// Turns one deliberate bug on.
pub type SetBug = fn(&mut Bugs);

/// The deliberate bugs the simulator must catch, by name (`--bug NAME`).
pub const BUGS: [(&str, SetBug); 6] = [
    ("ack-before-fsync", |b| b.ack_before_fsync = true),
    ("long-lease", |b| {
        b.lease_longer_than_election_timeout = true
    }),
    ("apply-before-commit", |b| b.apply_before_commit = true),
    ("read-before-applied", |b| b.read_before_applied = true),
    ("forget-vote", |b| b.forget_vote = true),
    ("ignore-keep-alive", |b| b.ignore_keep_alive = true),
];

/// The bug switches for `name` (one of [`BUGS`]).
pub fn bug(name: &str) -> Option<Bugs> {
    let (_, set) = BUGS.iter().find(|(n, _)| *n == name)?;
    let mut bugs = Bugs::default();
    set(&mut bugs);
    Some(bugs)
}

/// Steps (simulated milliseconds of faults and load) per seed unless told.
pub const DEFAULT_STEPS: u64 = 20_000;
