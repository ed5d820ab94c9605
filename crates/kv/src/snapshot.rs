//! Serializing `KvState` into snapshot records and restoring it.
//!
//! A snapshot is a sequence of byte records (the storage crate frames and
//! checksums them): record 0 is a `SnapshotHeader` (applied index and term,
//! log time, the membership as opaque bytes, counts), then `SnapshotChunk`s of
//! sessions and key/value pairs in key order, each about `RECORD_TARGET_BYTES`
//! (a single larger value gets a record of its own). Writing walks an O(1)
//! clone of the state, so the node keeps applying while a snapshot is written.

use bytes::Bytes;
use prost::Message as _;
use raftkv_proto::internal::{
    LeaseGrant, RecordState, SnapshotChunk, SnapshotEvent, SnapshotHeader, SnapshotPair,
};

use crate::auth::AuthStore;
use crate::history::Change;

/// `SnapshotHeader.event_format` of snapshots whose history events carry
/// `deleted` and not the record a change left (0: before).
const EVENTS_WITHOUT_RECORD: u32 = 1;
use crate::state::Record;

fn record_state(record: &Record) -> RecordState {
    RecordState {
        value: record.value.clone(),
        create_revision: record.create_revision,
        mod_revision: record.mod_revision,
        version: record.version,
        lease: record.lease,
    }
}

fn record_of(state: RecordState) -> Record {
    Record {
        value: state.value,
        create_revision: state.create_revision,
        mod_revision: state.mod_revision,
        version: state.version,
        lease: state.lease,
    }
}

use crate::session::{SessionLimits, Sessions};
use crate::state::KvState;

/// Records are cut once they pass this size.
const RECORD_TARGET_BYTES: usize = 1024 * 1024;

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError<E> {
    #[error("reading the snapshot: {0}")]
    Source(E),
    #[error("snapshot is malformed: {0}")]
    Malformed(String),
}

impl KvState {
    /// Writes the whole state as records through `sink`, `membership`
    /// (opaque) in the header.
    pub fn write_snapshot<E>(
        &self,
        membership: &[u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let sessions = self.sessions.export();
        let header = SnapshotHeader {
            applied_index: self.applied_index(),
            applied_term: self.applied_term(),
            clock_ms: self.clock_ms(),
            membership: Bytes::copy_from_slice(membership),
            keys: self.len() as u64,
            sessions: sessions.len() as u64,
            cluster_id: self.cluster_id,
            bootstrap_id: self.bootstrap_id,
            revision: self.revision,
            compacted_revision: self.compacted,
            history_from: self.history.complete_from(),
            events: self.history.len() as u64,
            leases: self.leases.len() as u64,
            event_format: EVENTS_WITHOUT_RECORD,
            auth: (*self.auth != AuthStore::default()).then(|| self.auth.to_state()),
        };
        sink(&header.encode_to_vec())?;
        let mut chunk = SnapshotChunk::default();
        let mut chunk_bytes = 0;
        for session in sessions {
            chunk_bytes += 32 + 8 * session.applied_seqs.len();
            chunk.sessions.push(session);
            if chunk_bytes >= RECORD_TARGET_BYTES {
                sink(&std::mem::take(&mut chunk).encode_to_vec())?;
                chunk_bytes = 0;
            }
        }
        for (key, record) in self.map.iter() {
            chunk_bytes += key.len() + record.value.len() + 40;
            chunk.pairs.push(SnapshotPair {
                key: key.clone(),
                value: record.value.clone(),
                create_revision: record.create_revision,
                mod_revision: record.mod_revision,
                version: record.version,
                lease: record.lease,
            });
            if chunk_bytes >= RECORD_TARGET_BYTES {
                sink(&std::mem::take(&mut chunk).encode_to_vec())?;
                chunk_bytes = 0;
            }
        }
        for change in self.history.events() {
            chunk_bytes +=
                change.key.len() + change.prev.as_ref().map_or(0, |r| r.value.len() + 40);
            chunk.events.push(SnapshotEvent {
                revision: change.revision,
                key: change.key.clone(),
                record: None,
                prev: change.prev.as_ref().map(record_state),
                deleted: change.deleted,
            });
            if chunk_bytes >= RECORD_TARGET_BYTES {
                sink(&std::mem::take(&mut chunk).encode_to_vec())?;
                chunk_bytes = 0;
            }
        }
        for (id, ttl) in self.leases() {
            chunk.leases.push(LeaseGrant { id, ttl });
        }
        if !chunk.pairs.is_empty()
            || !chunk.sessions.is_empty()
            || !chunk.events.is_empty()
            || !chunk.leases.is_empty()
        {
            sink(&chunk.encode_to_vec())?;
        }
        Ok(())
    }

    /// Rebuilds a state from the records of `write_snapshot`, pulled from
    /// `source` until it returns `None`. Returns the state and the
    /// membership bytes of the header.
    pub fn restore_snapshot<E>(
        limits: SessionLimits,
        mut source: impl FnMut() -> Result<Option<Bytes>, E>,
    ) -> Result<(KvState, Bytes), RestoreError<E>> {
        let first = source()
            .map_err(RestoreError::Source)?
            .ok_or_else(|| RestoreError::Malformed("no header record".into()))?;
        let header = SnapshotHeader::decode(first)
            .map_err(|e| RestoreError::Malformed(format!("header: {e}")))?;
        let mut state = KvState::new(limits);
        state.sessions = Sessions::new(limits);
        let mut sessions = 0u64;
        let mut events = Vec::new();
        while let Some(record) = source().map_err(RestoreError::Source)? {
            let chunk = SnapshotChunk::decode(record)
                .map_err(|e| RestoreError::Malformed(format!("chunk: {e}")))?;
            for session in chunk.sessions {
                sessions += 1;
                state.sessions.import(session);
            }
            for pair in chunk.pairs {
                // A snapshot from before revisions existed has none.
                let record = if pair.mod_revision == 0 {
                    Record::unrevisioned(pair.value)
                } else {
                    Record {
                        value: pair.value,
                        create_revision: pair.create_revision,
                        mod_revision: pair.mod_revision,
                        version: pair.version,
                        lease: pair.lease,
                    }
                };
                state.restore_pair(pair.key, record);
            }
            for lease in chunk.leases {
                state
                    .grant_lease(lease.id, lease.ttl)
                    .map_err(|e| RestoreError::Malformed(format!("lease {}: {e}", lease.id)))?;
            }
            events.extend(chunk.events.into_iter().map(|e| Change {
                revision: e.revision,
                key: e.key,
                // Snapshots before the record a change left was elided
                // carry it, and no `deleted` (the map rebuilds it).
                deleted: if header.event_format >= EVENTS_WITHOUT_RECORD {
                    e.deleted
                } else {
                    e.record.is_none()
                },
                prev: e.prev.map(record_of),
            }));
        }
        if events.len() as u64 != header.events {
            return Err(RestoreError::Malformed(format!(
                "header promises {} history events, records hold {}",
                header.events,
                events.len()
            )));
        }
        if state.len() as u64 != header.keys || sessions != header.sessions {
            return Err(RestoreError::Malformed(format!(
                "header promises {} keys and {} sessions, records hold {} and {sessions}",
                header.keys,
                header.sessions,
                state.len()
            )));
        }
        state.restore_position(header.applied_index, header.applied_term, header.clock_ms);
        state.cluster_id = header.cluster_id;
        state.bootstrap_id = header.bootstrap_id;
        state.revision = header.revision.max(1);
        state.compacted = header.compacted_revision;
        state.history.restore(header.history_from, events);
        if state.leases.len() as u64 != header.leases {
            return Err(RestoreError::Malformed(format!(
                "header promises {} leases, records hold {}",
                header.leases,
                state.leases.len()
            )));
        }
        state.rebuild_lease_keys();
        if let Some(auth) = &header.auth {
            state.auth = std::sync::Arc::new(
                AuthStore::from_state(auth)
                    .map_err(|e| RestoreError::Malformed(format!("auth: {e}")))?,
            );
        }
        Ok((state, header.membership))
    }
}

/// `state` written as a snapshot and restored (for tests).
#[cfg(test)]
pub(crate) fn round_trip(state: &KvState) -> KvState {
    let mut records = Vec::new();
    state
        .write_snapshot(b"", |r| {
            records.push(Bytes::copy_from_slice(r));
            Ok::<(), ()>(())
        })
        .unwrap();
    let mut iter = records.into_iter();
    KvState::restore_snapshot(SessionLimits::default(), || Ok::<_, ()>(iter.next()))
        .unwrap()
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Op};
    use crate::state::KeyRange;

    fn sample_state() -> KvState {
        let mut s = KvState::new(SessionLimits::default());
        let mut index = 0;
        for client in 1..=50u64 {
            for seq in 1..=3u64 {
                index += 1;
                let cmd = Command {
                    client_id: client,
                    seq,
                    first_incomplete_seq: 1,
                    timestamp_ms: index,
                    ops: vec![Op {
                        key: Bytes::from(format!("k/{client:03}/{seq}")),
                        value: Bytes::from(vec![seq as u8; (client * 100) as usize]),
                        delete: false,
                    }],
                    // Half from before revisions existed.
                    rules: if client % 2 == 0 {
                        crate::CURRENT_RULES
                    } else {
                        crate::RULES_ORIGINAL
                    },
                    ..Default::default()
                };
                s.apply(index, 2, &cmd);
            }
        }
        // A value larger than one record, and binary keys.
        index += 1;
        let big = Command {
            ops: vec![Op {
                key: Bytes::from_static(b"big\0\xff"),
                value: Bytes::from(vec![7u8; 3 * RECORD_TARGET_BYTES]),
                delete: false,
            }],
            timestamp_ms: index,
            ..Default::default()
        };
        s.apply(index, 3, &big);
        s
    }

    fn records_of(state: &KvState, membership: &[u8]) -> Vec<Bytes> {
        let mut records = Vec::new();
        state
            .write_snapshot(membership, |r| {
                records.push(Bytes::copy_from_slice(r));
                Ok::<(), ()>(())
            })
            .unwrap();
        records
    }

    fn restore(records: Vec<Bytes>) -> Result<(KvState, Bytes), RestoreError<()>> {
        let mut iter = records.into_iter();
        KvState::restore_snapshot(SessionLimits::default(), || Ok(iter.next()))
    }

    #[test]
    fn restore_gives_back_the_same_state() {
        let original = sample_state();
        let records = records_of(&original, b"members");
        // Header, the big value alone, then everything else.
        assert_eq!(records.len(), 3, "records are cut at the target size");
        let (restored, membership) = restore(records).unwrap();
        assert_eq!(membership, "members");
        assert_eq!(restored.content_hash(), original.content_hash());
        assert_eq!(restored.len(), original.len());
        assert_eq!(restored.data_bytes(), original.data_bytes());
        assert_eq!(restored.applied_index(), original.applied_index());
        assert_eq!(restored.applied_term(), original.applied_term());
        assert_eq!(restored.clock_ms(), original.clock_ms());
        assert_eq!(restored.sessions(), original.sessions());
        assert_eq!(restored.revision(), original.revision());
        assert!(original.revision() > 50);
        for key in [&b"k/002/3"[..], b"k/003/1", b"big\0\xff"] {
            assert_eq!(restored.get_record(key), original.get_record(key));
        }
    }

    /// A store whose history holds overwrites and deletes.
    fn churned_state() -> KvState {
        let mut s = KvState::new(SessionLimits::default());
        for index in 1..=40u64 {
            let key = Bytes::from(format!("w/{}", index % 4));
            let cmd = Command {
                timestamp_ms: index,
                rules: crate::CURRENT_RULES,
                ops: vec![Op {
                    key,
                    value: Bytes::from(format!("v{index}")),
                    delete: index % 5 == 0,
                }],
                ..Default::default()
            };
            s.apply(index, 1, &cmd);
        }
        s
    }

    #[test]
    fn the_history_comes_back_as_watchers_and_past_reads_see_it() {
        let original = churned_state();
        let (restored, _) = restore(records_of(&original, b"")).unwrap();
        let all = KeyRange::From(Bytes::from_static(b"\0"));
        let events = original.changes_since(&all, 1).unwrap();
        assert_eq!(events.len(), 40, "every put and delete is a change");
        assert!(events.iter().any(|e| e.record.is_none()), "deletes kept");
        assert_eq!(restored.changes_since(&all, 1).unwrap(), events);
        for revision in 1..=original.revision() {
            assert_eq!(
                restored.range_at(&all, revision, 0),
                original.range_at(&all, revision, 0),
                "at revision {revision}"
            );
        }
    }

    #[test]
    fn snapshots_whose_events_carry_the_record_after_them_still_restore() {
        // The format before `event_format` 1: every event with the record
        // it left (absent for a delete), no `deleted`.
        let original = churned_state();
        let mut records = records_of(&original, b"");
        let mut header = SnapshotHeader::decode(records[0].clone()).unwrap();
        header.event_format = 0;
        records[0] = Bytes::from(header.encode_to_vec());
        let events = original
            .changes_since(&KeyRange::From(Bytes::from_static(b"\0")), 1)
            .unwrap();
        for record in records.iter_mut().skip(1) {
            let mut chunk = SnapshotChunk::decode(record.clone()).unwrap();
            for (e, event) in chunk.events.iter_mut().zip(&events) {
                e.record = event.record.as_ref().map(record_state);
                e.deleted = false;
            }
            *record = Bytes::from(chunk.encode_to_vec());
        }
        let (restored, _) = restore(records).unwrap();
        let all = KeyRange::From(Bytes::from_static(b"\0"));
        assert_eq!(restored.changes_since(&all, 1).unwrap(), events);
    }

    #[test]
    fn restored_sessions_still_deduplicate_retries() {
        let original = sample_state();
        let (mut restored, _) = restore(records_of(&original, b"")).unwrap();
        let retry = Command {
            client_id: 7,
            seq: 3,
            first_incomplete_seq: 1,
            timestamp_ms: restored.clock_ms() + 1,
            ops: vec![Op {
                key: Bytes::from_static(b"k/007/3"),
                value: Bytes::from_static(b"overwritten by a retry"),
                delete: false,
            }],
            ..Default::default()
        };
        let next = restored.applied_index() + 1;
        assert_eq!(
            restored.apply(next, 3, &retry),
            crate::ApplyOutcome::Duplicate
        );
        assert_eq!(restored.get(b"k/007/3").unwrap().len(), 700);
    }

    #[test]
    fn same_state_gives_same_bytes() {
        let state = sample_state();
        assert_eq!(records_of(&state, b"m"), records_of(&state.clone(), b"m"));
    }

    #[test]
    fn a_missing_record_is_detected() {
        let mut records = records_of(&sample_state(), b"");
        records.remove(1);
        assert!(matches!(restore(records), Err(RestoreError::Malformed(_))));
        assert!(matches!(
            restore(Vec::new()),
            Err(RestoreError::Malformed(_))
        ));
    }

    #[test]
    fn an_empty_state_round_trips() {
        let empty = KvState::new(SessionLimits::default());
        let (restored, _) = restore(records_of(&empty, b"x")).unwrap();
        assert!(restored.is_empty());
        assert_eq!(restored.applied_index(), 0);
    }
}
