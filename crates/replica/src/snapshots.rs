//! State machine snapshots on the node: writing one in the background from an
//! O(1) clone of the state, and loading one (at start, or when the leader
//! sent one) with every checksum verified.

use raftkv_kv::{KvState, SessionLimits};
use raftkv_storage::{MembershipRecord, SnapshotInfo, SnapshotMeta, SnapshotStore};

use crate::error::FatalError;

/// Writes `state` (with `membership`) as the snapshot `meta`. Runs on a
/// thread of its own; the node keeps applying meanwhile.
pub(crate) fn write_snapshot(
    store: &SnapshotStore,
    meta: SnapshotMeta,
    state: &KvState,
    membership: &MembershipRecord,
) -> Result<SnapshotInfo, String> {
    let mut writer = store.create(meta).map_err(|e| e.to_string())?;
    state
        .write_snapshot(&membership.encode(), |record| writer.write_record(record))
        .map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

/// Loads the snapshot `meta` from `store`: the state and its membership.
/// A missing or corrupt file is fatal: the node must not serve data it
/// cannot verify.
pub(crate) fn load_snapshot(
    store: &SnapshotStore,
    meta: SnapshotMeta,
    limits: SessionLimits,
) -> Result<(KvState, MembershipRecord), FatalError> {
    let info = store
        .find(meta)
        .map_err(|e| FatalError(format!("cannot list snapshots: {e}")))?
        .ok_or_else(|| {
            FatalError(format!(
                "snapshot at index {} term {} is missing from the snap/ directory",
                meta.index, meta.term
            ))
        })?;
    let mut reader = store
        .open_reader(&info)
        .map_err(|e| FatalError(format!("cannot open snapshot: {e}")))?;
    let (state, membership) = KvState::restore_snapshot(limits, || reader.next_record())
        .map_err(|e| FatalError(format!("cannot load snapshot {}: {e}", info.path.display())))?;
    let membership = MembershipRecord::decode(&membership).map_err(|e| {
        FatalError(format!(
            "snapshot {} has an invalid membership: {e}",
            info.path.display()
        ))
    })?;
    if state.applied_index() != meta.index {
        return Err(FatalError(format!(
            "snapshot {} holds index {}, expected {}",
            info.path.display(),
            state.applied_index(),
            meta.index
        )));
    }
    tracing::info!(
        "loaded snapshot {} (index {}, {} keys)",
        info.path.display(),
        meta.index,
        state.len()
    );
    Ok((state, membership))
}
