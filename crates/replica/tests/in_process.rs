//! In-process cluster tests: three replicas in one process, connected by an
//! in-memory transport, each with its own data dir. Faster than the
//! multi-process tests and independent of gRPC: they check the replica's own
//! contract (a write acknowledged by the leader is applied on every replica;
//! reads see acknowledged writes; a new leader takes over after the old one
//! stops).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_replica::{
    bootstrap_membership, FileStorage, NodeIdentity, Op, PeerMessage, Replica, ReplicaConfig,
    ReplicaError, Role, SnapshotStore, StorageOptions, Transport, WriteSession,
};

/// Delivers messages by calling `step` on the addressed replica; messages to
/// a stopped (unregistered) replica are lost, like packets to a dead host.
#[derive(Default)]
struct MemoryTransport {
    replicas: Mutex<HashMap<u64, Replica>>,
}

impl Transport for MemoryTransport {
    fn send(&self, messages: Vec<PeerMessage>) {
        let replicas = self.replicas.lock().unwrap();
        for message in messages {
            if let Some(replica) = replicas.get(&message.to()) {
                replica.step(message);
            }
        }
    }

    fn update_peers(&self, _addresses: &BTreeMap<u64, String>) {}

    fn is_reachable(&self, id: u64) -> bool {
        self.replicas.lock().unwrap().contains_key(&id)
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    transport: Arc<MemoryTransport>,
}

impl Cluster {
    fn start(nodes: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let peers: BTreeMap<u64, String> =
            (1..=nodes).map(|id| (id, format!("node-{id}"))).collect();
        let transport = Arc::new(MemoryTransport::default());
        for id in 1..=nodes {
            let data_dir = dir.path().join(format!("n{id}"));
            let mut storage = FileStorage::open(&data_dir, StorageOptions::default()).unwrap();
            storage
                .bootstrap(
                    NodeIdentity {
                        node_id: id,
                        cluster_id: 7,
                        bootstrap_id: 0,
                    },
                    bootstrap_membership(&peers, &Default::default()),
                )
                .unwrap();
            let snapshots = SnapshotStore::open(&data_dir).unwrap();
            let mut config = ReplicaConfig::new(id, 7);
            config.election_timeout = Duration::from_millis(300);
            config.heartbeat_interval = Duration::from_millis(30);
            let replica = Replica::start(storage, snapshots, config, transport.clone()).unwrap();
            transport.replicas.lock().unwrap().insert(id, replica);
        }
        Cluster {
            _dir: dir,
            transport,
        }
    }

    fn replica(&self, id: u64) -> Replica {
        self.transport.replicas.lock().unwrap()[&id].clone()
    }

    fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .transport
            .replicas
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect();
        ids.sort();
        ids
    }

    /// The one replica that says it is leader, within 10 s.
    fn leader(&self) -> Replica {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leaders: Vec<Replica> = self
                .ids()
                .into_iter()
                .map(|id| self.replica(id))
                .filter(|r| r.status().role == Role::Leader)
                .collect();
            if leaders.len() == 1 {
                return leaders[0].clone();
            }
            assert!(Instant::now() < deadline, "no single leader within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops a replica and cuts it off.
    fn stop(&self, id: u64) {
        let replica = self.transport.replicas.lock().unwrap().remove(&id).unwrap();
        replica.shutdown();
    }
}

fn put(key: &str, value: &str) -> Vec<Op> {
    vec![Op {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        delete: false,
    }]
}

fn session(seq: u64) -> WriteSession {
    WriteSession {
        client_id: 42,
        seq,
        first_incomplete_seq: seq,
    }
}

/// Waits until every replica has applied `index`.
fn wait_applied(cluster: &Cluster, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in cluster.ids() {
        while cluster.replica(id).status().applied_index < index {
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply {index} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_reach_every_replica_and_reads_see_them() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();
    for seq in 1..=50 {
        leader
            .propose(put(&format!("k{seq:02}"), &format!("v{seq}")), session(seq))
            .await
            .unwrap();
    }
    // A linearizable read on the leader sees the last acknowledged write.
    leader.read_index().await.unwrap();
    assert_eq!(leader.kv().get(b"k50").unwrap(), "v50");
    // Every replica applies the same state.
    let applied = leader.status().applied_index;
    wait_applied(&cluster, applied);
    let hashes: Vec<u64> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.replica(id).kv().content_hash())
        .collect();
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "replicas differ: {hashes:?}"
    );
    assert_eq!(cluster.replica(cluster.ids()[0]).kv().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_refuse_writes_and_reads_naming_the_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader.node_id())
        .map(|id| cluster.replica(id))
        .unwrap();
    // A follower may not know the leader yet right after the election.
    let deadline = Instant::now() + Duration::from_secs(5);
    while follower.status().leader_id != leader.node_id() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let expected = ReplicaError::NotLeader {
        leader_id: leader.node_id(),
        leader_address: Some(format!("node-{}", leader.node_id())),
        why: String::new(),
    };
    assert_eq!(
        follower.propose(put("a", "b"), session(1)).await,
        Err(expected.clone())
    );
    assert_eq!(follower.read_index().await, Err(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_serves_after_the_leader_stops_and_keeps_acknowledged_writes() {
    let cluster = Cluster::start(3);
    let old = cluster.leader();
    old.propose(put("before", "1"), session(1)).await.unwrap();
    cluster.stop(old.node_id());
    let new = cluster.leader();
    assert_ne!(new.node_id(), old.node_id());
    new.propose(put("after", "2"), session(2)).await.unwrap();
    new.read_index().await.unwrap();
    let kv = new.kv();
    assert_eq!(kv.get(b"before").unwrap(), "1");
    assert_eq!(kv.get(b"after").unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();
    leader.propose(put("x", "first"), session(1)).await.unwrap();
    leader
        .propose(put("x", "second"), session(2))
        .await
        .unwrap();
    // The retry of write 1 (same session and sequence number) succeeds
    // without overwriting the later write.
    let retry = WriteSession {
        client_id: 42,
        seq: 1,
        first_incomplete_seq: 1,
    };
    leader.propose(put("x", "first"), retry).await.unwrap();
    leader.read_index().await.unwrap();
    assert_eq!(leader.kv().get(b"x").unwrap(), "second");
}

/// A write is answered with its own revision (etcd's header revision): the
/// next one for a write that changed something, the current one for a
/// delete of a missing key; a retry that was applied already is answered,
/// not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_answered_with_its_revision() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();
    let first = leader.propose(put("r", "1"), session(1)).await.unwrap();
    assert_eq!(first.revision, 2, "an empty store is at 1");
    let second = leader.propose(put("r", "1"), session(2)).await.unwrap();
    assert_eq!(second.revision, 3);
    let missing = vec![Op {
        key: Bytes::from_static(b"never-written"),
        value: Bytes::new(),
        delete: true,
    }];
    let nothing = leader.propose(missing, session(3)).await.unwrap();
    assert_eq!(nothing.revision, 3, "a delete of nothing takes no revision");
    let record = leader.kv().get_record(b"r").cloned().unwrap();
    assert_eq!(
        (record.create_revision, record.mod_revision, record.version),
        (2, 3, 2)
    );
}
