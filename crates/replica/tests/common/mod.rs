//! A cluster of replicas driven turn by turn on a manual clock, for the
//! replica's integration tests: every node in this thread (`ReplicaCore`),
//! messages delivered between turns, nothing timed by the machine — so each
//! test runs the same way every time.
#![allow(dead_code)] // each test file uses part of it

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use raft::eraftpb::ConfState;
use raftkv_replica::{
    ChangePlan, Clock, FileStorage, MembershipRecord, NodeIdentity, PeerMessage, Replica,
    ReplicaConfig, ReplicaCore, ReplicaError, SnapshotStore, StorageOptions, Transport,
};

pub const STEP: Duration = Duration::from_millis(1);

/// Time moved by the test only.
pub struct ManualClock {
    base: Instant,
    elapsed: Mutex<Duration>,
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.elapsed.lock().unwrap()
    }

    fn boot(&self) -> Duration {
        Duration::from_secs(1000) + *self.elapsed.lock().unwrap()
    }
}

/// Collects what a node sends; the cluster delivers it after the turn.
pub struct Outbox {
    sent: Mutex<Vec<PeerMessage>>,
    up: Arc<Mutex<Vec<u64>>>,
}

impl Transport for Outbox {
    fn send(&self, messages: Vec<PeerMessage>) {
        self.sent.lock().unwrap().extend(messages);
    }

    fn update_peers(&self, _addresses: &BTreeMap<u64, String>) {}

    fn is_reachable(&self, id: u64) -> bool {
        self.up.lock().unwrap().contains(&id)
    }
}

pub struct Node {
    pub replica: Replica,
    pub core: ReplicaCore<FileStorage>,
    pub outbox: Arc<Outbox>,
}

pub struct Cluster {
    _dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub nodes: BTreeMap<u64, Node>,
    /// Nodes whose process runs (the others are members that never
    /// answer, as a node that was never started).
    pub up: Arc<Mutex<Vec<u64>>>,
    /// Whether a message is delivered (all are, unless a test cuts some).
    pub deliver: Box<dyn Fn(&PeerMessage) -> bool>,
}

pub type Answer = Pin<Box<dyn Future<Output = Result<(), ReplicaError>>>>;

impl Cluster {
    /// Voters `voters` and learners `learners`, all bootstrapped with the
    /// same configuration (so every one is caught up from the start); only
    /// `running` are started.
    pub fn new(voters: &[u64], learners: &[u64], running: &[u64]) -> Cluster {
        Cluster::with_config(voters, learners, running, |_| {})
    }

    /// [`Cluster::new`], each node's configuration changed by `tweak`.
    pub fn with_config(
        voters: &[u64],
        learners: &[u64],
        running: &[u64],
        tweak: impl Fn(&mut ReplicaConfig),
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let addresses: BTreeMap<u64, String> = voters
            .iter()
            .chain(learners)
            .map(|id| (*id, format!("node-{id}")))
            .collect();
        let membership = MembershipRecord {
            index: 1,
            conf_state: ConfState {
                voters: voters.to_vec(),
                learners: learners.to_vec(),
                ..Default::default()
            },
            addresses: addresses.clone(),
            peer_addresses: Default::default(),
            max_node_id: addresses.keys().max().copied().unwrap_or(0),
        };
        let clock = Arc::new(ManualClock {
            base: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        });
        let up = Arc::new(Mutex::new(running.to_vec()));
        let mut nodes = BTreeMap::new();
        for &id in running {
            let data_dir = dir.path().join(format!("n{id}"));
            let mut storage = FileStorage::open(&data_dir, StorageOptions::default()).unwrap();
            storage
                .bootstrap(
                    NodeIdentity {
                        node_id: id,
                        cluster_id: 7,
                        bootstrap_id: 0,
                    },
                    membership.clone(),
                )
                .unwrap();
            let snapshots = SnapshotStore::open(&data_dir).unwrap();
            let mut config = ReplicaConfig::new(id, 7);
            config.election_timeout = Duration::from_millis(300);
            config.heartbeat_interval = Duration::from_millis(30);
            config.seed = Some(id);
            config.write_snapshots_inline = true;
            tweak(&mut config);
            let outbox = Arc::new(Outbox {
                sent: Mutex::new(Vec::new()),
                up: up.clone(),
            });
            let (replica, core) =
                ReplicaCore::new(storage, snapshots, config, outbox.clone(), clock.clone())
                    .unwrap();
            nodes.insert(
                id,
                Node {
                    replica,
                    core,
                    outbox,
                },
            );
        }
        Cluster {
            _dir: dir,
            clock,
            nodes,
            up,
            deliver: Box::new(|_| true),
        }
    }

    /// One millisecond: every node takes a turn, then what they sent is
    /// delivered (to running nodes only).
    pub fn step(&mut self) {
        *self.clock.elapsed.lock().unwrap() += STEP;
        let mut sent = Vec::new();
        for node in self.nodes.values_mut() {
            if node.core.wants_turn() {
                assert!(node.core.turn().expect("a node failed"));
            }
            sent.append(&mut node.outbox.sent.lock().unwrap());
        }
        let up = self.up.lock().unwrap().clone();
        for message in sent {
            if up.contains(&message.to()) && (self.deliver)(&message) {
                self.nodes[&message.to()].replica.step(message);
            }
        }
    }

    /// Steps until `done` holds, at most `within` of simulated time.
    pub fn run_until(&mut self, within: Duration, mut done: impl FnMut(&mut Cluster) -> bool) {
        let steps = within.as_millis() as u64;
        for _ in 0..steps {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("not done within {within:?} of simulated time");
    }

    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find(|(_, n)| n.core.raft_view().is_leader)
            .map(|(id, _)| *id)
    }

    pub fn wait_leader(&mut self) -> u64 {
        self.run_until(Duration::from_secs(10), |c| c.leader().is_some());
        self.leader().unwrap()
    }

    /// Runs until `answer` resolves (within `within`), noting every
    /// configuration the leader held on the way.
    pub fn finish(
        &mut self,
        mut answer: Answer,
        within: Duration,
    ) -> (Result<(), ReplicaError>, Vec<ConfState>) {
        let mut seen: Vec<ConfState> = Vec::new();
        let mut result = None;
        self.run_until(within, |c| {
            if let Some(leader) = c.leader() {
                let conf = c.nodes[&leader].replica.membership().conf_state;
                if seen.last() != Some(&conf) {
                    seen.push(conf);
                }
            }
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(r) = answer.as_mut().poll(&mut cx) {
                result = Some(r);
            }
            result.is_some()
        });
        (result.unwrap(), seen)
    }

    /// Runs until `answer` resolves (within `within`).
    pub fn answer<T>(
        &mut self,
        mut answer: Pin<Box<dyn Future<Output = T>>>,
        within: Duration,
    ) -> T {
        let mut result = None;
        self.run_until(within, |_| {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(r) = answer.as_mut().poll(&mut cx) {
                result = Some(r);
            }
            result.is_some()
        });
        result.unwrap()
    }

    pub fn change(&mut self, at: u64, plan: ChangePlan, timeout: Duration) -> Answer {
        let replica = self.nodes[&at].replica.clone();
        Box::pin(async move { replica.change(plan, timeout).await })
    }

    pub fn conf(&self, at: u64) -> ConfState {
        self.nodes[&at].replica.membership().conf_state
    }
}
