//! The node thread: owns the `RawNode`, drives raft-rs's `Ready` protocol,
//! applies committed entries and answers waiting callers.
//!
//! One turn of the loop:
//! 1. wait for an input or the next tick; then take every queued input (up
//!    to a bound) — all proposals taken here share one log write and one
//!    fsync (group commit);
//! 2. tick if due; start a ReadIndex round if reads are waiting;
//! 3. handle `Ready` in the order raft requires: send the leader's messages
//!    (it may replicate while writing its own log), apply committed entries
//!    (raft only hands out entries already durable), append entries and hard
//!    state and fsync when `must_sync`, *then* send the persisted messages
//!    (votes, append responses), then `advance_append` and handle the
//!    `LightReady` (commit index, more messages, more committed entries);
//! 4. publish status; if leadership was lost, fail waiting callers with a
//!    retryable error.
//!
//! A storage error here is fatal: the loop stops and the node exits rather
//! than acknowledge anything it could not make durable.

mod change_job;
mod cluster_meta;
mod conf_change;
mod disk_space;
mod forwarding;
pub(crate) use disk_space::check_snapshot_room;
mod lease;
mod lease_timers;
mod probes;
mod queries;
mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use raftkv_kv::{decode_command, encode_command, ApplyOutcome, Command, KvState, Op};
use raftkv_storage::{MembershipRecord, SnapshotInfo, SnapshotMeta, SnapshotStore, StorageStats};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::conf_change::ConfChangeRequest;
use crate::config::ReplicaConfig;
use crate::error::{FatalError, ReplicaError};
use crate::handle::{Shared, WriteSession};
use crate::log_store::LogStore;
use crate::logger::raft_logger;
use crate::membership::{decode_conf_change_context, member_ids, next_addresses};
use crate::proposals::{Proposals, Reply, Times, WriteReply, WriteResult};
use crate::reads::{ReadBatcher, ReadReply};
use crate::snapshots::load_snapshot;
use crate::status::{MembersInfo, NodeStatus, RaftStateInfo, Role};
use disk_space::{entries_bytes, op_bytes};

use crate::peer_message::PeerMessage;
use crate::transport::Transport;
pub(crate) use lease::LeaseState;
pub use lease_timers::LeaseInfo;
pub use snapshot::CompactResult;

/// Inputs taken in one turn at most, so a flood cannot starve ticks.
const MAX_INPUTS_PER_TURN: usize = 4096;
/// Peer messages taken in one turn at most (taken before client inputs).
const MAX_PEER_INPUTS_PER_TURN: usize = 8192;

pub(crate) enum Query {
    RaftState(oneshot::Sender<RaftStateInfo>),
    Members(oneshot::Sender<MembersInfo>),
    Storage(oneshot::Sender<StorageStats>),
    Snapshot(oneshot::Sender<Result<SnapshotInfo, ReplicaError>>),
    Compact(oneshot::Sender<Result<CompactResult, ReplicaError>>),
}

/// What peers send the node; on a channel of its own so heartbeats and
/// votes are never queued behind (or dropped for) client requests.
pub(crate) enum PeerInput {
    Raft(Message),
    Unreachable(u64),
    /// The transport finished (or failed) sending a snapshot to `to`.
    SnapshotStatus {
        to: u64,
        delivered: bool,
    },
    /// The background snapshot writer finished.
    SnapshotWritten {
        result: Result<SnapshotInfo, String>,
        membership: MembershipRecord,
    },
    /// Peer `from` refused this node's vote request: its configuration as
    /// of `index` does not hold this node.
    RemovedNotice {
        from: u64,
        index: u64,
    },
}

/// What a write proposes.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// `raftkv.v1` puts and deletes, applied in order at one revision.
    Ops(Vec<Op>),
    /// An etcd transaction (a single Put or DeleteRange is one too).
    EtcdTxn(raftkv_proto::etcdserverpb::TxnRequest),
    /// etcd's Compact: revisions before this one are no longer served.
    Compact(u64),
    /// etcd's LeaseGrant (the id chosen by the proposer) and LeaseRevoke.
    LeaseGrant {
        id: u64,
        ttl: u64,
    },
    LeaseRevoke(u64),
    /// A change of users, roles or the auth switch.
    Auth(raftkv_kv::auth::AuthCommand),
    /// The test-only entry kind of log version `RULES_TEST_NEXT` (see
    /// `log_version.rs`): puts whose values are stored reversed.
    TestNextKind(Vec<Op>),
}

/// Who asks for a write: checked against the users and roles when it is
/// applied (see `raftkv_kv::auth`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Caller {
    /// The request carried no identity (refused while auth is on).
    #[default]
    Anonymous,
    /// An authenticated user.
    User(String),
    /// The node itself (a lease's expiry, automatic compaction).
    Node,
}

impl Write {
    /// Bytes it adds to the log (for the disk reserve).
    fn bytes(&self) -> u64 {
        match self {
            Write::Ops(ops) | Write::TestNextKind(ops) => ops.iter().map(op_bytes).sum(),
            Write::EtcdTxn(txn) => prost::Message::encoded_len(txn) as u64,
            Write::Compact(_) | Write::LeaseGrant { .. } | Write::LeaseRevoke(_) => 16,
            Write::Auth(command) => prost::Message::encoded_len(command) as u64,
        }
    }

    /// The log version its entry needs (see `log_version.rs`).
    fn log_version(&self) -> u32 {
        match self {
            Write::TestNextKind(_) => raftkv_kv::RULES_TEST_NEXT,
            _ => raftkv_kv::RULES_UNREPORTED,
        }
    }
}

/// A client's write handed to the node.
pub(crate) struct ProposeInput {
    pub(crate) write: Write,
    pub(crate) session: WriteSession,
    pub(crate) caller: Caller,
    pub(crate) reply: WriteReply,
    /// When it was handed to the node (see `Stages`).
    pub(crate) queued: Instant,
    /// On a follower: pass it to the leader (see `forwarding.rs`) rather
    /// than answer "not leader".
    pub(crate) forward: bool,
}

/// Who proposed an entry, and the leader's stamps on it.
pub(crate) struct Stamp {
    pub(crate) proposer: u64,
    pub(crate) proposal_id: u64,
    pub(crate) timestamp_ms: u64,
    pub(crate) rules: u32,
}

/// The log entry of a client's write.
pub(crate) fn command_of(
    write: Write,
    session: WriteSession,
    caller: &Caller,
    stamp: Stamp,
) -> Command {
    let command = Command {
        proposer: stamp.proposer,
        proposal_id: stamp.proposal_id,
        client_id: session.client_id,
        seq: session.seq,
        first_incomplete_seq: session.first_incomplete_seq,
        timestamp_ms: stamp.timestamp_ms,
        rules: stamp.rules,
        ops: Vec::new(),
        cluster_id: None,
        member_address: None,
        compact_revision: 0,
        etcd_txn: None,
        lease_grant: None,
        lease_revoke: 0,
        auth: None,
        user: match caller {
            Caller::User(name) => name.clone(),
            Caller::Anonymous | Caller::Node => String::new(),
        },
        by_node: *caller == Caller::Node,
        test_next_kind: false,
    };
    match write {
        Write::Ops(ops) => Command { ops, ..command },
        Write::EtcdTxn(txn) => Command {
            etcd_txn: Some(txn),
            ..command
        },
        Write::Compact(revision) => Command {
            compact_revision: revision,
            ..command
        },
        Write::LeaseGrant { id, ttl } => Command {
            lease_grant: Some(raftkv_kv::LeaseGrant { id, ttl }),
            ..command
        },
        Write::LeaseRevoke(id) => Command {
            lease_revoke: id,
            ..command
        },
        Write::Auth(auth) => Command {
            auth: Some(auth),
            ..command
        },
        Write::TestNextKind(ops) => Command {
            ops,
            test_next_kind: true,
            ..command
        },
    }
}

pub(crate) enum Input {
    Propose(ProposeInput),
    Read {
        reply: ReadReply,
        queued: Instant,
    },
    Query(Query),
    ChangeMembership {
        request: ConfChangeRequest,
        reply: Reply,
    },
    TransferLeader {
        to: u64,
        reply: Reply,
    },
    /// A whole membership change, carried out step by step (see
    /// `node/change_job.rs`).
    Change {
        plan: crate::conf_change::ChangePlan,
        timeout: Duration,
        reply: Reply,
    },
    /// Move leadership and answer once this node no longer leads.
    Transfer {
        to: u64,
        timeout: Duration,
        reply: Reply,
    },
    LeaveJoint {
        timeout: Duration,
        reply: Reply,
    },
    /// Member `member.id` is now reached at `member.address` (and its peer
    /// listener, if any, at `member.peer_address`).
    SetMemberAddress {
        member: raftkv_proto::internal::MemberAddress,
        reply: Reply,
    },
    /// etcd's LeaseKeepAlive (this node must lead): the granted TTL, or
    /// 0 when the lease does not exist.
    LeaseKeepAlive {
        id: u64,
        reply: oneshot::Sender<Result<u64, ReplicaError>>,
    },
    /// etcd's LeaseTimeToLive (this node must lead).
    LeaseTimeToLive {
        id: u64,
        reply: oneshot::Sender<Result<Option<lease_timers::LeaseInfo>, ReplicaError>>,
    },
    Shutdown,
}

/// The node thread's queues: client inputs, peer inputs, and a sender into
/// the peer queue for its own background work.
pub(crate) struct NodeChannels {
    pub(crate) inputs: Receiver<Input>,
    pub(crate) peer_inputs: Receiver<PeerInput>,
    pub(crate) events: Sender<PeerInput>,
}

/// How much a node's queues and per-peer tables hold (what a simulator
/// checks stays bounded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSizes {
    /// Writes and membership steps proposed, not yet answered.
    pub proposals: usize,
    /// Reads waiting for a read index or for apply to reach it.
    pub reads: usize,
    /// Client requests and peer messages queued for the node.
    pub inputs: usize,
    pub peer_inputs: usize,
    pub snapshot_waiters: usize,
    /// The largest per-peer table (last heard, joined at, last probe).
    pub peer_table_entries: usize,
    /// Log entries kept at or below the applied index (compaction keeps
    /// this near the catch-up margin once snapshots are taken).
    pub log_entries_below_applied: u64,
    pub last_snapshot_index: u64,
}

pub(crate) struct Node<S: LogStore> {
    id: u64,
    raw: RawNode<S>,
    clock: Arc<dyn Clock>,
    /// The monotonic time this turn started at (every decision of a turn
    /// is made at it).
    now: Instant,
    /// Every random choice of the node (proposal ids, read contexts,
    /// election timeouts, the cluster id): seeded in a simulation.
    rng: StdRng,
    seeded: bool,
    config: ReplicaConfig,
    transport: Arc<dyn Transport>,
    shared: Arc<Shared>,
    inputs: Receiver<Input>,
    peer_inputs: Receiver<PeerInput>,
    proposals: Proposals,
    /// Proposals made since the last Ready with entries (see `Stages`).
    proposed_this_turn: Vec<u64>,
    /// Writes passed to the leader this turn, sent as one message after
    /// the turn's inputs (see `forwarding.rs`).
    forward_queue: forwarding::ForwardQueue,
    reads: ReadBatcher,
    /// Index of the last entry applied to the state machine (starts at the
    /// snapshot index: everything after it is replayed from the log).
    applied_index: u64,
    /// A membership change was applied and must be made durable this turn.
    membership_dirty: bool,
    /// `Some(term)` while this node is leader in `term`.
    leader_term: Option<u64>,
    /// The term in which this node last proposed a cluster id.
    cluster_id_proposed_in: Option<u64>,
    /// While leader: the index of the first entry of its term (the empty
    /// entry raft appends on election). A peer that acknowledged it takes
    /// this leader's log.
    term_start_index: u64,
    /// While leader: the log time when leadership began and the monotonic
    /// instant it began at. Commands are stamped with base + elapsed, so a
    /// jump of the leader's wall clock cannot expire client sessions early.
    leader_clock: Option<(u64, Instant)>,
    /// While leader: when this node became leader (on its clock).
    leading_since: Option<Instant>,
    tick_interval: Duration,
    next_tick: Instant,
    /// When a raft message from each peer was last taken: a peer whose
    /// process is stopped keeps its connection open (so the transport calls
    /// it reachable) but sends nothing.
    last_heard: HashMap<u64, Instant>,
    /// The highest commit index a leader told this node of (in appends and
    /// heartbeats; a snapshot's index): how far the cluster got, which a
    /// follower's own commit index (bounded by the log it holds) does not
    /// say while it is behind.
    leader_commit_seen: u64,
    snapshots: SnapshotStore,
    /// The node's own event queue (the peer queue), for background work.
    events: Sender<PeerInput>,
    snapshot_in_progress: bool,
    snapshot_waiters: Vec<oneshot::Sender<Result<SnapshotInfo, ReplicaError>>>,
    last_snapshot_index: u64,
    /// This node was removed from the cluster: it no longer ticks (so it
    /// never campaigns) and refuses reads and writes.
    removed: bool,
    /// The newest configuration index a peer said lacks this node.
    removal_notice: Option<u64>,
    /// Log index at which each peer last joined the configuration (as seen
    /// by this node): a snapshot older than that cannot serve the peer.
    peer_added_at: std::collections::HashMap<u64, u64>,
    /// The free-space reserve (see `node/disk_space.rs`).
    disk: disk_space::DiskReserve,
    lease: lease::Lease,
    /// The last probe sent to each probing follower (see `node/probes.rs`).
    probes: probes::Probes,
    /// When this node started: it grants no votes for an election timeout
    /// after (see `node/lease.rs`).
    started_at: Instant,
    /// The membership change this leader is carrying out (one at a time).
    job: Option<change_job::ChangeJob>,
    /// While leader: when each etcd lease expires.
    lease_timers: lease_timers::LeaseTimers,
}

fn fatal(context: &str) -> impl Fn(raftkv_storage::StorageError) -> FatalError + '_ {
    move |e| FatalError(format!("{context}: {e}"))
}

impl<S: LogStore> Node<S> {
    pub(crate) fn new(
        storage: S,
        config: ReplicaConfig,
        transport: Arc<dyn Transport>,
        shared: Arc<Shared>,
        channels: NodeChannels,
        snapshots: SnapshotStore,
        clock: Arc<dyn Clock>,
    ) -> Result<Node<S>, FatalError> {
        let NodeChannels {
            inputs,
            peer_inputs,
            events,
        } = channels;
        // Restart: the state machine starts from the latest snapshot and
        // the log after it is replayed.
        let latest_snapshot = storage.latest_snapshot().map(|(meta, _)| meta);
        let snapshot_index = match latest_snapshot {
            Some(meta) => {
                let (state, _) = load_snapshot(&snapshots, meta, config.sessions)?;
                shared.revision.send_replace(state.revision());
                shared
                    .auth_enabled
                    .store(state.auth().enabled, std::sync::atomic::Ordering::Release);
                *shared.kv.write().expect("kv lock poisoned") = state;
                meta.index
            }
            None => {
                *shared.kv.write().expect("kv lock poisoned") = KvState::new(config.sessions);
                0
            }
        };
        let (heartbeat_tick, election_tick) = config.ticks();
        let raft_config = raft::Config {
            applied: snapshot_index,
            id: config.node_id,
            election_tick,
            heartbeat_tick,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: config.max_append_bytes,
            max_inflight_msgs: config.max_inflight_appends,
            max_committed_size_per_ready: config.max_committed_bytes_per_ready,
            max_uncommitted_size: config.max_uncommitted_bytes,
            // Lease reads are done by the host (see docs/REFERENCE.md §2), never by
            // raft-rs's node-wide LeaseBased option.
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| FatalError(format!("invalid raft configuration: {e}")))?;
        let addresses = storage.membership().peer_dial_addresses();
        let raw = RawNode::new(&raft_config, storage, &raft_logger(config.node_id))
            .map_err(|e| FatalError(format!("cannot start raft: {e}")))?;
        transport.update_peers(&addresses);
        let applied_index = raw.raft.raft_log.applied;
        let tick_interval = config.heartbeat_interval;
        let now = clock.now();
        let (mut rng, seeded) = match config.seed {
            Some(seed) => (StdRng::seed_from_u64(seed), true),
            None => (StdRng::from_entropy(), false),
        };
        // Start from random ids so that an entry proposed (or a read round
        // started) before a restart is never mistaken for one after it.
        let first_proposal_id = rng.gen::<u64>() >> 1;
        let first_read_ctx = rng.gen::<u64>() >> 1;
        let lease_duration = if config.bugs.on(|b| b.lease_longer_than_election_timeout) {
            config.election_timeout * 3
        } else {
            config.lease_duration()
        };
        let lease_reads = config.lease_reads;
        let min_free_bytes = config.min_free_bytes;
        let mut node = Node {
            id: config.node_id,
            raw,
            clock,
            now,
            rng,
            seeded,
            reads: ReadBatcher::new(config.election_timeout / 2, first_read_ctx),
            config,
            transport,
            shared,
            inputs,
            peer_inputs,
            proposals: Proposals::new(first_proposal_id),
            proposed_this_turn: Vec::new(),
            forward_queue: Default::default(),
            applied_index,
            membership_dirty: false,
            leader_term: None,
            term_start_index: 0,
            cluster_id_proposed_in: None,
            leader_clock: None,
            leading_since: None,
            tick_interval,
            next_tick: now + tick_interval,
            last_heard: HashMap::new(),
            leader_commit_seen: 0,
            snapshots,
            events,
            snapshot_in_progress: false,
            snapshot_waiters: Vec::new(),
            last_snapshot_index: snapshot_index,
            removed: false,
            removal_notice: None,
            peer_added_at: std::collections::HashMap::new(),
            disk: disk_space::DiskReserve::new(min_free_bytes),
            lease: lease::Lease::new(lease_duration, lease_reads),
            probes: probes::Probes::default(),
            started_at: now,
            job: None,
            lease_timers: Default::default(),
        };
        node.reseed_election_timeout();
        Ok(node)
    }

    /// raft-rs draws a node's randomized election timeout from an unseeded
    /// RNG whenever it resets its election timer (which leaves
    /// `election_elapsed` at 0). With a seed, that draw is replaced by one
    /// from the node's own RNG after every raft call that can reset it,
    /// before the next tick compares against it: the same seed then gives
    /// the same elections.
    fn reseed_election_timeout(&mut self) {
        if !self.seeded || self.raw.raft.election_elapsed != 0 {
            return;
        }
        let (_, election_tick) = self.config.ticks();
        let timeout = self.rng.gen_range(election_tick..2 * election_tick);
        self.raw.raft.set_randomized_election_timeout(timeout);
    }

    /// Runs until shutdown or a fatal error, then fails everything waiting.
    pub(crate) fn run(mut self) {
        let shared = self.shared.clone();
        // A panic (a raft-rs `fatal!`, say) must stop the server too, never
        // leave it up with a frozen state machine.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let result = self.run_loop();
            (result, self)
        }));
        let reason = match outcome {
            Ok((result, mut node)) => {
                let reason = match result {
                    Ok(()) => "node shut down".to_string(),
                    Err(e) => {
                        tracing::error!("node {} stopping on a fatal error: {e}", node.id);
                        format!("fatal: {e}")
                    }
                };
                // A write in flight may have been committed already.
                node.proposals
                    .fail_all(ReplicaError::UnknownOutcome(reason.clone()));
                node.reads.fail_all(&ReplicaError::Stopped(reason.clone()));
                reason
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tracing::error!("node thread panicked: {message}");
                format!("fatal: node thread panicked: {message}")
            }
        };
        shared.stopped.send_replace(Some(reason));
    }

    fn run_loop(&mut self) -> Result<(), FatalError> {
        self.start()?;
        let mut peer_batch = Vec::new();
        loop {
            // Raft may have more to hand out (entries past the per-Ready
            // limit, a read round to start): then do not wait for a tick.
            let wait = if self.raw.has_ready() {
                Duration::ZERO
            } else {
                self.next_tick.saturating_duration_since(self.clock.now())
            };
            let mut first = None;
            crossbeam_channel::select! {
                recv(self.peer_inputs) -> input => match input {
                    Ok(input) => peer_batch.push(input),
                    Err(_) => return Ok(()),
                },
                recv(self.inputs) -> input => match input {
                    Ok(input) => first = Some(input),
                    Err(_) => return Ok(()),
                },
                default(wait) => {}
            }
            if !self.turn(&mut peer_batch, first)? {
                return Ok(());
            }
        }
    }

    /// What the node does once before its first turn.
    pub(crate) fn start(&mut self) -> Result<(), FatalError> {
        self.now = self.clock.now();
        // A snapshot loaded at start may hold the cluster id.
        self.adopt_cluster_id()?;
        self.check_free_space();
        self.update_removed();
        // A single-voter cluster need not wait out an election timeout.
        let voters = &self.raw.store().membership().conf_state.voters;
        if voters.len() == 1 && voters[0] == self.id {
            if let Err(e) = self.raw.campaign() {
                tracing::warn!("node {}: cannot campaign at start: {e}", self.id);
            }
            self.reseed_election_timeout();
        }
        self.publish_status();
        Ok(())
    }

    /// One turn: takes `first` and every queued input (up to a bound; peer
    /// inputs first, collected in `peer_batch`), ticks if a tick is due,
    /// starts read rounds, and handles `Ready`. Everything it decides, it
    /// decides at one reading of the clock. False: shut down.
    pub(crate) fn turn(
        &mut self,
        peer_batch: &mut Vec<PeerInput>,
        first: Option<Input>,
    ) -> Result<bool, FatalError> {
        self.now = self.clock.now();
        if let Some(input) = first {
            if !self.handle(input) {
                return Ok(false);
            }
        }
        while peer_batch.len() < MAX_PEER_INPUTS_PER_TURN {
            match self.peer_inputs.try_recv() {
                Ok(input) => peer_batch.push(input),
                Err(_) => break,
            }
        }
        probes::coalesce_heartbeat_responses(peer_batch);
        let commit_seen = self.leader_commit_seen;
        for input in peer_batch.drain(..) {
            self.handle_peer(input)?;
        }
        if self.leader_commit_seen != commit_seen {
            // Shown before this turn writes to disk (long on a slow disk):
            // readiness then sees how far behind the node is.
            self.publish_status();
        }
        for _ in 0..MAX_INPUTS_PER_TURN {
            match self.inputs.try_recv() {
                Ok(input) => {
                    if !self.handle(input) {
                        return Ok(false);
                    }
                }
                Err(_) => break,
            }
        }
        let now = self.now;
        if now >= self.next_tick {
            // A removed node must not campaign against the cluster.
            if !self.removed {
                self.raw.tick();
                self.reseed_election_timeout();
            }
            self.check_free_space();
            self.next_tick = now + self.tick_interval;
        }
        self.step_down_if_removed();
        self.revoke_expired_leases();
        self.maybe_issue_read(now);
        self.maybe_propose_cluster_id();
        self.send_forwarded();
        self.on_ready()?;
        self.after_turn();
        self.advance_job();
        self.maybe_start_snapshot();
        self.reseed_election_timeout();
        Ok(true)
    }

    fn handle_peer(&mut self, input: PeerInput) -> Result<(), FatalError> {
        match input {
            PeerInput::Raft(message) => {
                if let Err(rejection) = self.check_peer_message(&message) {
                    tracing::debug!(
                        "node {}: dropped a {:?} from node {}: {}",
                        self.id,
                        message.get_msg_type(),
                        message.from,
                        rejection.label()
                    );
                    self.shared.peer_rejections.count(rejection);
                    return Ok(());
                }
                if self.raw.raft.prs().get(message.from).is_some() {
                    // Members only: a removed node that still sends must
                    // not grow the table.
                    self.last_heard.insert(message.from, self.now);
                }
                self.note_leader_commit(&message);
                if message.get_msg_type() == raft::eraftpb::MessageType::MsgPropose {
                    self.on_proposal_message(message);
                    return Ok(());
                }
                if self.votes_too_early(&message) {
                    return Ok(());
                }
                if message.get_msg_type() == raft::eraftpb::MessageType::MsgAppend
                    && !message.entries.is_empty()
                {
                    let room = self.has_room_for(entries_bytes(&message.entries));
                    // Not taken: it is sent again once there is space; the
                    // leader hears of the lack of space with this node's
                    // next messages.
                    self.note_append_space(!room);
                    if !room {
                        return Ok(());
                    }
                }
                if let Err(e) = self.raw.step(message) {
                    tracing::debug!("dropped a raft message: {e}");
                }
                self.reseed_election_timeout();
            }
            PeerInput::Unreachable(id) => {
                self.raw.report_unreachable(id);
                self.forwarded_unreachable(id);
            }
            PeerInput::SnapshotStatus { to, delivered } => {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            PeerInput::SnapshotWritten { result, membership } => {
                self.on_snapshot_written(result, membership)?;
            }
            PeerInput::RemovedNotice { from, index } => self.on_removed_notice(from, index),
        }
        Ok(())
    }

    /// Handles one input; false means stop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Propose(input) => self.propose(input),
            Input::LeaseKeepAlive { id, reply } => {
                let _ = reply.send(self.keep_lease_alive(id));
            }
            Input::LeaseTimeToLive { id, reply } => {
                let _ = reply.send(self.lease_time_to_live(id));
            }
            Input::Read { reply, queued } => {
                if let Err(e) = self.check_serving() {
                    let _ = reply.send(Err(e));
                } else if self.raw.raft.state == StateRole::Leader {
                    let queued_for = self.clock.now().saturating_duration_since(queued);
                    self.reads.queue(reply, queued_for);
                } else {
                    let _ = reply.send(Err(self.not_leader()));
                }
            }
            Input::Query(query) => self.answer(query),
            Input::ChangeMembership { request, reply } => self.propose_conf_change(request, reply),
            Input::TransferLeader { to, reply } => self.transfer_leader(to, reply),
            Input::SetMemberAddress { member, reply } => {
                if let Err(e) = self.change_in_progress() {
                    let _ = reply.send(Err(e));
                } else {
                    self.propose_member_address(member, reply)
                }
            }
            Input::Change {
                plan,
                timeout,
                reply,
            } => self.start_change(plan, timeout, reply),
            Input::Transfer { to, timeout, reply } => self.start_transfer(to, timeout, reply),
            Input::LeaveJoint { timeout, reply } => self.start_leave_joint(timeout, reply),
            Input::Shutdown => return false,
        }
        true
    }

    pub(crate) fn store(&self) -> &S {
        self.raw.store()
    }

    pub(crate) fn raft(&self) -> &raft::Raft<S> {
        &self.raw.raft
    }

    /// Whether a turn now would have anything to do: inputs are queued,
    /// raft has a `Ready`, or a tick is due on the node's clock.
    pub(crate) fn wants_turn(&self) -> bool {
        !self.inputs.is_empty()
            || !self.peer_inputs.is_empty()
            || self.raw.has_ready()
            || self.clock.now() >= self.next_tick
    }

    /// Callers still waiting for an answer: proposals, reads, a
    /// membership job.
    pub(crate) fn waiting(&self) -> (usize, usize, bool) {
        (
            self.proposals.len(),
            self.reads.pending(),
            self.job.is_some(),
        )
    }

    /// Drops what the per-peer tables hold about nodes no longer members,
    /// so replacing nodes over the years does not grow them.
    pub(super) fn forget_departed_peers(&mut self, members: &[u64]) {
        self.last_heard.retain(|id, _| members.contains(id));
        self.peer_added_at.retain(|id, _| members.contains(id));
        self.probes.retain(members);
    }

    /// How much the node's queues and per-peer tables hold now.
    pub(crate) fn queue_sizes(&self) -> QueueSizes {
        let store = self.raw.store();
        let first = store.first_index().unwrap_or(1);
        QueueSizes {
            proposals: self.proposals.len(),
            reads: self.reads.pending(),
            inputs: self.inputs.len(),
            peer_inputs: self.peer_inputs.len(),
            snapshot_waiters: self.snapshot_waiters.len(),
            peer_table_entries: self
                .last_heard
                .len()
                .max(self.peer_added_at.len())
                .max(self.probes.len()),
            log_entries_below_applied: self.applied_index.saturating_sub(first - 1),
            last_snapshot_index: self.last_snapshot_index,
        }
    }

    pub(crate) fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The cluster's log version (see `log_version.rs`).
    fn cluster_log_version(&self) -> crate::log_version::ClusterLogVersion {
        self.shared
            .cluster_log_version(self.id, self.config.log_version)
    }

    fn not_leader(&self) -> ReplicaError {
        let (leader_id, leader_address) = self.leader_hint();
        let why = if leader_id == 0 {
            self.why_no_leader()
        } else {
            String::new()
        };
        ReplicaError::NotLeader {
            leader_id,
            leader_address,
            why,
        }
    }

    /// What this node sees while it knows no leader: the voters it cannot
    /// reach, against the quorum an election needs.
    fn why_no_leader(&self) -> String {
        let membership = self.raw.store().membership();
        let voters = &membership.conf_state.voters;
        let unreachable: Vec<String> = voters
            .iter()
            .filter(|id| **id != self.id && !self.transport.is_reachable(**id))
            .map(|id| match membership.peer_address(*id) {
                Some(address) => format!("{id} ({address})"),
                None => id.to_string(),
            })
            .collect();
        let quorum = voters.len() / 2 + 1;
        if unreachable.is_empty() {
            format!(
                "node {} reaches every voter; an election is under way",
                self.id
            )
        } else if voters.len() - unreachable.len() < quorum {
            format!(
                "quorum lost: node {} cannot reach voters {}; a leader needs {quorum} of the {} voters",
                self.id,
                unreachable.join(", "),
                voters.len()
            )
        } else {
            format!(
                "node {} cannot reach voters {}; an election is under way",
                self.id,
                unreachable.join(", ")
            )
        }
    }

    fn propose(&mut self, input: ProposeInput) {
        let ProposeInput {
            write,
            session,
            caller,
            reply,
            queued,
            forward,
        } = input;
        let times = Times {
            queued,
            taken: self.clock.now(),
            persisted: None,
            forwarded: false,
        };
        if let Err(e) = self.check_serving() {
            let _ = reply.send(Err(e));
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            if forward && self.leader_takes_forwarded(&write) {
                self.forward_write(write, session, caller, reply, times);
            } else {
                let _ = reply.send(Err(self.not_leader()));
            }
            return;
        }
        if let Err(e) = self.check_pending_bound() {
            let _ = reply.send(Err(e));
            return;
        }
        let proposal_id = self.proposals.next_id();
        match self.propose_write(write, session, &caller, self.id, proposal_id, 0) {
            Ok(()) => {
                self.proposals.insert_timed(proposal_id, reply, times);
                self.proposed_this_turn.push(proposal_id);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Checks a client's write as leader (disk reserve, quota, the
    /// cluster's log version), stamps it with the leader's log clock and
    /// log version, and proposes it: for this node's own caller, or for a
    /// follower's (`proposer`), which waits for the entry itself.
    /// `needs`: a log version the write needs beyond its kind's (what the
    /// follower that passed it on said).
    fn propose_write(
        &mut self,
        write: Write,
        session: WriteSession,
        caller: &Caller,
        proposer: u64,
        proposal_id: u64,
        needs: u32,
    ) -> Result<(), ReplicaError> {
        self.check_space(write.bytes())
            .and_then(|()| self.check_quota(&write))?;
        let log_version = self.cluster_log_version();
        crate::log_version::check_proposable(write.log_version().max(needs), log_version)?;
        let stamp = Stamp {
            proposer,
            proposal_id,
            timestamp_ms: self.log_clock_ms(),
            rules: log_version.version,
        };
        let command = command_of(write, session, caller, stamp);
        match self.raw.propose(vec![], encode_command(&command)) {
            Ok(()) => Ok(()),
            Err(raft::Error::ProposalDropped) => Err(ReplicaError::Unavailable(
                "write dropped by raft (leadership transfer in progress or too much \
                 uncommitted data); retry"
                    .into(),
            )),
            Err(e) => Err(ReplicaError::Unavailable(format!("write refused: {e}"))),
        }
    }

    /// Refuses a write while too many wait for their entries.
    fn check_pending_bound(&self) -> Result<(), ReplicaError> {
        if self.proposals.len() >= self.config.max_pending_proposals {
            return Err(ReplicaError::Unavailable(format!(
                "too many writes pending ({}); retry",
                self.proposals.len()
            )));
        }
        Ok(())
    }

    /// Checks a message from the network against this node's state, so that
    /// nothing raft-rs asserts on reaches it (`peer_check.rs`).
    fn check_peer_message(&self, message: &Message) -> Result<(), crate::peer_check::Rejection> {
        let raft = &self.raw.raft;
        // Every member (joint and learners included) has a progress entry.
        let is_member = |id: u64| raft.prs().get(id).is_some();
        let configured = raft.prs().iter().next().is_some();
        crate::peer_check::check_against_node(
            message,
            &crate::peer_check::NodeView {
                is_member: configured.then_some(&is_member as &dyn Fn(u64) -> bool),
                leader_id: raft.leader_id,
                last_index: raft.raft_log.last_index(),
                term: raft.term,
            },
        )
    }

    /// A node that just started knows no leader, so raft would grant votes
    /// at once, even while the leader's lease (counted on the votes of
    /// nodes that were up) still holds. It waits out one election timeout
    /// first, as it would have if it had kept running. Transfers, which
    /// the leader started itself, are not held back.
    fn votes_too_early(&self, message: &Message) -> bool {
        use raft::eraftpb::MessageType::{MsgRequestPreVote, MsgRequestVote};
        matches!(message.get_msg_type(), MsgRequestVote | MsgRequestPreVote)
            && message.context.as_ref() != raft::CAMPAIGN_TRANSFER
            && self.now.saturating_duration_since(self.started_at) < self.config.election_timeout
    }

    /// The time stamped on a new command: log time when leadership began
    /// plus the monotonic time since.
    fn log_clock_ms(&mut self) -> u64 {
        let (base_ms, since) = *self.leader_clock.get_or_insert_with(|| {
            let base_ms = self.shared.kv.read().expect("kv lock poisoned").clock_ms();
            (base_ms, self.now)
        });
        base_ms + self.now.saturating_duration_since(since).as_millis() as u64
    }

    /// A leader the cluster removed (it left a joint configuration that did
    /// not hold it, or a peer told it) stops leading. Without this it kept
    /// renewing its read lease with heartbeat rounds, so the remaining voters
    /// kept following it and never elected a leader of their own.
    ///
    /// Called at the start of every turn and as soon as a membership change
    /// that removes this node applies: a node can lead when its own removal
    /// applies (the leader before it proposed the removal and crashed, and
    /// this node won the next election with the entry in its log), and
    /// raft-rs keeps such a leader leading and panics when it next persists
    /// an entry, its own progress gone (found by the simulator, seed 14907).
    /// Stepping down in the same term is safe: no vote changes.
    fn step_down_if_removed(&mut self) {
        if self.removed && self.raw.raft.state == StateRole::Leader {
            let term = self.raw.raft.term;
            tracing::warn!(
                "node {} was removed while leading: stepping down so the members elect a leader",
                self.id
            );
            // raft-rs treats a follower with messages queued between a
            // Ready and its advance as fatal; dropping one is always safe.
            self.raw.raft.msgs.clear();
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
    }

    fn maybe_issue_read(&mut self, now: Instant) {
        // raft-rs drops a ReadIndex until the leader has committed an entry
        // of its own term; hold the reads until then instead.
        if self.raw.raft.state != StateRole::Leader || !self.raw.raft.commit_to_current_term() {
            return;
        }
        if let Some(ctx) = self.reads.round_to_issue(now, self.clock.boot()) {
            self.raw.read_index(ctx);
        }
        self.maybe_renew_lease(now);
    }

    fn on_ready(&mut self) -> Result<(), FatalError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if !rd.messages().is_empty() {
            let messages = self.without_repeated_probes(rd.take_messages());
            self.transport
                .send(messages.into_iter().map(PeerMessage).collect());
        }
        if !rd.snapshot().is_empty() {
            // Before the entries that follow it (and before anything is
            // applied on top of it).
            let metadata = rd.snapshot().get_metadata();
            self.install_snapshot(SnapshotMeta {
                index: metadata.index,
                term: metadata.term,
            })?;
        }
        self.apply_entries(rd.take_committed_entries())?;
        if !rd.entries().is_empty() {
            let appended = entries_bytes(rd.entries());
            self.disk.appended(appended);
        }
        let store = self.raw.mut_store();
        if !rd.entries().is_empty() {
            store
                .append(rd.entries())
                .map_err(fatal("appending to the log"))?;
        }
        if self.config.bugs.on(|b| b.apply_before_commit)
            && self.raw.raft.state == StateRole::Leader
        {
            self.apply_entries(rd.entries().to_vec())?;
        }
        let store = self.raw.mut_store();
        // Only what raft needs durable before it goes on is synced here:
        // entries, term and vote. A hard state whose commit index alone
        // moved is buffered and written with the next sync (as etcd does);
        // a commit index lost in a crash is learned again from the leader,
        // and every acknowledged entry is in the log already. On a follower
        // a commit-only sync came with every heartbeat or empty append that
        // carried a new commit index: up to one extra fdatasync per batch.
        if let Some(hs) = rd.hs() {
            if self.config.bugs.on(|b| b.forget_vote) {
                let mut hs = hs.clone();
                hs.vote = 0;
                store.set_hard_state(&hs);
            } else {
                store.set_hard_state(hs);
            }
        }
        if rd.must_sync() || self.membership_dirty {
            if !self.config.bugs.on(|b| b.ack_before_fsync) {
                store.sync().map_err(fatal("syncing the log"))?;
            }
            self.membership_dirty = false;
        }
        if !rd.entries().is_empty() && !self.proposed_this_turn.is_empty() {
            // What this node proposed this turn is in this Ready's entries.
            let ids = std::mem::take(&mut self.proposed_this_turn);
            self.proposals.persisted(&ids, self.clock.now());
        }
        if !rd.persisted_messages().is_empty() {
            self.transport.send(
                rd.take_persisted_messages()
                    .into_iter()
                    .map(PeerMessage)
                    .collect(),
            );
        }
        for rs in rd.take_read_states() {
            if !self.on_lease_read_state(&rs.request_ctx) {
                if let Some(sent) = self.reads.on_read_state(&rs.request_ctx, rs.index) {
                    self.extend_lease(sent);
                }
                if self.config.bugs.on(|b| b.read_before_applied) {
                    self.reads.on_applied(u64::MAX);
                }
            }
        }
        let mut light = self.raw.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            let store = self.raw.mut_store();
            let mut hs = store.hard_state().clone();
            hs.commit = commit;
            store.set_hard_state(&hs);
        }
        if !light.messages().is_empty() {
            let messages = self.without_repeated_probes(light.take_messages());
            self.transport
                .send(messages.into_iter().map(PeerMessage).collect());
        }
        self.apply_entries(light.take_committed_entries())?;
        if self.membership_dirty {
            self.raw
                .mut_store()
                .sync()
                .map_err(fatal("syncing the membership"))?;
            self.membership_dirty = false;
        }
        if self.applied_index > self.raw.raft.raft_log.applied {
            let mut applied = self.applied_index;
            if self.config.bugs.on(|b| b.apply_before_commit) {
                applied = applied.min(self.raw.raft.raft_log.committed);
            }
            if applied > self.raw.raft.raft_log.applied {
                self.raw.advance_apply_to(applied);
            }
        }
        self.reads.on_applied(self.applied_index);
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), FatalError> {
        if entries.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let result = self.apply_entries_to(&shared, entries);
        let (revision, auth_enabled) = {
            let kv = shared.kv.read().expect("kv lock poisoned");
            (kv.revision(), kv.auth().enabled)
        };
        shared
            .auth_enabled
            .store(auth_enabled, std::sync::atomic::Ordering::Release);
        shared.revision.send_if_modified(|current| {
            let changed = *current != revision;
            *current = revision;
            changed
        });
        result
    }

    fn apply_entries_to(&mut self, shared: &Shared, entries: Vec<Entry>) -> Result<(), FatalError> {
        let applying_since = self.clock.now();
        let mut kv = shared.kv.write().expect("kv lock poisoned");
        let early = self.config.bugs.on(|b| b.apply_before_commit);
        for entry in entries {
            let (index, term) = (entry.index, entry.term);
            if early && index <= self.applied_index {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => kv.mark_applied(index, term),
                EntryType::EntryNormal => {
                    let command = decode_command(&entry.data).map_err(|e| {
                        FatalError(format!("undecodable command in log entry {index}: {e}"))
                    })?;
                    crate::log_version::check_applicable(
                        index,
                        command.rules,
                        self.config.log_version,
                    )?;
                    shared
                        .newest_applied_log_version
                        .fetch_max(command.rules, std::sync::atomic::Ordering::Relaxed);
                    let outcome = kv.apply(index, term, &command);
                    if outcome == ApplyOutcome::Applied
                        && (command.lease_grant.is_some() || command.lease_revoke != 0)
                    {
                        let granted = command.lease_grant.as_ref().map(|g| (g.id, g.ttl));
                        self.on_lease_applied(granted, command.lease_revoke);
                    }
                    if let Some(member) = &command.member_address {
                        self.apply_member_address(index, member);
                    }
                    if command.proposer == self.id {
                        let result = match outcome {
                            ApplyOutcome::Applied | ApplyOutcome::Duplicate => Ok(WriteResult {
                                revision: kv.revision(),
                                ..Default::default()
                            }),
                            ApplyOutcome::Txn(response) => Ok(WriteResult {
                                revision: kv.revision(),
                                txn: Some(response),
                                ..Default::default()
                            }),
                            ApplyOutcome::Refused(reason) => Err(ReplicaError::Rejected(reason)),
                            ApplyOutcome::Denied(reason) => {
                                Err(ReplicaError::PermissionDenied(reason))
                            }
                            ApplyOutcome::SessionExpired => {
                                Err(ReplicaError::SessionExpired(format!(
                                    "the cluster no longer knows client session {:x}; start a \
                                     new session",
                                    command.client_id
                                )))
                            }
                            ApplyOutcome::TooManySessions => Err(ReplicaError::Unavailable(
                                "too many client sessions were active recently to open another; \
                                 retry"
                                    .into(),
                            )),
                        };
                        let now = self.clock.now();
                        self.proposals.complete_applied(
                            command.proposal_id,
                            result,
                            applying_since,
                            now,
                        );
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    kv.mark_applied(index, term);
                    self.apply_conf_change(&entry)?;
                }
            }
            self.applied_index = index;
        }
        drop(kv);
        self.adopt_cluster_id()?;
        self.shared
            .status
            .lock()
            .expect("status lock poisoned")
            .applied_index = self.applied_index;
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), FatalError> {
        // The persisted membership already holds every change up to its
        // index: replaying the log after a restart must not apply it twice.
        let current = self.raw.store().membership().clone();
        if entry.index <= current.index {
            return Ok(());
        }
        let undecodable = |e: protobuf::ProtobufError| {
            FatalError(format!(
                "undecodable conf change in entry {}: {e}",
                entry.index
            ))
        };
        let context = decode_conf_change_context(&entry.context);
        let applied = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            let change = ConfChangeV2::parse_from_bytes(&entry.data).map_err(undecodable)?;
            self.raw.apply_conf_change(&change)
        } else {
            let change = ConfChange::parse_from_bytes(&entry.data).map_err(undecodable)?;
            self.raw.apply_conf_change(&change)
        };
        let result = match applied {
            Ok(conf_state) => {
                let max_node_id = member_ids(&conf_state)
                    .last()
                    .copied()
                    .unwrap_or(0)
                    .max(current.max_node_id);
                let (addresses, peer_addresses) = next_addresses(&current, &context, &conf_state);
                let record = MembershipRecord {
                    index: entry.index,
                    addresses,
                    peer_addresses,
                    conf_state,
                    max_node_id,
                };
                let before = member_ids(&current.conf_state);
                for id in member_ids(&record.conf_state) {
                    if !before.contains(&id) {
                        self.peer_added_at.insert(id, entry.index);
                    }
                }
                tracing::info!(
                    "node {} applied membership change at index {}: voters {:?} learners {:?} outgoing {:?}",
                    self.id,
                    entry.index,
                    record.conf_state.voters,
                    record.conf_state.learners,
                    record.conf_state.voters_outgoing
                );
                self.set_membership(record);
                Ok(())
            }
            // Every replica refuses the same committed change the same way.
            Err(e) => {
                tracing::warn!("membership change at index {} refused: {e}", entry.index);
                Err(ReplicaError::Rejected(format!(
                    "membership change refused: {e}"
                )))
            }
        };
        if context.proposer == self.id {
            let result = result.map(|()| WriteResult::default());
            self.proposals.complete(context.proposal_id, result);
        }
        self.update_removed();
        self.step_down_if_removed();
        Ok(())
    }

    /// A new membership record applied from the log: the transport, readers
    /// and the WAL (synced before this turn's messages go out) learn it.
    fn set_membership(&mut self, record: MembershipRecord) {
        self.forget_departed_peers(&member_ids(&record.conf_state));
        self.transport.update_peers(&record.peer_dial_addresses());
        *self
            .shared
            .membership
            .write()
            .expect("membership lock poisoned") = record.clone();
        self.raw.mut_store().set_membership(record);
        self.membership_dirty = true;
    }

    fn role(&self) -> Role {
        if self.removed {
            return Role::Removed;
        }
        match self.raw.raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => {
                let conf = self.raw.raft.prs().conf().to_conf_state();
                // A joining node has no configuration until its first
                // snapshot: it was added as a learner.
                let joining = member_ids(&conf).is_empty();
                if joining
                    || conf.learners.contains(&self.id)
                    || conf.learners_next.contains(&self.id)
                {
                    Role::Learner
                } else if member_ids(&conf).contains(&self.id) {
                    Role::Follower
                } else {
                    Role::Removed
                }
            }
        }
    }

    fn node_status(&self) -> NodeStatus {
        NodeStatus {
            id: self.id,
            cluster_id: self
                .shared
                .cluster
                .lock()
                .expect("cluster lock poisoned")
                .cluster_id,
            role: self.role(),
            term: self.raw.raft.term,
            leader_id: self.raw.raft.leader_id,
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: self.applied_index,
            leader_commit: self
                .leader_commit_seen
                .max(self.raw.raft.raft_log.committed),
        }
    }

    /// Keeps [`Node::leader_commit_seen`] from a leader's message.
    fn note_leader_commit(&mut self, message: &raft::eraftpb::Message) {
        use raft::eraftpb::MessageType;
        let commit = match message.get_msg_type() {
            MessageType::MsgAppend | MessageType::MsgHeartbeat => message.commit,
            MessageType::MsgSnapshot => message.get_snapshot().get_metadata().index,
            _ => return,
        };
        self.leader_commit_seen = self.leader_commit_seen.max(commit);
    }

    fn publish_status(&self) {
        let status = self.node_status();
        let mut shared = self.shared.status.lock().expect("status lock poisoned");
        if *shared != status {
            *shared = status;
        }
    }

    /// Fails waiting callers when leadership is lost, and publishes status.
    fn after_turn(&mut self) {
        let raft = &self.raw.raft;
        let leader_term = (raft.state == StateRole::Leader).then_some(raft.term);
        let transferring = raft.lead_transferee.is_some();
        let last_index = raft.raft_log.last_index();
        if self.leader_term != leader_term {
            self.restart_lease_timers(leader_term.is_some());
            self.leader_clock = None;
            self.leading_since = leader_term.map(|_| self.now);
            // Raft appended the term's first (empty) entry on election.
            self.term_start_index = if leader_term.is_some() {
                last_index
            } else {
                u64::MAX
            };
            // A new term's lease starts from nothing; a lease read must also
            // see every entry of earlier terms (at most the last index now).
            self.reset_lease(leader_term.map(|_| last_index));
        }
        if transferring {
            self.drop_lease();
        }
        if self.leader_term.is_some() && self.leader_term != leader_term {
            tracing::info!(
                "node {} is no longer leader of term {:?}",
                self.id,
                self.leader_term
            );
            self.proposals.fail_all(ReplicaError::UnknownOutcome(
                "leadership changed while the write was in flight; it may or may not have \
                 been applied"
                    .into(),
            ));
        }
        if leader_term.is_none() && self.reads.pending() > 0 {
            let error = self.not_leader();
            self.reads.fail_all(&error);
        }
        self.leader_term = leader_term;
        self.check_forwarded();
        self.maybe_leave_joint();
        self.publish_status();
    }
}
