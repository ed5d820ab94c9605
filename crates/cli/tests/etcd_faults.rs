//! Acceptance (issue 21): watches and leases under faults, on real server
//! processes.
//!
//! - A watcher on a prefix, resuming from the revision after the last one
//!   it saw, gets every committed change exactly once and in revision
//!   order while a writer runs through a leader kill -9 and the isolation
//!   of the watcher's own member; a start revision that was compacted is
//!   refused with the compacted revision.
//! - A lease kept alive through a leader kill -9 and a leader isolation
//!   never expires; one not kept alive expires (within TTL + 10 s) and its
//!   key is deleted on every member at one revision; after a full-cluster
//!   restart a lease and its key are back and expire within the TTL of the
//!   new leader unless kept alive.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use raftkv_client::etcdserverpb::{
    request_op, CompactionRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use raftkv_client::{Client, ClientOptions, Error, WatchEvent};
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_testkit::TestCluster;
use tonic::transport::Channel;

use common::{bin, is_retryable};

const WAIT: Duration = Duration::from_secs(30);

fn client_starting_at(cluster: &TestCluster, id: u64) -> Client {
    let mut endpoints = cluster.endpoint_list();
    let first = cluster.address(id);
    endpoints.retain(|e| *e != first);
    endpoints.insert(0, first);
    let options = ClientOptions {
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    Client::with_options(&endpoints, options).unwrap()
}

/// The store revision, by a linearizable read through any member.
async fn current_revision(client: &Client) -> u64 {
    let started = Instant::now();
    loop {
        match client.txn(TxnRequest::default()).await {
            Ok(reply) => return reply.header.unwrap().revision as u64,
            Err(e) if started.elapsed() < WAIT => {
                eprintln!("revision: {e}, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no revision within {WAIT:?}: {e}"),
        }
    }
}

/// An etcd KV client of member `id` alone (for reads of its own state).
async fn member_kv(cluster: &TestCluster, id: u64) -> KvClient<Channel> {
    KvClient::new(common::grpc_channel(&cluster.address(id)).await)
}

/// Puts `key` with lease `lease`, retrying what may be retried.
async fn put_with_lease(client: &Client, key: &str, lease: i64) {
    let txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(key.to_string()),
                value: Bytes::from_static(b"held"),
                lease,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    client.txn(txn).await.unwrap();
}

/// Whether `key` exists, by a linearizable read (retried through faults).
async fn exists(client: &Client, key: &str) -> bool {
    let started = Instant::now();
    loop {
        match client.get(Bytes::from(key.to_string())).await {
            Ok(_) => return true,
            Err(Error::KeyNotFound) => return false,
            Err(e) if is_retryable(&e) && started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("get {key}: {e}"),
        }
    }
}

/// What a writer did: the (key, value) writes acknowledged, and every value
/// it tried.
type Writes = (Vec<(String, String)>, HashSet<String>);

/// One writer: puts of unique values to 20 keys under `w/`, recording what
/// was acknowledged and what was tried.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Writes>,
}

impl Writer {
    fn start(client: Client) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut tried = HashSet::new();
            let mut n = 0u64;
            while !flag.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("w/k{:02}", n % 20);
                let value = format!("v{n}");
                tried.insert(value.clone());
                match client
                    .put(Bytes::from(key.clone()), Bytes::from(value.clone()))
                    .await
                {
                    Ok(()) => acked.push((key, value)),
                    Err(e) if is_retryable(&e) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("writer: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, tried)
        });
        Writer { stop, task }
    }

    async fn stop(self) -> Writes {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_watcher_gets_every_change_once_in_order_through_a_leader_kill_and_its_own_isolation(
) {
    let mut cluster = TestCluster::start(bin(), 3);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let watched = cluster.followers()[0];
    let client = cluster.client();
    let start = current_revision(&client).await + 1;
    let events: Arc<Mutex<Vec<WatchEvent>>> = Arc::default();
    let mut stream = client_starting_at(&cluster, watched).watch("w/", true, Some(start));
    let seen = events.clone();
    let watcher = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => seen.lock().unwrap().push(event),
                Err(e) => panic!("the watch ended: {e}"),
            }
        }
    });
    let writer = Writer::start(client.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.kill(leader));
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| cluster.restart(leader));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The watcher's member alone, past three election timeouts: its streams
    // end with "no leader" and the watcher resumes on another member.
    tokio::task::block_in_place(|| cluster.isolate(watched));
    let before_isolation = events.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let during_isolation = events.lock().unwrap().len() - before_isolation;
    tokio::task::block_in_place(|| cluster.heal());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked, tried) = writer.stop().await;
    let last = current_revision(&client).await;
    let started = Instant::now();
    while events.lock().unwrap().last().map_or(0, |e| e.revision) < last {
        assert!(
            started.elapsed() < WAIT,
            "the watcher did not reach revision {last}: {}",
            cluster.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watcher.abort();
    let events = events.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too few writes to say anything: {}",
        acked.len()
    );
    assert!(
        during_isolation > 0,
        "the watcher did not resume on another member while its own was isolated"
    );
    // Only the writer writes under w/, one key per revision: every revision
    // from the start to the last is one event, once, in order.
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    let expected: Vec<u64> = (start..=last).collect();
    assert_eq!(
        revisions, expected,
        "events must be every revision once, in order"
    );
    let delivered: HashMap<(String, String), usize> =
        events.iter().fold(HashMap::new(), |mut count, e| {
            let key = String::from_utf8_lossy(&e.key).into_owned();
            let value = String::from_utf8_lossy(e.value.as_deref().unwrap_or_default());
            *count.entry((key, value.into_owned())).or_default() += 1;
            count
        });
    for write in &acked {
        assert_eq!(
            delivered.get(write),
            Some(&1),
            "acknowledged write {write:?} delivered once"
        );
    }
    for (key, value) in delivered.keys() {
        assert!(tried.contains(value), "{key}={value} was never written");
    }
    // The last event of each key is its value now.
    let mut last_values = BTreeMap::new();
    for e in &events {
        last_values.insert(e.key.clone(), e.value.clone());
    }
    for (key, value) in last_values {
        let now = client.get(key.clone()).await.ok();
        assert_eq!(now, value, "final value of {key:?}");
    }
    // A start revision compacted away is refused with the compacted one.
    member_kv(&cluster, watched)
        .await
        .compact(CompactionRequest {
            revision: last as i64,
            physical: false,
        })
        .await
        .unwrap();
    let mut old = client.watch("w/", true, Some(start));
    match tokio::time::timeout(WAIT, old.next()).await {
        Ok(Some(Err(Error::InvalidArgument(why)))) => {
            assert!(why.contains("compacted"), "{why}");
            assert!(
                why.contains(&format!("{last}")),
                "names the oldest revision: {why}"
            );
        }
        other => panic!("a compacted start revision must be refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_survives_a_leader_kill_and_isolation_and_a_dropped_one_expires_everywhere_at_one_revision(
) {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(Duration::from_secs(10));
    let client = cluster.client();
    let ttl = Duration::from_secs(5);
    let kept = client.lease_grant(ttl).await.unwrap();
    let _alive = client.lease_keep_alive(kept);
    put_with_lease(&client, "l/kept", kept.id).await;
    let dropped = client.lease_grant(ttl).await.unwrap();
    let granted_at = Instant::now();
    put_with_lease(&client, "l/dropped", dropped.id).await;
    let delete_revision = current_revision(&client).await + 1;
    let mut deletions = client.watch("l/dropped", false, Some(delete_revision));
    let checking = Arc::new(AtomicBool::new(true));
    let checker = {
        let client = client.clone();
        let checking = checking.clone();
        tokio::spawn(async move {
            let mut checks = 0;
            while checking.load(Ordering::SeqCst) {
                assert!(exists(&client, "l/kept").await, "the kept lease expired");
                checks += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            checks
        })
    };
    let leader = cluster.leader();
    tokio::task::block_in_place(|| cluster.kill(leader));
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| cluster.restart(leader));
    let leader = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(10)));
    tokio::task::block_in_place(|| cluster.isolate(leader));
    tokio::time::sleep(Duration::from_secs(6)).await;
    tokio::task::block_in_place(|| cluster.heal());
    tokio::time::sleep(Duration::from_secs(6)).await;
    checking.store(false, Ordering::SeqCst);
    let checks = checker.await.unwrap();
    assert!(checks > 10, "too few checks of the kept lease: {checks}");
    // The dropped lease: its key deleted within TTL + 10 s of the grant.
    let deleted = match tokio::time::timeout(
        (ttl + Duration::from_secs(10)).saturating_sub(granted_at.elapsed()),
        deletions.next(),
    )
    .await
    {
        Ok(Some(Ok(event))) => event,
        other => panic!("the dropped lease's key was not deleted in time: {other:?}"),
    };
    assert_eq!(deleted.value, None, "a deletion");
    assert!(!exists(&client, "l/dropped").await);
    // On every member, at that one revision: there just before, gone at it.
    tokio::task::block_in_place(|| cluster.wait_caught_up(WAIT));
    for id in cluster.ids() {
        let mut kv = member_kv(&cluster, id).await;
        for (revision, present) in [(deleted.revision - 1, true), (deleted.revision, false)] {
            let reply = kv
                .range(RangeRequest {
                    key: Bytes::from_static(b"l/dropped"),
                    revision: revision as i64,
                    serializable: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                reply.kvs.len() == 1,
                present,
                "member {id} at revision {revision}"
            );
        }
    }
    assert!(exists(&client, "l/kept").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_restart_leases_are_back_and_expire_within_their_ttl_of_the_new_leader() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(Duration::from_secs(10));
    let client = cluster.client();
    let ttl = Duration::from_secs(6);
    let kept = client.lease_grant(ttl).await.unwrap();
    put_with_lease(&client, "r/kept", kept.id).await;
    let dropped = client.lease_grant(ttl).await.unwrap();
    put_with_lease(&client, "r/dropped", dropped.id).await;
    let ids = cluster.ids();
    tokio::task::block_in_place(|| {
        for &id in &ids {
            cluster.kill(id);
        }
    });
    // Down longer than the TTL: the clock must restart with the new leader.
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| {
        for &id in &ids {
            cluster.restart(id);
        }
    });
    tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(10)));
    let led_at = Instant::now();
    let _alive = client.lease_keep_alive(kept);
    assert!(exists(&client, "r/kept").await, "the kept lease is back");
    assert!(
        exists(&client, "r/dropped").await,
        "the dropped lease is back ({:?} after the new leader)",
        led_at.elapsed()
    );
    let started = Instant::now();
    while exists(&client, "r/dropped").await {
        assert!(
            started.elapsed() < ttl + Duration::from_secs(10),
            "the dropped lease did not expire after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone_after = led_at.elapsed();
    assert!(
        gone_after + Duration::from_secs(2) >= ttl,
        "expired {gone_after:?} after the new leader, before its TTL {ttl:?}"
    );
    assert!(exists(&client, "r/kept").await, "the kept lease stays");
}

/// `raftkv watch` and `raftkv lease keep-alive`, as a user runs them with
/// several `--endpoints`, go on through the next endpoint when the member
/// they use is killed: the watch prints every change once, in order, and
/// the lease (TTL 3 s) outlives the kill by several TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_watch_and_keep_alive_go_on_when_their_member_is_killed() {
    use std::process::{Command, Stdio};
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(Duration::from_secs(10));
    let follower = cluster.followers()[0];
    let endpoints = cluster.endpoints_starting_with(follower);
    let granted = cluster
        .cli(&["lease", "grant", "3"])
        .assert_ok()
        .stdout_text();
    let lease = granted.split_whitespace().nth(1).unwrap().to_string();
    cluster
        .cli(&["put", "kept", "v", "--lease", &lease])
        .assert_ok();
    let dir = tempfile::tempdir().unwrap();
    let watched = dir.path().join("watch.out");
    /// Killed (by its own handle) when dropped, a failing test included.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let spawn = |args: &[&str], out: std::fs::File| {
        Running(
            Command::new(bin())
                .arg("--endpoints")
                .arg(&endpoints)
                .args(args)
                .stdout(out)
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let _watch = spawn(
        &["watch", "cw/", "--prefix"],
        std::fs::File::create(&watched).unwrap(),
    );
    let mut keep = spawn(
        &["lease", "keep-alive", &lease],
        std::fs::File::create(dir.path().join("keep.out")).unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = client_starting_at(&cluster, cluster.leader());
    let mut expected = String::new();
    for i in 0..10 {
        if i == 3 {
            cluster.kill(follower);
        }
        let key = format!("cw/{i}");
        loop {
            match client.put(key.clone(), "v").await {
                Ok(_) => break,
                Err(e) if is_retryable(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e}"),
            }
        }
        expected.push_str(&format!("PUT\t{key}\tv\n"));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let printed = std::fs::read_to_string(&watched).unwrap();
        if printed == expected {
            break;
        }
        assert!(
            Instant::now() < deadline && expected.starts_with(&printed),
            "the watch printed {printed:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Three TTLs after the kill, the lease is still kept alive.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(keep.0.try_wait().unwrap().is_none(), "keep-alive exited");
    assert_eq!(client.get("kept").await.unwrap(), "v");
}
