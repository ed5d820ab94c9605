//! `FileStorage`: one raft node's durable state — the WAL, the hard state, the
//! membership and the node identity — and its `raft::Storage` implementation.
//!
//! Writes are buffered by `append` / `set_hard_state` / `set_membership` and made
//! durable together by `sync`, one fdatasync per raft `Ready`. Reads serve appended
//! entries at once (from memory) and older ones from the cache or, failing that, from
//! their segment with a checksummed positioned read. This file must not frame bytes or
//! touch segment files directly (`wal.rs` does), and must not talk to raft beyond the
//! `Storage` trait: driving raft is the replica crate's job.

use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};

use crate::entry_log::{EntryLocation, EntryLog};
use crate::error::StorageError;
use crate::identity::{read_identity, write_identity, NodeIdentity};
use crate::membership::MembershipRecord;
use crate::record::Record;
use crate::wal::{DurableMeta, Wal, WAL_DIR_NAME};

/// Tuning knobs; the defaults suit a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    /// A segment is closed and a new one started once it has grown past this.
    pub wal_segment_size_bytes: u64,
    /// Memory budget for recent entries kept to serve raft without disk reads.
    pub entry_cache_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            wal_segment_size_bytes: 64 * 1024 * 1024,
            entry_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A point-in-time summary, for metrics and the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// Number of WAL segment files.
    pub segments: u64,
    /// Bytes of all WAL segments on disk (buffered, unsynced writes not included).
    pub disk_bytes: u64,
}

/// The durable store of one raft node in its data directory.
#[derive(Debug)]
pub struct FileStorage {
    data_dir: PathBuf,
    identity: Option<NodeIdentity>,
    wal: Wal,
    log: EntryLog,
    /// Latest values, including buffered changes not yet synced.
    hard_state: HardState,
    membership: MembershipRecord,
    /// Entry and snapshot-marker records waiting for the next `sync`, in order.
    pending_records: Vec<Record>,
    membership_dirty: bool,
    /// What the WAL holds as of the last successful `sync`.
    durable: DurableMeta,
}

impl FileStorage {
    /// Opens (creating if missing) the data dir and recovers the WAL under `<dir>/wal/`.
    /// A torn or partial final record of the last segment is truncated (logged at
    /// warn); a failed check anywhere else is `Err(Corrupted { path, offset, .. })`.
    pub fn open(data_dir: &Path, opts: StorageOptions) -> Result<FileStorage, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|err| StorageError::io(data_dir, err))?;
        let identity = read_identity(data_dir)?;
        let mut log = EntryLog::new(opts.entry_cache_bytes);
        let mut hard_state = HardState::default();
        let mut membership = MembershipRecord::default();
        let mut wal = Wal::open(data_dir, opts.wal_segment_size_bytes, |position, record| {
            let corrupted = |reason: String| {
                StorageError::corrupted(position.path, position.offset_bytes, reason)
            };
            match record {
                Record::SegmentHeader(header) => {
                    log.apply_snapshot_marker(header.snapshot_index, header.snapshot_term)
                        .map_err(corrupted)?;
                    hard_state = header.hard_state.clone();
                    membership = header.membership.clone();
                }
                Record::Entry(entry) => {
                    log.check_next_index(entry.index).map_err(corrupted)?;
                    let location = EntryLocation {
                        segment_seq: position.segment_seq,
                        offset_bytes: position.offset_bytes,
                        payload_len_bytes: position.payload_len_bytes,
                    };
                    log.push(entry.clone(), Some(location));
                }
                Record::HardState(state) => hard_state = state.clone(),
                Record::Membership(record) => membership = record.clone(),
                Record::SnapshotMarker { index, term } => {
                    log.apply_snapshot_marker(*index, *term)
                        .map_err(corrupted)?;
                }
            }
            Ok(())
        })?;
        if hard_state.commit > log.last_index() {
            return Err(StorageError::Inconsistent {
                dir: data_dir.join(WAL_DIR_NAME),
                reason: format!(
                    "hard state commits index {} but the log ends at {}",
                    hard_state.commit,
                    log.last_index()
                ),
            });
        }
        let durable = DurableMeta {
            snapshot_index: log.snapshot_index(),
            snapshot_term: log.snapshot_term(),
            hard_state: hard_state.clone(),
            membership: membership.clone(),
        };
        wal.ensure_writable_segment(&durable)?;
        tracing::info!(
            data_dir = %data_dir.display(),
            first_index = log.first_index(),
            last_index = log.last_index(),
            term = hard_state.term,
            commit = hard_state.commit,
            segments = wal.segment_count(),
            "storage opened"
        );
        Ok(FileStorage {
            data_dir: data_dir.to_path_buf(),
            identity,
            wal,
            log,
            hard_state,
            membership,
            pending_records: Vec::new(),
            membership_dirty: false,
            durable,
        })
    }

    /// The identity from `<dir>/raftkv.id`; `None` on a fresh directory.
    pub fn identity(&self) -> Option<NodeIdentity> {
        self.identity
    }

    /// True once the node has a configuration (bootstrapped, or received a snapshot).
    pub fn is_initialized(&self) -> bool {
        self.membership.conf_state != Default::default()
    }

    /// Initializes a fresh node of a static cluster: writes the identity file, then a
    /// snapshot marker at `membership.index` (normally 1) with term 1, the hard state
    /// {term 1, vote 0, commit `membership.index`} and the membership, and syncs.
    pub fn bootstrap(
        &mut self,
        identity: NodeIdentity,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        if self.is_initialized() || self.log.last_index() > 0 {
            return Err(StorageError::AlreadyInitialized);
        }
        if membership.index == 0 {
            return Err(StorageError::InvalidRequest {
                reason: "bootstrap membership index must be at least 1".to_string(),
            });
        }
        self.set_identity(identity)?;
        const BOOTSTRAP_TERM: u64 = 1;
        self.log
            .apply_snapshot_marker(membership.index, BOOTSTRAP_TERM)
            .map_err(|reason| StorageError::InvalidRequest { reason })?;
        self.pending_records.push(Record::SnapshotMarker {
            index: membership.index,
            term: BOOTSTRAP_TERM,
        });
        let hard_state = HardState {
            term: BOOTSTRAP_TERM,
            vote: 0,
            commit: membership.index,
            ..Default::default()
        };
        self.set_hard_state(&hard_state);
        self.set_membership(membership);
        self.sync()
    }

    /// Records the identity of a node that will be filled by a snapshot later (join).
    /// Succeeds without writing if the same identity is already stored.
    pub fn set_identity(&mut self, identity: NodeIdentity) -> Result<(), StorageError> {
        match self.identity {
            Some(existing) if existing == identity => Ok(()),
            Some(existing) => Err(StorageError::IdentityMismatch {
                existing_node_id: existing.node_id,
                existing_cluster_id: existing.cluster_id,
                requested_node_id: identity.node_id,
                requested_cluster_id: identity.cluster_id,
            }),
            None => {
                write_identity(&self.data_dir, &identity)?;
                self.identity = Some(identity);
                Ok(())
            }
        }
    }

    /// Buffers `entries` for the next `sync`; they are readable through `raft::Storage`
    /// at once. If `entries[0].index <= last_index`, stored entries from that index on
    /// are dropped first (raft overwrites a conflicting suffix). Entries must be
    /// contiguous, above the snapshot, and leave no gap after the current last index.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_not_fail_stopped()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let invalid = |reason: String| StorageError::InvalidRequest { reason };
        for (offset, entry) in entries.iter().enumerate() {
            if entry.index != first.index + offset as u64 {
                return Err(invalid(format!(
                    "entries are not contiguous: index {} follows {}",
                    entry.index,
                    first.index + offset as u64 - 1
                )));
            }
        }
        self.log.check_next_index(first.index).map_err(invalid)?;
        // Records buffered for indexes being overwritten need never reach the disk.
        while let Some(Record::Entry(pending)) = self.pending_records.last() {
            if pending.index < first.index {
                break;
            }
            self.pending_records.pop();
        }
        for entry in entries {
            self.log.push(entry.clone(), None);
            self.pending_records.push(Record::Entry(entry.clone()));
        }
        Ok(())
    }

    /// Buffers the hard state; it is written at the next `sync` only if it changed.
    pub fn set_hard_state(&mut self, hs: &HardState) {
        self.hard_state = hs.clone();
    }

    /// Buffers the membership for the next `sync`.
    pub fn set_membership(&mut self, m: MembershipRecord) {
        self.membership = m;
        self.membership_dirty = true;
    }

    /// Writes everything buffered and fdatasyncs once (group commit). Entries go before
    /// the hard state so a crash mid-write can never leave a commit index past the log.
    /// After a failed fsync this and every later call fail (`FailStopped`): the caller
    /// must stop the node. A write undone after ENOSPC (`is_no_space`) keeps the buffer
    /// for a later retry.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_not_fail_stopped()?;
        let hard_state_changed = self.hard_state != self.durable.hard_state;
        if self.pending_records.is_empty() && !hard_state_changed && !self.membership_dirty {
            return Ok(());
        }
        let mut batch = Vec::new();
        // (index, term, offset in batch, payload length) of every entry record.
        let mut written_entries = Vec::new();
        for record in &self.pending_records {
            let offset_in_batch = batch.len() as u64;
            let record_len = record.encode_into(&mut batch)?;
            if let Record::Entry(entry) = record {
                let payload_len = u32::try_from(record_len - crate::frame::HEADER_LEN_BYTES as u64)
                    .expect("frame limits payloads to u32");
                written_entries.push((entry.index, entry.term, offset_in_batch, payload_len));
            }
        }
        if hard_state_changed {
            Record::HardState(self.hard_state.clone()).encode_into(&mut batch)?;
        }
        if self.membership_dirty {
            Record::Membership(self.membership.clone()).encode_into(&mut batch)?;
        }
        let position = self.wal.write_batch(&batch, &self.durable)?;
        for (index, term, offset_in_batch, payload_len_bytes) in written_entries {
            let location = EntryLocation {
                segment_seq: position.segment_seq,
                offset_bytes: position.offset_bytes + offset_in_batch,
                payload_len_bytes,
            };
            self.log.set_location(index, term, location);
        }
        self.log.evict();
        self.pending_records.clear();
        self.membership_dirty = false;
        self.durable = DurableMeta {
            snapshot_index: self.log.snapshot_index(),
            snapshot_term: self.log.snapshot_term(),
            hard_state: self.hard_state.clone(),
            membership: self.membership.clone(),
        };
        Ok(())
    }

    /// The latest hard state (including a buffered, unsynced one).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The latest membership (including a buffered, unsynced one).
    pub fn membership(&self) -> &MembershipRecord {
        &self.membership
    }

    pub fn stats(&self) -> StorageStats {
        StorageStats {
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot_index(),
            snapshot_term: self.log.snapshot_term(),
            segments: self.wal.segment_count(),
            disk_bytes: self.wal.disk_bytes(),
        }
    }

    /// Bytes of entries currently held in the entry cache.
    pub fn entry_cache_bytes(&self) -> u64 {
        self.log.cache_bytes()
    }

    /// True once a failed fsync (or an unrecoverable write failure) made the storage
    /// refuse all writes; the node must stop.
    pub fn is_fail_stopped(&self) -> bool {
        self.wal.fail_stop_reason().is_some()
    }

    fn check_not_fail_stopped(&self) -> Result<(), StorageError> {
        match self.wal.fail_stop_reason() {
            Some(reason) => Err(StorageError::FailStopped {
                reason: reason.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// One entry, from memory or disk; `index` must be within the log.
    fn entry_at(&self, index: u64) -> Result<Entry, StorageError> {
        if let Some(entry) = self.log.cached(index) {
            return Ok(entry.clone());
        }
        let location = self
            .log
            .location(index)
            .expect("entries outside the cache have been synced and have a location");
        let entry = self.wal.read_entry(location)?;
        let expected_term = self.log.term(index);
        if entry.index != index || Some(entry.term) != expected_term {
            return Err(StorageError::corrupted(
                self.wal.segment_path(location.segment_seq),
                location.offset_bytes,
                format!(
                    "expected entry {index} of term {expected_term:?}, found entry {} of term {}",
                    entry.index, entry.term
                ),
            ));
        }
        Ok(entry)
    }
}

impl raft::Storage for FileStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.membership.conf_state.clone(),
        ))
    }

    /// Entries `[low, high)`, cut to `max_size` bytes like `raft::util::limit_size`
    /// (always at least one entry).
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        use protobuf::Message as _;
        if low < self.log.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.log.last_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max_size_bytes = max_size.into().unwrap_or(raft::NO_LIMIT);
        let mut entries = Vec::with_capacity((high - low).min(1024) as usize);
        let mut total_size_bytes = 0u64;
        for index in low..high {
            let entry = self.entry_at(index)?;
            total_size_bytes = total_size_bytes.saturating_add(u64::from(entry.compute_size()));
            if !entries.is_empty() && total_size_bytes > max_size_bytes {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.log.snapshot_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.log
            .term(idx)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.last_index())
    }

    /// Snapshots arrive in a later change; raft retries on this error.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
