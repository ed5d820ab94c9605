//! Linearizable reads by ReadIndex, batched: every read that arrives while a
//! ReadIndex round is in flight waits for the next round, so any number of
//! concurrent reads costs one heartbeat round trip per round.
//!
//! A round is (ctx, waiters). raft answers with a `ReadState` carrying the
//! ctx and the commit index; once the state machine has applied that index,
//! every waiter of the round may read. raft-rs silently drops a ReadIndex
//! (no quorum answer, or a leader that has not committed in its term yet), so
//! when the newest round has gone unanswered for `reissue_after`, another
//! round is started. Old rounds stay: an answer to any round also answers
//! every round issued before it (its index was confirmed after their reads
//! arrived), which is how raft-rs itself releases pending reads. So a slow
//! quorum delays reads but can never starve them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ReplicaError;

/// A waiting read, answered with how long it queued before the node took it
/// (for the slow-request log).
pub(crate) type ReadReply = oneshot::Sender<Result<Duration, ReplicaError>>;
type Reply = (ReadReply, Duration);

/// Rounds kept in flight at most; past it the oldest two are merged.
const MAX_ROUNDS_IN_FLIGHT: usize = 64;

struct Round {
    ctx: u64,
    issued_at: Instant,
    /// `clock::boot_time()` when issued (what a lease is measured from).
    issued_boot: Duration,
    waiters: Vec<Reply>,
}

pub(crate) struct ReadBatcher {
    next_ctx: u64,
    /// Reads waiting for a round to start.
    queued: Vec<Reply>,
    /// Rounds issued and not yet answered, oldest first.
    in_flight: VecDeque<Round>,
    /// Rounds answered, waiting for apply to reach their index (ascending).
    answered: VecDeque<(u64, Vec<Reply>)>,
    reissue_after: Duration,
}

impl ReadBatcher {
    pub(crate) fn new(reissue_after: Duration, first_ctx: u64) -> Self {
        ReadBatcher {
            next_ctx: first_ctx,
            queued: Vec::new(),
            in_flight: VecDeque::new(),
            answered: VecDeque::new(),
            reissue_after,
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.queued.len()
            + self
                .in_flight
                .iter()
                .map(|r| r.waiters.len())
                .sum::<usize>()
            + self.answered.iter().map(|(_, w)| w.len()).sum::<usize>()
    }

    /// A read that waited `queued_for` before the node took it.
    pub(crate) fn queue(&mut self, reply: ReadReply, queued_for: Duration) {
        self.queued.push((reply, queued_for));
    }

    /// Returns the ctx of a round to issue now, if one should start: reads
    /// are queued and no round is in flight, or the newest round in flight
    /// is overdue (then a new round is issued even if no read is queued).
    pub(crate) fn round_to_issue(&mut self, now: Instant, boot: Duration) -> Option<Vec<u8>> {
        let newest_overdue = self
            .in_flight
            .back()
            .is_some_and(|r| now.duration_since(r.issued_at) >= self.reissue_after);
        let start = if self.in_flight.is_empty() {
            !self.queued.is_empty()
        } else {
            newest_overdue
        };
        if !start {
            return None;
        }
        if self.in_flight.len() >= MAX_ROUNDS_IN_FLIGHT {
            let oldest = self.in_flight.pop_front().expect("non-empty");
            self.in_flight
                .front_mut()
                .expect("limit is above one")
                .waiters
                .extend(oldest.waiters);
        }
        self.next_ctx = self.next_ctx.wrapping_add(1);
        let ctx = self.next_ctx;
        self.in_flight.push_back(Round {
            ctx,
            issued_at: now,
            issued_boot: boot,
            waiters: std::mem::take(&mut self.queued),
        });
        Some(ctx.to_be_bytes().to_vec())
    }

    /// raft answered the round `ctx`: it and every older round may proceed
    /// once `index` is applied.
    /// Returns when (boot clock) the answered round was issued.
    pub(crate) fn on_read_state(&mut self, ctx: &[u8], index: u64) -> Option<Duration> {
        let ctx = u64::from_be_bytes(<[u8; 8]>::try_from(ctx).ok()?);
        let position = self.in_flight.iter().position(|r| r.ctx == ctx)?;
        let issued_at = self.in_flight[position].issued_boot;
        let waiters: Vec<Reply> = self
            .in_flight
            .drain(..=position)
            .flat_map(|r| r.waiters)
            .collect();
        let at = self.answered.partition_point(|(i, _)| *i <= index);
        self.answered.insert(at, (index, waiters));
        Some(issued_at)
    }

    /// Releases every read whose index is applied.
    pub(crate) fn on_applied(&mut self, applied_index: u64) {
        while self
            .answered
            .front()
            .is_some_and(|(index, _)| *index <= applied_index)
        {
            let (_, waiters) = self.answered.pop_front().expect("checked above");
            for (reply, queued_for) in waiters {
                let _ = reply.send(Ok(queued_for));
            }
        }
    }

    /// Fails every read (leadership lost, node stopping).
    pub(crate) fn fail_all(&mut self, error: &ReplicaError) {
        let rounds = self.in_flight.drain(..).map(|r| r.waiters);
        let answered = self.answered.drain(..).map(|(_, w)| w);
        let queued = std::iter::once(std::mem::take(&mut self.queued));
        for waiters in rounds.chain(answered).chain(queued) {
            for (reply, _) in waiters {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (ReadReply, oneshot::Receiver<Result<Duration, ReplicaError>>) {
        oneshot::channel()
    }

    #[test]
    fn reads_arriving_together_share_one_round() {
        let mut b = ReadBatcher::new(Duration::from_secs(1), 0);
        let now = Instant::now();
        let (w1, mut r1) = waiter();
        let (w2, mut r2) = waiter();
        // Each read is told how long it queued before the node took it.
        b.queue(w1, Duration::from_millis(3));
        b.queue(w2, Duration::ZERO);
        let ctx = b.round_to_issue(now, Duration::ZERO).expect("round starts");
        assert!(
            b.round_to_issue(now, Duration::ZERO).is_none(),
            "one round at a time"
        );
        let (w3, mut r3) = waiter();
        b.queue(w3, Duration::ZERO);
        b.on_read_state(&ctx, 10);
        b.on_applied(9);
        assert!(r1.try_recv().is_err(), "not before index 10 is applied");
        b.on_applied(10);
        assert_eq!(r1.try_recv().unwrap(), Ok(Duration::from_millis(3)));
        assert_eq!(r2.try_recv().unwrap(), Ok(Duration::ZERO));
        assert!(
            r3.try_recv().is_err(),
            "the late read waits for its own round"
        );
        let ctx2 = b.round_to_issue(now, Duration::ZERO).expect("second round");
        assert_ne!(ctx, ctx2);
        b.on_read_state(&ctx2, 11);
        b.on_applied(11);
        assert_eq!(r3.try_recv().unwrap(), Ok(Duration::ZERO));
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn an_unanswered_round_is_reissued_and_a_later_answer_releases_it() {
        let mut b = ReadBatcher::new(Duration::from_millis(500), 0);
        let t0 = Instant::now();
        let (w1, mut r1) = waiter();
        b.queue(w1, Duration::ZERO);
        let _dropped_by_raft = b.round_to_issue(t0, Duration::ZERO).unwrap();
        assert!(b
            .round_to_issue(t0 + Duration::from_millis(100), Duration::ZERO)
            .is_none());
        let (w2, mut r2) = waiter();
        b.queue(w2, Duration::ZERO);
        let reissued = b
            .round_to_issue(t0 + Duration::from_millis(600), Duration::ZERO)
            .unwrap();
        b.on_read_state(&reissued, 7);
        b.on_applied(6);
        assert!(r1.try_recv().is_err(), "not before index 7 is applied");
        b.on_applied(7);
        assert_eq!(
            r1.try_recv().unwrap(),
            Ok(Duration::ZERO),
            "older round released too"
        );
        assert_eq!(r2.try_recv().unwrap(), Ok(Duration::ZERO));
    }

    #[test]
    fn a_slow_answer_to_an_old_round_is_not_ignored() {
        let mut b = ReadBatcher::new(Duration::from_millis(500), 0);
        let t0 = Instant::now();
        let (w1, mut r1) = waiter();
        b.queue(w1, Duration::ZERO);
        let old = b.round_to_issue(t0, Duration::ZERO).unwrap();
        let (w2, mut r2) = waiter();
        b.queue(w2, Duration::ZERO);
        let _new = b
            .round_to_issue(t0 + Duration::from_millis(600), Duration::ZERO)
            .unwrap();
        // The quorum round trip is slower than the reissue interval.
        b.on_read_state(&old, 5);
        b.on_applied(5);
        assert_eq!(r1.try_recv().unwrap(), Ok(Duration::ZERO));
        assert!(r2.try_recv().is_err(), "the newer round still waits");
        assert_eq!(b.pending(), 1);
    }

    #[test]
    fn rounds_in_flight_are_bounded_without_losing_reads() {
        let mut b = ReadBatcher::new(Duration::from_millis(1), 0);
        let mut now = Instant::now();
        let mut receivers = Vec::new();
        let mut last = Vec::new();
        for _ in 0..(MAX_ROUNDS_IN_FLIGHT * 3) {
            let (w, r) = waiter();
            receivers.push(r);
            b.queue(w, Duration::ZERO);
            now += Duration::from_millis(2);
            last = b.round_to_issue(now, Duration::ZERO).unwrap();
        }
        assert!(b.in_flight.len() <= MAX_ROUNDS_IN_FLIGHT);
        b.on_read_state(&last, 1);
        b.on_applied(1);
        for mut r in receivers {
            assert_eq!(r.try_recv().unwrap(), Ok(Duration::ZERO));
        }
    }

    #[test]
    fn leadership_loss_fails_every_read() {
        let mut b = ReadBatcher::new(Duration::from_secs(1), 0);
        let (w1, mut r1) = waiter();
        let (w2, mut r2) = waiter();
        b.queue(w1, Duration::ZERO);
        b.round_to_issue(Instant::now(), Duration::ZERO).unwrap();
        b.queue(w2, Duration::ZERO);
        let err = ReplicaError::Unavailable("x".into());
        b.fail_all(&err);
        assert_eq!(r1.try_recv().unwrap(), Err(err.clone()));
        assert_eq!(r2.try_recv().unwrap(), Err(err));
        assert_eq!(b.pending(), 0);
    }
}
