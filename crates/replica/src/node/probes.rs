//! Repeated probes to a lagging follower are not sent, and a follower's
//! older heartbeat responses queued behind a newer one are not stepped.
//!
//! While a follower's progress is in the probe state (after a restart, a
//! partition or a rejected append), raft-rs sends it entries from its next
//! index, up to `max_append_bytes`, on *every* heartbeat response it gets
//! from it — and every ReadIndex round is a heartbeat to every follower. So
//! with linearizable reads flowing, a restarted follower got the same 1 MiB
//! append hundreds of times a second: the leader spent its turns building
//! them and held them in memory (the soak saw 1.3 GiB and a leader too busy
//! to send heartbeats), and the follower, queueing them, answered the first
//! one late, which kept it in the probe state longer.
//!
//! A probe that repeats the last one sent to that follower (same previous
//! index and term) within a heartbeat interval is dropped here. That is
//! safe: a probe carries no new state, raft-rs keeps the follower paused
//! until an answer or the next heartbeat response and sends it again then,
//! and any message may be lost anyway. Appends to a follower that is not
//! probing (replicating, or taking a snapshot) are never touched: dropping
//! one of those would leave a gap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};
use raft::ProgressState;

use super::{Node, PeerInput};
use crate::log_store::LogStore;

/// The last probe sent to each probing follower: (previous index, its
/// term) and when.
#[derive(Default)]
pub(super) struct Probes {
    last: HashMap<u64, ((u64, u64), Instant)>,
}

impl Probes {
    pub(super) fn retain(&mut self, members: &[u64]) {
        self.last.retain(|id, _| members.contains(id));
    }

    pub(super) fn len(&self) -> usize {
        self.last.len()
    }
}

impl<S: LogStore> Node<S> {
    /// `messages` (a leader's) without the probes that repeat one sent to
    /// the same follower less than `every` ago.
    pub(super) fn without_repeated_probes(&mut self, mut messages: Vec<Message>) -> Vec<Message> {
        let every = self.tick_interval;
        let now = self.now;
        let progress = self.raw.raft.prs();
        let last = &mut self.probes.last;
        messages.retain(|message| {
            if message.get_msg_type() != MessageType::MsgAppend {
                return true;
            }
            let probing = progress
                .get(message.to)
                .is_some_and(|pr| pr.state == ProgressState::Probe);
            if !probing {
                last.remove(&message.to);
                return true;
            }
            keep_probe(last, message, now, every)
        });
        messages
    }
}

/// Records `message` as the last probe to its follower unless it repeats
/// the one sent less than `every` before `now`; true means send it.
fn keep_probe(
    last: &mut HashMap<u64, ((u64, u64), Instant)>,
    message: &Message,
    now: Instant,
    every: Duration,
) -> bool {
    let position = (message.index, message.log_term);
    match last.get(&message.to) {
        Some(&(sent, at)) if sent == position && now.duration_since(at) < every => false,
        _ => {
            last.insert(message.to, (position, now));
            true
        }
    }
}

/// Drops from `batch` (in arrival order) every heartbeat response followed,
/// later in the batch, by one from the same follower in the same term that
/// supersedes it: any later one supersedes one without a ReadIndex context,
/// a later one with a context supersedes one with a context.
pub(super) fn coalesce_heartbeat_responses(batch: &mut Vec<PeerInput>) {
    // (from, term) -> (a later response seen, a later one with a context seen)
    let mut later: HashMap<(u64, u64), (bool, bool)> = HashMap::new();
    let mut keep = vec![true; batch.len()];
    for (position, input) in batch.iter().enumerate().rev() {
        let PeerInput::Raft(message) = input else {
            continue;
        };
        if message.get_msg_type() != MessageType::MsgHeartbeatResponse {
            continue;
        }
        let has_context = !message.context.is_empty();
        let seen = later.entry((message.from, message.term)).or_default();
        keep[position] = !(seen.1 || (seen.0 && !has_context));
        seen.0 = true;
        seen.1 |= has_context;
    }
    let mut position = 0;
    batch.retain(|_| {
        position += 1;
        keep[position - 1]
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(to: u64, index: u64, log_term: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = to;
        message.index = index;
        message.log_term = log_term;
        message
    }

    fn heartbeat_response(from: u64, term: u64, context: &[u8]) -> PeerInput {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeatResponse);
        message.from = from;
        message.term = term;
        message.context = context.to_vec().into();
        PeerInput::Raft(message)
    }

    fn described(batch: &[PeerInput]) -> Vec<(u64, u64, Vec<u8>)> {
        batch
            .iter()
            .map(|input| match input {
                PeerInput::Raft(m) => (m.from, m.term, m.context.to_vec()),
                _ => (0, 0, Vec::new()),
            })
            .collect()
    }

    #[test]
    fn only_the_newest_heartbeat_responses_of_a_follower_are_stepped() {
        let mut batch = vec![
            heartbeat_response(2, 5, b""),
            heartbeat_response(2, 5, b"r1"),
            heartbeat_response(3, 5, b"r1"),
            heartbeat_response(2, 5, b"r2"),
            PeerInput::Unreachable(4),
            heartbeat_response(2, 5, b""),
            heartbeat_response(2, 6, b""),
        ];
        coalesce_heartbeat_responses(&mut batch);
        assert_eq!(
            described(&batch),
            vec![
                // Follower 3's only answer, follower 2's newest answer to a
                // round and its newest response of term 5, and of term 6.
                (3, 5, b"r1".to_vec()),
                (2, 5, b"r2".to_vec()),
                (0, 0, Vec::new()),
                (2, 5, Vec::new()),
                (2, 6, Vec::new()),
            ]
        );
    }

    #[test]
    fn a_probe_repeated_within_the_interval_is_dropped_and_sent_again_after_it() {
        let mut last = HashMap::new();
        let every = Duration::from_millis(100);
        let t0 = Instant::now();
        let after = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(keep_probe(&mut last, &probe(2, 10, 3), t0, every));
        // The same probe to the same follower soon after: dropped.
        assert!(!keep_probe(&mut last, &probe(2, 10, 3), after(50), every));
        // Another follower, or another position, is another probe.
        assert!(keep_probe(&mut last, &probe(3, 10, 3), after(50), every));
        assert!(keep_probe(&mut last, &probe(2, 7, 3), after(50), every));
        assert!(!keep_probe(&mut last, &probe(2, 7, 3), after(149), every));
        // An interval after the last one sent, it goes again.
        assert!(keep_probe(&mut last, &probe(2, 7, 3), after(150), every));
    }
}
