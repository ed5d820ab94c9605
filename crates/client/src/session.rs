//! The client's write session: a random client id and increasing sequence
//! numbers, plus the lowest sequence number still in flight, which tells the
//! servers which applied writes they may forget.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use raftkv_proto::v1::WriteSession;

pub(crate) struct Session {
    client_id: u64,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    /// A write of this session was applied (answered Ok): the state machine
    /// knows the session. Until then every write says that none was answered
    /// (`first_incomplete_seq` 1), since one refused without effect (bad
    /// input, say) created no session the state machine could have dropped.
    established: AtomicBool,
}

impl Session {
    pub(crate) fn new() -> Self {
        Session {
            client_id: rand::random::<u64>().max(1),
            next_seq: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
            established: AtomicBool::new(false),
        }
    }

    /// Starts a write: its sequence number, reused by every retry.
    pub(crate) fn begin(&self) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.in_flight.lock().expect("session lock").insert(seq);
        seq
    }

    /// The session fields to send with (a retry of) write `seq`.
    pub(crate) fn for_request(&self, seq: u64) -> WriteSession {
        let first_incomplete_seq = if self.established.load(Ordering::Relaxed) {
            self.in_flight
                .lock()
                .expect("session lock")
                .first()
                .copied()
                .unwrap_or(seq)
        } else {
            1
        };
        WriteSession {
            client_id: self.client_id,
            seq,
            first_incomplete_seq,
        }
    }

    /// The write ended (answered, or given up): it will not be retried.
    /// `applied`: it was answered Ok.
    pub(crate) fn end(&self, seq: u64, applied: bool) {
        self.in_flight.lock().expect("session lock").remove(&seq);
        if applied {
            self.established.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_incomplete_is_the_oldest_write_in_flight() {
        let s = Session::new();
        let a = s.begin();
        let b = s.begin();
        assert_eq!(s.for_request(b).first_incomplete_seq, a);
        s.end(a, true);
        assert_eq!(s.for_request(b).first_incomplete_seq, b);
        let c = s.begin();
        s.end(b, true);
        assert_eq!(s.for_request(c).first_incomplete_seq, c);
        assert!(c > b && b > a);
    }

    #[test]
    fn until_a_write_applied_every_write_says_it_is_the_first() {
        let s = Session::new();
        let a = s.begin();
        s.end(a, false); // refused before it was proposed
        let b = s.begin();
        assert_eq!(s.for_request(b).first_incomplete_seq, 1);
        s.end(b, true);
        let c = s.begin();
        assert_eq!(s.for_request(c).first_incomplete_seq, c);
    }
}
