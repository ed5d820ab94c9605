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
    /// A write a follower passed to the leader: from then until its entry
    /// was applied here (the leader's propose and commit, and the news of
    /// the commit reaching this node).
    pub forward: Duration,
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
        self.forward += other.forward;
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
    /// Passed to the leader (this node follows): its time until applied is
    /// `forward`.
    pub(crate) forwarded: bool,
}

impl Times {
    /// The stages of a write whose entry was being applied from
    /// `applying_since` and was done at `now`.
    fn stages(&self, applying_since: Instant, now: Instant) -> Stages {
        if self.forwarded {
            return Stages {
                queue: self.taken.saturating_duration_since(self.queued),
                forward: applying_since.saturating_duration_since(self.taken),
                apply: now.saturating_duration_since(applying_since),
                ..Stages::default()
            };
        }
        let persisted = self.persisted.unwrap_or(applying_since).min(applying_since);
        Stages {
            queue: self.taken.saturating_duration_since(self.queued),
            propose: persisted.saturating_duration_since(self.taken),
            commit: applying_since.saturating_duration_since(persisted),
            apply: now.saturating_duration_since(applying_since),
            read_index: Duration::ZERO,
            forward: Duration::ZERO,
        }
    }
}

struct Pending {
    waiter: Waiter,
    times: Option<Times>,
    /// A write this node (a follower) passed to a leader.
    forwarded: Option<Forwarded>,
}

/// To which leader, in which term and when a follower passed a write on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Forwarded {
    pub(crate) leader: u64,
    pub(crate) term: u64,
    pub(crate) sent: Instant,
}

pub(crate) struct Proposals {
    /// This node's id goes into every entry it proposes.
    next_id: u64,
    waiting: HashMap<u64, Pending>,
    /// How many of `waiting` were passed to a leader (checked every turn
    /// while there are any).
    forwarded: usize,
}

impl Proposals {
    /// `first_id`: random (an entry proposed before a restart must never
    /// be mistaken for one proposed after it).
    pub(crate) fn new(first_id: u64) -> Self {
        Proposals {
            next_id: first_id,
            waiting: HashMap::new(),
            forwarded: 0,
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
                forwarded: None,
            },
        );
    }

    /// A write, timed from when it was handed to the node (see [`Stages`]).
    pub(crate) fn insert_timed(&mut self, id: u64, reply: WriteReply, times: Times) {
        let waiter = Waiter::Write(reply);
        let times = Some(times);
        let forwarded = None;
        self.waiting.insert(
            id,
            Pending {
                waiter,
                times,
                forwarded,
            },
        );
    }

    /// A write passed to a leader (see `node/forwarding.rs`).
    pub(crate) fn insert_forwarded(
        &mut self,
        id: u64,
        reply: WriteReply,
        times: Times,
        forwarded: Forwarded,
    ) {
        let pending = Pending {
            waiter: Waiter::Write(reply),
            times: Some(times),
            forwarded: Some(forwarded),
        };
        self.waiting.insert(id, pending);
        self.forwarded += 1;
    }

    /// Whether any waiting write was passed to a leader.
    pub(crate) fn any_forwarded(&self) -> bool {
        self.forwarded > 0
    }

    fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.waiting.remove(&id)?;
        if pending.forwarded.is_some() {
            self.forwarded -= 1;
        }
        Some(pending)
    }

    /// To whom proposal `id` was passed, if it is a forwarded write still
    /// waiting.
    pub(crate) fn forwarded(&self, id: u64) -> Option<Forwarded> {
        self.waiting.get(&id).and_then(|pending| pending.forwarded)
    }

    /// Answers with `error` every forwarded write for which `lost` holds.
    pub(crate) fn fail_forwarded(
        &mut self,
        lost: impl Fn(&Forwarded) -> bool,
        error: &ReplicaError,
    ) {
        let ids: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, pending)| pending.forwarded.as_ref().is_some_and(&lost))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.complete(id, Err(error.clone()));
        }
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
        if let Some(pending) = self.remove(id) {
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
        if let Some(pending) = self.remove(id) {
            if let (Ok(written), Some(times)) = (&mut result, pending.times) {
                written.stages = times.stages(applying_since, now);
            }
            pending.waiter.send(result);
        }
    }

    /// Answers every waiting proposal with `error` (leadership lost, stop).
    pub(crate) fn fail_all(&mut self, error: ReplicaError) {
        self.forwarded = 0;
        for (_, pending) in self.waiting.drain() {
            pending.waiter.send(Err(error.clone()));
        }
    }
}
