//! `FileStorage`: one raft node's durable state — the WAL, the hard state, the
//! membership and the node identity — and its `raft::Storage` implementation.
//!
//! Writes are buffered by `append` / `set_hard_state` / `set_membership` and made
//! durable together by `sync`, one fdatasync per raft `Ready`. Reads serve appended
//! entries at once (from memory) and older ones from the cache or, failing that, from
//! their segment with a checksummed positioned read. This file must not frame bytes or
//! touch segment files directly (`wal.rs` does), and must not talk to raft beyond the
//! `Storage` trait: driving raft is the replica crate's job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};

use crate::entry_log::{EntryLocation, EntryLog};
use crate::error::StorageError;
use crate::identity::{read_identity, write_identity, NodeIdentity, DATA_DIR_FORMAT};
use crate::lock::DataDirLock;
use crate::membership::MembershipRecord;
use crate::record::{Record, SnapshotState};
use crate::snapshot_file::SnapshotMeta;
use crate::wal::{
    new_batch, obsolete_below_seq, read_segment_headers, DurableMeta, Wal, WAL_DIR_NAME,
};

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
    /// The latest snapshot recorded as durable (0 if none; the bootstrap log start is
    /// not a snapshot).
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// `first_index - 1`: entries up to here are compacted away.
    pub log_start_index: u64,
    /// Number of WAL segment files.
    pub segments: u64,
    /// Bytes of log data in all WAL segments (buffered, unsynced writes not included);
    /// the active segment's file is longer, preallocated to the segment size.
    pub disk_bytes: u64,
}

/// What one `sync` wrote, for metrics (`FileStorage::set_sync_observer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// Entry records in the batch (all that were appended since the last sync).
    pub entries: usize,
    /// The write and its fdatasync (and a segment rollover, if one happened).
    pub duration: std::time::Duration,
}

/// Called after every successful `sync` that wrote something.
pub struct SyncObserver(Box<dyn Fn(&SyncReport) + Send>);

impl std::fmt::Debug for SyncObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncObserver")
    }
}

/// The durable store of one raft node in its data directory.
#[derive(Debug)]
pub struct FileStorage {
    /// Held for as long as the storage is open: one process per data directory.
    _lock: DataDirLock,
    data_dir: PathBuf,
    identity: Option<NodeIdentity>,
    wal: Wal,
    log: EntryLog,
    /// Latest values, including buffered changes not yet synced.
    hard_state: HardState,
    membership: MembershipRecord,
    /// The newest snapshot recorded as durable, with the membership as of its index.
    latest_snapshot: Option<SnapshotState>,
    /// Highest index of any entry record in each live segment (absent: no entries);
    /// decides which segments compaction may delete.
    segment_max_entry_index: BTreeMap<u64, u64>,
    /// Entry and log-start records waiting for the next `sync`, in order.
    pending_records: Vec<Record>,
    membership_dirty: bool,
    /// What the WAL holds as of the last successful `sync`.
    durable: DurableMeta,
    sync_observer: Option<SyncObserver>,
}

/// Applies a log start read from a segment header or a `LogStart` record during replay:
/// one below the current start is superseded (the start was already known from a newer
/// header), one equal to it must agree on the term.
fn replay_log_start(log: &mut EntryLog, index: u64, term: u64) -> Result<(), String> {
    if index < log.start_index() {
        return Ok(());
    }
    if index == log.start_index() {
        if term != log.start_term() {
            return Err(format!(
                "log start {index} has term {term} here but term {} elsewhere",
                log.start_term()
            ));
        }
        return Ok(());
    }
    log.advance_start(index, term)
}

impl FileStorage {
    /// Locks (see `lock.rs`; `Locked` if another process holds it), opens (creating if
    /// missing) the data dir and recovers the WAL under `<dir>/wal/`.
    /// A torn or partial final record of the last segment is truncated (logged at
    /// warn); a failed check anywhere else is `Err(Corrupted { path, offset, .. })`.
    pub fn open(data_dir: &Path, opts: StorageOptions) -> Result<FileStorage, StorageError> {
        // Before anything in the directory is read or written.
        let lock = DataDirLock::acquire(data_dir)?;
        let identity = match read_identity(data_dir)? {
            Some(stored) if stored.format < DATA_DIR_FORMAT => {
                // Upgrade: everything else of an older format is read as it is.
                write_identity(data_dir, &stored.identity)?;
                tracing::info!(
                    data_dir = %data_dir.display(),
                    "upgraded the data dir from format {} to {DATA_DIR_FORMAT}",
                    stored.format
                );
                Some(stored.identity)
            }
            stored => stored.map(|stored| stored.identity),
        };
        let mut log = EntryLog::new(opts.entry_cache_bytes);
        // Pass 1: the newest log start any segment header carries. Compaction writes its
        // log start into the header of a new segment before deleting older ones, so this
        // covers the gap in front of the oldest remaining segment's entries.
        let headers = read_segment_headers(data_dir)?;
        let obsolete_below = obsolete_below_seq(&headers);
        if let Some(floor) = headers
            .into_iter()
            .filter(|header| header.seq >= obsolete_below)
            .max_by_key(|header| header.log_start_index)
        {
            if floor.log_start_index > 0 {
                log.advance_start(floor.log_start_index, floor.log_start_term)
                    .expect("an empty log can start anywhere");
            }
        }
        let mut hard_state = HardState::default();
        let mut membership = MembershipRecord::default();
        let mut latest_snapshot: Option<SnapshotState> = None;
        let mut segment_max_entry_index = BTreeMap::new();
        // Pass 2: every record in order.
        let mut wal = Wal::open(
            data_dir,
            opts.wal_segment_size_bytes,
            obsolete_below,
            |position, record| {
                let corrupted = |reason: String| {
                    StorageError::corrupted(position.path, position.offset_bytes, reason)
                };
                match record {
                    Record::SegmentHeader(header) => {
                        replay_log_start(&mut log, header.log_start_index, header.log_start_term)
                            .map_err(corrupted)?;
                        hard_state = header.hard_state.clone();
                        membership = header.membership.clone();
                        latest_snapshot = header.latest_snapshot.clone();
                    }
                    Record::Entry(entry) => {
                        let max = segment_max_entry_index
                            .entry(position.segment_seq)
                            .or_insert(0u64);
                        *max = (*max).max(entry.index);
                        // Compacted: the log start was learned from a newer header.
                        if entry.index <= log.start_index() {
                            return Ok(());
                        }
                        log.check_next_index(entry.index).map_err(|reason| {
                            corrupted(format!("{reason}; no log start record covers the gap"))
                        })?;
                        let location = EntryLocation {
                            segment_seq: position.segment_seq,
                            offset_bytes: position.offset_bytes,
                            payload_len_bytes: position.payload_len_bytes,
                        };
                        log.push(entry.clone(), Some(location));
                    }
                    Record::HardState(state) => hard_state = state.clone(),
                    Record::Membership(record) => membership = record.clone(),
                    Record::LogStart { index, term } => {
                        replay_log_start(&mut log, *index, *term).map_err(corrupted)?;
                    }
                    Record::SnapshotRecorded {
                        meta,
                        membership: snapshot_membership,
                    } => {
                        hard_state.commit = hard_state.commit.max(meta.index);
                        latest_snapshot = Some((*meta, snapshot_membership.clone()));
                    }
                    Record::SnapshotInstalled {
                        meta,
                        membership: snapshot_membership,
                    } => {
                        if meta.index >= log.start_index() {
                            log.reset(meta.index, meta.term);
                        } else {
                            // A newer header already moved the start past it.
                            log.reset(log.start_index(), log.start_term());
                        }
                        hard_state.commit = hard_state.commit.max(meta.index);
                        membership = snapshot_membership.clone();
                        latest_snapshot = Some((*meta, snapshot_membership.clone()));
                    }
                }
                Ok(())
            },
        )?;
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
            log_start_index: log.start_index(),
            log_start_term: log.start_term(),
            hard_state: hard_state.clone(),
            membership: membership.clone(),
            latest_snapshot: latest_snapshot.clone(),
        };
        wal.ensure_writable_segment(&durable)?;
        segment_max_entry_index.retain(|seq, _| wal.segment_seqs().contains(seq));
        tracing::info!(
            data_dir = %data_dir.display(),
            first_index = log.first_index(),
            last_index = log.last_index(),
            snapshot_index = latest_snapshot.as_ref().map_or(0, |(meta, _)| meta.index),
            term = hard_state.term,
            commit = hard_state.commit,
            segments = wal.segment_count(),
            "storage opened"
        );
        Ok(FileStorage {
            _lock: lock,
            data_dir: data_dir.to_path_buf(),
            identity,
            wal,
            log,
            hard_state,
            membership,
            latest_snapshot,
            segment_max_entry_index,
            pending_records: Vec::new(),
            membership_dirty: false,
            durable,
            sync_observer: None,
        })
    }

    /// Has `observer` told of every batch `sync` writes (entries, time of the
    /// write and fdatasync); it runs on the caller's thread, so it
    /// must be quick.
    pub fn set_sync_observer(&mut self, observer: impl Fn(&SyncReport) + Send + 'static) {
        self.sync_observer = Some(SyncObserver(Box::new(observer)));
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
    /// log start at `membership.index` (normally 1) with term 1, the hard state
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
        const BOOTSTRAP_TERM: u64 = 1;
        self.start_log_at(identity, membership.index, BOOTSTRAP_TERM, membership)
    }

    /// Initializes an empty data dir as a member of a new cluster whose state is
    /// the snapshot `meta` (a backup being restored, already written to the data
    /// dir's snapshot store): the log starts after it, at its term, with
    /// `membership` (whose index is `meta.index`).
    pub fn bootstrap_from_snapshot(
        &mut self,
        identity: NodeIdentity,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        if self.is_initialized() || self.log.last_index() > 0 {
            return Err(StorageError::AlreadyInitialized);
        }
        if membership.index != meta.index || meta.index == 0 || meta.term == 0 {
            return Err(StorageError::InvalidRequest {
                reason: format!(
                    "a restored membership must be at the snapshot's index {} (it is at {}), \
                     and the snapshot's index and term at least 1",
                    meta.index, membership.index
                ),
            });
        }
        self.start_log_at(identity, meta.index, meta.term, membership.clone())?;
        self.record_snapshot(meta, membership)
    }

    /// An empty log starting after `index` at `term`, committed up to it, with
    /// `membership`; made durable.
    fn start_log_at(
        &mut self,
        identity: NodeIdentity,
        index: u64,
        term: u64,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        self.set_identity(identity)?;
        self.log
            .advance_start(index, term)
            .map_err(|reason| StorageError::InvalidRequest { reason })?;
        self.pending_records.push(Record::LogStart { index, term });
        let hard_state = HardState {
            term,
            vote: 0,
            commit: index,
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

    /// Records the cluster id this node adopted from the log (its identity had none
    /// yet), or the bootstrap id it learned; a no-op if both are already stored.
    /// `IdentityMismatch` if the identity holds another cluster id.
    pub fn adopt_cluster_id(
        &mut self,
        cluster_id: u64,
        bootstrap_id: u64,
    ) -> Result<(), StorageError> {
        let Some(existing) = self.identity else {
            return Err(StorageError::InvalidRequest {
                reason: "the data dir has no identity to record a cluster id in".into(),
            });
        };
        if existing.cluster_id != 0 && existing.cluster_id != cluster_id {
            return Err(StorageError::IdentityMismatch {
                existing_node_id: existing.node_id,
                existing_cluster_id: existing.cluster_id,
                requested_node_id: existing.node_id,
                requested_cluster_id: cluster_id,
            });
        }
        let adopted = NodeIdentity {
            cluster_id,
            bootstrap_id: if existing.bootstrap_id == 0 {
                bootstrap_id
            } else {
                existing.bootstrap_id
            },
            ..existing
        };
        if adopted != existing {
            write_identity(&self.data_dir, &adopted)?;
            self.identity = Some(adopted);
        }
        Ok(())
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
    /// The commit index never goes below the latest snapshot's index (a snapshot holds
    /// only committed entries, and raft refuses to start on a commit below the log).
    pub fn set_hard_state(&mut self, hs: &HardState) {
        self.hard_state = hs.clone();
        self.hard_state.commit = self.hard_state.commit.max(self.snapshot_index());
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
        let mut batch = new_batch();
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
        let started = std::time::Instant::now();
        let position = self.wal.write_batch(&mut batch, &self.durable)?;
        if let Some(SyncObserver(observe)) = &self.sync_observer {
            observe(&SyncReport {
                entries: written_entries.len(),
                duration: started.elapsed(),
            });
        }
        if let Some(max_index) = written_entries.iter().map(|written| written.0).max() {
            let max = self
                .segment_max_entry_index
                .entry(position.segment_seq)
                .or_insert(0);
            *max = (*max).max(max_index);
        }
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
        self.durable = self.current_meta();
        Ok(())
    }

    /// The metadata as it is in memory (durable once nothing is buffered).
    fn current_meta(&self) -> DurableMeta {
        DurableMeta {
            log_start_index: self.log.start_index(),
            log_start_term: self.log.start_term(),
            hard_state: self.hard_state.clone(),
            membership: self.membership.clone(),
            latest_snapshot: self.latest_snapshot.clone(),
        }
    }

    fn snapshot_index(&self) -> u64 {
        self.latest_snapshot
            .as_ref()
            .map_or(0, |(meta, _)| meta.index)
    }

    /// The newest snapshot recorded as durable (not the bootstrap log start), with the
    /// membership as of its index.
    pub fn latest_snapshot(&self) -> Option<(SnapshotMeta, MembershipRecord)> {
        self.latest_snapshot.clone()
    }

    /// Records that the snapshot file for `meta` is durable (the caller wrote it with
    /// `SnapshotStore`): writes everything buffered plus a `SnapshotRecorded` record and
    /// syncs. The durable commit index is raised to `meta.index` if it is below.
    /// From now on `raft::Storage::snapshot` offers this snapshot. `meta` must lie within
    /// the log (log start ..= last index) with the log's term at that index, and must not
    /// be older than the latest snapshot.
    pub fn record_snapshot(
        &mut self,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        self.check_not_fail_stopped()?;
        let invalid = |reason: String| Err(StorageError::InvalidRequest { reason });
        if meta.index < self.log.start_index() || meta.index > self.log.last_index() {
            return invalid(format!(
                "snapshot index {} is outside the log ({}..={})",
                meta.index,
                self.log.start_index(),
                self.log.last_index()
            ));
        }
        if self.log.term(meta.index) != Some(meta.term) {
            return invalid(format!(
                "snapshot ({}, term {}) disagrees with the log's term {:?} at that index",
                meta.index,
                meta.term,
                self.log.term(meta.index)
            ));
        }
        if meta.index < self.snapshot_index() {
            return invalid(format!(
                "snapshot index {} is older than the latest snapshot {}",
                meta.index,
                self.snapshot_index()
            ));
        }
        let previous_hard_state = self.hard_state.clone();
        let previous_snapshot = self.latest_snapshot.clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.latest_snapshot = Some((meta, membership.clone()));
        self.pending_records
            .push(Record::SnapshotRecorded { meta, membership });
        if let Err(err) = self.sync() {
            // Nothing of this call is durable; leave the earlier buffer as it was.
            self.pending_records.pop();
            self.hard_state = previous_hard_state;
            self.latest_snapshot = previous_snapshot;
            return Err(err);
        }
        Ok(())
    }

    /// Drops log entries up to `compact_to` and deletes every WAL segment (oldest first)
    /// whose entries are all at or below it. Requires `first_index() - 1 <= compact_to <=`
    /// the latest snapshot's index (`InvalidRequest` otherwise; compacting to the current
    /// start does nothing). Afterwards `first_index() == compact_to + 1` and
    /// `term(compact_to)` still answers.
    ///
    /// The new log start is made durable first: when segments can be deleted it goes
    /// into the header of a freshly started segment (so the replay of the remaining
    /// segments knows it before it meets their entries), otherwise into a `LogStart`
    /// record; either is fsynced before any file is deleted, and the deletions are
    /// followed by an fsync of `wal/`. Returns the number of segments deleted.
    pub fn compact(&mut self, compact_to: u64) -> Result<u64, StorageError> {
        self.check_not_fail_stopped()?;
        let start = self.log.start_index();
        if compact_to == start {
            return Ok(0);
        }
        let snapshot_index = self.snapshot_index();
        if compact_to < start || compact_to > snapshot_index {
            return Err(StorageError::InvalidRequest {
                reason: format!(
                    "cannot compact to {compact_to}: the log starts after {start} and the \
                     latest snapshot is at {snapshot_index}"
                ),
            });
        }
        let term = self
            .log
            .term(compact_to)
            .ok_or_else(|| StorageError::InvalidRequest {
                reason: format!(
                    "cannot compact to {compact_to}: the log ends at {}",
                    self.log.last_index()
                ),
            })?;
        self.sync()?;
        // The oldest segments all of whose entries are compacted (consecutive from the
        // oldest: the ones left must stay consecutive).
        let deletable: Vec<u64> = self
            .wal
            .segment_seqs()
            .into_iter()
            .take_while(|seq| {
                self.segment_max_entry_index
                    .get(seq)
                    .is_none_or(|max| *max <= compact_to)
            })
            .collect();
        let mut meta = self.durable.clone();
        meta.log_start_index = compact_to;
        meta.log_start_term = term;
        if deletable.is_empty() {
            let mut batch = new_batch();
            Record::LogStart {
                index: compact_to,
                term,
            }
            .encode_into(&mut batch)?;
            self.wal.write_batch(&mut batch, &self.durable)?;
        } else {
            self.wal.roll_over(&mut new_batch(), &meta)?;
        }
        self.log
            .advance_start(compact_to, term)
            .expect("compact_to is within the log");
        self.durable = meta;
        let Some(&last_deletable) = deletable.last() else {
            return Ok(0);
        };
        let deleted = self.wal.delete_segments_through(last_deletable);
        let live = self.wal.segment_seqs();
        self.segment_max_entry_index
            .retain(|seq, _| live.contains(seq));
        let deleted = deleted?;
        tracing::debug!(compact_to, deleted_segments = deleted, "compacted the log");
        Ok(deleted)
    }

    /// Installs a snapshot received from the leader (whose file the caller has already
    /// made durable): every entry is dropped, the log starts after `meta.index` (term
    /// `meta.term`), the membership is replaced, the commit index becomes at least
    /// `meta.index`, and `meta` is the latest snapshot. Written (after anything buffered)
    /// as one `SnapshotInstalled` record at the start of a new segment and synced; then
    /// every older segment, all obsolete now, is deleted. `meta.index` must not be below
    /// the log start, the latest snapshot or the commit index (`InvalidRequest`).
    pub fn apply_snapshot(
        &mut self,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        self.check_not_fail_stopped()?;
        // raft never installs a snapshot below its commit index either.
        let floor = self
            .log
            .start_index()
            .max(self.snapshot_index())
            .max(self.hard_state.commit);
        if meta.index < floor {
            return Err(StorageError::InvalidRequest {
                reason: format!(
                    "snapshot index {} is below the log start, the latest snapshot or the \
                     commit index ({floor})",
                    meta.index
                ),
            });
        }
        if meta.index == self.log.start_index() && meta.term != self.log.start_term() {
            return Err(StorageError::InvalidRequest {
                reason: format!(
                    "snapshot ({}, term {}) disagrees with the log start's term {}",
                    meta.index,
                    meta.term,
                    self.log.start_term()
                ),
            });
        }
        // Anything buffered is made durable first, so the new segment's header
        // describes it (buffered entries are then dropped with the rest).
        self.sync()?;
        let mut batch = new_batch();
        Record::SnapshotInstalled {
            meta,
            membership: membership.clone(),
        }
        .encode_into(&mut batch)?;
        // The new segment's header already describes the installed state and marks
        // every older segment obsolete: whichever of them a crash or an unlink error
        // leaves behind, replay skips them (and deletes them).
        let mut installed = self.durable.clone();
        installed.log_start_index = meta.index;
        installed.log_start_term = meta.term;
        installed.hard_state.commit = installed.hard_state.commit.max(meta.index);
        installed.membership = membership.clone();
        installed.latest_snapshot = Some((meta, membership.clone()));
        let position = self.wal.roll_over_replacing_older(&mut batch, &installed)?;
        self.log.reset(meta.index, meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.membership = membership.clone();
        self.latest_snapshot = Some((meta, membership));
        self.durable = self.current_meta();
        let deleted = self
            .wal
            .delete_segments_through(position.segment_seq.saturating_sub(1));
        let live = self.wal.segment_seqs();
        self.segment_max_entry_index
            .retain(|seq, _| live.contains(seq));
        match deleted {
            Ok(_) => Ok(()),
            // The install is durable; obsolete segments left behind are harmless and
            // are deleted by a later compaction.
            Err(err @ StorageError::Io { .. }) => {
                tracing::warn!(%err, "could not delete obsolete WAL segments after installing a snapshot");
                Ok(())
            }
            Err(err) => Err(err),
        }
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
            snapshot_index: self.snapshot_index(),
            snapshot_term: self
                .latest_snapshot
                .as_ref()
                .map_or(0, |(meta, _)| meta.term),
            log_start_index: self.log.start_index(),
            segments: self.wal.segment_count(),
            disk_bytes: self.wal.disk_bytes(),
        }
    }

    /// Free bytes on the data dir's filesystem (see [`crate::disk`]).
    pub fn free_bytes(&self) -> Option<u64> {
        crate::disk::free_bytes(&self.data_dir)
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
        if idx < self.log.start_index() {
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

    /// The latest recorded snapshot's metadata (index, term, conf state) with empty
    /// data: the transport finds the file in `SnapshotStore` by index and term. Until
    /// a snapshot at or above `request_index` is recorded, raft is told to retry later.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        raft_snapshot(self.latest_snapshot.as_ref(), request_index)
    }
}

/// What `raft::Storage::snapshot` answers for a store whose latest durable
/// snapshot is `latest`: its metadata (the file itself travels apart), or
/// "temporarily unavailable" while none at or past `request_index` exists
/// (raft asks again later).
pub fn raft_snapshot(
    latest: Option<&(SnapshotMeta, MembershipRecord)>,
    request_index: u64,
) -> raft::Result<Snapshot> {
    match latest {
        Some((meta, membership)) if meta.index >= request_index => {
            let mut snapshot = Snapshot::default();
            let metadata = snapshot.mut_metadata();
            metadata.index = meta.index;
            metadata.term = meta.term;
            metadata.set_conf_state(membership.conf_state.clone());
            Ok(snapshot)
        }
        _ => Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        )),
    }
}
