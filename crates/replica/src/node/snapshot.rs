//! Snapshots on the node thread: when to take one, what to do once it is
//! durable (record it, compact the log, keep the newest two files), and
//! installing one the leader sent.

use raftkv_storage::{SnapshotInfo, SnapshotMeta};
use tokio::sync::oneshot;

use super::{fatal, Node, PeerInput};
use crate::error::{FatalError, ReplicaError};
use crate::log_store::LogStore;
use crate::membership::member_ids;
use crate::snapshots::{load_snapshot, write_snapshot};

/// Snapshot files kept (docs/REFERENCE.md §5).
const SNAPSHOTS_KEPT: usize = 2;

/// What `raftkv debug compact` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactResult {
    pub first_index: u64,
    pub segments_removed: u64,
}

/// Whether a snapshot is due: `every` entries were applied since the last
/// one, or something new was applied and (as leader) a peer needs a
/// snapshot the last one cannot serve (`peer_needs_new`, asked only then).
pub(super) fn snapshot_due(
    applied: u64,
    last_snapshot: u64,
    every: u64,
    peer_needs_new: impl FnOnce() -> bool,
) -> bool {
    applied >= last_snapshot.saturating_add(every.max(1))
        || (applied > last_snapshot && peer_needs_new())
}

impl<S: LogStore> Node<S> {
    /// Starts writing a snapshot in the background when one is due (or was
    /// asked for) and none is being written.
    pub(super) fn maybe_start_snapshot(&mut self) {
        if self.snapshot_in_progress {
            return;
        }
        let due = snapshot_due(
            self.applied_index,
            self.last_snapshot_index,
            self.config.snapshot_entries,
            || self.peer_needs_new_snapshot(),
        );
        if !due && self.snapshot_waiters.is_empty() {
            return;
        }
        let state = self.shared.kv.read().expect("kv lock poisoned").clone();
        if !self.has_room_for(state.data_bytes()) {
            // It would not fit above the reserve; the log keeps everything
            // meanwhile. Tried again on the next turn.
            for waiter in self.snapshot_waiters.drain(..) {
                let _ = waiter.send(Err(ReplicaError::NoSpace(
                    "not enough free disk space for a snapshot".into(),
                )));
            }
            return;
        }
        let meta = SnapshotMeta {
            index: state.applied_index(),
            term: state.applied_term(),
        };
        if meta.index <= self.last_snapshot_index {
            // Nothing new since the last snapshot: answer with that one.
            let latest = self.latest_snapshot_info();
            for waiter in self.snapshot_waiters.drain(..) {
                let _ = waiter.send(latest.clone());
            }
            return;
        }
        let membership = self.raw.store().membership().clone();
        let store = self.snapshots.clone();
        let events = self.events.clone();
        self.snapshot_in_progress = true;
        tracing::info!(
            "node {}: writing a snapshot at index {}",
            self.id,
            meta.index
        );
        if self.config.write_snapshots_inline {
            // Deterministic: written now, its outcome handled next turn
            // exactly as the background writer's would be.
            let result = write_snapshot(&store, meta, &state, &membership);
            let _ = events.send(PeerInput::SnapshotWritten { result, membership });
            return;
        }
        let spawned = std::thread::Builder::new()
            .name(format!("raft-snapshot-{}", self.id))
            .spawn(move || {
                let result = write_snapshot(&store, meta, &state, &membership);
                let _ = events.send(PeerInput::SnapshotWritten { result, membership });
            });
        if let Err(e) = spawned {
            self.snapshot_in_progress = false;
            tracing::error!("cannot start the snapshot thread: {e}");
        }
    }

    /// Whether (as leader) a peer needs a snapshot that the latest one
    /// cannot serve: none was taken yet (a fresh cluster has only its
    /// bootstrap), or it predates the peer joining (raft on the peer would
    /// refuse a snapshot whose configuration lacks it).
    fn peer_needs_new_snapshot(&self) -> bool {
        if self.raw.raft.state != raft::StateRole::Leader {
            return false;
        }
        let first_index = self.raw.raft.raft_log.first_index();
        let latest = self.raw.store().latest_snapshot();
        self.raw.raft.prs().iter().any(|(id, pr)| {
            *id != self.id
                && pr.next_idx < first_index
                && latest.as_ref().is_none_or(|(_, m)| {
                    !member_ids(&m.conf_state).contains(id)
                        || self.peer_added_at.get(id).is_some_and(|at| m.index < *at)
                })
        })
    }

    fn latest_snapshot_info(&self) -> Result<SnapshotInfo, ReplicaError> {
        let (meta, _) =
            self.raw.store().latest_snapshot().ok_or_else(|| {
                ReplicaError::Unavailable("no snapshot has been taken yet".into())
            })?;
        self.snapshots
            .find(meta)
            .ok()
            .flatten()
            .ok_or_else(|| ReplicaError::Unavailable("the latest snapshot file is missing".into()))
    }

    /// `raftkv debug snapshot`: answered once a snapshot is durable.
    pub(super) fn request_snapshot(
        &mut self,
        reply: oneshot::Sender<Result<SnapshotInfo, ReplicaError>>,
    ) {
        self.snapshot_waiters.push(reply);
        self.maybe_start_snapshot();
    }

    /// The background writer finished.
    pub(super) fn on_snapshot_written(
        &mut self,
        result: Result<SnapshotInfo, String>,
        membership: raftkv_storage::MembershipRecord,
    ) -> Result<(), FatalError> {
        self.snapshot_in_progress = false;
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                // Not fatal: the log still holds everything (disk full, say).
                tracing::error!("node {}: writing a snapshot failed: {e}", self.id);
                for waiter in self.snapshot_waiters.drain(..) {
                    let _ = waiter.send(Err(ReplicaError::Unavailable(format!(
                        "writing the snapshot failed: {e}"
                    ))));
                }
                return Ok(());
            }
        };
        if info.meta.index <= self.last_snapshot_index {
            // Superseded while it was written (the leader's snapshot was
            // installed meanwhile): the newer one stands.
            let latest = self.latest_snapshot_info();
            for waiter in self.snapshot_waiters.drain(..) {
                let _ = waiter.send(latest.clone());
            }
            self.prune_snapshots();
            return Ok(());
        }
        self.raw
            .mut_store()
            .record_snapshot(info.meta, membership)
            .map_err(fatal("recording a snapshot"))?;
        self.last_snapshot_index = info.meta.index;
        tracing::info!(
            "node {}: snapshot at index {} is durable ({} bytes)",
            self.id,
            info.meta.index,
            info.size_bytes
        );
        // Keep some entries so a follower slightly behind catches up from
        // the log, not with a whole snapshot.
        let compact_to = info
            .meta
            .index
            .saturating_sub(self.config.snapshot_catch_up_entries);
        self.compact_log(compact_to)?;
        for waiter in self.snapshot_waiters.drain(..) {
            let _ = waiter.send(Ok(info.clone()));
        }
        Ok(())
    }

    /// Drops log entries up to `compact_to` (if past the log start) and
    /// snapshots beyond the newest two.
    fn compact_log(&mut self, compact_to: u64) -> Result<CompactResult, FatalError> {
        let store = self.raw.mut_store();
        let log_start = store.first_index().unwrap_or(1) - 1;
        let mut segments_removed = 0;
        if compact_to > log_start {
            segments_removed = store
                .compact(compact_to)
                .map_err(fatal("compacting the log"))?;
        }
        self.prune_snapshots();
        Ok(CompactResult {
            first_index: self.raw.store().first_index().unwrap_or(1),
            segments_removed,
        })
    }

    /// Deletes snapshot files beyond the newest two at or below the recorded
    /// latest snapshot, never that one (a restart needs it). Files above it
    /// (received, not yet installed) are left alone.
    fn prune_snapshots(&self) {
        let Some((latest, _)) = self.raw.store().latest_snapshot() else {
            return;
        };
        let listed = match self.snapshots.list() {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!("cannot list snapshots: {e}");
                return;
            }
        };
        let kept_candidates: Vec<_> = listed
            .iter()
            .filter(|info| info.meta.index <= latest.index)
            .collect();
        let excess = kept_candidates.len().saturating_sub(SNAPSHOTS_KEPT);
        for info in &kept_candidates[..excess] {
            if let Err(e) = std::fs::remove_file(&info.path) {
                tracing::warn!("cannot remove old snapshot {}: {e}", info.path.display());
            }
        }
    }

    /// `raftkv debug compact`: compacts the log up to the latest snapshot.
    pub(super) fn compact_now(&mut self) -> Result<CompactResult, ReplicaError> {
        if self.raw.store().latest_snapshot().is_none() {
            return Err(ReplicaError::Unavailable(
                "no snapshot yet: take one first (raftkv debug snapshot)".into(),
            ));
        }
        self.compact_log(self.last_snapshot_index)
            .map_err(|e| ReplicaError::Unavailable(e.0))
    }

    /// Installs the snapshot the leader sent (its file was received and
    /// verified before raft saw the message).
    pub(super) fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), FatalError> {
        let (state, membership) = load_snapshot(&self.snapshots, meta, self.config.sessions)?;
        let own = self
            .shared
            .cluster
            .lock()
            .expect("cluster lock poisoned")
            .cluster_id;
        if own != 0 && state.cluster_id() != 0 && state.cluster_id() != own {
            return Err(FatalError(format!(
                "the snapshot at index {} is of cluster {:016x}, this node's data dir of \
                 cluster {own:016x}: it will not mix two clusters' data",
                meta.index,
                state.cluster_id()
            )));
        }
        self.raw
            .mut_store()
            .apply_snapshot(meta, membership.clone())
            .map_err(fatal("installing a snapshot"))?;
        self.forwarded_in_snapshot();
        let revision = state.revision();
        let auth_enabled = state.auth().enabled;
        *self.shared.kv.write().expect("kv lock poisoned") = state;
        self.shared.revision.send_replace(revision);
        self.shared
            .auth_enabled
            .store(auth_enabled, std::sync::atomic::Ordering::Release);
        self.applied_index = meta.index;
        self.last_snapshot_index = meta.index;
        self.forget_departed_peers(&member_ids(&membership.conf_state));
        self.transport
            .update_peers(&membership.peer_dial_addresses());
        *self
            .shared
            .membership
            .write()
            .expect("membership lock poisoned") = membership;
        tracing::info!(
            "node {}: installed the leader's snapshot at index {}",
            self.id,
            meta.index
        );
        self.update_removed();
        self.prune_snapshots();
        self.adopt_cluster_id()
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn a_snapshot_is_due_every_n_entries_or_when_a_peer_needs_a_newer_one() {
        assert!(!snapshot_due(199, 100, 100, || false));
        assert!(snapshot_due(200, 100, 100, || false));
        // Something new applied and a peer needs a newer snapshot.
        assert!(snapshot_due(101, 100, 100, || true));
        // Nothing new since the last one: no snapshot, whoever needs one.
        assert!(!snapshot_due(100, 100, 100, || true));
        // Snapshots effectively off: never due, and no overflow.
        assert!(!snapshot_due(u64::MAX - 1, 5_000, u64::MAX, || false));
        // 0 means every entry.
        assert!(snapshot_due(101, 100, 0, || false));
    }
}
