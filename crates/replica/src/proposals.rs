//! Proposals waiting for their entry to be applied, keyed by the proposal id
//! carried inside the entry (never by queue position: entries can be dropped,
//! overwritten after a leader change, or refused).

use std::collections::HashMap;

use tokio::sync::oneshot;

use crate::error::ReplicaError;

pub(crate) type Reply = oneshot::Sender<Result<(), ReplicaError>>;

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

pub(crate) struct Proposals {
    /// This node's id goes into every entry it proposes.
    next_id: u64,
    waiting: HashMap<u64, Waiter>,
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
        self.waiting.insert(id, waiter.into());
    }

    /// Answers the proposal `id`, if it is still waiting.
    pub(crate) fn complete(&mut self, id: u64, result: Result<WriteResult, ReplicaError>) {
        if let Some(waiter) = self.waiting.remove(&id) {
            waiter.send(result);
        }
    }

    /// Answers every waiting proposal with `error` (leadership lost, stop).
    pub(crate) fn fail_all(&mut self, error: ReplicaError) {
        for (_, waiter) in self.waiting.drain() {
            waiter.send(Err(error.clone()));
        }
    }
}
