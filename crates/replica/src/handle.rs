//! `Replica`: the handle through which the server talks to the node thread.
//!
//! Requests go over a bounded channel; a full channel is an `Unavailable`
//! error to the caller (backpressure), never an unbounded queue. State that
//! every reply needs (status, membership, the state machine for reads) is
//! shared behind locks so reads of it cost no round trip to the node thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use raftkv_kv::{KvState, Op};
use raftkv_storage::{FileStorage, MembershipRecord, SnapshotInfo, SnapshotStore, StorageStats};
use tokio::sync::{oneshot, watch};

use crate::clock::{Clock, SystemClock};
use crate::cluster_id::{ClusterContact, ClusterIds};
use crate::conf_change::ConfChangeRequest;
use crate::config::ReplicaConfig;
use crate::error::{FatalError, ReplicaError};
use crate::log_store::LogStore;
use crate::log_version::{cluster_log_version, ClusterLogVersion};
use crate::membership::member_ids;
use crate::node::{
    Caller, CompactResult, Input, LeaseInfo, LeaseState, Node, NodeChannels, PeerInput, Query,
    Write,
};
use crate::peer_check::{Rejection, RejectionCounters};
use crate::peer_message::PeerMessage;
use crate::proposals::{Stages, WriteResult};
use crate::status::{MembersInfo, NodeStatus, RaftStateInfo};
use crate::transport::Transport;

/// Election timeouts a node without a cluster id waits before it votes for
/// nodes that have one (`Replica::may_vote_without_cluster_id`).
const CLUSTER_ID_PATIENCE: u32 = 10;

/// The client session of a write, for deduplication of retries
/// (`client_id` 0: no session).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteSession {
    pub client_id: u64,
    pub seq: u64,
    pub first_incomplete_seq: u64,
}

/// State the node thread publishes for everyone else.
pub(crate) struct Shared {
    pub(crate) kv: RwLock<KvState>,
    pub(crate) lease: Mutex<LeaseState>,
    pub(crate) status: Mutex<NodeStatus>,
    pub(crate) membership: RwLock<MembershipRecord>,
    pub(crate) stopped: watch::Sender<Option<String>>,
    /// The store revision of the applied state, sent after every apply
    /// (what watchers wait on).
    pub(crate) revision: watch::Sender<u64>,
    /// Raft messages from the network refused before raft saw them.
    pub(crate) peer_rejections: RejectionCounters,
    /// This node cannot take entries for lack of disk space (told to peers
    /// on every message it sends).
    pub(crate) out_of_space: AtomicBool,
    /// The space quota's NOSPACE alarm (raised by the leader when the state
    /// passed `quota_bytes`; cleared by `disarm_quota`).
    pub(crate) quota_alarm: AtomicBool,
    /// Auth is on in the applied state (so a request path can skip the
    /// state's lock while it is off).
    pub(crate) auth_enabled: AtomicBool,
    /// Peers whose messages said they were out of space, and when the last
    /// one said so.
    pub(crate) peers_out_of_space: Mutex<HashMap<u64, Instant>>,
    /// This node's cluster ids (the cluster id once adopted from the log).
    pub(crate) cluster: Mutex<ClusterIds>,
    /// Whom this node hears from: its cluster's members, or another cluster.
    pub(crate) contact: Mutex<ClusterContact>,
    /// The log version each peer's build applies, as its last message said
    /// (see `log_version.rs`).
    pub(crate) peer_log_versions: Mutex<HashMap<u64, u32>>,
    /// Peers whose build takes writes a follower passes on through raft
    /// (see `node/forwarding.rs`), as their last message said.
    pub(crate) peers_taking_proposals: Mutex<std::collections::HashSet<u64>>,
    /// The newest log version among the entries this node applied since it
    /// started (what a node sent this node's log must be able to apply).
    pub(crate) newest_applied_log_version: std::sync::atomic::AtomicU32,
}

impl Shared {
    /// The cluster's log version: the lowest of the members' (this node,
    /// `own_id`, applies up to `own`).
    pub(crate) fn cluster_log_version(&self, own_id: u64, own: u32) -> ClusterLogVersion {
        let members = member_ids(
            &self
                .membership
                .read()
                .expect("membership lock poisoned")
                .conf_state,
        );
        let heard = self
            .peer_log_versions
            .lock()
            .expect("log version lock poisoned");
        cluster_log_version(own_id, own, &members, &heard)
    }
}

/// A handle to a running replica. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    shared: Arc<Shared>,
    inputs: Sender<Input>,
    peer_inputs: Sender<PeerInput>,
    node_id: u64,
    snapshots: SnapshotStore,
    min_free_bytes: u64,
    election_timeout: Duration,
    log_version: u32,
    started: Instant,
    clock: Arc<dyn Clock>,
}

impl Replica {
    /// Starts the node thread over `storage`, which must be initialized
    /// (bootstrapped) already.
    pub fn start(
        storage: FileStorage,
        snapshots: SnapshotStore,
        config: ReplicaConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<Replica, FatalError> {
        let node_id = config.node_id;
        let (replica, node) =
            Replica::assemble(storage, snapshots, config, transport, Arc::new(SystemClock))?;
        std::thread::Builder::new()
            .name(format!("raft-node-{node_id}"))
            .spawn(move || node.run())
            .map_err(|e| FatalError(format!("cannot start the node thread: {e}")))?;
        Ok(replica)
    }

    /// The handle and the node it talks to, not yet running: `start` runs
    /// the node on a thread of its own, a simulator turn by turn
    /// ([`crate::ReplicaCore`]).
    pub(crate) fn assemble<S: LogStore>(
        storage: S,
        snapshots: SnapshotStore,
        config: ReplicaConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Replica, Node<S>), FatalError> {
        let (inputs, receiver) = crossbeam_channel::bounded(config.max_queued_inputs);
        let (peer_inputs, peer_receiver) =
            crossbeam_channel::bounded(config.max_queued_peer_messages);
        let membership = storage.membership().clone();
        let shared = Arc::new(Shared {
            kv: RwLock::new(KvState::new(config.sessions)),
            lease: Mutex::new(LeaseState::default()),
            status: Mutex::new(NodeStatus {
                id: config.node_id,
                cluster_id: config.cluster_id,
                ..Default::default()
            }),
            membership: RwLock::new(membership),
            stopped: watch::channel(None).0,
            revision: watch::channel(1).0,
            peer_rejections: RejectionCounters::default(),
            out_of_space: AtomicBool::new(false),
            quota_alarm: AtomicBool::new(false),
            auth_enabled: AtomicBool::new(false),
            peers_out_of_space: Mutex::new(HashMap::new()),
            cluster: Mutex::new(ClusterIds {
                cluster_id: config.cluster_id,
                bootstrap_id: config.bootstrap_id,
            }),
            contact: Mutex::new(ClusterContact::default()),
            peer_log_versions: Mutex::new(HashMap::new()),
            peers_taking_proposals: Mutex::new(Default::default()),
            newest_applied_log_version: std::sync::atomic::AtomicU32::new(0),
        });
        let node_id = config.node_id;
        let min_free_bytes = config.min_free_bytes;
        let election_timeout = config.election_timeout;
        let log_version = config.log_version;
        let snapshot_store = snapshots.clone();
        let started = clock.now();
        let node = Node::new(
            storage,
            config,
            transport,
            shared.clone(),
            NodeChannels {
                inputs: receiver,
                peer_inputs: peer_receiver,
                events: peer_inputs.clone(),
            },
            snapshots,
            clock.clone(),
        )?;
        let replica = Replica {
            shared,
            inputs,
            peer_inputs,
            node_id,
            snapshots: snapshot_store,
            min_free_bytes,
            election_timeout,
            log_version,
            started,
            clock,
        };
        Ok((replica, node))
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The cluster's id (0 while this node has not adopted one from the log).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_ids().cluster_id
    }

    /// The cluster id and bootstrap id this node goes by (see `cluster_id.rs`).
    pub fn cluster_ids(&self) -> ClusterIds {
        *self.shared.cluster.lock().expect("cluster lock poisoned")
    }

    /// Whether this node, which has no cluster id, may now consider vote
    /// requests from nodes that have one (see `cluster_id.rs`): only once it
    /// has gone `CLUSTER_ID_PATIENCE` election timeouts since its start without
    /// learning the id or a leader. Members of a fresh cluster elect their own
    /// leader long before; a member that missed the whole first election must
    /// not keep the rest from electing one forever.
    pub fn may_vote_without_cluster_id(&self) -> bool {
        self.cluster_id() == 0
            && self.status().leader_id == 0
            && self.clock.now().saturating_duration_since(self.started)
                > CLUSTER_ID_PATIENCE * self.election_timeout
    }

    /// A message from `sender` was admitted: a member of this node's cluster
    /// if it has the same cluster id, unconfirmed if it has none yet.
    pub fn note_peer_contact(&self, sender: ClusterIds) {
        let own = self.cluster_ids();
        let mut contact = self.shared.contact.lock().expect("contact lock poisoned");
        if own.cluster_id != 0 && sender.cluster_id == 0 {
            contact.unconfirmed_contact(self.clock.now());
        } else {
            contact.member_contact(self.clock.now());
        }
    }

    /// Peer `peer` turned out to belong to another cluster, `cluster_id`.
    pub fn note_foreign_peer(&self, peer: u64, cluster_id: u64) {
        self.shared
            .contact
            .lock()
            .expect("contact lock poisoned")
            .foreign_contact(peer, cluster_id, self.clock.now());
    }

    /// Err when only nodes of another cluster reach this node lately: its data
    /// dir is not the cluster's, and it must serve no client request (reads
    /// included). Checked by every request; `stale`: a read of this node's own
    /// state (which also waits, right after a start, to hear from the cluster).
    pub fn check_cluster_contact(&self, stale: bool) -> Result<(), ReplicaError> {
        let contact = self.shared.contact.lock().expect("contact lock poisoned");
        let window = 2 * self.election_timeout;
        if contact.is_plainly_fine(stale) {
            return Ok(());
        }
        let is_leader = self.status().role == crate::status::Role::Leader;
        let has_peers = self
            .shared
            .membership
            .read()
            .expect("membership lock poisoned")
            .addresses
            .len()
            > 1;
        contact
            .check(
                self.cluster_ids(),
                self.node_id,
                has_peers,
                is_leader,
                stale,
                window,
                self.clock.now(),
            )
            .map_err(ReplicaError::WrongCluster)
    }

    fn submit(&self, input: Input) -> Result<(), ReplicaError> {
        match self.inputs.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ReplicaError::Unavailable(
                "node is overloaded (input queue full); retry".into(),
            )),
            Err(TrySendError::Disconnected(_)) => Err(self.stopped_error()),
        }
    }

    fn stopped_error(&self) -> ReplicaError {
        let reason = self.shared.stopped.borrow().clone();
        ReplicaError::Stopped(reason.unwrap_or_else(|| "node stopped".into()))
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Input,
    ) -> Result<T, ReplicaError> {
        let (tx, rx) = oneshot::channel();
        self.submit(make(tx))?;
        rx.await.map_err(|_| self.stopped_error())
    }

    /// Proposes `ops` as one atomic command; resolves once it is committed
    /// and applied (or failed), with the store revision it left.
    pub async fn propose(
        &self,
        ops: Vec<Op>,
        session: WriteSession,
    ) -> Result<WriteResult, ReplicaError> {
        self.write(Write::Ops(ops), session).await
    }

    /// Proposes a write of any kind (see [`Write`]); resolves once it is
    /// applied, with the store revision it left and, for an etcd
    /// transaction, its response.
    pub async fn write(
        &self,
        write: Write,
        session: WriteSession,
    ) -> Result<WriteResult, ReplicaError> {
        self.write_as(write, session, Caller::Anonymous).await
    }

    /// [`Replica::write`] on behalf of `caller`, whose permissions are
    /// checked when the write is applied (while auth is on).
    pub async fn write_as(
        &self,
        write: Write,
        session: WriteSession,
        caller: Caller,
    ) -> Result<WriteResult, ReplicaError> {
        self.submit_write(write, session, caller, false).await
    }

    /// [`Replica::write_as`] for an etcd write ([`Write::EtcdTxn`]), passed
    /// to the leader through raft's message stream when this node follows
    /// (as etcd's followers pass proposals on), instead of answered with
    /// [`ReplicaError::NotLeader`]: it resolves once this node has applied
    /// the entry. The leader checks and stamps it as its own clients'
    /// writes, and tells this node if it refuses it. The outcome is unknown
    /// ([`ReplicaError::UnknownOutcome`]) if the leader or term changes, the
    /// leader is reported unreachable or a snapshot replaces this node's
    /// state before the entry is applied here, or it is not applied within
    /// ten election timeouts (3 to 10 s). It answers `NotLeader` as
    /// `write_as` does with no leader known, for other kinds of writes, and
    /// when the leader's build does not take writes passed on this way.
    pub async fn write_through_leader(
        &self,
        write: Write,
        session: WriteSession,
        caller: Caller,
    ) -> Result<WriteResult, ReplicaError> {
        self.submit_write(write, session, caller, true).await
    }

    async fn submit_write(
        &self,
        write: Write,
        session: WriteSession,
        caller: Caller,
        forward: bool,
    ) -> Result<WriteResult, ReplicaError> {
        let queued = self.clock.now();
        self.ask(|reply| {
            Input::Propose(crate::node::ProposeInput {
                write,
                session,
                caller,
                reply,
                queued,
                forward,
            })
        })
        .await?
    }

    /// Resolves once this node (the leader) has confirmed its leadership
    /// with a quorum and applied everything committed before the call: a
    /// read of the state machine after that is linearizable.
    pub async fn read_index(&self) -> Result<(), ReplicaError> {
        self.read_index_timed().await.map(|_| ())
    }

    /// [`Replica::read_index`], telling where the wait went (queue and read
    /// index, see [`Stages`]).
    pub async fn read_index_timed(&self) -> Result<Stages, ReplicaError> {
        let queued = self.clock.now();
        let queued_for = self.ask(|reply| Input::Read { reply, queued }).await??;
        let total = self.clock.now().saturating_duration_since(queued);
        Ok(Stages {
            queue: queued_for,
            read_index: total.saturating_sub(queued_for),
            ..Default::default()
        })
    }

    /// The newest log version this node's build applies (told to peers with
    /// every message; see `log_version.rs`).
    pub fn log_version(&self) -> u32 {
        self.log_version
    }

    /// Peer `from`'s message said its build applies up to `version` (0:
    /// a build from before log versions were reported).
    pub fn note_peer_log_version(&self, from: u64, version: u32) {
        self.shared
            .peer_log_versions
            .lock()
            .expect("log version lock poisoned")
            .insert(from, version);
    }

    /// Peer `from`'s message said whether its build takes writes a follower
    /// passes to it through raft (builds before it answer none: a follower
    /// then forwards its clients' etcd writes over a client call).
    pub fn note_peer_takes_proposals(&self, from: u64, takes: bool) {
        let mut peers = self
            .shared
            .peers_taking_proposals
            .lock()
            .expect("proposals lock poisoned");
        if takes {
            peers.insert(from);
        } else {
            peers.remove(&from);
        }
    }

    /// The log version a node joining through this one must apply: the
    /// cluster's, or the newest among the entries this node applied since it
    /// started if that is higher (right after a leader change the cluster's
    /// counts members not heard from yet as the oldest build, while the log
    /// may already hold newer entries).
    pub fn log_version_to_join(&self) -> u32 {
        let applied = self
            .shared
            .newest_applied_log_version
            .load(Ordering::Relaxed);
        self.cluster_log_version().version.max(applied)
    }

    /// The cluster's log version as this node sees it: the lowest of its
    /// members' (see `log_version.rs`; meaningful on the leader, which hears
    /// from every member).
    pub fn cluster_log_version(&self) -> ClusterLogVersion {
        self.shared
            .cluster_log_version(self.node_id, self.log_version)
    }

    /// Proposes a membership change; resolves once it is applied (a joint
    /// change: once the joint configuration is; raft leaves it by itself
    /// unless `explicit`). Validated against the configuration raft holds.
    pub async fn change_membership(&self, request: ConfChangeRequest) -> Result<(), ReplicaError> {
        self.ask(|reply| Input::ChangeMembership { request, reply })
            .await?
    }

    /// Carries out a whole membership change on this node (the leader):
    /// learners added, promoted once caught up, leadership moved first if
    /// this node is to be removed, what was added undone if the change does
    /// not complete. Resolves once the new configuration is in force (not
    /// joint), or with why not, within `timeout`.
    pub async fn change(
        &self,
        plan: crate::conf_change::ChangePlan,
        timeout: Duration,
    ) -> Result<(), ReplicaError> {
        self.ask(|reply| Input::Change {
            plan,
            timeout,
            reply,
        })
        .await?
    }

    /// Moves leadership to voter `to`; resolves once this node no longer
    /// leads (or it did not move within `timeout`, at most three election
    /// timeouts). Waits for no membership change: refused while one runs.
    pub async fn transfer(&self, to: u64, timeout: Duration) -> Result<(), ReplicaError> {
        self.ask(|reply| Input::Transfer { to, timeout, reply })
            .await?
    }

    /// Leaves a joint configuration entered explicitly; resolves once left.
    pub async fn leave_joint(&self, timeout: Duration) -> Result<(), ReplicaError> {
        self.ask(|reply| Input::LeaveJoint { timeout, reply })
            .await?
    }

    /// Starts moving leadership to voter `to` (this node must lead); watch
    /// `status()` for the outcome.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ReplicaError> {
        self.ask(|reply| Input::TransferLeader { to, reply })
            .await?
    }

    /// Records through the log that member `id` is now reached at `address`,
    /// and its peer listener (if it has one) at `peer_address` (this node
    /// must lead); resolves once applied.
    pub async fn set_member_address(
        &self,
        id: u64,
        address: String,
        peer_address: Option<String>,
    ) -> Result<(), ReplicaError> {
        let member = raftkv_proto::internal::MemberAddress {
            id,
            address,
            peer_address: peer_address.unwrap_or_default(),
        };
        self.ask(|reply| Input::SetMemberAddress { member, reply })
            .await?
    }

    /// Peer `from`, whose configuration as of `index` lacks this node,
    /// refused this node's vote request.
    pub fn report_removed(&self, from: u64, index: u64) {
        let _ = self
            .peer_inputs
            .try_send(PeerInput::RemovedNotice { from, index });
    }

    /// Whether this node may serve a lease read now, without a quorum
    /// round: it leads, its lease (see `node/lease.rs`) has not expired on
    /// the monotonic clock, and it has applied every entry of earlier terms.
    /// When false, the caller falls back to [`Replica::read_index`].
    /// etcd's LeaseKeepAlive at this node (which must lead): the lease's
    /// granted TTL once its timer restarted, or 0 when it does not exist.
    pub async fn lease_keep_alive(&self, id: u64) -> Result<u64, ReplicaError> {
        self.ask(|reply| Input::LeaseKeepAlive { id, reply })
            .await?
    }

    /// etcd's LeaseTimeToLive at this node (which must lead).
    pub async fn lease_time_to_live(&self, id: u64) -> Result<Option<LeaseInfo>, ReplicaError> {
        self.ask(|reply| Input::LeaseTimeToLive { id, reply })
            .await?
    }

    /// The store revision of the applied state (without taking the state's
    /// lock, which the node thread holds while it applies).
    pub fn revision(&self) -> u64 {
        *self.shared.revision.borrow()
    }

    /// Follows the store revision of the applied state: a receiver that
    /// wakes whenever applying entries changed it.
    pub fn subscribe_revision(&self) -> watch::Receiver<u64> {
        self.shared.revision.subscribe()
    }

    pub fn has_read_lease(&self) -> bool {
        let lease = *self.shared.lease.lock().expect("lease lock poisoned");
        let Some(until) = lease.until else {
            return false;
        };
        let status = self.status();
        status.role == crate::status::Role::Leader
            && status.applied_index >= lease.floor
            && self.clock.boot() < until
    }

    /// Hands a raft message from a peer to the node, which checks it against its
    /// state before raft sees it (see `peer_check.rs`); the caller has checked the
    /// envelope (`check_envelope`). Dropped if the node is overloaded: raft treats
    /// that as a lost packet.
    pub fn step(&self, message: PeerMessage) {
        let _ = self.peer_inputs.try_send(PeerInput::Raft(message.0));
    }

    /// A vote request from a node outside this node's configuration comes
    /// from a node that was removed without learning it (or from a member
    /// this node does not know yet, which ignores the answer: its own
    /// configuration is newer). Err with this node's configuration index,
    /// for the candidate (see `report_removed`); counted as a rejection.
    pub fn check_candidate_is_member(&self, message: &PeerMessage) -> Result<(), u64> {
        if !message.is_vote_request() {
            return Ok(());
        }
        let membership = self.membership();
        let members = crate::membership::member_ids(&membership.conf_state);
        if crate::peer_check::check_membership(message.from(), &members).is_ok() {
            return Ok(());
        }
        self.count_rejection(Rejection::NotAMember);
        Err(membership.index)
    }

    /// Whether a snapshot of `bytes` may be received now: it must fit above
    /// the disk reserve (see `node/disk_space.rs`).
    pub fn check_room_for_snapshot(&self, bytes: u64) -> Result<(), ReplicaError> {
        crate::node::check_snapshot_room(self.snapshots.free_bytes(), bytes, self.min_free_bytes)
    }

    /// Whether this node is out of disk space for new entries (peers are
    /// told with every message, see `Replica::note_peer_space`).
    /// Whether auth is on in the applied state (no lock taken).
    pub fn auth_enabled(&self) -> bool {
        self.shared
            .auth_enabled
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_out_of_space(&self) -> bool {
        self.shared.out_of_space.load(Ordering::Relaxed)
    }

    /// A message from peer `from` said whether it is out of space. A leader
    /// refuses new writes while the peers with space do not make a quorum.
    pub fn note_peer_space(&self, from: u64, out_of_space: bool) {
        let mut peers = self
            .shared
            .peers_out_of_space
            .lock()
            .expect("peer space lock poisoned");
        if out_of_space {
            peers.insert(from, self.clock.now());
        } else {
            peers.remove(&from);
        }
    }

    /// Counts a peer message refused before it reached the node.
    pub fn count_rejection(&self, rejection: Rejection) {
        self.shared.peer_rejections.count(rejection);
    }

    /// Peer messages refused so far, by reason (every reason, zeros included).
    pub fn peer_rejections(&self) -> Vec<(&'static str, u64)> {
        self.shared.peer_rejections.snapshot()
    }

    /// Tells raft a peer could not be reached (it then probes gently).
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.peer_inputs.try_send(PeerInput::Unreachable(id));
    }

    /// The state machine, for reads. Hold the guard briefly.
    pub fn kv(&self) -> RwLockReadGuard<'_, KvState> {
        self.shared.kv.read().expect("kv lock poisoned")
    }

    pub fn status(&self) -> NodeStatus {
        self.shared
            .status
            .lock()
            .expect("status lock poisoned")
            .clone()
    }

    pub fn membership(&self) -> MembershipRecord {
        self.shared
            .membership
            .read()
            .expect("membership lock poisoned")
            .clone()
    }

    /// The leader's id and address as far as this node knows.
    pub fn leader_hint(&self) -> (u64, Option<String>) {
        let leader_id = self.status().leader_id;
        let address = self
            .shared
            .membership
            .read()
            .expect("membership lock poisoned")
            .addresses
            .get(&leader_id)
            .cloned();
        (leader_id, address)
    }

    pub async fn raft_state(&self) -> Result<RaftStateInfo, ReplicaError> {
        self.ask(|reply| Input::Query(Query::RaftState(reply)))
            .await
    }

    pub async fn members(&self) -> Result<MembersInfo, ReplicaError> {
        self.ask(|reply| Input::Query(Query::Members(reply))).await
    }

    pub async fn storage_stats(&self) -> Result<StorageStats, ReplicaError> {
        self.ask(|reply| Input::Query(Query::Storage(reply))).await
    }

    /// Takes a snapshot now; resolves once it is durable.
    pub async fn trigger_snapshot(&self) -> Result<SnapshotInfo, ReplicaError> {
        self.ask(|reply| Input::Query(Query::Snapshot(reply)))
            .await?
    }

    /// Compacts the log up to the latest snapshot now.
    pub async fn compact(&self) -> Result<CompactResult, ReplicaError> {
        self.ask(|reply| Input::Query(Query::Compact(reply)))
            .await?
    }

    /// The transport finished sending a snapshot to `to` (or gave up).
    /// Blocks while the peer queue is full: the report must not be lost,
    /// since raft keeps the follower paused until it hears. Call it from a
    /// blocking context (e.g. `tokio::task::spawn_blocking`).
    pub fn report_snapshot(&self, to: u64, delivered: bool) {
        let _ = self
            .peer_inputs
            .send(PeerInput::SnapshotStatus { to, delivered });
    }

    /// Whether this node raised the space quota's NOSPACE alarm (see
    /// `ReplicaConfig::quota_bytes`).
    pub fn quota_alarm(&self) -> bool {
        self.shared.quota_alarm.load(Ordering::Relaxed)
    }

    /// Whether this node raises NOSPACE: its disk is short of its reserve, or
    /// (on the leader) the space quota's alarm is raised.
    pub fn nospace_alarm(&self) -> bool {
        self.is_out_of_space() || self.quota_alarm()
    }

    /// Clears the quota alarm (etcd's alarm disarm); a write that still
    /// finds the state over the quota raises it again. Whether it was raised.
    pub fn disarm_quota(&self) -> bool {
        self.shared.quota_alarm.swap(false, Ordering::Relaxed)
    }

    /// Test hook: changes `key`'s value in this replica's state only (see
    /// `KvState::corrupt_for_test`).
    pub fn corrupt_for_test(&self, key: &[u8]) -> bool {
        self.shared
            .kv
            .write()
            .expect("kv lock poisoned")
            .corrupt_for_test(key)
    }

    /// Asks the node thread to stop after its current turn.
    pub fn shutdown(&self) {
        let _ = self.inputs.try_send(Input::Shutdown);
    }

    /// Resolves when the node thread has stopped, with the reason (a fatal
    /// error, or a requested shutdown).
    pub async fn stopped(&self) -> String {
        let mut rx = self.shared.stopped.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return "node stopped".into();
            }
        }
    }
}
