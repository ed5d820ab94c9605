//! Client sessions: apply each (client_id, seq) write at most once.
//!
//! A client numbers its writes 1, 2, 3, ... and tells the state machine the
//! lowest number it has not yet seen answered (`first_incomplete_seq`). The
//! session remembers which numbers at or above that were applied, so a retry of
//! any in-flight write is recognised, and it forgets everything below it.
//!
//! Sessions are bounded so one-shot CLI clients cannot grow the state forever:
//! a session idle for longer than `ttl_ms` of *log time* (the leader-stamped
//! `timestamp_ms` carried in every command) is dropped, and past
//! `max_sessions` the least recently active is dropped. Both depend only on
//! the log, so every replica drops the same sessions at the same index.
//!
//! A dropped session must never make a retry apply twice (Raft thesis §6.3).
//! Under the current rules (`RULES_STRICT_SESSIONS`): a write from an unknown
//! session whose client has seen an earlier write answered
//! (`first_incomplete_seq > 1`) is refused as `Expired`, without effect; and
//! capacity evicts only sessions idle for at
//! least `min_idle_before_eviction_ms` of log time (log time runs no faster
//! than real time), longer than a client retries one write
//! (`raftkv_client`'s retry window), so a session whose first write may still
//! be retried is never dropped. When every session is younger, a new one is
//! refused (`TooManySessions`, retryable). Commands proposed under the first
//! rules (`RULES_ORIGINAL`, from an older build's log) replay as they applied.

use std::collections::BTreeSet;

use imbl::{HashMap, OrdMap};
use raftkv_proto::internal::SessionState;

/// The first apply rules (see the module comment).
pub const RULES_ORIGINAL: u32 = 0;
/// Unknown sessions' later writes are refused; capacity evicts only idle sessions.
pub const RULES_STRICT_SESSIONS: u32 = 1;
/// Writes count store revisions and keep per-key create/mod revisions and
/// versions (etcd's MVCC metadata; see `state.rs`).
pub const RULES_REVISIONS: u32 = 2;
/// The newest rules this build applies (its log version); a leader proposes
/// under the lowest of its members' (see the replica's `log_version.rs`).
pub const CURRENT_RULES: u32 = RULES_REVISIONS;
/// The test-only entry kind (`Command::test_next_kind`), applied only by
/// builds run with the test hook `RAFTKV_TEST_NEXT_LOG_VERSION`, which stand
/// for the next release in the mixed-version test.
pub const RULES_TEST_NEXT: u32 = CURRENT_RULES + 1;
/// What a member is taken to apply before it is heard from (and what a build
/// from before members reported their log version applies).
pub const RULES_UNREPORTED: u32 = RULES_REVISIONS;

/// Bounds on client sessions.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Sessions idle this long (log time) are forgotten.
    pub ttl_ms: u64,
    /// At most this many sessions are kept.
    pub max_sessions: usize,
    /// At most this many applied-but-unacknowledged sequence numbers per
    /// session; a client with more writes in flight is refused.
    pub max_in_flight_per_session: usize,
    /// A full table evicts only sessions idle at least this long (log time);
    /// must exceed the longest time a client retries one write.
    pub min_idle_before_eviction_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            ttl_ms: 10 * 60 * 1000,
            max_sessions: 100_000,
            max_in_flight_per_session: 10_000,
            min_idle_before_eviction_ms: 2 * 60 * 1000,
        }
    }
}

/// What to do with a write, decided before applying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionVerdict {
    /// New write: apply it.
    Apply,
    /// Already applied (a retry): do not apply again, answer success.
    Duplicate,
    /// The session has too many writes in flight: refuse without applying.
    TooManyInFlight,
    /// The session is unknown and this is not its first write: it was
    /// dropped, and the write may be a retry of one applied before. Refused
    /// without applying; the client must not retry it under this session.
    Expired,
    /// A new session, but the table is full of sessions too recently active
    /// to drop: refused without applying; retry later.
    TooManySessions,
}

#[derive(Clone, Debug, Default)]
struct Session {
    last_active_ms: u64,
    first_incomplete_seq: u64,
    applied_seqs: BTreeSet<u64>,
}

/// The session table. Cloned with the state machine for snapshots; the
/// persistent maps make that clone O(1).
#[derive(Clone, Debug, Default)]
pub(crate) struct Sessions {
    limits: SessionLimits,
    by_client: HashMap<u64, Session>,
    /// (last_active_ms, client_id) of every session, oldest first.
    by_activity: OrdMap<(u64, u64), ()>,
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits) -> Self {
        Sessions {
            limits,
            ..Default::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Every session, for a snapshot (ordered by client id, so the same
    /// table always gives the same bytes).
    pub(crate) fn export(&self) -> Vec<SessionState> {
        let mut states: Vec<SessionState> = self
            .by_client
            .iter()
            .map(|(client_id, s)| SessionState {
                client_id: *client_id,
                last_active_ms: s.last_active_ms,
                first_incomplete_seq: s.first_incomplete_seq,
                applied_seqs: s.applied_seqs.iter().copied().collect(),
            })
            .collect();
        states.sort_by_key(|s| s.client_id);
        states
    }

    /// Adds a session read from a snapshot.
    pub(crate) fn import(&mut self, state: SessionState) {
        self.by_activity
            .insert((state.last_active_ms, state.client_id), ());
        self.by_client.insert(
            state.client_id,
            Session {
                last_active_ms: state.last_active_ms,
                first_incomplete_seq: state.first_incomplete_seq,
                applied_seqs: state.applied_seqs.into_iter().collect(),
            },
        );
    }

    /// Decides whether write `seq` of `client_id` is new, and records it as
    /// applied if so. `now_ms` is log time (monotonic across the log).
    pub(crate) fn admit(
        &mut self,
        client_id: u64,
        seq: u64,
        first_incomplete_seq: u64,
        now_ms: u64,
        rules: u32,
    ) -> SessionVerdict {
        self.expire(now_ms);
        let limits = self.limits;
        if rules >= RULES_STRICT_SESSIONS && !self.by_client.contains_key(&client_id) {
            // The client saw write `first_incomplete_seq - 1` answered, so this
            // session existed. (A new session's first writes may apply in any
            // order, but all say 1: none of them was answered yet.)
            if first_incomplete_seq > 1 {
                return SessionVerdict::Expired;
            }
            if self.by_client.len() >= limits.max_sessions && !self.evict_idle(now_ms) {
                return SessionVerdict::TooManySessions;
            }
        }
        let session = self.by_client.entry(client_id).or_default();
        let previous_activity = (session.last_active_ms, client_id);
        // Forget what the client says it has seen answered.
        if first_incomplete_seq > session.first_incomplete_seq {
            session.first_incomplete_seq = first_incomplete_seq;
            session.applied_seqs = session.applied_seqs.split_off(&first_incomplete_seq);
        }
        let verdict = if seq < session.first_incomplete_seq || session.applied_seqs.contains(&seq) {
            SessionVerdict::Duplicate
        } else if session.applied_seqs.len() >= limits.max_in_flight_per_session {
            SessionVerdict::TooManyInFlight
        } else {
            session.applied_seqs.insert(seq);
            SessionVerdict::Apply
        };
        session.last_active_ms = now_ms;
        self.by_activity.remove(&previous_activity);
        self.by_activity.insert((now_ms, client_id), ());
        self.evict_over_capacity();
        verdict
    }

    fn expire(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.limits.ttl_ms);
        while let Some(&((active_ms, client_id), ())) = self.by_activity.get_min() {
            if active_ms >= cutoff {
                break;
            }
            self.by_activity.remove(&(active_ms, client_id));
            self.by_client.remove(&client_id);
        }
    }

    /// Drops the least recently active session if it has been idle long
    /// enough that no write of it can still be retried; false if none has.
    fn evict_idle(&mut self, now_ms: u64) -> bool {
        let Some(&(oldest, ())) = self.by_activity.get_min() else {
            return false;
        };
        if now_ms.saturating_sub(oldest.0) < self.limits.min_idle_before_eviction_ms {
            return false;
        }
        self.by_activity.remove(&oldest);
        self.by_client.remove(&oldest.1);
        true
    }

    fn evict_over_capacity(&mut self) {
        while self.by_client.len() > self.limits.max_sessions {
            let Some(&(oldest, ())) = self.by_activity.get_min() else {
                break;
            };
            self.by_activity.remove(&oldest);
            self.by_client.remove(&oldest.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ttl_ms: u64, max_sessions: usize, in_flight: usize) -> SessionLimits {
        SessionLimits {
            ttl_ms,
            max_sessions,
            max_in_flight_per_session: in_flight,
            min_idle_before_eviction_ms: 1000,
        }
    }

    #[test]
    fn a_retry_is_recognised_and_new_writes_are_applied() {
        let mut s = Sessions::new(SessionLimits::default());
        assert_eq!(s.admit(1, 1, 1, 10, RULES_ORIGINAL), SessionVerdict::Apply);
        assert_eq!(s.admit(1, 2, 1, 11, RULES_ORIGINAL), SessionVerdict::Apply);
        assert_eq!(
            s.admit(1, 1, 1, 12, RULES_ORIGINAL),
            SessionVerdict::Duplicate
        );
        assert_eq!(
            s.admit(1, 2, 1, 12, RULES_ORIGINAL),
            SessionVerdict::Duplicate
        );
        assert_eq!(
            s.admit(2, 1, 1, 12, RULES_ORIGINAL),
            SessionVerdict::Apply,
            "other client"
        );
    }

    #[test]
    fn out_of_order_concurrent_writes_apply_once_each() {
        let mut s = Sessions::new(SessionLimits::default());
        assert_eq!(s.admit(1, 3, 1, 1, RULES_ORIGINAL), SessionVerdict::Apply);
        assert_eq!(s.admit(1, 1, 1, 1, RULES_ORIGINAL), SessionVerdict::Apply);
        assert_eq!(s.admit(1, 2, 1, 1, RULES_ORIGINAL), SessionVerdict::Apply);
        assert_eq!(
            s.admit(1, 3, 1, 1, RULES_ORIGINAL),
            SessionVerdict::Duplicate
        );
    }

    #[test]
    fn acknowledged_sequence_numbers_are_forgotten() {
        let mut s = Sessions::new(SessionLimits::default());
        for seq in 1..=100 {
            s.admit(1, seq, seq, 1, RULES_ORIGINAL);
        }
        let session = &s.by_client[&1];
        assert_eq!(session.applied_seqs.len(), 1, "only the newest is kept");
        assert_eq!(
            s.admit(1, 50, 100, 2, RULES_ORIGINAL),
            SessionVerdict::Duplicate
        );
    }

    #[test]
    fn too_many_in_flight_is_refused_without_applying() {
        let mut s = Sessions::new(limits(1000, 10, 2));
        assert_eq!(s.admit(1, 1, 1, 1, RULES_ORIGINAL), SessionVerdict::Apply);
        assert_eq!(s.admit(1, 2, 1, 1, RULES_ORIGINAL), SessionVerdict::Apply);
        assert_eq!(
            s.admit(1, 3, 1, 1, RULES_ORIGINAL),
            SessionVerdict::TooManyInFlight
        );
        // Once the client acknowledges, it may go on.
        assert_eq!(s.admit(1, 3, 2, 1, RULES_ORIGINAL), SessionVerdict::Apply);
    }

    #[test]
    fn idle_sessions_expire_by_log_time() {
        let mut s = Sessions::new(limits(100, 10, 10));
        s.admit(1, 1, 1, 0, RULES_ORIGINAL);
        s.admit(2, 1, 1, 50, RULES_ORIGINAL);
        s.admit(3, 1, 1, 120, RULES_ORIGINAL); // client 1 is now 120 ms idle > 100
        assert_eq!(s.len(), 2);
        assert!(!s.by_client.contains_key(&1));
        assert!(s.by_client.contains_key(&2));
    }

    #[test]
    fn session_count_is_bounded_evicting_least_recent() {
        let mut s = Sessions::new(limits(u64::MAX, 3, 10));
        for client in 1..=5 {
            s.admit(client, 1, 1, client, RULES_ORIGINAL);
        }
        assert_eq!(s.len(), 3);
        let mut kept: Vec<u64> = s.by_client.keys().copied().collect();
        kept.sort();
        assert_eq!(kept, vec![3, 4, 5]);
    }

    #[test]
    fn same_inputs_give_same_table_on_every_replica() {
        let run = || {
            let mut s = Sessions::new(limits(30, 4, 8));
            let mut verdicts = Vec::new();
            for i in 0..200u64 {
                verdicts.push(s.admit(i % 7, i % 5 + 1, 1, i, RULES_ORIGINAL));
            }
            (verdicts, s.by_activity.keys().copied().collect::<Vec<_>>())
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn an_unknown_session_s_later_write_is_refused_as_expired() {
        let mut s = Sessions::new(limits(100, 10, 10));
        let strict = RULES_STRICT_SESSIONS;
        assert_eq!(s.admit(9, 5, 5, 1, strict), SessionVerdict::Expired);
        // A new session's first writes, in any order.
        assert_eq!(s.admit(7, 2, 1, 1, strict), SessionVerdict::Apply);
        assert_eq!(s.admit(7, 1, 1, 1, strict), SessionVerdict::Apply);
        assert_eq!(s.admit(7, 3, 2, 2, strict), SessionVerdict::Apply);
        // Idle past the TTL: dropped; its next write is refused, not applied.
        s.admit(8, 1, 1, 500, strict);
        assert_eq!(s.admit(7, 4, 4, 501, strict), SessionVerdict::Expired);
        assert_eq!(s.len(), 1, "a refused write creates no session");
        // The first rules (an older build's log) replay as they applied.
        assert_eq!(s.admit(7, 4, 4, 502, RULES_ORIGINAL), SessionVerdict::Apply);
    }

    #[test]
    fn a_full_table_drops_only_sessions_idle_past_the_retry_window() {
        let mut s = Sessions::new(limits(u64::MAX, 2, 10));
        let strict = RULES_STRICT_SESSIONS;
        assert_eq!(s.admit(1, 1, 1, 0, strict), SessionVerdict::Apply);
        assert_eq!(s.admit(2, 1, 1, 10, strict), SessionVerdict::Apply);
        // Both were active within the window (1000 ms): a third is refused.
        assert_eq!(
            s.admit(3, 1, 1, 900, strict),
            SessionVerdict::TooManySessions
        );
        assert_eq!(s.len(), 2);
        // A retry of session 1's first write is still recognised.
        assert_eq!(s.admit(1, 1, 1, 950, strict), SessionVerdict::Duplicate);
        // Once session 2 has been idle past the window it makes room.
        assert_eq!(s.admit(3, 1, 1, 1_960, strict), SessionVerdict::Apply);
        assert!(s.by_client.contains_key(&1) && !s.by_client.contains_key(&2));
    }
}
