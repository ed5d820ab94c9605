//! A replica driven turn by turn by its caller instead of a thread of its
//! own: what a deterministic simulator runs (`crates/sim`).
//!
//! [`Replica::start`] runs the same node on a dedicated thread that waits on
//! its channels and the next tick, then calls the node's `turn`; here the
//! caller calls [`ReplicaCore::turn`] whenever it likes, with the time the
//! node's [`Clock`] reports. Everything the node does leaves through the
//! [`Transport`] it was given (messages) and the replies of the [`Replica`]
//! handle's calls; everything it is told comes through that handle. Nothing
//! else is read: no other clock, no unseeded randomness when
//! `ReplicaConfig::seed` is set, no thread when
//! `ReplicaConfig::write_snapshots_inline` is (snapshot files are still real
//! files, in the `SnapshotStore`'s directory).

use std::sync::Arc;

use raft::StateRole;

use crate::clock::Clock;
use crate::config::ReplicaConfig;
use crate::error::FatalError;
use crate::handle::Replica;
use crate::log_store::LogStore;
use crate::node::{Node, PeerInput, QueueSizes};
use crate::transport::Transport;
use raftkv_storage::SnapshotStore;

pub struct ReplicaCore<S: LogStore> {
    node: Node<S>,
    peer_batch: Vec<PeerInput>,
    started: bool,
}

/// What raft holds at the end of a turn, for a simulator's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftView {
    pub term: u64,
    pub vote: u64,
    pub is_leader: bool,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
}

impl<S: LogStore> ReplicaCore<S> {
    /// The handle and the node over `storage` (initialized already), not
    /// running until the first [`ReplicaCore::turn`].
    pub fn new(
        storage: S,
        snapshots: SnapshotStore,
        config: ReplicaConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Replica, ReplicaCore<S>), FatalError> {
        let (replica, node) = Replica::assemble(storage, snapshots, config, transport, clock)?;
        Ok((
            replica,
            ReplicaCore {
                node,
                peer_batch: Vec::new(),
                started: false,
            },
        ))
    }

    /// Takes everything queued for the node, ticks raft if a tick is due on
    /// the node's clock, and handles raft's `Ready` (log writes, messages,
    /// applies, replies). False once the node was asked to shut down. An
    /// error is fatal: the node must be dropped (what a real node does is
    /// exit).
    pub fn turn(&mut self) -> Result<bool, FatalError> {
        if !self.started {
            self.started = true;
            self.node.start()?;
        }
        self.node.turn(&mut self.peer_batch, None)
    }

    /// Whether [`ReplicaCore::turn`] would do anything now (a turn that
    /// would not is skipped at no cost to correctness).
    pub fn wants_turn(&self) -> bool {
        !self.started || self.node.wants_turn()
    }

    /// Callers the node still owes an answer: (proposals, reads, whether a
    /// membership change is running). Once the cluster is quiet every one
    /// must have been answered — a waiter never answered is a client that
    /// hangs until its deadline.
    pub fn waiting(&self) -> (usize, usize, bool) {
        self.node.waiting()
    }

    /// How much the node's queues and per-peer tables hold.
    pub fn queue_sizes(&self) -> QueueSizes {
        self.node.queue_sizes()
    }

    pub fn store(&self) -> &S {
        self.node.store()
    }

    pub fn raft_view(&self) -> RaftView {
        let raft = self.node.raft();
        RaftView {
            term: raft.term,
            vote: raft.vote,
            is_leader: raft.state == StateRole::Leader,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.node.applied_index(),
            last_index: raft.raft_log.last_index(),
        }
    }
}
