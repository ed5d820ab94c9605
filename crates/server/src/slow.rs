//! The slow-request log (`--slow-request-threshold`, default 100 ms): a client
//! request that took longer is logged once, at warn level, with its op, the
//! bytes of its key(s) and value(s), and where its time went on this node:
//!
//! - queue: waiting for the node thread to take it;
//! - propose: from then until its entry was in the leader's own log (the
//!   leader's fsync);
//! - commit: from then until the leader saw it committed (followers' appends
//!   and fsyncs, the network);
//! - apply: applying it (with the entries committed alongside it);
//! - read index: a linearizable read's quorum round and wait for apply;
//! - forward: a follower passing the request on to the leader (the leader
//!   logs the breakdown of that part itself);
//! - other: the rest (checks, encoding, the runtime).
//!
//! Each such request is also counted in `raftkv_slow_requests_total{op}`.
//!
//! A handler runs its call inside [`traced`]: what the call learns on the way
//! (sizes from the request, stages from the replica) goes into a task-local
//! [`Trace`], so no function between the handler and the replica carries it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use raftkv_replica::Stages;

/// What one request did, as far as the slow-request log tells.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub key_bytes: u64,
    pub value_bytes: u64,
    pub stages: Stages,
    pub forward: Duration,
}

tokio::task_local! {
    static TRACE: RefCell<Trace>;
}

/// Runs `call` with a fresh trace; returns its output and what was noted.
pub async fn traced<F: Future>(call: F) -> (F::Output, Trace) {
    TRACE
        .scope(RefCell::new(Trace::default()), async move {
            let output = call.await;
            (output, TRACE.with(|trace| trace.take()))
        })
        .await
}

fn note(change: impl FnOnce(&mut Trace)) {
    // Outside `traced` (a node's own writes) there is nothing to note.
    let _ = TRACE.try_with(|trace| change(&mut trace.borrow_mut()));
}

/// The request carries a key of `key` bytes and a value of `value` bytes
/// (called once per key a request names).
pub fn note_sizes(key: usize, value: usize) {
    note(|trace| {
        trace.key_bytes += key as u64;
        trace.value_bytes += value as u64;
    });
}

/// The replica reports where a write's or a read's time went.
pub fn note_stages(mut stages: Stages) {
    note(|trace| {
        // A write this node passed to the leader through raft.
        trace.forward += std::mem::take(&mut stages.forward);
        trace.stages += stages;
    });
}

/// The request was passed on to the leader, which took `took` to answer.
pub fn note_forward(took: Duration) {
    note(|trace| trace.forward += took);
}

/// The log line of a request of `op` that took `took` (past `threshold`).
pub fn describe(op: &str, took: Duration, threshold: Duration, trace: &Trace) -> String {
    let s = &trace.stages;
    let known = s.queue + s.propose + s.commit + s.apply + s.read_index + trace.forward;
    let mut line = format!(
        "slow request: {op} took {} (--slow-request-threshold {}); key {} B, value {} B; \
         queue {}, propose {}, commit {}, apply {}, read index {}",
        ms(took),
        ms(threshold),
        trace.key_bytes,
        trace.value_bytes,
        ms(s.queue),
        ms(s.propose),
        ms(s.commit),
        ms(s.apply),
        ms(s.read_index),
    );
    if !trace.forward.is_zero() {
        let _ = write!(line, ", forward to the leader {}", ms(trace.forward));
    }
    let _ = write!(line, ", other {}", ms(took.saturating_sub(known)));
    line
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_a_call_notes_comes_back_with_its_output() {
        let (output, trace) = traced(async {
            note_sizes(3, 10);
            note_stages(Stages {
                propose: Duration::from_millis(250),
                ..Default::default()
            });
            tokio::task::yield_now().await;
            note_stages(Stages {
                commit: Duration::from_millis(5),
                ..Default::default()
            });
            // A write passed to the leader through raft: its time there is
            // the forward's.
            note_stages(Stages {
                forward: Duration::from_millis(40),
                ..Default::default()
            });
            7
        })
        .await;
        assert_eq!(output, 7);
        assert_eq!((trace.key_bytes, trace.value_bytes), (3, 10));
        assert_eq!(trace.stages.propose, Duration::from_millis(250));
        assert_eq!(trace.stages.commit, Duration::from_millis(5));
        assert_eq!(trace.forward, Duration::from_millis(40));
        // Outside a traced call, noting is a no-op rather than a panic.
        note_sizes(1, 1);
    }

    #[test]
    fn the_line_names_the_op_sizes_and_every_stage() {
        let trace = Trace {
            key_bytes: 5,
            value_bytes: 1024,
            stages: Stages {
                queue: Duration::from_micros(100),
                propose: Duration::from_millis(300),
                commit: Duration::from_millis(8),
                apply: Duration::from_micros(200),
                read_index: Duration::ZERO,
                forward: Duration::ZERO,
            },
            forward: Duration::ZERO,
        };
        let line = describe(
            "put",
            Duration::from_millis(310),
            Duration::from_millis(100),
            &trace,
        );
        assert_eq!(
            line,
            "slow request: put took 310.0ms (--slow-request-threshold 100.0ms); key 5 B, \
             value 1024 B; queue 0.1ms, propose 300.0ms, commit 8.0ms, apply 0.2ms, read \
             index 0.0ms, other 1.7ms"
        );
    }
}
