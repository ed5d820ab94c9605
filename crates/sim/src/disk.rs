//! A simulated disk under a log store with `FileStorage`'s contract
//! (`raftkv_replica::LogStore`): appends, hard states and membership
//! records are buffered and readable at once, durable only after `sync`;
//! snapshot records, compaction, snapshot installs and the cluster id are
//! durable when they return.
//!
//! Crash semantics are the WAL's: writes since the last successful fsync
//! may reach the disk or not, and what recovery keeps is a prefix of them
//! in write order (the real WAL keeps every intact batch up to the first
//! torn one and cuts the rest). A crash keeps a random such prefix. A disk
//! can be made to fail its next fsync (the node stops, as a real one does)
//! or to report little free space.

use std::sync::{Arc, Mutex};

use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};
use raftkv_replica::LogStore;
use raftkv_storage::{MembershipRecord, SnapshotMeta, StorageError, StorageStats};
use rand::Rng;

/// What a disk holds: the log and its metadata.
#[derive(Clone, Debug, Default)]
pub struct LogImage {
    /// Index and term of the entry just before `entries[0]` (the log start).
    pub start: (u64, u64),
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    pub membership: MembershipRecord,
    pub latest_snapshot: Option<(SnapshotMeta, MembershipRecord)>,
    pub cluster_id: u64,
    pub bootstrap_id: u64,
}

impl LogImage {
    fn first_index(&self) -> u64 {
        self.start.0 + 1
    }

    fn last_index(&self) -> u64 {
        self.start.0 + self.entries.len() as u64
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index == self.start.0 {
            return Some(self.start.1);
        }
        if index < self.start.0 || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.first_index()) as usize].term)
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let keep = first.index.saturating_sub(self.first_index()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    fn apply(&mut self, write: &Write) {
        match write {
            Write::Entries(entries) => self.append(entries),
            Write::HardState(hs) => self.hard_state = hs.clone(),
            Write::Membership(m) => self.membership = m.clone(),
        }
    }
}

/// A buffered write, not yet fsynced.
#[derive(Clone, Debug)]
enum Write {
    Entries(Vec<Entry>),
    HardState(HardState),
    Membership(MembershipRecord),
}

#[derive(Debug)]
struct DiskState {
    durable: LogImage,
    /// Written since the last fsync, in order.
    unsynced: Vec<Write>,
    fail_next_fsync: bool,
    free_bytes: u64,
    fsyncs: u64,
}

/// A node's disk: outlives the node's process (a crash drops the process,
/// not the disk). Cheap to clone.
#[derive(Clone, Debug)]
pub struct SimDisk(Arc<Mutex<DiskState>>);

/// Free space a disk reports unless told otherwise.
const PLENTY_OF_SPACE: u64 = 1 << 40;

impl SimDisk {
    /// A bootstrapped node's disk, as `FileStorage::bootstrap` leaves it.
    pub fn bootstrapped(membership: MembershipRecord, bootstrap_id: u64) -> SimDisk {
        let start = (membership.index, 1);
        let image = LogImage {
            start,
            entries: Vec::new(),
            hard_state: HardState {
                term: 1,
                vote: 0,
                commit: membership.index,
                ..Default::default()
            },
            membership,
            latest_snapshot: None,
            cluster_id: 0,
            bootstrap_id,
        };
        SimDisk(Arc::new(Mutex::new(DiskState {
            durable: image,
            unsynced: Vec::new(),
            fail_next_fsync: false,
            free_bytes: PLENTY_OF_SPACE,
            fsyncs: 0,
        })))
    }

    /// The disk of a node that joins a running cluster: no configuration
    /// and an empty log until the leader's snapshot arrives.
    pub fn joining(cluster_id: u64, bootstrap_id: u64) -> SimDisk {
        let image = LogImage {
            cluster_id,
            bootstrap_id,
            ..Default::default()
        };
        SimDisk(Arc::new(Mutex::new(DiskState {
            durable: image,
            unsynced: Vec::new(),
            fail_next_fsync: false,
            free_bytes: PLENTY_OF_SPACE,
            fsyncs: 0,
        })))
    }

    /// The process stopped: of the writes not yet fsynced, a random prefix
    /// (possibly none, possibly all) reached the disk; the rest is lost.
    /// Returns how many were lost.
    pub fn crash(&self, rng: &mut impl Rng) -> usize {
        let mut disk = self.0.lock().expect("disk lock");
        let unsynced = std::mem::take(&mut disk.unsynced);
        let kept = rng.gen_range(0..=unsynced.len());
        for write in &unsynced[..kept] {
            disk.durable.apply(write);
        }
        unsynced.len() - kept
    }

    /// The next fsync fails with EIO (the node stops).
    pub fn fail_next_fsync(&self) {
        self.0.lock().expect("disk lock").fail_next_fsync = true;
    }

    pub fn set_free_bytes(&self, bytes: u64) {
        self.0.lock().expect("disk lock").free_bytes = bytes;
    }

    /// Whether the disk reports less free space than plenty (a disk-full
    /// fault is on).
    pub fn free_bytes_low(&self) -> bool {
        self.0.lock().expect("disk lock").free_bytes < PLENTY_OF_SPACE
    }

    pub fn fsyncs(&self) -> u64 {
        self.0.lock().expect("disk lock").fsyncs
    }

    /// What a restarted node finds.
    pub fn durable(&self) -> LogImage {
        self.0.lock().expect("disk lock").durable.clone()
    }

    /// Opens the log store a (re)started node runs on.
    pub fn open(&self) -> SimStorage {
        let mut disk = self.0.lock().expect("disk lock");
        // Whatever a crash did not keep is gone before a process opens it.
        disk.unsynced.clear();
        SimStorage {
            disk: self.clone(),
            image: disk.durable.clone(),
            fail_stopped: false,
        }
    }
}

/// The log store of one process, over its [`SimDisk`].
pub struct SimStorage {
    disk: SimDisk,
    /// Durable plus buffered: what reads see.
    image: LogImage,
    fail_stopped: bool,
}

fn io_error(what: &str) -> StorageError {
    StorageError::Io {
        path: format!("sim-disk ({what})").into(),
        cause: std::io::Error::from_raw_os_error(5),
    }
}

impl SimStorage {
    fn write(&mut self, write: Write) {
        self.image.apply(&write);
        self.disk.0.lock().expect("disk lock").unsynced.push(write);
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.fail_stopped {
            return Err(StorageError::InvalidRequest {
                reason: "an earlier fsync failed; the log refuses writes".into(),
            });
        }
        Ok(())
    }

    /// Makes everything buffered durable (the effect of a successful fsync).
    fn sync_through(&mut self, what: &str) -> Result<(), StorageError> {
        self.check()?;
        let mut disk = self.disk.0.lock().expect("disk lock");
        disk.fsyncs += 1;
        if disk.fail_next_fsync {
            disk.fail_next_fsync = false;
            // A failed fsync may have written any part of the buffered
            // writes; the process stops, and the crash decides.
            drop(disk);
            self.fail_stopped = true;
            return Err(io_error(what));
        }
        let unsynced = std::mem::take(&mut disk.unsynced);
        for write in &unsynced {
            disk.durable.apply(write);
        }
        Ok(())
    }

    /// The log entries this store holds in `[low, high)`.
    /// A change durable at once (after what was buffered before it): made
    /// to what the node reads and to what survives a crash alike.
    fn write_through(&mut self, change: impl Fn(&mut LogImage)) {
        change(&mut self.image);
        change(&mut self.disk.0.lock().expect("disk lock").durable);
    }

    pub fn entries_in(&self, low: u64, high: u64) -> Vec<Entry> {
        let first = self.image.first_index();
        let low = low.max(first);
        let high = high.min(self.image.last_index() + 1);
        if low >= high {
            return Vec::new();
        }
        self.image.entries[(low - first) as usize..(high - first) as usize].to_vec()
    }
}

impl raft::Storage for SimStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.image.hard_state.clone(),
            self.image.membership.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.image.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.image.last_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut entries = self.entries_in(low, high);
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.image.start.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.image
            .term(idx)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.image.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.image.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        raftkv_storage::raft_snapshot(self.image.latest_snapshot.as_ref(), request_index)
    }
}

impl LogStore for SimStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check()?;
        if let Some(first) = entries.first() {
            if first.index <= self.image.start.0 || first.index > self.image.last_index() + 1 {
                return Err(StorageError::InvalidRequest {
                    reason: format!(
                        "append at {} to a log of {}..={}",
                        first.index,
                        self.image.first_index(),
                        self.image.last_index()
                    ),
                });
            }
            self.write(Write::Entries(entries.to_vec()));
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) {
        if *hs != self.image.hard_state {
            self.write(Write::HardState(hs.clone()));
        }
    }

    fn set_membership(&mut self, membership: MembershipRecord) {
        self.write(Write::Membership(membership));
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.sync_through("fsync")
    }

    fn hard_state(&self) -> &HardState {
        &self.image.hard_state
    }

    fn membership(&self) -> &MembershipRecord {
        &self.image.membership
    }

    fn latest_snapshot(&self) -> Option<(SnapshotMeta, MembershipRecord)> {
        self.image.latest_snapshot.clone()
    }

    fn record_snapshot(
        &mut self,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        self.sync_through("recording a snapshot")?;
        let record = |image: &mut LogImage| {
            image.latest_snapshot = Some((meta, membership.clone()));
            image.hard_state.commit = image.hard_state.commit.max(meta.index);
        };
        self.write_through(record);
        Ok(())
    }

    fn compact(&mut self, compact_to: u64) -> Result<u64, StorageError> {
        self.sync_through("compacting")?;
        let compact = |image: &mut LogImage| {
            if compact_to <= image.start.0 || compact_to > image.last_index() {
                return;
            }
            let term = image.term(compact_to).expect("within the log");
            let drop = (compact_to - image.start.0) as usize;
            image.entries.drain(..drop);
            image.start = (compact_to, term);
        };
        self.write_through(compact);
        Ok(0)
    }

    fn apply_snapshot(
        &mut self,
        meta: SnapshotMeta,
        membership: MembershipRecord,
    ) -> Result<(), StorageError> {
        self.sync_through("installing a snapshot")?;
        let install = |image: &mut LogImage| {
            image.start = (meta.index, meta.term);
            image.entries.clear();
            image.membership = membership.clone();
            image.hard_state.commit = image.hard_state.commit.max(meta.index);
            image.latest_snapshot = Some((meta, membership.clone()));
        };
        self.write_through(install);
        Ok(())
    }

    fn adopt_cluster_id(&mut self, cluster_id: u64, bootstrap_id: u64) -> Result<(), StorageError> {
        self.check()?;
        let adopt = |image: &mut LogImage| {
            image.cluster_id = cluster_id;
            if image.bootstrap_id == 0 {
                image.bootstrap_id = bootstrap_id;
            }
        };
        self.write_through(adopt);
        Ok(())
    }

    fn stats(&self) -> StorageStats {
        StorageStats {
            first_index: self.image.first_index(),
            last_index: self.image.last_index(),
            snapshot_index: self
                .image
                .latest_snapshot
                .as_ref()
                .map_or(0, |(m, _)| m.index),
            snapshot_term: self
                .image
                .latest_snapshot
                .as_ref()
                .map_or(0, |(m, _)| m.term),
            log_start_index: self.image.start.0,
            segments: 1,
            disk_bytes: 0,
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        Some(self.disk.0.lock().expect("disk lock").free_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;
    use rand::SeedableRng;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    fn disk() -> SimDisk {
        let peers = [(1, "a".to_string())].into_iter().collect();
        SimDisk::bootstrapped(
            raftkv_replica::bootstrap_membership(&peers, &Default::default()),
            9,
        )
    }

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_ones_may_not() {
        let disk = disk();
        let mut store = disk.open();
        store.append(&[entry(2, 1), entry(3, 1)]).unwrap();
        store.sync().unwrap();
        store.append(&[entry(4, 1)]).unwrap();
        assert_eq!(store.last_index().unwrap(), 4, "readable before the sync");
        let mut lost_any = false;
        let mut kept_any = false;
        for seed in 0..64 {
            let copy = SimDisk(Arc::new(Mutex::new(DiskState {
                durable: disk.durable(),
                unsynced: disk.0.lock().unwrap().unsynced.clone(),
                fail_next_fsync: false,
                free_bytes: PLENTY_OF_SPACE,
                fsyncs: 0,
            })));
            let lost = copy.crash(&mut rand::rngs::StdRng::seed_from_u64(seed));
            let after = copy.open();
            assert!(after.last_index().unwrap() >= 3, "a synced entry was lost");
            lost_any |= lost == 1 && after.last_index().unwrap() == 3;
            kept_any |= lost == 0 && after.last_index().unwrap() == 4;
        }
        assert!(
            lost_any && kept_any,
            "a crash keeps or loses unsynced writes"
        );
    }

    #[test]
    fn an_append_overwrites_a_conflicting_suffix() {
        let mut store = disk().open();
        store
            .append(&[entry(2, 1), entry(3, 1), entry(4, 1)])
            .unwrap();
        store.append(&[entry(3, 2)]).unwrap();
        assert_eq!(store.last_index().unwrap(), 3);
        assert_eq!(store.term(3).unwrap(), 2);
        assert!(store.append(&[entry(9, 2)]).is_err(), "a gap is refused");
    }

    #[test]
    fn a_failed_fsync_stops_the_log() {
        let disk = disk();
        let mut store = disk.open();
        store.append(&[entry(2, 1)]).unwrap();
        disk.fail_next_fsync();
        assert!(store.sync().is_err());
        assert!(store.append(&[entry(3, 1)]).is_err(), "fail-stop");
    }
}
