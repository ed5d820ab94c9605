//! Watchers: what an etcd watch client sees, checked against the committed
//! history.
//!
//! Each watcher follows one key range from a start revision (revision 1, or
//! the revision after its first node's current one), attached to one node:
//! after every step it reads the changes in its range at or after its next
//! revision from that node's *applied* state (`KvState::changes_since`, what
//! a member's watch stream is fed from), appends them, and moves its next
//! revision past the last. It moves to another node, resuming from its next
//! revision exactly as a real client does, when its node is down, retired or
//! removed, soon after when its node knows no leader (etcd's require-leader
//! streams), at random (every few seconds), and with even odds whenever a
//! node wins a term; it may land on a node far behind, and waits there. A
//! paused node answers nothing. If a node no longer serves its next revision
//! (the history window was trimmed: 10,000 revisions, more than a run
//! writes), the watcher records the gap and goes on from the oldest revision
//! served.
//!
//! At the end, on a member that has applied everything (the members have
//! converged): the watcher catches up there, its events are in revision
//! order with no (revision, key) twice, and from its start revision (since
//! its last gap) they are exactly — revision, key, record after, record
//! before — the changes the committed log made to its range
//! (`changes_since` on that member). So every watcher saw each committed
//! event once and in order, across leader changes, crashes, snapshots
//! installed, and moves between nodes.

use std::collections::BTreeSet;

use bytes::Bytes;
use raftkv_kv::{Event, KeyRange, RevisionError};
use raftkv_replica::{NodeStatus, Role};
use rand::rngs::StdRng;
use rand::Rng;

use super::World;

/// A watcher moves to another node about this often (in steps), besides
/// when it must.
const MOVE_EVERY_STEPS: u32 = 3_000;
/// A watcher on a node that knows no leader moves about this soon (in
/// steps): clientv3's `WithRequireLeader` streams end after three election
/// timeouts without a leader.
const LEADERLESS_MOVE_STEPS: u32 = 900;

pub(super) struct Watcher {
    name: &'static str,
    range: KeyRange,
    /// True time it starts watching.
    begins_at_us: u64,
    /// From revision 1 (else from the revision after its node's current).
    from_first: bool,
    /// The node it reads from (0: none).
    node: u64,
    started: bool,
    /// The revision it has followed every change from since (its start,
    /// or the end of its last gap).
    start: u64,
    next: u64,
    /// Its node's revision when it last read there (nothing to read until
    /// that moves; 0 after a move).
    scanned: u64,
    events: Vec<Event>,
    gaps: u32,
}

/// The run's watchers: the map's keys and every key from revision 1, and
/// the lease keys from a moment drawn from `rng`.
pub(super) fn initial(rng: &mut StdRng) -> Vec<Watcher> {
    let make = |name: &'static str, range: KeyRange, begins_at_us: u64, from_first: bool| Watcher {
        name,
        range,
        begins_at_us,
        from_first,
        node: 0,
        started: false,
        start: 0,
        next: 0,
        scanned: 0,
        events: Vec::new(),
        gaps: 0,
    };
    let lease_keys_from = rng.gen_range(1_000_000..10_000_000);
    vec![
        make(
            "the map's keys",
            KeyRange::Between(Bytes::from_static(b"k"), Bytes::from_static(b"l")),
            0,
            true,
        ),
        make(
            "every key",
            KeyRange::From(Bytes::from_static(b"\0")),
            0,
            true,
        ),
        make(
            "the lease keys",
            KeyRange::Between(Bytes::from_static(b"l"), Bytes::from_static(b"m")),
            lease_keys_from,
            false,
        ),
    ]
}

fn describe(event: &Event) -> String {
    let key = String::from_utf8_lossy(&event.key);
    match &event.record {
        Some(record) => format!(
            "put {key}={} at revision {}",
            String::from_utf8_lossy(&record.value),
            event.revision
        ),
        None => format!("delete {key} at revision {}", event.revision),
    }
}

impl World {
    /// After every step: watchers move if they must (or choose to), and
    /// read what their node applied since.
    pub(super) fn poll_watchers(&mut self) {
        let new_leader = self.won.len() != self.watch_won_seen;
        self.watch_won_seen = self.won.len();
        for w in 0..self.watchers.len() {
            if self.now_us < self.watchers[w].begins_at_us {
                continue;
            }
            let node = self.watchers[w].node;
            let status = self.watch_status(node);
            let leaderless = status.as_ref().is_some_and(|s| s.leader_id == 0);
            let moves = status.is_none()
                || (new_leader && self.watch_rng.gen_bool(0.5))
                || (leaderless && self.watch_rng.gen_ratio(1, LEADERLESS_MOVE_STEPS))
                || self.watch_rng.gen_ratio(1, MOVE_EVERY_STEPS);
            if moves {
                self.move_watcher(w, None);
            }
            self.pull_watcher(w);
        }
    }

    /// Node `id`'s status if it can serve a watch: running, not retired,
    /// not removed.
    fn watch_status(&self, id: u64) -> Option<NodeStatus> {
        let node = self.nodes.get((id as usize).wrapping_sub(1))?;
        if node.retired {
            return None;
        }
        let status = node.running.as_ref()?.replica.status();
        (status.role != Role::Removed).then_some(status)
    }

    fn serves_watches(&self, id: u64) -> bool {
        self.watch_status(id).is_some()
    }

    /// Attaches watcher `w` to node `to`, or to a node drawn at random; it
    /// resumes from its next revision.
    fn move_watcher(&mut self, w: usize, to: Option<u64>) {
        let to = match to {
            Some(id) => id,
            None => {
                let candidates: Vec<u64> = self
                    .nodes
                    .iter()
                    .map(|node| node.id)
                    .filter(|id| self.serves_watches(*id))
                    .collect();
                if candidates.is_empty() {
                    self.watchers[w].node = 0;
                    return;
                }
                candidates[self.watch_rng.gen_range(0..candidates.len())]
            }
        };
        if !self.watchers[w].started {
            let next = if self.watchers[w].from_first {
                1
            } else {
                self.nodes[(to - 1) as usize]
                    .running
                    .as_ref()
                    .map_or(1, |running| running.replica.kv().revision() + 1)
            };
            let watcher = &mut self.watchers[w];
            watcher.started = true;
            watcher.start = next;
            watcher.next = next;
        }
        let watcher = &mut self.watchers[w];
        watcher.scanned = 0;
        if watcher.node == to {
            return;
        }
        watcher.node = to;
        let (name, next) = (watcher.name, watcher.next);
        self.trace.note(self.now_us, || {
            format!("watcher of {name} resumes at node {to} from revision {next}")
        });
    }

    /// Reads what watcher `w`'s node applied in its range since its next
    /// revision.
    fn pull_watcher(&mut self, w: usize) {
        let watcher = &self.watchers[w];
        if watcher.node == 0 {
            return;
        }
        let node = &self.nodes[(watcher.node - 1) as usize];
        if node.paused_until.is_some() {
            return;
        }
        let Some(running) = &node.running else {
            return;
        };
        let (result, revision) = {
            let kv = running.replica.kv();
            let revision = kv.revision();
            if revision < watcher.next || revision <= watcher.scanned {
                // Nothing new since it last read here: most steps.
                return;
            }
            let changes = kv.changes_since(&watcher.range, watcher.next);
            (changes, revision)
        };
        let now = self.now_us;
        let watcher = &mut self.watchers[w];
        watcher.scanned = revision;
        match result {
            Ok(events) => {
                if let Some(last) = events.last() {
                    watcher.next = last.revision + 1;
                }
                watcher.events.extend(events);
            }
            Err(RevisionError::Compacted { compact_revision }) => {
                watcher.gaps += 1;
                watcher.start = compact_revision;
                watcher.next = compact_revision;
                let (name, node) = (watcher.name, watcher.node);
                self.trace.note(now, || {
                    format!(
                        "watcher of {name}: node {node} no longer serves its revision; it goes \
                         on from revision {compact_revision}"
                    )
                });
            }
            // Not answered for a revision past the node's (nothing yet).
            Err(RevisionError::Future { .. }) => {}
        }
    }

    /// The end: every watcher catches up at `reference` (a member that has
    /// applied everything) and must have seen exactly the committed changes
    /// to its range, each once, in order.
    pub(super) fn check_watchers(&mut self, reference: usize) {
        let reference_id = self.nodes[reference].id;
        for w in 0..self.watchers.len() {
            self.move_watcher(w, Some(reference_id));
            self.pull_watcher(w);
            let watcher = &self.watchers[w];
            let mut problems = Vec::new();
            let mut seen = BTreeSet::new();
            let mut last = 0;
            for event in &watcher.events {
                if event.revision < last {
                    problems.push(format!("{} after revision {last}", describe(event)));
                }
                if !seen.insert((event.revision, event.key.clone())) {
                    problems.push(format!("{} twice", describe(event)));
                }
                last = event.revision;
            }
            let running = self.nodes[reference]
                .running
                .as_ref()
                .expect("a running member");
            let expected = running
                .replica
                .kv()
                .changes_since(&watcher.range, watcher.start);
            let got: Vec<&Event> = watcher
                .events
                .iter()
                .filter(|e| e.revision >= watcher.start)
                .collect();
            // If the window no longer reaches back to its start, only the
            // order is checked.
            if let Ok(expected) = &expected {
                let same =
                    got.len() == expected.len() && got.iter().zip(expected).all(|(a, b)| **a == *b);
                if !same {
                    let at = got
                        .iter()
                        .zip(expected)
                        .position(|(a, b)| **a != *b)
                        .unwrap_or(got.len().min(expected.len()));
                    let show =
                        |e: Option<&Event>| e.map_or_else(|| "nothing".to_string(), describe);
                    problems.push(format!(
                        "from revision {} it saw {} events where the committed history holds \
                         {}; the first difference, event {at}: it saw {}, the history holds {}",
                        watcher.start,
                        got.len(),
                        expected.len(),
                        show(got.get(at).copied()),
                        show(expected.get(at))
                    ));
                }
            }
            problems.truncate(3);
            let (name, start, count, gaps) = (watcher.name, watcher.start, got.len(), watcher.gaps);
            let checked = expected.is_ok();
            self.trace.note(self.now_us, || {
                format!(
                    "watcher of {name}: {count} events from revision {start}, {gaps} gaps; \
                     compared with node {reference_id}'s history: {checked}"
                )
            });
            if !problems.is_empty() {
                self.violation(format!(
                    "watcher of {name} (at node {reference_id} in the end, {gaps} gaps): {}",
                    problems.join("; ")
                ));
            }
        }
    }
}
