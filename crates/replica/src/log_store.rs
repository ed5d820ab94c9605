//! What the replica needs of its durable log, beyond `raft::Storage`.
//!
//! The node is generic over it: the server runs it on `FileStorage` (the
//! WAL); the simulator on a store over a simulated disk with the same
//! contract and crash semantics. The contract, as `FileStorage` documents it
//! method by method: `append`, `set_hard_state` and `set_membership` are
//! buffered (readable at once) and durable only after `sync` returns Ok;
//! `record_snapshot`, `compact`, `apply_snapshot` and `adopt_cluster_id` are
//! durable when they return Ok; an error from any writing method is fatal
//! to the node (fail-stop, never retried).

use raft::eraftpb::{Entry, HardState};
use raftkv_storage::{FileStorage, MembershipRecord, SnapshotMeta, StorageError, StorageStats};

pub trait LogStore: raft::Storage + Send + 'static {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;
    fn set_hard_state(&mut self, hs: &HardState);
    fn set_membership(&mut self, membership: MembershipRecord);
    fn sync(&mut self) -> Result<(), StorageError>;
    fn hard_state(&self) -> &HardState;
    fn membership(&self) -> &MembershipRecord;
    /// The newest snapshot recorded as durable, with the membership as of it.
    fn latest_snapshot(&self) -> Option<(SnapshotMeta, MembershipRecord)>;
    fn record_snapshot(
        &mut self,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError>;
    /// Drops entries up to `compact_to`; returns the files removed.
    fn compact(&mut self, compact_to: u64) -> Result<u64, StorageError>;
    fn apply_snapshot(
        &mut self,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError>;
    fn adopt_cluster_id(&mut self, cluster_id: u64, bootstrap_id: u64) -> Result<(), StorageError>;
    fn stats(&self) -> StorageStats;
    /// Free bytes where the log lives (`None`: unknown).
    fn free_bytes(&self) -> Option<u64>;
}

impl LogStore for FileStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        FileStorage::append(self, entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) {
        FileStorage::set_hard_state(self, hs)
    }
    fn set_membership(&mut self, membership: MembershipRecord) {
        FileStorage::set_membership(self, membership)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        FileStorage::sync(self)
    }
    fn hard_state(&self) -> &HardState {
        FileStorage::hard_state(self)
    }
    fn membership(&self) -> &MembershipRecord {
        FileStorage::membership(self)
    }
    fn latest_snapshot(&self) -> Option<(SnapshotMeta, MembershipRecord)> {
        FileStorage::latest_snapshot(self)
    }
    fn record_snapshot(
        &mut self,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        FileStorage::record_snapshot(self, meta, membership)
    }
    fn compact(&mut self, compact_to: u64) -> Result<u64, StorageError> {
        FileStorage::compact(self, compact_to)
    }
    fn apply_snapshot(
        &mut self,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        FileStorage::apply_snapshot(self, meta, membership)
    }
    fn adopt_cluster_id(&mut self, cluster_id: u64, bootstrap_id: u64) -> Result<(), StorageError> {
        FileStorage::adopt_cluster_id(self, cluster_id, bootstrap_id)
    }
    fn stats(&self) -> StorageStats {
        FileStorage::stats(self)
    }
    fn free_bytes(&self) -> Option<u64> {
        FileStorage::free_bytes(self)
    }
}
