//! The replicated key-value state machine.
//!
//! `KvState` is what every replica builds by applying the same committed log
//! entries in the same order: an ordered persistent map (scan = prefix +
//! sorted order; cloning it is O(1), so a point-in-time snapshot never stops
//! writes) plus the client sessions that make retried writes apply once.
//!
//! This crate knows nothing about raft, sockets or files: it is a pure,
//! deterministic function from (state, command) to state. Everything that
//! could differ between replicas (wall clocks, randomness) must come from the
//! log (see `Command::timestamp_ms`).

pub mod auth;
mod command;
pub mod etcd;
mod hash;
mod history;
pub mod leases;
mod session;
mod snapshot;
mod state;

pub use command::{
    decode_command, encode_command, ClusterIdChoice, Command, LeaseGrant, MemberAddress, Op,
};
pub use history::{Event, HistoryLimits, RevisionError};
pub use session::{
    SessionLimits, SessionVerdict, CURRENT_RULES, RULES_ORIGINAL, RULES_REVISIONS,
    RULES_STRICT_SESSIONS, RULES_TEST_NEXT, RULES_UNREPORTED,
};
pub use snapshot::RestoreError;
pub use state::{ApplyOutcome, KeyRange, KvState, Record, ScanPage, ScanQuery};
