//! `KvState`: the ordered map, its size accounting, the client sessions and
//! the applied index, changed only by applying committed commands in order.

use std::ops::Bound;

use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;

use crate::auth::{Access, AuthChange, AuthCommand, AuthStore};

use crate::command::Command;
use crate::hash::StableHasher;
use crate::history::{Event, History, HistoryLimits, RevisionError};
use crate::session::{SessionLimits, SessionVerdict, Sessions};

/// Values shorter than this are copied out of the log entry they arrived in,
/// so a small value does not keep a large batched entry alive; longer values
/// share the entry's buffer (no second copy of a 100 MB value).
const COPY_VALUES_BELOW_BYTES: usize = 64 * 1024;

/// Result of applying one command.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplyOutcome {
    /// The command's operations took effect.
    Applied,
    /// An etcd transaction took effect (or its compares failed and its
    /// failure branch ran): its response, header revision set.
    Txn(Box<raftkv_proto::etcdserverpb::TxnResponse>),
    /// A retry of a write already applied: nothing changed, success.
    Duplicate,
    /// Refused without effect (the reason is for the client).
    Refused(String),
    /// Refused without effect: the caller may not do this under the users
    /// and roles of the moment it was applied (the reason is for the
    /// client: etcd's text, or which user may not touch which key).
    Denied(String),
    /// Refused without effect: the client's session is gone, and this write
    /// might be a retry of one applied before it went (see `session.rs`).
    SessionExpired,
    /// Refused without effect: no room for a new session yet; retry later.
    TooManySessions,
}

/// Keys as etcd names them: one key, every key from one on, or
/// `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    Key(Bytes),
    From(Bytes),
    Between(Bytes, Bytes),
}

impl KeyRange {
    /// etcd's encoding: `range_end` empty is one key, `"\0"` every key from
    /// `key` on (and `key` `"\0"` too: all keys), anything else the end.
    pub fn from_etcd(key: Bytes, range_end: Bytes) -> KeyRange {
        match &range_end[..] {
            [] => KeyRange::Key(key),
            [0] => KeyRange::From(key),
            _ => KeyRange::Between(key, range_end),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => key == &k[..],
            KeyRange::From(start) => key >= &start[..],
            KeyRange::Between(start, end) => key >= &start[..] && key < &end[..],
        }
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match self {
            KeyRange::Key(k) => (Bound::Included(&k[..]), Bound::Included(&k[..])),
            KeyRange::From(start) => (Bound::Included(&start[..]), Bound::Unbounded),
            KeyRange::Between(start, end) if start < end => {
                (Bound::Included(&start[..]), Bound::Excluded(&end[..]))
            }
            // An empty range (etcd answers it with nothing).
            KeyRange::Between(start, _) => {
                (Bound::Included(&start[..]), Bound::Excluded(&start[..]))
            }
        }
    }
}

/// A scan request over the map.
#[derive(Clone, Copy, Debug)]
pub struct ScanQuery<'a> {
    pub prefix: &'a [u8],
    /// Exclusive start key (paging cursor).
    pub after: Option<&'a [u8]>,
    /// Number of matching keys to skip first.
    pub offset: u64,
    pub limit: usize,
    pub keys_only: bool,
}

/// One page of scan results, in ascending key order (values empty when
/// `keys_only`; the revisions are there either way).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    pub pairs: Vec<(Bytes, Record)>,
    /// Whether more keys with the prefix follow the last returned one.
    pub more: bool,
}

/// A value as the map keeps it: a short one copied out of the log entry it
/// arrived in, so it does not keep a large batched entry alive; a long one
/// sharing the entry's buffer (no second copy of a 100 MB value).
pub(crate) fn owned_value(value: Bytes) -> Bytes {
    if value.len() < COPY_VALUES_BELOW_BYTES {
        Bytes::copy_from_slice(&value)
    } else {
        value
    }
}

/// A key's value and its revisions, with etcd's meaning: the store
/// revision counts write transactions (a command that changed something),
/// starting at 1 for an empty store; `create_revision` is the revision
/// that created this generation of the key (a delete ends a generation),
/// `mod_revision` the one that last wrote it, `version` the puts since it
/// was created (1 after the first). Keys written by commands from before
/// revisions existed (an older build's log or snapshot) read as created
/// and modified at revision 1, version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub value: Bytes,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
}

impl Record {
    /// The record a put at `revision` leaves, given the key's record
    /// before it (`None`: the put creates the key).
    pub(crate) fn written(value: Bytes, old: Option<&Record>, revision: u64, lease: u64) -> Record {
        let (create_revision, version) = match old {
            Some(old) => (old.create_revision, old.version + 1),
            None => (revision, 1),
        };
        Record {
            value,
            create_revision,
            mod_revision: revision,
            version,
            lease,
        }
    }

    /// A key from before revisions existed.
    pub(crate) fn unrevisioned(value: Bytes) -> Record {
        Record {
            value,
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        }
    }
}

/// The replicated state machine. `Clone` is O(1) (persistent map).
#[derive(Clone, Debug)]
pub struct KvState {
    pub(crate) map: OrdMap<Bytes, Record>,
    /// The store revision: 1 when empty, +1 per command that changed a key.
    pub(crate) revision: u64,
    /// The revision compacted to through the log (0: never): older
    /// revisions are not served on any replica.
    pub(crate) compacted: u64,
    /// The changes since then (see `history.rs`).
    pub(crate) history: History,
    /// etcd's leases (see `leases.rs`).
    pub(crate) leases: crate::leases::Leases,
    data_bytes: u64,
    pub(crate) sessions: Sessions,
    /// Log time: the largest command timestamp applied so far.
    clock_ms: u64,
    applied_index: u64,
    applied_term: u64,
    /// The cluster's id as first chosen in the log (0: none yet), and the
    /// bootstrap id its members started with.
    pub(crate) cluster_id: u64,
    pub(crate) bootstrap_id: u64,
    /// Users, roles and the auth switch (shared until changed).
    pub(crate) auth: Arc<AuthStore>,
}

impl KvState {
    pub fn new(limits: SessionLimits) -> Self {
        KvState {
            map: OrdMap::new(),
            revision: 1,
            compacted: 0,
            history: History::new(HistoryLimits::default()),
            leases: imbl::OrdMap::new(),
            data_bytes: 0,
            sessions: Sessions::new(limits),
            clock_ms: 0,
            applied_index: 0,
            applied_term: 0,
            cluster_id: 0,
            bootstrap_id: 0,
            auth: Arc::new(AuthStore::default()),
        }
    }

    /// Users, roles and whether auth is on, as of the last applied entry.
    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// Applies an auth change: once auth is on, only root may make one.
    fn apply_auth(&mut self, cmd: &Command, command: &AuthCommand) -> ApplyOutcome {
        if self.auth.enabled && !cmd.by_node && !self.auth.is_root(&cmd.user) {
            return ApplyOutcome::Denied(crate::auth::PERMISSION_DENIED.into());
        }
        let change = match AuthChange::from_command(command) {
            Ok(change) => change,
            Err(why) => return ApplyOutcome::Refused(why.into()),
        };
        match Arc::make_mut(&mut self.auth).apply(&change) {
            Ok(()) => ApplyOutcome::Applied,
            Err(why) => ApplyOutcome::Refused(why.into()),
        }
    }

    /// Why the caller of `cmd` may not make it under the users and roles of
    /// this moment (checked again here, not only when it was asked, so a
    /// permission revoked meanwhile holds), or `Ok`.
    fn check_caller(&self, cmd: &Command) -> Result<(), String> {
        let auth = &self.auth;
        if !auth.enabled || cmd.by_node {
            return Ok(());
        }
        let user = cmd.user.as_str();
        if user.is_empty() {
            return Err(crate::auth::USER_EMPTY.into());
        }
        if !auth.has_user(user) {
            return Err(crate::auth::USER_NOT_FOUND.into());
        }
        if cmd.compact_revision != 0 && !auth.is_root(user) {
            return Err(crate::auth::PERMISSION_DENIED.into());
        }
        if cmd.lease_revoke != 0 {
            if let Some(lease) = self.leases.get(&cmd.lease_revoke) {
                for key in lease.keys.iter() {
                    auth.check(user, Access::Write, key, &[])
                        .map_err(|d| d.to_string())?;
                }
            }
        }
        if let Some(txn) = &cmd.etcd_txn {
            auth.check_txn(user, txn).map_err(|d| d.to_string())?;
        }
        for op in &cmd.ops {
            auth.check(user, Access::Write, &op.key, &[])
                .map_err(|d| d.to_string())?;
        }
        Ok(())
    }

    /// Applies a committed command at log position (`index`, `term`).
    pub fn apply(&mut self, index: u64, term: u64, cmd: &Command) -> ApplyOutcome {
        self.mark_applied(index, term);
        self.clock_ms = self.clock_ms.max(cmd.timestamp_ms);
        if let Some(choice) = &cmd.cluster_id {
            // The first choice committed is the cluster's id; a later one (a
            // leader that proposed before it learned of the first) is void.
            if self.cluster_id == 0 {
                self.cluster_id = choice.cluster_id;
                self.bootstrap_id = choice.bootstrap_id;
            }
            return ApplyOutcome::Applied;
        }
        if cmd.member_address.is_some() {
            // Membership is the replica's; nothing changes in the map.
            return ApplyOutcome::Applied;
        }
        if let Some(command) = &cmd.auth {
            return self.apply_auth(cmd, command);
        }
        // Before the session: a refused write is not recorded as applied,
        // so a retry of it is checked again rather than answered "done".
        if let Err(why) = self.check_caller(cmd) {
            return ApplyOutcome::Denied(why);
        }
        if cmd.client_id != 0 {
            match self.sessions.admit(
                cmd.client_id,
                cmd.seq,
                cmd.first_incomplete_seq,
                self.clock_ms,
                cmd.rules,
            ) {
                SessionVerdict::Apply => {}
                SessionVerdict::Duplicate => return ApplyOutcome::Duplicate,
                SessionVerdict::TooManyInFlight => {
                    return ApplyOutcome::Refused(
                        "too many writes in flight in this client session".into(),
                    )
                }
                SessionVerdict::Expired => return ApplyOutcome::SessionExpired,
                SessionVerdict::TooManySessions => return ApplyOutcome::TooManySessions,
            }
        }
        if cmd.compact_revision != 0 {
            return match self.compact(cmd.compact_revision) {
                Ok(()) => ApplyOutcome::Applied,
                Err(e) => ApplyOutcome::Refused(e.to_string()),
            };
        }
        if let Some(grant) = &cmd.lease_grant {
            return match self.grant_lease(grant.id, grant.ttl) {
                Ok(()) => ApplyOutcome::Applied,
                Err(why) => ApplyOutcome::Refused(why),
            };
        }
        if cmd.lease_revoke != 0 {
            return match self.revoke_lease(cmd.lease_revoke) {
                Ok(()) => ApplyOutcome::Applied,
                Err(why) => ApplyOutcome::Refused(why),
            };
        }
        if let Some(txn) = &cmd.etcd_txn {
            return match self.apply_etcd_txn(txn) {
                Ok(response) => ApplyOutcome::Txn(Box::new(response)),
                Err(why) => ApplyOutcome::Refused(why),
            };
        }
        // One revision for the whole command, taken only if it changed
        // something (a put always does, even of the same value; a delete
        // only of a key that exists).
        let counted = cmd.rules >= crate::session::RULES_REVISIONS;
        let revision = self.revision + 1;
        let mut changed = false;
        for op in &cmd.ops {
            if op.delete {
                changed |= if counted {
                    self.delete_record(&op.key, revision).is_some()
                } else {
                    self.remove(&op.key).is_some()
                };
            } else {
                let value = if cmd.test_next_kind {
                    // The test-only entry kind (see `RULES_TEST_NEXT`).
                    let mut reversed = op.value.to_vec();
                    reversed.reverse();
                    owned_value(Bytes::from(reversed))
                } else {
                    owned_value(op.value.clone())
                };
                if counted {
                    self.write_record(&op.key, revision, |old| {
                        Record::written(value, old, revision, 0)
                    });
                } else {
                    self.insert(Bytes::copy_from_slice(&op.key), Record::unrevisioned(value));
                }
                changed = true;
            }
        }
        if counted && changed {
            self.revision = revision;
        }
        ApplyOutcome::Applied
    }

    /// Records that the entry at (`index`, `term`) was applied even though it
    /// carried no command (an empty entry or a membership change).
    pub fn mark_applied(&mut self, index: u64, term: u64) {
        debug_assert!(
            index > self.applied_index,
            "entries apply in order: {index} after {}",
            self.applied_index
        );
        self.applied_index = index;
        self.applied_term = term;
    }

    /// Adds a pair read from a snapshot (small values get their own buffer,
    /// as in `apply`).
    pub(crate) fn restore_pair(&mut self, key: Bytes, mut record: Record) {
        record.value = owned_value(record.value);
        self.insert(Bytes::copy_from_slice(&key), record);
    }

    /// Sets the log position and time a snapshot was taken at.
    pub(crate) fn restore_position(&mut self, index: u64, term: u64, clock_ms: u64) {
        self.applied_index = index;
        self.applied_term = term;
        self.clock_ms = clock_ms;
    }

    /// Puts the record `make` builds from the key's current one, with one
    /// lookup of the map when the key exists (the common overwrite keeps
    /// the map's key). Returns the record it replaced.
    pub(crate) fn upsert(
        &mut self,
        key: &[u8],
        make: impl FnOnce(Option<&Record>) -> Record,
    ) -> Option<Record> {
        let Some(slot) = self.map.get_mut(key) else {
            self.insert(Bytes::copy_from_slice(key), make(None));
            return None;
        };
        let record = make(Some(slot));
        let (size, lease) = (record.value.len() as u64, record.lease);
        let old = std::mem::replace(slot, record);
        self.data_bytes += size;
        self.data_bytes -= old.value.len() as u64;
        if old.lease != lease {
            self.reattach(&Bytes::copy_from_slice(key), old.lease, lease);
        }
        Some(old)
    }

    /// Returns the record it replaced.
    /// Keeps the lease a key names attached to it (see `leases.rs`).
    pub(crate) fn insert(&mut self, key: Bytes, record: Record) -> Option<Record> {
        let added = (key.len() + record.value.len()) as u64;
        let lease = record.lease;
        let old = self.map.insert(key.clone(), record);
        if let Some(old) = &old {
            self.data_bytes -= (key.len() + old.value.len()) as u64;
        }
        self.data_bytes += added;
        self.reattach(&key, old.as_ref().map_or(0, |o| o.lease), lease);
        old
    }

    /// Returns the record removed, if the key existed.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Record> {
        let old = self.map.remove(key)?;
        self.data_bytes -= (key.len() + old.value.len()) as u64;
        if old.lease != 0 {
            self.reattach(&Bytes::copy_from_slice(key), old.lease, 0);
        }
        Some(old)
    }

    /// Compacts to `revision` (a `Compact` request applied from the log):
    /// revisions before it are no longer served; reading at it still is.
    pub fn compact(&mut self, revision: u64) -> Result<(), RevisionError> {
        if revision > self.revision {
            return Err(RevisionError::Future {
                current: self.revision,
            });
        }
        if revision <= self.compacted {
            return Err(RevisionError::Compacted {
                compact_revision: self.compacted,
            });
        }
        self.compacted = revision;
        self.history.compact(revision);
        Ok(())
    }

    /// The revision compacted to through the log (0: never).
    pub fn compacted_revision(&self) -> u64 {
        self.compacted
    }

    /// The oldest revision this node still serves (at least the compacted
    /// one; later when the history outgrew its memory bound here).
    pub fn oldest_served_revision(&self) -> u64 {
        self.history.complete_from()
    }

    /// Bytes and events the history window holds.
    pub fn history_size(&self) -> (u64, usize) {
        (self.history.bytes(), self.history.len())
    }

    /// Sets the history window's memory bound (trimmed at the next write).
    pub fn set_history_limits(&mut self, limits: HistoryLimits) {
        self.history.set_limits(limits);
    }

    /// How many keys `range` holds now.
    pub fn count_in(&self, range: &KeyRange) -> usize {
        self.map.range::<_, [u8]>(range.bounds()).count()
    }

    /// The pairs of `range` as of `revision` (0: the current one), in key
    /// order, at most `limit` (0: all) and whether more follow.
    pub fn range_at(
        &self,
        range: &KeyRange,
        revision: u64,
        limit: usize,
    ) -> Result<(Vec<(Bytes, Record)>, bool), RevisionError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        if revision == 0 || revision == self.revision {
            let mut pairs: Vec<(Bytes, Record)> = self
                .map
                .range::<_, [u8]>(range.bounds())
                .take(limit.saturating_add(1))
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect();
            let more = pairs.len() > limit;
            pairs.truncate(limit);
            return Ok((pairs, more));
        }
        self.history.check(revision, self.revision)?;
        // The current pairs with every later change undone, newest first.
        let mut then: std::collections::BTreeMap<Bytes, Record> = self
            .map
            .range::<_, [u8]>(range.bounds())
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let later = self.history.since(revision + 1);
        for event in later.iter().rev().filter(|e| range.contains(&e.key)) {
            match &event.prev {
                Some(prev) => then.insert(event.key.clone(), prev.clone()),
                None => then.remove(&event.key),
            };
        }
        let more = then.len() > limit;
        Ok((then.into_iter().take(limit).collect(), more))
    }

    /// A stable hash of every key with its value and revisions as of
    /// `revision` (0: the current one): equal on every replica that serves
    /// it (etcd's HashKV, for comparing members).
    pub fn hash_at(&self, revision: u64) -> Result<u64, RevisionError> {
        let everything = KeyRange::From(Bytes::from_static(b"\0"));
        let (pairs, _) = self.range_at(&everything, revision, 0)?;
        let mut hasher = StableHasher::new();
        for (key, record) in pairs {
            hash_pair(&mut hasher, &key, &record);
        }
        Ok(hasher.finish())
    }

    /// The changes to `range` at or after revision `from`, oldest first: a
    /// watcher's catch-up. `from` may be the next revision (nothing yet).
    pub fn changes_since(&self, range: &KeyRange, from: u64) -> Result<Vec<Event>, RevisionError> {
        if from <= self.revision {
            self.history.check(from, self.revision)?;
        }
        let changes = self.history.since(from);
        // Newest first: the record a change left is the `prev` of the key's
        // next change, or the map's for its last one.
        let mut after: std::collections::HashMap<&[u8], Option<&Record>> = Default::default();
        let mut events: Vec<Event> = changes
            .iter()
            .rev()
            .filter(|c| range.contains(&c.key))
            .map(|c| {
                let record = match after.insert(&c.key, c.prev.as_ref()) {
                    Some(next_prev) => next_prev,
                    None => self.map.get(&c.key[..]),
                };
                Event {
                    revision: c.revision,
                    key: c.key.clone(),
                    record: record.filter(|_| !c.deleted).cloned(),
                    prev: c.prev.clone(),
                }
            })
            .collect();
        events.reverse();
        Ok(events)
    }

    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).map(|r| r.value.clone())
    }

    /// The key's value with its revisions.
    pub fn get_record(&self, key: &[u8]) -> Option<&Record> {
        self.map.get(key)
    }

    /// The store revision (1 for a store never written).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Keys with `query.prefix` in ascending byte order, after the cursor,
    /// skipping `offset` matches, at most `limit`.
    pub fn scan(&self, query: &ScanQuery<'_>) -> ScanPage {
        let start: Bound<&[u8]> = match query.after {
            Some(after) if after >= query.prefix => Bound::Excluded(after),
            _ => Bound::Included(query.prefix),
        };
        let mut matches = self
            .map
            .range::<_, [u8]>((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(query.prefix))
            .skip(usize::try_from(query.offset).unwrap_or(usize::MAX));
        let mut page = ScanPage::default();
        for (key, record) in matches.by_ref().take(query.limit) {
            let mut record = record.clone();
            if query.keys_only {
                record.value = Bytes::new();
            }
            page.pairs.push((key.clone(), record));
        }
        page.more = matches.next().is_some();
        page
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of keys plus values.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The cluster's id as chosen in the log (0: not yet).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The bootstrap id of the cluster's first members (0: not known).
    pub fn bootstrap_id(&self) -> u64 {
        self.bootstrap_id
    }

    /// Test hook (`RAFTKV_TEST_CORRUPT`): changes `key`'s value here only,
    /// outside the log, as silent corruption would (revisions kept). False:
    /// no such key.
    pub fn corrupt_for_test(&mut self, key: &[u8]) -> bool {
        let Some(slot) = self.map.get_mut(key) else {
            return false;
        };
        let mut value = slot.value.to_vec();
        match value.first_mut() {
            Some(byte) => *byte ^= 0x01,
            None => value.push(b'!'),
        }
        self.data_bytes += value.len() as u64;
        self.data_bytes -= slot.value.len() as u64;
        slot.value = Bytes::from(value);
        true
    }

    /// Forgets which cluster this state belongs to (restoring a backup into a
    /// new cluster: its first leader chooses a new id, so the old cluster's
    /// members are never taken for its own).
    pub fn forget_cluster_id(&mut self) {
        self.cluster_id = 0;
        self.bootstrap_id = 0;
    }

    /// Log time: the largest command timestamp applied so far.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// Stable hash of every key and value with its revisions, and the store
    /// revision, for comparing replicas at the same applied index.
    pub fn content_hash(&self) -> u64 {
        let mut hasher = StableHasher::new();
        hasher.write(&self.revision.to_le_bytes());
        hasher.write(&self.compacted.to_le_bytes());
        for (id, ttl) in self.leases() {
            hasher.write(&id.to_le_bytes());
            hasher.write(&ttl.to_le_bytes());
        }
        for (key, record) in self.map.iter() {
            hash_pair(&mut hasher, key, record);
        }
        hasher.finish()
    }
}

/// Feeds one key with its value and revisions to a state hash.
fn hash_pair(hasher: &mut StableHasher, key: &[u8], record: &Record) {
    hasher.write_field(key);
    hasher.write_field(&record.value);
    for n in [
        record.create_revision,
        record.mod_revision,
        record.version,
        record.lease,
    ] {
        hasher.write(&n.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Op;

    fn put(key: &str, value: &str) -> Op {
        Op {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            delete: false,
        }
    }

    fn del(key: &str) -> Op {
        Op {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::new(),
            delete: true,
        }
    }

    fn cmd(client_id: u64, seq: u64, ops: Vec<Op>) -> Command {
        Command {
            client_id,
            seq,
            first_incomplete_seq: 1,
            timestamp_ms: 1,
            ops,
            ..Default::default()
        }
    }

    fn state_with(keys: &[&str]) -> KvState {
        let mut s = KvState::new(SessionLimits::default());
        for (i, k) in keys.iter().enumerate() {
            s.apply(i as u64 + 1, 1, &cmd(0, 0, vec![put(k, k)]));
        }
        s
    }

    fn keys(page: &ScanPage) -> Vec<String> {
        page.pairs
            .iter()
            .map(|(k, _)| String::from_utf8(k.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn put_get_delete_and_size_accounting() {
        let mut s = KvState::new(SessionLimits::default());
        s.apply(1, 1, &cmd(0, 0, vec![put("a", "12345")]));
        assert_eq!(s.get(b"a").unwrap(), "12345");
        assert_eq!(s.data_bytes(), 6);
        s.apply(2, 1, &cmd(0, 0, vec![put("a", "1")]));
        assert_eq!(s.data_bytes(), 2);
        s.apply(3, 1, &cmd(0, 0, vec![del("a"), del("never-there")]));
        assert_eq!(s.get(b"a"), None);
        assert_eq!(s.data_bytes(), 0);
        assert_eq!(s.applied_index(), 3);
    }

    #[test]
    fn empty_value_is_stored_not_absent() {
        let mut s = KvState::new(SessionLimits::default());
        s.apply(1, 1, &cmd(0, 0, vec![put("k", "")]));
        assert_eq!(s.get(b"k"), Some(Bytes::new()));
    }

    #[test]
    fn retried_write_is_applied_once() {
        let mut s = KvState::new(SessionLimits::default());
        assert_eq!(
            s.apply(1, 1, &cmd(9, 1, vec![put("x", "first")])),
            ApplyOutcome::Applied
        );
        s.apply(2, 1, &cmd(10, 1, vec![put("x", "second")]));
        // The retry of client 9's write must not overwrite "second".
        assert_eq!(
            s.apply(3, 1, &cmd(9, 1, vec![put("x", "first")])),
            ApplyOutcome::Duplicate
        );
        assert_eq!(s.get(b"x").unwrap(), "second");
        assert_eq!(s.applied_index(), 3);
    }

    #[test]
    fn batch_ops_apply_in_order_atomically() {
        let mut s = KvState::new(SessionLimits::default());
        s.apply(
            1,
            1,
            &cmd(0, 0, vec![put("a", "1"), put("b", "2"), del("a")]),
        );
        assert_eq!(s.get(b"a"), None);
        assert_eq!(s.get(b"b").unwrap(), "2");
    }

    #[test]
    fn scan_returns_prefix_matches_sorted() {
        let s = state_with(&["b2", "a", "b1", "b10", "c", "b"]);
        let page = s.scan(&ScanQuery {
            prefix: b"b",
            after: None,
            offset: 0,
            limit: 100,
            keys_only: false,
        });
        assert_eq!(keys(&page), vec!["b", "b1", "b10", "b2"]);
        assert!(!page.more);
        assert_eq!(page.pairs[1].1.value, "b1");
    }

    #[test]
    fn scan_pages_by_offset_and_by_cursor_visit_every_key_once() {
        let names: Vec<String> = (0..25).map(|i| format!("p/{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut with_other = refs.clone();
        with_other.push("q/0");
        let s = state_with(&with_other);

        let mut by_offset = Vec::new();
        let mut offset = 0;
        loop {
            let page = s.scan(&ScanQuery {
                prefix: b"p/",
                after: None,
                offset,
                limit: 7,
                keys_only: true,
            });
            offset += page.pairs.len() as u64;
            by_offset.extend(keys(&page));
            if !page.more {
                break;
            }
        }
        assert_eq!(by_offset, names);

        let mut by_cursor = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let page = s.scan(&ScanQuery {
                prefix: b"p/",
                after: after.as_deref(),
                offset: 0,
                limit: 7,
                keys_only: true,
            });
            after = page.pairs.last().map(|(k, _)| k.clone());
            by_cursor.extend(keys(&page));
            if !page.more {
                break;
            }
        }
        assert_eq!(by_cursor, names);
    }

    #[test]
    fn scan_keys_only_omits_values() {
        let s = state_with(&["k1"]);
        let page = s.scan(&ScanQuery {
            prefix: b"k",
            after: None,
            offset: 0,
            limit: 10,
            keys_only: true,
        });
        assert_eq!(page.pairs.len(), 1);
        assert_eq!(page.pairs[0].0, "k1");
        assert_eq!(page.pairs[0].1.value, Bytes::new());
    }

    #[test]
    fn equal_contents_hash_equal_and_differences_show() {
        let a = state_with(&["x", "y"]);
        let b = state_with(&["y", "x"]);
        assert_eq!(a.content_hash(), b.content_hash());
        let c = state_with(&["x", "z"]);
        assert_ne!(a.content_hash(), c.content_hash());
    }

    #[test]
    fn clone_is_a_point_in_time_view() {
        let mut s = state_with(&["a"]);
        let snapshot = s.clone();
        s.apply(2, 1, &cmd(0, 0, vec![put("a", "changed"), put("b", "new")]));
        assert_eq!(snapshot.get(b"a").unwrap(), "a");
        assert_eq!(snapshot.get(b"b"), None);
        assert_eq!(s.get(b"a").unwrap(), "changed");
    }

    /// Raft thesis §6.3: client A's put(k, 1) applies but the reply is lost;
    /// A's session is dropped; B puts (k, 2); A's retry must not set k back
    /// to 1 (a reader would see 1, 2, 1).
    #[test]
    fn a_retry_after_its_session_was_dropped_does_not_apply_again() {
        let limits = SessionLimits {
            ttl_ms: 1_000,
            max_sessions: 1,
            max_in_flight_per_session: 10,
            min_idle_before_eviction_ms: 1_000,
        };
        let run = |rules: u32| {
            let mut s = KvState::new(limits);
            let write = |client_id, seq, fis, at_ms, value: &str| Command {
                client_id,
                seq,
                first_incomplete_seq: fis,
                timestamp_ms: at_ms,
                rules,
                ops: vec![put("k", value)],
                ..Default::default()
            };
            assert_eq!(
                s.apply(1, 1, &write(1, 1, 1, 0, "0")),
                ApplyOutcome::Applied
            );
            // A's second write applies; its reply is lost.
            assert_eq!(
                s.apply(2, 1, &write(1, 2, 2, 10, "1")),
                ApplyOutcome::Applied
            );
            // B writes once A's session is idle past the window: A's is dropped.
            assert_eq!(
                s.apply(3, 1, &write(2, 1, 1, 2_000, "2")),
                ApplyOutcome::Applied
            );
            let retry = s.apply(4, 1, &write(1, 2, 2, 2_001, "1"));
            (retry, s.get(b"k"))
        };
        assert_eq!(
            run(crate::CURRENT_RULES),
            (ApplyOutcome::SessionExpired, Some(Bytes::from_static(b"2")))
        );
        // What an older build's log did, and still replays as.
        assert_eq!(
            run(crate::RULES_ORIGINAL),
            (ApplyOutcome::Applied, Some(Bytes::from_static(b"1")))
        );
    }

    fn revisioned(ops: Vec<Op>) -> Command {
        Command {
            rules: crate::CURRENT_RULES,
            ops,
            ..Default::default()
        }
    }

    fn revs(s: &KvState, key: &str) -> Option<(u64, u64, u64)> {
        s.get_record(key.as_bytes())
            .map(|r| (r.create_revision, r.mod_revision, r.version))
    }

    /// etcd's semantics: an empty store is at revision 1 and its first write
    /// gets 2; every put counts (even of the same value), a delete only if
    /// the key existed; a command is one revision however many keys it
    /// writes; a delete ends the key's generation (version back to 1 on the
    /// next put, created anew).
    #[test]
    fn revisions_count_write_transactions_as_etcd_does() {
        let mut s = KvState::new(SessionLimits::default());
        assert_eq!(s.revision(), 1);
        s.apply(1, 1, &revisioned(vec![put("a", "1")]));
        assert_eq!((s.revision(), revs(&s, "a")), (2, Some((2, 2, 1))));
        s.apply(2, 1, &revisioned(vec![put("a", "1")]));
        assert_eq!((s.revision(), revs(&s, "a")), (3, Some((2, 3, 2))));
        s.apply(3, 1, &revisioned(vec![put("b", "x"), put("a", "2")]));
        assert_eq!(s.revision(), 4);
        assert_eq!(revs(&s, "a"), Some((2, 4, 3)));
        assert_eq!(revs(&s, "b"), Some((4, 4, 1)));
        s.apply(4, 1, &revisioned(vec![del("never-there")]));
        assert_eq!(s.revision(), 4, "a delete of nothing is no revision");
        s.apply(5, 1, &revisioned(vec![del("a")]));
        assert_eq!((s.revision(), revs(&s, "a")), (5, None));
        s.apply(6, 1, &revisioned(vec![put("a", "again")]));
        assert_eq!((s.revision(), revs(&s, "a")), (6, Some((6, 6, 1))));
        // Entries without a command (elections, membership) are no revision.
        s.mark_applied(7, 2);
        assert_eq!(s.revision(), 6);
    }

    /// A log written before revisions existed replays without counting
    /// them (a replica restoring an older snapshot, which has none, and one
    /// replaying the whole log must agree).
    #[test]
    fn commands_from_before_revisions_count_none() {
        let mut s = KvState::new(SessionLimits::default());
        s.apply(1, 1, &cmd(0, 0, vec![put("old", "1")]));
        s.apply(2, 1, &cmd(0, 0, vec![put("old", "2")]));
        assert_eq!((s.revision(), revs(&s, "old")), (1, Some((1, 1, 1))));
        s.apply(3, 1, &revisioned(vec![put("old", "3")]));
        assert_eq!((s.revision(), revs(&s, "old")), (2, Some((1, 2, 2))));
    }

    #[test]
    fn revisions_are_part_of_the_state_hash() {
        let mut a = KvState::new(SessionLimits::default());
        a.apply(1, 1, &revisioned(vec![put("k", "v")]));
        let mut b = KvState::new(SessionLimits::default());
        b.apply(1, 1, &revisioned(vec![put("k", "v")]));
        assert_eq!(a.content_hash(), b.content_hash());
        b.apply(2, 1, &revisioned(vec![put("k", "v")]));
        assert_eq!(a.get(b"k"), b.get(b"k"));
        assert_ne!(a.content_hash(), b.content_hash());
    }

    #[test]
    fn the_first_cluster_id_committed_is_the_cluster_s() {
        let mut s = KvState::new(SessionLimits::default());
        let choose = |id| Command {
            cluster_id: Some(crate::command::ClusterIdChoice {
                cluster_id: id,
                bootstrap_id: 5,
            }),
            ..Default::default()
        };
        assert_eq!(s.cluster_id(), 0);
        assert_eq!(s.apply(1, 1, &choose(11)), ApplyOutcome::Applied);
        assert_eq!(s.apply(2, 2, &choose(22)), ApplyOutcome::Applied);
        assert_eq!((s.cluster_id(), s.bootstrap_id()), (11, 5));
        assert!(s.is_empty(), "no key was written");
    }
}
