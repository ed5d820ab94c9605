//! etcd's v3 API on real server processes, through the project's own etcd
//! stubs (no system protoc): what an etcd client relies on. Each check runs
//! against a RaftKV cluster and, where it is installed (`.ci/run` installs
//! it), against etcd 3.4 itself with the same assertions, so a check that
//! passes on RaftKV only states etcd's behaviour if it passes on etcd too:
//! every member takes every request (followers forward writes and
//! linearizable reads to the leader), etcd's revisions, compare-and-swap
//! transactions, range deletes with the previous values, reads at a past
//! revision, compaction, watches (order, replay, compaction, progress,
//! fragments), leases, locks, elections, membership and status, and etcd's
//! error codes and texts. RaftKV-only follow-ups (one keyspace with
//! `raftkv.v1`, metrics, restarts, the client library, the learner flow)
//! run on the RaftKV side only.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::{
    compare, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use raftkv_testkit::{EtcdCluster, TestCluster};
use tonic::transport::Channel;
use tonic::Code;

use common::{bin, grpc_channel as channel};

/// The store a check runs against.
enum Store {
    Raftkv(TestCluster),
    Etcd(EtcdCluster),
}

impl Store {
    fn raftkv(nodes: usize, args: &[&str]) -> Store {
        let cluster = TestCluster::start_with(bin(), nodes, args);
        cluster.wait_leader(Duration::from_secs(10));
        Store::Raftkv(cluster)
    }

    /// `None` where etcd is not installed (the test then says it skipped).
    fn etcd(nodes: usize, args: &[&str]) -> Option<Store> {
        EtcdCluster::start(nodes, args).map(Store::Etcd)
    }

    /// The members' client addresses, in a fixed order.
    fn endpoints(&self) -> Vec<String> {
        match self {
            Store::Raftkv(cluster) => cluster
                .ids()
                .into_iter()
                .map(|id| cluster.address(id))
                .collect(),
            Store::Etcd(cluster) => cluster.endpoints(),
        }
    }

    async fn channel(&self, member: usize) -> Channel {
        channel(&self.endpoints()[member]).await
    }

    async fn kv(&self, member: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(member).await)
    }

    /// Each member's id (by index) and the index of the leader, once every
    /// member names the same one (within 20 s).
    async fn members(&self) -> (Vec<u64>, usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for endpoint in self.endpoints() {
                let status = MaintenanceClient::new(channel(&endpoint).await)
                    .status(StatusRequest::default())
                    .await
                    .map(|s| s.into_inner());
                if let Ok(status) = status {
                    ids.push(status.header.unwrap().member_id);
                    leaders.push(status.leader);
                }
            }
            let agreed = leaders.len() == self.endpoints().len()
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0]);
            if let Some(leader) = ids.iter().position(|id| agreed && *id == leaders[0]) {
                return (ids, leader);
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within 20 s: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of a member that does not lead.
    async fn follower(&self) -> usize {
        let (ids, leader) = self.members().await;
        (0..ids.len()).find(|i| *i != leader).expect("a follower")
    }
}

/// Runs `check` (an `async fn(Store)`) against a RaftKV cluster and against
/// etcd 3.4, each started with its own extra flags, as the tests
/// `check::raftkv` and `check::etcd`.
macro_rules! against_both {
    ($check:ident, nodes = $nodes:expr) => {
        against_both!($check, nodes = $nodes, flags = []);
    };
    ($check:ident, nodes = $nodes:expr, flags = [$($flag:expr),*]) => {
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn raftkv() {
                let store = super::Store::raftkv($nodes, &[$($flag),*]);
                store.members().await;
                super::$check(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                if let Some(store) = super::Store::etcd($nodes, &[$($flag),*]) {
                    store.members().await;
                    super::$check(store).await;
                }
            }
        }
    };
}

/// An etcd KV client of a RaftKV test cluster's node.
async fn etcd(cluster: &TestCluster, id: u64) -> KvClient<Channel> {
    KvClient::new(channel(&cluster.address(id)).await)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn put(client: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    let reply = client
        .put(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    reply.header.unwrap().revision
}

async fn get(
    client: &mut KvClient<Channel>,
    key: &str,
    revision: i64,
) -> Option<(String, i64, i64, i64)> {
    let reply = client
        .range(RangeRequest {
            key: b(key),
            revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    reply.kvs.first().map(|kv| {
        (
            String::from_utf8(kv.value.to_vec()).unwrap(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
        )
    })
}

against_both!(
    every_member_takes_writes_and_reads_with_etcd_revisions,
    nodes = 3
);
async fn every_member_takes_writes_and_reads_with_etcd_revisions(store: Store) {
    let members = store.endpoints().len();
    // Writes through each member in turn, followers included; a new store
    // is at revision 1.
    let mut revision = 1;
    for member in 0..members {
        let mut client = store.kv(member).await;
        let written = put(&mut client, "e/k", &format!("v{member}")).await;
        revision += 1;
        assert_eq!(
            written, revision,
            "the write's own revision, via member {member}"
        );
    }
    // Linearizable reads from every member see the last write.
    for member in 0..members {
        let mut client = store.kv(member).await;
        assert_eq!(
            get(&mut client, "e/k", 0).await,
            Some(("v2".to_string(), 2, 4, 3)),
            "via member {member}"
        );
        // As of a past revision.
        assert_eq!(
            get(&mut client, "e/k", 2).await,
            Some(("v0".to_string(), 2, 2, 1))
        );
    }
    // A prefix range with a limit.
    let mut client = store.kv(0).await;
    put(&mut client, "e/other", "x").await;
    let reply = client
        .range(RangeRequest {
            key: b("e/"),
            range_end: b("e0"),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.kvs.len(), reply.more, reply.count), (1, true, 2));
    // One keyspace: a key written through raftkv.v1 is seen through etcd's API.
    if let Store::Raftkv(cluster) = &store {
        cluster.cli(&["put", "e/native", "yes"]).assert_ok();
        assert_eq!(get(&mut client, "e/native", 0).await.unwrap().0, "yes");
        // Each member counts the etcd calls its clients made (a forwarded
        // call once, where it arrived): four puts in all.
        let puts: f64 = cluster
            .ids()
            .iter()
            .map(|id| {
                let (_, metrics) = common::http_get(&cluster.address(*id), "/metrics");
                common::sample(
                    &metrics,
                    r#"raftkv_requests_total{op="etcd_put",result="ok"} "#,
                )
            })
            .sum();
        assert_eq!(puts, 4.0);
    }
}

against_both!(
    compare_and_swap_takes_one_branch_and_range_deletes_return_what_they_deleted,
    nodes = 3
);
async fn compare_and_swap_takes_one_branch_and_range_deletes_return_what_they_deleted(
    store: Store,
) {
    let mut client = store.kv(store.follower().await).await;
    let created = put(&mut client, "cas", "a").await;
    let cas = |expected: i64, value: &str| TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b("cas"),
            target_union: Some(compare::TargetUnion::ModRevision(expected)),
            range_end: Bytes::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b("cas"),
                value: b(value),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b("cas"),
                ..Default::default()
            })),
        }],
    };
    let won = client.txn(cas(created, "b")).await.unwrap().into_inner();
    assert!(won.succeeded);
    let lost = client.txn(cas(created, "c")).await.unwrap().into_inner();
    assert!(
        !lost.succeeded,
        "the second swap from the same revision loses"
    );
    match &lost.responses[0].response {
        Some(response_op::Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, "b"),
        other => panic!("{other:?}"),
    }
    for key in ["d/1", "d/2", "d/3"] {
        put(&mut client, key, key).await;
    }
    let deleted = client
        .delete_range(DeleteRangeRequest {
            key: b("d/"),
            range_end: b("d0"),
            prev_kv: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 3);
    let values: Vec<_> = deleted.prev_kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(values, vec![b("d/1"), b("d/2"), b("d/3")]);
    // etcd's refusals: a key written twice in one branch, an empty key.
    let twice = TxnRequest {
        success: vec![
            cas(0, "x").success[0].clone(),
            cas(0, "y").success[0].clone(),
        ],
        ..Default::default()
    };
    let error = client.txn(twice).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "etcdserver: duplicate key given in txn request"
    );
    let error = client.range(RangeRequest::default()).await.unwrap_err();
    assert_eq!(error.message(), "etcdserver: key is not provided");
}

against_both!(a_compacted_revision_is_refused_with_etcd_s_error, nodes = 1);
async fn a_compacted_revision_is_refused_with_etcd_s_error(store: Store) {
    let mut client = store.kv(0).await;
    put(&mut client, "c", "1").await; // 2
    put(&mut client, "c", "2").await; // 3
    let current = put(&mut client, "c", "3").await; // 4
    client
        .compact(CompactionRequest {
            revision: 3,
            physical: false,
        })
        .await
        .unwrap();
    assert_eq!(
        get(&mut client, "c", 3).await.unwrap().0,
        "2",
        "reading at it works"
    );
    assert_compacted(&mut client, "c", 2).await;
    let error = client
        .compact(CompactionRequest {
            revision: current + 1,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    // RaftKV: the compaction survives a restart.
    if let Store::Raftkv(mut cluster) = store {
        let id = cluster.ids()[0];
        cluster.kill(id);
        cluster.restart(id);
        cluster.wait_leader(Duration::from_secs(10));
        let mut client = etcd(&cluster, id).await;
        assert_compacted(&mut client, "c", 2).await;
    }
}

/// Reading `key` at `revision` is refused as compacted, with etcd's code
/// and text.
async fn assert_compacted(client: &mut KvClient<Channel>, key: &str, revision: i64) {
    let error = client
        .range(RangeRequest {
            key: b(key),
            revision,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange);
    assert_eq!(
        error.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

mod watch {
    use super::*;
    use raftkv_proto::etcdserverpb::watch_client::WatchClient;
    use raftkv_proto::etcdserverpb::{
        watch_request, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    };
    use raftkv_proto::mvccpb::event::EventType;
    use tokio::sync::mpsc;
    use tonic::Streaming;

    type Stream = (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>);

    /// A watch stream to `member` with one watcher, `create`; its created
    /// response is read.
    async fn open(store: &Store, member: usize, create: WatchCreateRequest) -> Stream {
        let (tx, rx) = mpsc::channel(4);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .unwrap();
        let mut stream = WatchClient::new(store.channel(member).await)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let created = next(&mut stream).await;
        assert!(created.created, "{created:?}");
        (tx, stream)
    }

    /// A watcher on the prefix `w/` from `start_revision`, with previous
    /// values.
    fn on_w(start_revision: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: b("w/"),
            range_end: b("w0"),
            start_revision,
            prev_kv: true,
            ..Default::default()
        }
    }

    /// The next response, within 20 s.
    async fn next(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a response within 20 s")
            .unwrap()
            .expect("the stream stays open")
    }

    /// (revision, PUT/DELETE, key, value) of events until `count` arrived.
    async fn events(
        stream: &mut Streaming<WatchResponse>,
        count: usize,
    ) -> Vec<(i64, bool, String, String)> {
        let mut seen = Vec::new();
        while seen.len() < count {
            let response = next(stream).await;
            assert!(!response.canceled, "{response:?}");
            for event in response.events {
                let kv = event.kv.unwrap();
                seen.push((
                    kv.mod_revision,
                    event.r#type == EventType::Put as i32,
                    String::from_utf8(kv.key.to_vec()).unwrap(),
                    String::from_utf8(kv.value.to_vec()).unwrap(),
                ));
            }
        }
        seen
    }

    against_both!(
        a_watcher_sees_each_change_once_in_order_and_replays_from_a_past_revision,
        nodes = 3
    );
    /// A watcher on a follower sees every change to its prefix once and in
    /// revision order while writes go through every member; another,
    /// started from a past revision, replays the same changes from there.
    async fn a_watcher_sees_each_change_once_in_order_and_replays_from_a_past_revision(
        store: Store,
    ) {
        let members = store.endpoints().len();
        let watcher_member = store.follower().await;
        let (_keep, mut stream) = open(&store, watcher_member, on_w(0)).await;
        let mut expected = Vec::new();
        for i in 0..15 {
            let mut client = store.kv(i % members).await;
            let key = format!("w/{}", i % 4);
            let revision = put(&mut client, &key, &format!("v{i}")).await;
            expected.push((revision, true, key.clone(), format!("v{i}")));
            put(&mut client, "other", "x").await; // outside the prefix
            if i % 5 == 4 {
                let reply = client
                    .delete_range(DeleteRangeRequest {
                        key: b(&key),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                expected.push((reply.header.unwrap().revision, false, key, String::new()));
            }
        }
        let seen = events(&mut stream, expected.len()).await;
        assert_eq!(seen, expected);
        // RaftKV's metrics count the watcher and what it was sent.
        if let Store::Raftkv(cluster) = &store {
            let id = cluster.ids()[watcher_member];
            let (_, metrics) = common::http_get(&cluster.address(id), "/metrics");
            assert_eq!(
                common::sample(&metrics, "raftkv_watchers "),
                1.0,
                "{metrics}"
            );
            assert!(
                common::sample(&metrics, "raftkv_watch_events_sent_total ")
                    >= expected.len() as f64,
                "{metrics}"
            );
            assert!(
                common::sample(&metrics, "raftkv_revision ") > 30.0,
                "{metrics}"
            );
        }
        // From a past revision: the tail, the same.
        let from = expected[5].0;
        let (keep2, mut replay) = open(&store, 0, on_w(from)).await;
        let tail = events(&mut replay, expected.len() - 5).await;
        assert_eq!(tail, expected[5..].to_vec());
        // Once the streams are gone, RaftKV counts no watcher.
        drop((_keep, stream, keep2, replay));
        if let Store::Raftkv(cluster) = &store {
            for id in cluster.ids() {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let (_, metrics) = common::http_get(&cluster.address(id), "/metrics");
                    if common::sample(&metrics, "raftkv_watchers ") == 0.0 {
                        break;
                    }
                    assert!(Instant::now() < deadline, "node {id}: {metrics}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    against_both!(
        a_watch_from_a_compacted_revision_is_cancelled_with_the_compact_revision,
        nodes = 1
    );
    async fn a_watch_from_a_compacted_revision_is_cancelled_with_the_compact_revision(
        store: Store,
    ) {
        let mut client = store.kv(0).await;
        for i in 0..4 {
            put(&mut client, "w/k", &i.to_string()).await;
        }
        client
            .compact(CompactionRequest {
                revision: 4,
                physical: false,
            })
            .await
            .unwrap();
        let (_keep, mut stream) = open(&store, 0, on_w(2)).await;
        let cancelled = next(&mut stream).await;
        assert!(cancelled.canceled, "{cancelled:?}");
        assert_eq!(cancelled.compact_revision, 4);
        assert!(cancelled.events.is_empty());
    }

    against_both!(
        progress_is_reported_on_request_and_to_a_quiet_progress_notify_watcher,
        nodes = 1,
        flags = ["--experimental-watch-progress-notify-interval", "1s"]
    );
    /// A progress request is answered (watch id -1) with the revision the
    /// stream's watchers are current at; a watcher created with
    /// `progress_notify` that goes quiet is sent that revision on its own.
    async fn progress_is_reported_on_request_and_to_a_quiet_progress_notify_watcher(store: Store) {
        let (tx, mut stream) = open(
            &store,
            0,
            WatchCreateRequest {
                progress_notify: true,
                ..on_w(0)
            },
        )
        .await;
        let mut client = store.kv(0).await;
        let written = put(&mut client, "w/a", "1").await;
        assert_eq!(events(&mut stream, 1).await[0].0, written);
        // Quiet: a progress notification, no events, at the write's revision.
        let notified = next(&mut stream).await;
        assert!(
            notified.events.is_empty() && !notified.canceled && notified.watch_id != -1,
            "{notified:?}"
        );
        assert_eq!(notified.header.unwrap().revision, written);
        // A write outside the watched range moves the store on; a progress
        // request reports it once the watcher has caught up with it.
        let current = put(&mut client, "other", "x").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::ProgressRequest(
                    WatchProgressRequest {},
                )),
            })
            .await
            .unwrap();
            let progress = loop {
                let response = next(&mut stream).await;
                assert!(response.events.is_empty(), "{response:?}");
                if response.watch_id == -1 {
                    break response;
                }
            };
            let revision = progress.header.unwrap().revision;
            assert!((written..=current).contains(&revision), "{revision}");
            if revision == current {
                break;
            }
            assert!(Instant::now() < deadline, "progress stayed at {revision}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    against_both!(
        a_fragment_watcher_gets_a_large_revision_in_pieces,
        nodes = 1
    );
    /// One revision larger than `--max-request-bytes` (1.5 MiB) + 512 KiB
    /// (a range delete of 25 values of 100 KiB, watched with previous
    /// values) reaches a watcher created with `fragment` in several
    /// responses, all but the last marked `fragment`, and a watcher
    /// without it in one response.
    async fn a_fragment_watcher_gets_a_large_revision_in_pieces(store: Store) {
        const SIZE: usize = 100 * 1024;
        let mut client = store.kv(0).await;
        let value = "v".repeat(SIZE);
        let keys: Vec<String> = (10..35).map(|i| format!("w/{i}")).collect();
        for key in &keys {
            put(&mut client, key, &value).await;
        }
        let (_keep, mut fragmented) = open(
            &store,
            0,
            WatchCreateRequest {
                fragment: true,
                ..on_w(0)
            },
        )
        .await;
        let (_keep2, mut whole) = open(&store, 0, on_w(0)).await;
        let deleted = client
            .delete_range(DeleteRangeRequest {
                key: b("w/"),
                range_end: b("w0"),
                prev_kv: false,
            })
            .await
            .unwrap()
            .into_inner();
        let revision = deleted.header.unwrap().revision;
        let mut pieces = Vec::new();
        loop {
            let response = next(&mut fragmented).await;
            let last = !response.fragment;
            pieces.push(response);
            if last {
                break;
            }
        }
        assert!(pieces.len() > 1, "{} response(s)", pieces.len());
        let events_of = |responses: &[WatchResponse]| -> Vec<(String, i64, usize)> {
            responses
                .iter()
                .flat_map(|r| r.events.iter())
                .map(|e| {
                    let kv = e.kv.as_ref().unwrap();
                    assert_eq!(e.r#type, EventType::Delete as i32);
                    (
                        String::from_utf8(kv.key.to_vec()).unwrap(),
                        kv.mod_revision,
                        e.prev_kv.as_ref().map_or(0, |p| p.value.len()),
                    )
                })
                .collect()
        };
        let expected: Vec<_> = keys.iter().map(|k| (k.clone(), revision, SIZE)).collect();
        assert_eq!(events_of(&pieces), expected);
        let one = next(&mut whole).await;
        assert!(!one.fragment);
        assert_eq!(events_of(&[one]), expected);
    }
}

against_both!(member_list_and_status_describe_the_cluster, nodes = 3);
/// What `etcdctl member list`, `endpoint status` and `endpoint hashkv` ask
/// for, from every member.
async fn member_list_and_status_describe_the_cluster(store: Store) {
    use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;
    use raftkv_proto::etcdserverpb::{HashKvRequest, MemberListRequest};
    let (ids, leader) = store.members().await;
    let endpoints = store.endpoints();
    let mut expected: Vec<(u64, Vec<String>)> = ids
        .iter()
        .zip(&endpoints)
        .map(|(id, endpoint)| (*id, vec![format!("http://{endpoint}")]))
        .collect();
    expected.sort();
    for member in 0..endpoints.len() {
        let channel = store.channel(member).await;
        let members = ClusterClient::new(channel.clone())
            .member_list(MemberListRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut listed: Vec<(u64, Vec<String>)> = members
            .members
            .iter()
            .map(|m| (m.id, m.client_ur_ls.clone()))
            .collect();
        listed.sort();
        assert_eq!(listed, expected, "via member {member}");
        let status = MaintenanceClient::new(channel)
            .status(StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.leader, ids[leader], "via member {member}");
        assert_eq!(status.header.unwrap().member_id, ids[member]);
        assert!(status.raft_term > 0 && status.raft_index > 0);
    }
    // HashKV at one revision is the same on every member, and differs at
    // another revision.
    let mut client = store.kv(leader).await;
    put(&mut client, "h", "1").await;
    let at = put(&mut client, "h", "2").await;
    let mut hashes = Vec::new();
    for member in 0..endpoints.len() {
        // A linearizable read first: the member has applied the write.
        get(&mut store.kv(member).await, "h", 0).await;
        let mut maintenance = MaintenanceClient::new(store.channel(member).await);
        let hash = |revision| HashKvRequest { revision };
        let now = maintenance.hash_kv(hash(at)).await.unwrap().into_inner();
        let before = maintenance
            .hash_kv(hash(at - 1))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(now.hash, before.hash, "member {member}");
        hashes.push(now.hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

against_both!(
    a_lease_lives_while_kept_alive_and_takes_its_keys_when_it_expires,
    nodes = 3
);
/// A lease kept alive (through a follower) outlives its TTL; once no
/// longer kept alive it expires, and its key is deleted on every member.
async fn a_lease_lives_while_kept_alive_and_takes_its_keys_when_it_expires(store: Store) {
    use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
    use raftkv_proto::etcdserverpb::{
        LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest,
    };
    let channel = store.channel(store.follower().await).await;
    let mut leases = LeaseClient::new(channel.clone());
    let granted = leases
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(granted.id > 0 && granted.ttl >= 2, "{granted:?}");
    let mut kv = KvClient::new(channel);
    kv.put(PutRequest {
        key: b("leased"),
        value: b("v"),
        lease: granted.id,
        ..Default::default()
    })
    .await
    .unwrap();
    // Kept alive for three TTLs. (The first request goes before the call
    // is awaited: etcd sends the stream's headers with its first reply.)
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(LeaseKeepAliveRequest { id: granted.id })
        .await
        .unwrap();
    let mut replies = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let kept_until = Instant::now() + Duration::from_secs(3 * granted.ttl as u64);
    loop {
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(reply.ttl, granted.ttl, "kept alive");
        if Instant::now() >= kept_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(LeaseKeepAliveRequest { id: granted.id })
            .await
            .unwrap();
    }
    assert!(
        get(&mut kv, "leased", 0).await.is_some(),
        "alive past its TTL"
    );
    drop(tx);
    // Then it expires: the key is gone on every member.
    let deadline = Instant::now() + Duration::from_secs(granted.ttl as u64 + 10);
    for member in 0..store.endpoints().len() {
        let mut client = store.kv(member).await;
        loop {
            let reply = client
                .range(RangeRequest {
                    key: b("leased"),
                    serializable: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if reply.kvs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {member} still has the key"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let gone = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: granted.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        gone.ttl, -1,
        "etcd's answer for a lease that no longer exists"
    );
}

/// A lease of `ttl` seconds granted through `channel`.
async fn grant(channel: &Channel, ttl: i64) -> i64 {
    use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
    use raftkv_proto::etcdserverpb::LeaseGrantRequest;
    LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

against_both!(a_lock_is_held_by_one_caller_at_a_time, nodes = 3);
/// etcd's lock service: a second holder waits until the first unlocks.
async fn a_lock_is_held_by_one_caller_at_a_time(store: Store) {
    use raftkv_proto::v3lockpb::lock_client::LockClient;
    use raftkv_proto::v3lockpb::{LockRequest, UnlockRequest};
    let mut locks = Vec::new();
    let mut leases = Vec::new();
    for member in 0..2 {
        let channel = store.channel(member).await;
        leases.push(grant(&channel, 30).await);
        locks.push(LockClient::new(channel));
    }
    let first = locks[0]
        .lock(LockRequest {
            name: b("job"),
            lease: leases[0],
        })
        .await
        .unwrap()
        .into_inner();
    let mut second_client = locks[1].clone();
    let lease = leases[1];
    let second = tokio::spawn(async move {
        second_client
            .lock(LockRequest {
                name: b("job"),
                lease,
            })
            .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !second.is_finished(),
        "the second caller waits while the first holds it"
    );
    locks[0]
        .unlock(UnlockRequest { key: first.key })
        .await
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second caller gets the lock once it is released")
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(held.key.starts_with(b"job/"), "{:?}", held.key);
}

against_both!(an_election_has_one_leader_until_it_resigns, nodes = 3);
/// etcd's election service: the first campaigner leads, proclaims a value
/// others read, and the next campaigner leads once it resigns.
async fn an_election_has_one_leader_until_it_resigns(store: Store) {
    use raftkv_proto::v3electionpb::election_client::ElectionClient;
    use raftkv_proto::v3electionpb::{
        CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
    };
    let channel = store.channel(store.follower().await).await;
    let (first_lease, second_lease) = (grant(&channel, 30).await, grant(&channel, 30).await);
    let mut election = ElectionClient::new(channel);
    let campaign = |lease: i64, value: &str| CampaignRequest {
        name: b("boss"),
        lease,
        value: b(value),
    };
    let first = election
        .campaign(campaign(first_lease, "alice"))
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    let mut second_client = election.clone();
    let second =
        tokio::spawn(async move { second_client.campaign(campaign(second_lease, "bob")).await });
    election
        .proclaim(ProclaimRequest {
            leader: Some(first.clone()),
            value: b("alice-2"),
        })
        .await
        .unwrap();
    let leader = election
        .leader(LeaderRequest { name: b("boss") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leader.kv.unwrap().value, "alice-2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "one leader at a time");
    election
        .resign(ResignRequest {
            leader: Some(first.clone()),
        })
        .await
        .unwrap();
    let won = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second campaigner leads once the first resigns")
        .unwrap()
        .unwrap();
    assert_ne!(won.into_inner().leader.unwrap().key, first.key);
    // The resigned leader can no longer proclaim.
    let error = election
        .proclaim(ProclaimRequest {
            leader: Some(first),
            value: b("late"),
        })
        .await
        .unwrap_err();
    assert_eq!(error.message(), "election: not leader");
}

against_both!(
    a_request_over_max_request_bytes_is_refused,
    nodes = 1,
    flags = ["--max-request-bytes", "1024"]
);
/// `--max-request-bytes` bounds requests on the etcd API, with etcd's error.
async fn a_request_over_max_request_bytes_is_refused(store: Store) {
    let mut client = store.kv(0).await;
    let error = client
        .put(PutRequest {
            key: b("big"),
            value: Bytes::from(vec![b'v'; 2048]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(error.message(), "etcdserver: request is too large");
    put(&mut client, "small", "fits").await;
}

/// The client library's etcd-backed calls: compare-and-swap, a lease kept
/// alive by a background task, and a watch that resumes on another member
/// when the one it reads from is killed — every change once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_swaps_keeps_leases_and_resumes_watches() {
    use futures::StreamExt;
    use raftkv_client::Condition;
    use std::time::Duration;
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(Duration::from_secs(10));
    let follower = cluster.followers()[0];
    let client = cluster.client();
    // Compare-and-swap.
    assert!(client.put_if("cas", "a", Condition::Absent).await.unwrap());
    assert!(!client.put_if("cas", "b", Condition::Absent).await.unwrap());
    assert!(client
        .put_if("cas", "b", Condition::Value(b("a")))
        .await
        .unwrap());
    assert!(client
        .put_if("cas", "c", Condition::Version(2))
        .await
        .unwrap());
    assert_eq!(client.get("cas").await.unwrap(), "c");
    // A lease kept alive past its TTL.
    let lease = client.lease_grant(Duration::from_secs(2)).await.unwrap();
    let keep = client.lease_keep_alive(lease);
    let mut kv = etcd(&cluster, follower).await;
    kv.put(PutRequest {
        key: b("held"),
        value: b("v"),
        lease: lease.id,
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(lease.ttl * 3).await;
    assert!(get(&mut kv, "held", 0).await.is_some(), "kept alive");
    drop(keep);
    // A watch through the follower (its first endpoint), which is then killed.
    let watcher_client =
        raftkv_client::Client::new(&[cluster.address(follower), cluster.address(cluster.leader())])
            .unwrap();
    let mut watch = watcher_client.watch("r/", true, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut written = Vec::new();
    for i in 0..20u64 {
        if i == 10 {
            cluster.kill(follower);
        }
        let key = format!("r/{i}");
        client.put(key.clone(), "v").await.unwrap();
        written.push(key);
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("events within 20 s")
            .expect("the watch goes on")
            .unwrap();
        seen.push(event);
    }
    let keys: Vec<String> = seen
        .iter()
        .map(|e| String::from_utf8(e.key.to_vec()).unwrap())
        .collect();
    assert_eq!(
        keys, written,
        "every change once, in order, across the kill"
    );
    assert!(seen.windows(2).all(|w| w[0].revision < w[1].revision));
}

/// etcd's learner flow on RaftKV's membership, each call to a member that
/// does not lead: `member add --learner` (an unstarted learner under the
/// next id), the node started with `--join`, `member promote`, `member
/// remove`; a voter added directly is refused saying how.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_member_add_promote_and_remove_go_through_the_change_job() {
    use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;
    use raftkv_proto::etcdserverpb::{
        MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    };
    let mut cluster = TestCluster::start(bin(), 3);
    let leader = cluster.wait_leader(std::time::Duration::from_secs(10));
    let follower = *cluster.ids().iter().find(|id| **id != leader).unwrap();
    let mut members = ClusterClient::new(channel(&cluster.address(follower)).await);
    let address = cluster.reserve_join_addresses(1)[0].clone();
    let voter = members
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![format!("http://{address}")],
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(voter.code(), Code::FailedPrecondition);
    assert!(voter.message().contains("--learner"), "{}", voter.message());
    let added = members
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![format!("http://{address}")],
            is_learner: true,
        })
        .await
        .unwrap()
        .into_inner();
    let id = added.member.unwrap().id;
    assert_eq!(id, 4, "the next free id");
    assert_eq!(
        added.header.unwrap().member_id,
        follower,
        "answered by the member asked"
    );
    let listed = |reply: &raftkv_proto::etcdserverpb::MemberListResponse| {
        reply
            .members
            .iter()
            .map(|m| (m.id, m.is_learner))
            .collect::<Vec<_>>()
    };
    let list = members
        .member_list(MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed(&list).contains(&(4, true)), "{list:?}");
    // The operator starts the node; it joins as the learner it was added as.
    let joined = tokio::task::block_in_place(|| cluster.join_node(follower, true));
    assert_eq!(joined, id);
    let started = std::time::Instant::now();
    loop {
        let promoted = members.member_promote(MemberPromoteRequest { id }).await;
        match promoted {
            Ok(reply) => {
                let voters: Vec<u64> = reply
                    .into_inner()
                    .members
                    .iter()
                    .filter(|m| !m.is_learner)
                    .map(|m| m.id)
                    .collect();
                assert!(voters.contains(&id), "{voters:?}");
                break;
            }
            Err(e) if started.elapsed() < std::time::Duration::from_secs(30) => {
                eprintln!("promote: {e}; again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the learner was not promoted: {e}"),
        }
    }
    let again = members
        .member_promote(MemberPromoteRequest { id })
        .await
        .unwrap_err();
    assert_eq!(
        again.message(),
        "etcdserver: can only promote a learner member"
    );
    let removed = members
        .member_remove(MemberRemoveRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.members.iter().all(|m| m.id != id));
    let gone = members
        .member_remove(MemberRemoveRequest { id })
        .await
        .unwrap_err();
    assert_eq!(gone.message(), "etcdserver: member not found");
}
