//! Deterministic simulation testing of RaftKV's replica.
//!
//! One seed is one run: a cluster of 3 or 5 replicas — the real
//! `raftkv_replica` node code, driven turn by turn through `ReplicaCore` —
//! in one thread, with a simulated network (delay, loss, duplication,
//! reordering, partitions of every shape, one-way links), simulated disks
//! with the WAL's crash semantics (unsynced writes lost or kept as a
//! prefix; failing fsyncs; full disks), a clock per node with bounded
//! drift, process crashes, restarts and pauses, and clients issuing puts,
//! deletes and reads (linearizable and lease) with sessions and retries.
//! The history goes to the test kit's linearizability checker; raft's
//! invariants are checked after every turn (see [`world`]).
//!
//! The same seed gives the same run, bit for bit (`Report::trace_hash`).

pub mod clock;
pub mod disk;
pub mod trace;
pub mod world;

pub use world::{run_seed, Params, Report};

/// Steps (simulated milliseconds of faults and load) per seed unless told.
pub const DEFAULT_STEPS: u64 = 20_000;
