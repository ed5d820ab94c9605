//! Proposals waiting for their entry to be applied, keyed by the proposal id
//! carried inside the entry (never by queue position: entries can be dropped,
//! overwritten after a leader change, or refused).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ReplicaError;

pub(crate) type Reply = oneshot::Sender<Result<(), ReplicaError>>;

/// Where a request's time went inside the replica (for the server's
/// slow-request log): each stage ends where the next begins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages {
    /// Waiting for the node thread to take the request.
    pub queue: Duration,
    /// Until the write's entry was in this node's (the leader's) log, synced.
    pub propose: Duration,
    /// Until the leader saw the entry committed (a quorum had it).
    pub commit: Duration,
    /// Applying it, with the entries committed before it in the same batch.
    pub apply: Duration,
    /// A linearizable read: its ReadIndex round and the wait for apply.
    pub read_index: Duration,
}

impl std::ops::AddAssign for Stages {
    fn add_assign(&mut self, other: Stages) {
        self.queue += other.queue;
        self.propose += other.propose;
        self.commit += other.commit;
        self.apply += other.apply;
        self.read_index += other.read_index;
    }
}

/// What an applied write tells its caller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteResult {
    /// The store revision once the write was applied: the write's own
    /// revision if it changed something, else the revision it left as it
    /// was (etcd's header revision for a write).
    pub revision: u64,
    /// An etcd transaction's response (header revision set, the rest of
    /// the header the server's).
    pub txn: Option<Box<raftkv_proto::etcdserverpb::TxnResponse>>,
    /// Where its time went on this node.
    pub stages: Stages,
}

pub(crate) type WriteReply = oneshot::Sender<Result<WriteResult, ReplicaError>>;

/// A caller waiting for its entry: a write (told its revision) or anything
/// else (membership changes, cluster metadata: told only the outcome).
pub(crate) enum Waiter {
    Write(WriteReply),
    Done(Reply),
}

impl Waiter {
    fn send(self, result: Result<WriteResult, ReplicaError>) {
        match self {
            Waiter::Write(reply) => {
                let _ = reply.send(result);
            }
            Waiter::Done(reply) => {
                let _ = reply.send(result.map(|_| ()));
            }
        }
    }
}

impl From<Reply> for Waiter {
    fn from(reply: Reply) -> Waiter {
        Waiter::Done(reply)
    }
}

impl From<WriteReply> for Waiter {
    fn from(reply: WriteReply) -> Waiter {
        Waiter::Write(reply)
    }
}

/// When a waiting write was handed to the node, taken by it, and found in
/// this node's synced log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Times {
    pub(crate) queued: Instant,
    pub(crate) taken: Instant,
    pub(crate) persisted: Option<Instant>,
}

impl Times {
    /// The stages of a write whose entry was being applied from
    /// `applying_since` and was done at `now`.
    fn stages(&self, applying_since: Instant, now: Instant) -> Stages {
        let persisted = self.persisted.unwrap_or(applying_since).min(applying_since);
        Stages {
            queue: self.taken.saturating_duration_since(self.queued),
            propose: persisted.saturating_duration_since(self.taken),
            commit: applying_since.saturating_duration_since(persisted),
            apply: now.saturating_duration_since(applying_since),
            read_index: Duration::ZERO,
        }
    }
}

struct Pending {
    waiter: Waiter,
    times: Option<Times>,
}

pub(crate) struct Proposals {
    /// This node's id goes into every entry it proposes.
    next_id: u64,
    waiting: HashMap<u64, Pending>,
}

impl Proposals {
    /// `first_id`: random (an entry proposed before a restart must never
    /// be mistaken for one proposed after it).
    pub(crate) fn new(first_id: u64) -> Self {
        Proposals {
            next_id: first_id,
            waiting: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Reserves the id for the next proposal.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    pub(crate) fn insert(&mut self, id: u64, waiter: impl Into<Waiter>) {
        let waiter = waiter.into();
        self.waiting.insert(
            id,
            Pending {
                waiter,
                times: None,
            },
        );
    }

    /// A write, timed from when it was handed to the node (see [`Stages`]).
    pub(crate) fn insert_timed(&mut self, id: u64, reply: WriteReply, times: Times) {
        let waiter = Waiter::Write(reply);
        let times = Some(times);
        self.waiting.insert(id, Pending { waiter, times });
    }

    /// The entries of proposals `ids` are in the log and synced, at `at`.
    pub(crate) fn persisted(&mut self, ids: &[u64], at: Instant) {
        for id in ids {
            if let Some(Pending {
                times: Some(times), ..
            }) = self.waiting.get_mut(id)
            {
                times.persisted.get_or_insert(at);
            }
        }
    }

    /// Answers the proposal `id`, if it is still waiting.
    pub(crate) fn complete(&mut self, id: u64, result: Result<WriteResult, ReplicaError>) {
        if let Some(pending) = self.waiting.remove(&id) {
            pending.waiter.send(result);
        }
    }

    /// Answers the proposal `id` whose entry was applied from
    /// `applying_since` until `now`, telling a write where its time went.
    pub(crate) fn complete_applied(
        &mut self,
        id: u64,
        mut result: Result<WriteResult, ReplicaError>,
        applying_since: Instant,
        now: Instant,
    ) {
        if let Some(pending) = self.waiting.remove(&id) {
            if let (Ok(written), Some(times)) = (&mut result, pending.times) {
                written.stages = times.stages(applying_since, now);
            }
            pending.waiter.send(result);
        }
    }

    /// Answers every waiting proposal with `error` (leadership lost, stop).
    pub(crate) fn fail_all(&mut self, error: ReplicaError) {
        for (_, pending) in self.waiting.drain() {
            pending.waiter.send(Err(error.clone()));
        }
    }
}
