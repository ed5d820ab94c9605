//! The replica: one raft node driven by a dedicated thread.
//!
//! This is the only crate that touches raft-rs. It owns the `RawNode`, the
//! `FileStorage` and the state machine, and follows raft-rs's `Ready`
//! protocol exactly (see `node/mod.rs`). It owns no sockets and no clock it is not
//! handed: peers are reached through the [`Transport`] trait, time enters only
//! as ticks of the node thread, and wall-clock time only as the leader's stamp
//! on proposals (`Command::timestamp_ms`).
//!
//! Callers talk to the node through [`Replica`], a cheap handle that sends
//! requests to the node thread over a bounded channel and awaits the answer.

mod clock;
mod cluster_id;
mod conf_change;
mod config;
mod core;
mod error;
mod handle;
mod log_store;
mod log_version;
mod logger;
mod membership;
mod node;
mod peer_check;
mod peer_message;
mod proposals;
mod reads;
mod snapshots;
mod status;
mod transport;

pub use clock::{Clock, SystemClock};
pub use cluster_id::{
    admit as admit_cluster, describe as describe_cluster, vote_allowed, ClusterIds,
};
pub use conf_change::{ChangePlan, ConfChangeRequest, MemberChange, PROMOTE_MAX_LAG_ENTRIES};
pub use config::{Bugs, ReplicaConfig};
pub use core::{RaftView, ReplicaCore};
pub use error::{FatalError, ReplicaError};
pub use handle::{Replica, WriteSession};
pub use log_store::LogStore;
pub use log_version::{cluster_log_version, ClusterLogVersion};
pub use membership::{bootstrap_membership, encode_conf_change_context, member_ids};
pub use peer_check::{check_envelope, check_membership, Arrival, Rejection};
pub use peer_message::{Lane, PeerMessage};
pub use proposals::{Stages, WriteResult};
pub use status::{MemberInfo, MembersInfo, NodeStatus, PeerProgressInfo, RaftStateInfo, Role};
pub use transport::Transport;

pub use node::{Caller, CompactResult, LeaseInfo, QueueSizes, Write};
pub use raftkv_kv::{KvState, Op, Record, ScanPage, ScanQuery, SessionLimits};
pub use raftkv_storage::{
    read_chunk_at as read_snapshot_chunk, FileStorage, MembershipRecord, NodeIdentity,
    SnapshotInfo, SnapshotMeta, SnapshotStore, StorageError, StorageOptions, StorageStats,
};
