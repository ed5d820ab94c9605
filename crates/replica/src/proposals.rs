//! Proposals waiting for their entry to be applied, keyed by the proposal id
//! carried inside the entry (never by queue position: entries can be dropped,
//! overwritten after a leader change, or refused).

use std::collections::HashMap;

use tokio::sync::oneshot;

use crate::error::ReplicaError;

pub(crate) type Reply = oneshot::Sender<Result<(), ReplicaError>>;

pub(crate) struct Proposals {
    /// This node's id goes into every entry it proposes.
    next_id: u64,
    waiting: HashMap<u64, Reply>,
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

    pub(crate) fn insert(&mut self, id: u64, reply: Reply) {
        self.waiting.insert(id, reply);
    }

    /// Answers the proposal `id`, if it is still waiting.
    pub(crate) fn complete(&mut self, id: u64, result: Result<(), ReplicaError>) {
        if let Some(reply) = self.waiting.remove(&id) {
            let _ = reply.send(result);
        }
    }

    /// Answers every waiting proposal with `error` (leadership lost, stop).
    pub(crate) fn fail_all(&mut self, error: ReplicaError) {
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(error.clone()));
        }
    }
}
