//! Disk space: the node keeps `min_free_bytes` free on the data dir's
//! filesystem so that the log never meets ENOSPC (a failed log write stops
//! the node). The free space is read every tick (`statvfs`, or the test
//! hook of `raftkv_storage::disk`) and between reads an estimate is kept by
//! subtracting every entry appended. Below the reserve — or when an entry
//! would take it there — the leader refuses writes with `NoSpace`, a
//! follower does not take new entries (to the leader it looks slow; they
//! come again), and no snapshot is started that would not fit. Reads,
//! heartbeats and votes go on; writes resume once space is freed.
//!
//! Peers hear of it: every message this node sends says whether it is out
//! of space, and a leader refuses new writes (`no space on a quorum`) while
//! the voters with room are too few to commit them, instead of piling up
//! entries and proposals that cannot commit.

use raft::eraftpb::Entry;
use raftkv_kv::Op;

use super::{Node, Write};
use crate::error::ReplicaError;
use crate::log_store::LogStore;

/// Whether a received snapshot of `snapshot_bytes` fits above the reserve of
/// `min_free_bytes` with `free` bytes free (unknown free space counts as room).
/// A follower refuses one that does not, rather than fill the disk and stop at
/// its next WAL rollover; the leader hears the refusal and sends it again later.
pub(crate) fn check_snapshot_room(
    free: Option<u64>,
    snapshot_bytes: u64,
    min_free_bytes: u64,
) -> Result<(), ReplicaError> {
    match free {
        Some(free)
            if free
                .checked_sub(snapshot_bytes)
                .is_none_or(|left| left < min_free_bytes) =>
        {
            Err(ReplicaError::NoSpace(format!(
                "a snapshot of {snapshot_bytes} bytes does not fit: {free} bytes free on the \
                 data disk and {min_free_bytes} are kept in reserve; free some space"
            )))
        }
        _ => Ok(()),
    }
}

/// Whether the voters for which `ok` holds are a majority of `voters` (an
/// empty configuration, such as the outgoing half of a non-joint one, agrees).
pub(crate) fn quorum_of(voters: &[u64], ok: impl Fn(u64) -> bool) -> bool {
    voters.is_empty() || voters.iter().filter(|id| ok(**id)).count() > voters.len() / 2
}

/// Bytes an entry takes in the log, roughly (payload plus framing).
pub(super) fn entries_bytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| e.data.len() as u64 + e.context.len() as u64 + 64)
        .sum()
}

/// Bytes an operation adds to a command, roughly.
pub(super) fn op_bytes(op: &Op) -> u64 {
    op.key.len() as u64 + op.value.len() as u64 + 16
}

/// The reserve of free space, as a plain value handed each reading of the
/// free space and each append: whether a write, an append or a snapshot
/// still fits, and whether this node is out of space (what peers are told).
#[derive(Debug)]
pub(crate) struct DiskReserve {
    min_free_bytes: u64,
    /// Free bytes as of the last reading, less what was appended since.
    free_estimate: Option<u64>,
    /// Below the reserve as of the last reading (or append).
    no_space: bool,
    /// The last append with entries was not taken for lack of space.
    refusing_appends: bool,
}

impl DiskReserve {
    pub(crate) fn new(min_free_bytes: u64) -> DiskReserve {
        DiskReserve {
            min_free_bytes,
            free_estimate: None,
            no_space: false,
            refusing_appends: false,
        }
    }

    /// A new reading of the free space (`None`: unknown, counts as room).
    /// Returns the new "below the reserve" state when it changed.
    pub(crate) fn read_free(&mut self, free: Option<u64>) -> Option<bool> {
        self.free_estimate = free;
        self.update()
    }

    /// `bytes` were appended to the log since the last reading.
    pub(crate) fn appended(&mut self, bytes: u64) {
        self.free_estimate = self.free_estimate.map(|f| f.saturating_sub(bytes));
    }

    fn update(&mut self) -> Option<bool> {
        let no_space = !self.has_room_for(0);
        (no_space != self.no_space).then(|| {
            self.no_space = no_space;
            no_space
        })
    }

    /// Whether `bytes` more still leave the reserve free.
    pub(crate) fn has_room_for(&self, bytes: u64) -> bool {
        self.free_estimate
            .is_none_or(|free| free >= self.min_free_bytes.saturating_add(bytes))
    }

    /// A follower did not take an append for lack of space (or took one
    /// again); true if that changed.
    pub(crate) fn note_append_refused(&mut self, refused: bool) -> bool {
        let changed = self.refusing_appends != refused;
        self.refusing_appends = refused;
        changed
    }

    /// What peers are told: below the reserve, or refusing appends.
    pub(crate) fn out_of_space(&self) -> bool {
        self.no_space || self.refusing_appends
    }

    /// Whether a write of `bytes` fits on this node.
    pub(crate) fn fits_write(&self, bytes: u64) -> bool {
        !self.no_space && self.has_room_for(bytes)
    }

    pub(crate) fn free_estimate(&self) -> Option<u64> {
        self.free_estimate
    }
}

impl<S: LogStore> Node<S> {
    /// Reads the free space again (every tick).
    pub(super) fn check_free_space(&mut self) {
        let changed = self.disk.read_free(self.raw.store().free_bytes());
        self.publish_space(changed);
    }

    /// Tells peers (through the shared flag) and the log what changed.
    fn publish_space(&self, below_reserve: Option<bool>) {
        self.shared.out_of_space.store(
            self.disk.out_of_space(),
            std::sync::atomic::Ordering::Relaxed,
        );
        match below_reserve {
            Some(true) => tracing::error!(
                "node {}: about {} bytes free on the data dir's filesystem (reserve {}): \
                 refusing writes until space is freed; reads go on",
                self.id,
                self.disk.free_estimate().unwrap_or(0),
                self.config.min_free_bytes
            ),
            Some(false) => {
                tracing::warn!("node {}: disk space is back; taking writes again", self.id)
            }
            None => {}
        }
    }

    /// Whether `bytes` more still leave the reserve free (unknown free
    /// space counts as room).
    pub(super) fn has_room_for(&self, bytes: u64) -> bool {
        self.disk.has_room_for(bytes)
    }

    /// A follower did not take an append for lack of space (or took one
    /// again): its peers hear it with its next messages, until it takes one.
    pub(super) fn note_append_space(&mut self, refused: bool) {
        if self.disk.note_append_refused(refused) {
            let changed = self.disk.read_free(self.disk.free_estimate());
            self.publish_space(changed);
        }
    }

    /// A write of `bytes` may be proposed: this node has room, and so do
    /// enough voters to commit it. (Followers out of space drop appends but
    /// still answer heartbeats; proposing anyway would only pile up entries
    /// that cannot commit.)
    /// The space quota (`quota_bytes`): a write that may add data is
    /// refused while the alarm is raised, and raises it when the state and
    /// its history take more than the quota. Deletes, compaction and lease
    /// revokes go on (they are how one gets back under).
    pub(super) fn check_quota(&self, write: &Write) -> Result<(), ReplicaError> {
        let quota = self.config.quota_bytes;
        let grows = match write {
            Write::Ops(ops) | Write::TestNextKind(ops) => ops.iter().any(|op| !op.delete),
            Write::EtcdTxn(txn) => raftkv_kv::etcd::may_put(txn),
            Write::LeaseGrant { .. } => true,
            Write::Compact(_) | Write::LeaseRevoke(_) | Write::Auth(_) => false,
        };
        if quota == 0 || !grows {
            return Ok(());
        }
        let used = {
            let kv = self.shared.kv.read().expect("kv lock poisoned");
            kv.data_bytes() + kv.history_size().0
        };
        let alarm = &self.shared.quota_alarm;
        if used > quota && !alarm.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "node {}: NOSPACE: the state and its history take {used} bytes, over \
                 --quota-bytes {quota}; writes that add data are refused until the alarm is \
                 disarmed",
                self.id
            );
        }
        if alarm.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ReplicaError::NoSpace(if used > quota {
                format!(
                    "database space exceeded: the state and its history take {used} bytes, \
                     over --quota-bytes {quota} (alarm NOSPACE): delete keys and compact, \
                     then disarm the alarm (`raftkv alarm disarm`)"
                )
            } else {
                format!(
                    "database space exceeded: alarm NOSPACE is raised (the state and its \
                     history take {used} bytes now, under --quota-bytes {quota}): disarm it \
                     (`raftkv alarm disarm`)"
                )
            }));
        }
        Ok(())
    }

    pub(super) fn check_space(&self, bytes: u64) -> Result<(), ReplicaError> {
        if !self.disk.fits_write(bytes) {
            return Err(ReplicaError::NoSpace(format!(
                "node {} has less than {} bytes free on its data disk beyond this write; free \
                 some space",
                self.id, self.config.min_free_bytes
            )));
        }
        let full = self.peers_out_of_space();
        if !full.is_empty() {
            let conf = self.raw.raft.prs().conf().to_conf_state();
            let has_space = |id: u64| !full.contains(&id);
            if !quorum_of(&conf.voters, has_space) || !quorum_of(&conf.voters_outgoing, has_space) {
                return Err(ReplicaError::NoSpace(format!(
                    "no space on a quorum: node(s) {full:?} are out of disk space, and the \
                     voters with space cannot commit a write; free some space on them"
                )));
            }
        }
        Ok(())
    }

    /// Peers that said they were out of space within the last two election
    /// timeouts (a peer that said nothing since is unreachable or has room).
    fn peers_out_of_space(&self) -> Vec<u64> {
        let recent = 2 * self.config.election_timeout;
        let mut peers = self
            .shared
            .peers_out_of_space
            .lock()
            .expect("peer space lock poisoned");
        if peers.is_empty() {
            return Vec::new();
        }
        let now = self.now;
        peers.retain(|_, at| now.saturating_duration_since(*at) < recent);
        let mut ids: Vec<u64> = peers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_counts_appends_between_readings_and_reports_changes() {
        let mut disk = DiskReserve::new(1_000);
        assert!(disk.has_room_for(u64::MAX), "unknown free space is room");
        assert_eq!(disk.read_free(Some(1_500)), None, "still above the reserve");
        assert!(disk.fits_write(500));
        assert!(!disk.fits_write(501), "it would reach into the reserve");
        disk.appended(400);
        assert!(
            !disk.fits_write(200),
            "the estimate counts what was appended"
        );
        assert_eq!(
            disk.read_free(Some(900)),
            Some(true),
            "below the reserve now"
        );
        assert!(disk.out_of_space());
        assert!(!disk.fits_write(0));
        assert_eq!(disk.read_free(Some(5_000)), Some(false), "space is back");
        assert!(!disk.out_of_space());
    }

    #[test]
    fn a_follower_refusing_appends_tells_its_peers_until_it_takes_one() {
        let mut disk = DiskReserve::new(1_000);
        disk.read_free(Some(2_000));
        assert!(disk.note_append_refused(true));
        assert!(disk.out_of_space(), "peers hear it");
        assert!(disk.fits_write(10), "its own reserve is not reached");
        assert!(!disk.note_append_refused(true), "no change");
        assert!(disk.note_append_refused(false));
        assert!(!disk.out_of_space());
    }

    #[test]
    fn a_quorum_with_space_is_a_majority_of_each_half() {
        assert!(quorum_of(&[], |_| false));
        assert!(quorum_of(&[1, 2, 3], |id| id != 3));
        assert!(!quorum_of(&[1, 2, 3], |id| id == 1));
        assert!(!quorum_of(&[1, 2, 3, 4], |id| id <= 2));
        assert!(quorum_of(&[1], |id| id == 1));
    }

    #[test]
    fn a_snapshot_must_fit_above_the_reserve() {
        assert!(check_snapshot_room(Some(1_100), 100, 1_000).is_ok());
        let refused = check_snapshot_room(Some(1_099), 100, 1_000).unwrap_err();
        assert!(matches!(refused, ReplicaError::NoSpace(_)), "{refused}");
        assert!(refused.to_string().contains("reserve"));
        assert!(check_snapshot_room(None, u64::MAX, 1_000).is_ok());
        assert!(check_snapshot_room(Some(u64::MAX), u64::MAX, 1).is_err());
    }
}
