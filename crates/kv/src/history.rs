//! The history window: every change since the compacted revision, in
//! revision order, so a watcher can start from a past revision and a range
//! can be read as of one.
//!
//! Each change keeps the key's record before it (`prev`): reading the map as
//! of revision R is the current map with every change after R undone, and a
//! watcher that asks for the previous value gets it without a second index.
//! The record a change left is not kept twice: it is the `prev` of the key's
//! next change in the window, or the map's record when there is none, and
//! is put back together when events are read (`KvState::changes_since`).
//! So a put moves the value it replaces into the window and allocates
//! nothing else for it; what the window costs is the old values it keeps
//! alive, counted in `bytes`.
//!
//! Two bounds: the compacted revision, chosen through the log (a `Compact`
//! request, the same on every replica), and a memory bound of this node
//! (`HistoryLimits`): when the window outgrows it, the oldest revisions are
//! dropped here only, and requests for them are answered as compacted.

use std::cmp::Ordering;

use bytes::Bytes;
use imbl::Vector;

use crate::state::Record;

/// Memory bounds of the history window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Revisions kept at most.
    pub max_revisions: u64,
    /// Bytes of keys and values (new and previous) kept at most.
    pub max_bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_revisions: 10_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One change of one key, as a watcher receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub key: Bytes,
    /// The key's record after the change; `None`: deleted.
    pub record: Option<Record>,
    /// The key's record before it; `None`: it did not exist.
    pub prev: Option<Record>,
}

/// One change of one key, as the window keeps it (the record after it is
/// found elsewhere: see the module's comment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) revision: u64,
    pub(crate) key: Bytes,
    /// The change deleted the key.
    pub(crate) deleted: bool,
    /// The key's record before it; `None`: it did not exist.
    pub(crate) prev: Option<Record>,
}

impl Change {
    fn bytes(&self) -> u64 {
        let prev = self.prev.as_ref().map_or(0, |r| r.value.len());
        (self.key.len() + prev + 64) as u64
    }
}

/// Why a revision cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionError {
    /// Older than the history kept: `compact_revision` is the oldest one
    /// still served.
    Compacted { compact_revision: u64 },
    /// Newer than the store's revision.
    Future { current: u64 },
}

impl std::fmt::Display for RevisionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // etcd's texts: clients match on them.
        match self {
            RevisionError::Compacted { .. } => {
                write!(f, "mvcc: required revision has been compacted")
            }
            RevisionError::Future { .. } => {
                write!(f, "mvcc: required revision is a future revision")
            }
        }
    }
}

/// `Clone` is O(1) (a persistent vector), as the state machine's is.
#[derive(Clone, Debug)]
pub(crate) struct History {
    events: Vector<Change>,
    bytes: u64,
    /// Every change at or after this revision is in `events`; older ones
    /// are gone (compacted through the log, or dropped for memory).
    complete_from: u64,
    limits: HistoryLimits,
}

impl History {
    pub(crate) fn new(limits: HistoryLimits) -> History {
        History {
            events: Vector::new(),
            bytes: 0,
            complete_from: 1,
            limits,
        }
    }

    pub(crate) fn record(&mut self, change: Change, current: u64) {
        self.bytes += change.bytes();
        self.events.push_back(change);
        self.enforce_limits(current);
    }

    /// The oldest revision served: changes at it and after are all here.
    pub(crate) fn complete_from(&self) -> u64 {
        self.complete_from
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn events(&self) -> impl Iterator<Item = &Change> {
        self.events.iter()
    }

    /// Drops the changes before `revision` (they can no longer be asked
    /// for).
    pub(crate) fn compact(&mut self, revision: u64) {
        while let Some(first) = self.events.front() {
            if first.revision >= revision {
                break;
            }
            self.bytes -= first.bytes();
            self.events.pop_front();
        }
        self.complete_from = self.complete_from.max(revision);
    }

    /// Keeps the window within its limits, dropping whole revisions from
    /// the oldest; the newest revision is always kept.
    fn enforce_limits(&mut self, current: u64) {
        let floor = current.saturating_sub(self.limits.max_revisions.saturating_sub(1));
        if floor > self.complete_from {
            self.compact(floor);
        }
        while self.bytes > self.limits.max_bytes {
            let Some(oldest) = self.events.front().map(|e| e.revision) else {
                break;
            };
            if oldest >= current {
                break;
            }
            self.compact(oldest + 1);
        }
    }

    /// Checks that `revision` can be served with the store at `current`.
    pub(crate) fn check(&self, revision: u64, current: u64) -> Result<(), RevisionError> {
        if revision > current {
            return Err(RevisionError::Future { current });
        }
        if revision < self.complete_from {
            return Err(RevisionError::Compacted {
                compact_revision: self.complete_from,
            });
        }
        Ok(())
    }

    /// Index of the first event at or after `revision`.
    fn first_at(&self, revision: u64) -> usize {
        let search = self.events.binary_search_by(|e| {
            if e.revision < revision {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        });
        search.unwrap_or_else(|index| index)
    }

    /// The changes at or after `from`, oldest first (O(log n) to find).
    pub(crate) fn since(&self, from: u64) -> Vector<Change> {
        self.events.skip(self.first_at(from))
    }

    pub(crate) fn set_limits(&mut self, limits: HistoryLimits) {
        self.limits = limits;
    }

    /// Restores a window from a snapshot.
    pub(crate) fn restore(&mut self, complete_from: u64, events: Vec<Change>) {
        self.events.clear();
        self.bytes = 0;
        for event in events {
            self.bytes += event.bytes();
            self.events.push_back(event);
        }
        self.complete_from = complete_from.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Op};
    use crate::state::{KeyRange, KvState};
    use crate::SessionLimits;

    fn op(key: &str, value: Option<&str>) -> Op {
        Op {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: value.map_or_else(Bytes::new, |v| Bytes::copy_from_slice(v.as_bytes())),
            delete: value.is_none(),
        }
    }

    /// Applies one command per element: a list of (key, Some(value) | None
    /// for a delete).
    fn store(writes: &[&[(&str, Option<&str>)]]) -> KvState {
        let mut s = KvState::new(SessionLimits::default());
        for (i, ops) in writes.iter().enumerate() {
            let cmd = Command {
                rules: crate::CURRENT_RULES,
                ops: ops.iter().map(|(k, v)| op(k, *v)).collect(),
                ..Default::default()
            };
            s.apply(i as u64 + 1, 1, &cmd);
        }
        s
    }

    fn all() -> KeyRange {
        KeyRange::From(Bytes::from_static(b"\0"))
    }

    fn at(s: &KvState, revision: u64) -> Result<Vec<(String, String)>, RevisionError> {
        let (pairs, _) = s.range_at(&all(), revision, 0)?;
        Ok(pairs
            .into_iter()
            .map(|(k, r)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(r.value.to_vec()).unwrap(),
                )
            })
            .collect())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_range_at_a_past_revision_sees_the_store_as_it_was() {
        let s = store(&[
            &[("a", Some("1"))],                   // 2
            &[("b", Some("1")), ("a", Some("2"))], // 3
            &[("a", None)],                        // 4
            &[("c", Some("1")), ("b", Some("2"))], // 5
        ]);
        assert_eq!(s.revision(), 5);
        assert_eq!(at(&s, 1).unwrap(), pairs(&[]));
        assert_eq!(at(&s, 2).unwrap(), pairs(&[("a", "1")]));
        assert_eq!(at(&s, 3).unwrap(), pairs(&[("a", "2"), ("b", "1")]));
        assert_eq!(at(&s, 4).unwrap(), pairs(&[("b", "1")]));
        assert_eq!(at(&s, 5).unwrap(), pairs(&[("b", "2"), ("c", "1")]));
        assert_eq!(at(&s, 0).unwrap(), at(&s, 5).unwrap(), "0: the current one");
        assert_eq!(at(&s, 6), Err(RevisionError::Future { current: 5 }));
        // The records as they were, revisions included.
        let (then, _) = s
            .range_at(&KeyRange::Key(Bytes::from_static(b"a")), 3, 0)
            .unwrap();
        let a = &then[0].1;
        assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
        // A limit cuts in key order and says more follow.
        let (first, more) = s.range_at(&all(), 3, 1).unwrap();
        assert_eq!((first.len(), more), (1, true));
    }

    #[test]
    fn changes_come_in_revision_order_with_the_record_before_them() {
        let s = store(&[
            &[("w/a", Some("1"))],                     // 2
            &[("x", Some("1"))],                       // 3
            &[("w/b", Some("1")), ("w/a", Some("2"))], // 4
            &[("w/a", None)],                          // 5
        ]);
        let prefix = KeyRange::Between(Bytes::from_static(b"w/"), Bytes::from_static(b"w0"));
        let events = s.changes_since(&prefix, 3).unwrap();
        fn value(r: &Option<Record>) -> Option<String> {
            r.as_ref()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        }
        let seen: Vec<(u64, String, Option<String>, Option<String>)> = events
            .iter()
            .map(|e| {
                (
                    e.revision,
                    String::from_utf8(e.key.to_vec()).unwrap(),
                    value(&e.record),
                    value(&e.prev),
                )
            })
            .collect();
        let some = |v: &str| Some(v.to_string());
        assert_eq!(
            seen,
            vec![
                (4, "w/b".to_string(), some("1"), None),
                (4, "w/a".to_string(), some("2"), some("1")),
                (5, "w/a".to_string(), None, some("2")),
            ]
        );
        assert!(
            s.changes_since(&prefix, 6).unwrap().is_empty(),
            "the next revision: nothing yet"
        );
    }

    #[test]
    fn compaction_keeps_the_compacted_revision_and_refuses_older_ones() {
        let mut s = store(&[
            &[("k", Some("1"))], // 2
            &[("k", Some("2"))], // 3
            &[("k", Some("3"))], // 4
        ]);
        assert_eq!(s.compact(5), Err(RevisionError::Future { current: 4 }));
        s.compact(3).unwrap();
        assert_eq!(s.compacted_revision(), 3);
        assert_eq!(
            at(&s, 3).unwrap(),
            pairs(&[("k", "2")]),
            "reading at it works"
        );
        let compacted = RevisionError::Compacted {
            compact_revision: 3,
        };
        assert_eq!(at(&s, 2), Err(compacted));
        assert_eq!(s.changes_since(&all(), 2).map(|e| e.len()), Err(compacted));
        assert_eq!(s.changes_since(&all(), 3).unwrap().len(), 2);
        assert_eq!(s.compact(3), Err(compacted), "compacting again to it");
        assert_eq!(
            compacted.to_string(),
            "mvcc: required revision has been compacted"
        );
        // Through the log, as a command.
        let cmd = Command {
            rules: crate::CURRENT_RULES,
            compact_revision: 2,
            ..Default::default()
        };
        assert_eq!(
            s.apply(4, 1, &cmd),
            crate::ApplyOutcome::Refused("mvcc: required revision has been compacted".into())
        );
    }

    #[test]
    fn the_window_stays_within_its_memory_bounds() {
        let mut s = KvState::new(SessionLimits::default());
        s.set_history_limits(HistoryLimits {
            max_revisions: 3,
            max_bytes: u64::MAX,
        });
        for i in 1..=10u64 {
            let cmd = Command {
                rules: crate::CURRENT_RULES,
                ops: vec![op("k", Some(&i.to_string()))],
                ..Default::default()
            };
            s.apply(i, 1, &cmd);
        }
        assert_eq!(s.revision(), 11);
        assert_eq!(s.oldest_served_revision(), 9, "three revisions kept");
        assert_eq!(s.history_size().1, 3);
        assert!(matches!(at(&s, 8), Err(RevisionError::Compacted { .. })));
        assert_eq!(at(&s, 9).unwrap(), pairs(&[("k", "8")]));
        assert_eq!(
            s.compacted_revision(),
            0,
            "nothing was compacted through the log"
        );

        s.set_history_limits(HistoryLimits {
            max_revisions: 1000,
            max_bytes: 1000,
        });
        let big = "v".repeat(400);
        for i in 11..=20u64 {
            let cmd = Command {
                rules: crate::CURRENT_RULES,
                ops: vec![op("k", Some(&big))],
                ..Default::default()
            };
            s.apply(i, 1, &cmd);
        }
        assert!(s.history_size().0 <= 1000, "{:?}", s.history_size());
        assert!(s.history_size().1 >= 1, "the newest revision is kept");
        assert!(s.oldest_served_revision() > 12);
    }

    #[test]
    fn the_history_survives_a_snapshot() {
        let mut s = store(&[
            &[("a", Some("1"))],
            &[("a", Some("2")), ("b", Some("1"))],
            &[("a", None)],
            &[("c", Some("1"))],
        ]);
        s.compact(3).unwrap();
        let restored = crate::snapshot::round_trip(&s);
        assert_eq!(restored.content_hash(), s.content_hash());
        assert_eq!(restored.compacted_revision(), 3);
        assert_eq!(restored.oldest_served_revision(), 3);
        for revision in 3..=5 {
            assert_eq!(at(&restored, revision), at(&s, revision), "at {revision}");
        }
        assert_eq!(
            restored.changes_since(&all(), 3).unwrap(),
            s.changes_since(&all(), 3).unwrap()
        );
    }
}
