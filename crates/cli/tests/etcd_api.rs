//! etcd's v3 KV API on real `raftkv server` processes, through the
//! project's own etcd stubs (no system protoc): what an etcd client relies
//! on — every member takes every request (followers forward writes and
//! linearizable reads to the leader), etcd's revisions, compare-and-swap
//! transactions, range deletes with the previous values, reads at a past
//! revision, compaction and etcd's error codes and texts; one keyspace with
//! `raftkv.v1`.

mod common;

use bytes::Bytes;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::{
    compare, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use raftkv_testkit::TestCluster;
use tonic::transport::Channel;
use tonic::Code;

use common::bin;

async fn etcd(cluster: &TestCluster, id: u64) -> KvClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", cluster.address(id)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    KvClient::new(channel)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_takes_etcd_writes_and_reads_with_etcd_revisions() {
    let cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(std::time::Duration::from_secs(10));
    let ids = cluster.ids();
    // Writes through each member in turn, followers included.
    let mut revision = 1;
    for (n, id) in ids.iter().enumerate() {
        let mut client = etcd(&cluster, *id).await;
        let written = put(&mut client, "e/k", &format!("v{n}")).await;
        revision += 1;
        assert_eq!(written, revision, "the write's own revision, via node {id}");
    }
    // Linearizable reads from every member see the last write.
    for id in &ids {
        let mut client = etcd(&cluster, *id).await;
        assert_eq!(
            get(&mut client, "e/k", 0).await,
            Some(("v2".to_string(), 2, 4, 3)),
            "via node {id}"
        );
        // As of a past revision.
        assert_eq!(
            get(&mut client, "e/k", 2).await,
            Some(("v0".to_string(), 2, 2, 1))
        );
    }
    // One keyspace: a key written through raftkv.v1 is seen through etcd's API.
    cluster.cli(&["put", "e/native", "yes"]).assert_ok();
    let mut client = etcd(&cluster, ids[0]).await;
    assert_eq!(get(&mut client, "e/native", 0).await.unwrap().0, "yes");
    // A prefix range with a limit.
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_takes_one_branch_and_range_deletes_return_what_they_deleted() {
    let cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(std::time::Duration::from_secs(10));
    let follower = cluster.followers()[0];
    let mut client = etcd(&cluster, follower).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_is_refused_with_etcd_s_error() {
    let cluster = TestCluster::start(bin(), 1);
    cluster.wait_leader(std::time::Duration::from_secs(10));
    let mut client = etcd(&cluster, cluster.ids()[0]).await;
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
    // The compaction survives a restart.
    let mut cluster = cluster;
    let id = cluster.ids()[0];
    cluster.kill(id);
    cluster.restart(id);
    cluster.wait_leader(std::time::Duration::from_secs(10));
    let mut client = etcd(&cluster, id).await;
    assert_compacted(&mut client, "c", 2).await;
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
        watch_request, WatchCreateRequest, WatchRequest, WatchResponse,
    };
    use raftkv_proto::mvccpb::event::EventType;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tonic::Streaming;

    async fn open(
        cluster: &TestCluster,
        id: u64,
        start_revision: i64,
    ) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
        let channel = Channel::from_shared(format!("http://{}", cluster.address(id)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b("w/"),
                    range_end: b("w0"),
                    start_revision,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
        let stream = WatchClient::new(channel)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, stream)
    }

    /// (revision, PUT/DELETE, key, value) of events until `count` arrived.
    async fn events(
        stream: &mut Streaming<WatchResponse>,
        count: usize,
    ) -> Vec<(i64, bool, String, String)> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while seen.len() < count {
            let response = tokio::time::timeout_at(deadline, stream.message())
                .await
                .expect("events within 20 s")
                .unwrap()
                .expect("the stream stays open");
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

    /// A watcher on a follower sees every change to its prefix once and in
    /// revision order while writes go through every member; another,
    /// started from a past revision, replays the same changes from there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_sees_each_change_once_in_order_and_replays_from_a_past_revision() {
        let cluster = TestCluster::start(bin(), 3);
        cluster.wait_leader(Duration::from_secs(10));
        let ids = cluster.ids();
        let watcher_node = cluster.followers()[0];
        let (_keep, mut stream) = open(&cluster, watcher_node, 0).await;
        let created = stream.message().await.unwrap().unwrap();
        assert!(created.created);
        let mut expected = Vec::new();
        for i in 0..15 {
            let mut client = etcd(&cluster, ids[i % ids.len()]).await;
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
        // The node's metrics count the watcher and what it was sent.
        let (_, metrics) = common::http_get(&cluster.address(watcher_node), "/metrics");
        assert_eq!(
            common::sample(&metrics, "raftkv_watchers "),
            1.0,
            "{metrics}"
        );
        assert!(
            common::sample(&metrics, "raftkv_watch_events_sent_total ") >= expected.len() as f64,
            "{metrics}"
        );
        assert!(
            common::sample(&metrics, "raftkv_revision ") > 30.0,
            "{metrics}"
        );
        // From a past revision: the tail, the same.
        let from = expected[5].0;
        let (_keep2, mut replay) = open(&cluster, ids[0], from).await;
        assert!(replay.message().await.unwrap().unwrap().created);
        let tail = events(&mut replay, expected.len() - 5).await;
        assert_eq!(tail, expected[5..].to_vec());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_from_a_compacted_revision_is_cancelled_with_the_compact_revision() {
        let cluster = TestCluster::start(bin(), 1);
        cluster.wait_leader(Duration::from_secs(10));
        let id = cluster.ids()[0];
        let mut client = etcd(&cluster, id).await;
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
        let (_keep, mut stream) = open(&cluster, id, 2).await;
        let mut cancelled = None;
        while let Some(response) = stream.message().await.unwrap() {
            if response.canceled {
                cancelled = Some(response);
                break;
            }
        }
        let cancelled = cancelled.expect("cancelled");
        assert_eq!(cancelled.compact_revision, 4);
        assert!(
            cancelled.cancel_reason.contains("compacted"),
            "{cancelled:?}"
        );
    }
}

/// What `etcdctl member list` and `etcdctl endpoint status` ask for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_and_status_describe_the_cluster() {
    use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;
    use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use raftkv_proto::etcdserverpb::{MemberListRequest, StatusRequest};
    let cluster = TestCluster::start(bin(), 3);
    let leader = cluster.wait_leader(std::time::Duration::from_secs(10));
    for id in cluster.ids() {
        let channel = Channel::from_shared(format!("http://{}", cluster.address(id)))
            .unwrap()
            .connect()
            .await
            .unwrap();
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
        let expected: Vec<(u64, Vec<String>)> = cluster
            .ids()
            .into_iter()
            .map(|m| (m, vec![format!("http://{}", cluster.address(m))]))
            .collect();
        assert_eq!(listed, expected, "via node {id}");
        let status = MaintenanceClient::new(channel)
            .status(StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.leader, leader, "via node {id}");
        assert_eq!(status.header.unwrap().member_id, id);
        assert!(status.raft_term > 0 && status.raft_applied_index > 0);
    }
    // HashKV at one revision is the same on every member (what `etcdctl
    // endpoint hashkv` compares), and differs at another revision.
    let mut client = etcd(&cluster, leader).await;
    put(&mut client, "h", "1").await;
    let at = put(&mut client, "h", "2").await;
    cluster.wait_caught_up(std::time::Duration::from_secs(10));
    let mut hashes = Vec::new();
    for id in cluster.ids() {
        let channel = Channel::from_shared(format!("http://{}", cluster.address(id)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut maintenance =
            raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient::new(channel);
        let hash = |revision| raftkv_proto::etcdserverpb::HashKvRequest { revision };
        let now = maintenance
            .hash_kv(hash(at))
            .await
            .unwrap()
            .into_inner()
            .hash;
        let before = maintenance
            .hash_kv(hash(at - 1))
            .await
            .unwrap()
            .into_inner()
            .hash;
        assert_ne!(now, before, "node {id}");
        hashes.push(now);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

/// A lease kept alive (through a follower) outlives its TTL; once no
/// longer kept alive it expires, and its key is deleted on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lives_while_kept_alive_and_takes_its_keys_when_it_expires() {
    use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
    use raftkv_proto::etcdserverpb::{
        LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest,
    };
    use std::time::{Duration, Instant};
    let cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(Duration::from_secs(10));
    let follower = cluster.followers()[0];
    let channel = Channel::from_shared(format!("http://{}", cluster.address(follower)))
        .unwrap()
        .connect()
        .await
        .unwrap();
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
    // Kept alive for three TTLs.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let kept_until = Instant::now() + Duration::from_secs(3 * granted.ttl as u64);
    while Instant::now() < kept_until {
        tx.send(LeaseKeepAliveRequest { id: granted.id })
            .await
            .unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(reply.ttl, granted.ttl, "kept alive");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        get(&mut kv, "leased", 0).await.is_some(),
        "alive past its TTL"
    );
    drop(tx);
    // Then it expires: the key is gone on every member.
    let deadline = Instant::now() + Duration::from_secs(granted.ttl as u64 + 10);
    for id in cluster.ids() {
        let mut client = etcd(&cluster, id).await;
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
            assert!(Instant::now() < deadline, "node {id} still has the key");
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

/// etcd's lock service: a second holder waits until the first unlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_held_by_one_caller_at_a_time() {
    use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
    use raftkv_proto::etcdserverpb::LeaseGrantRequest;
    use raftkv_proto::v3lockpb::lock_client::LockClient;
    use raftkv_proto::v3lockpb::{LockRequest, UnlockRequest};
    use std::time::Duration;
    let cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(Duration::from_secs(10));
    let ids = cluster.ids();
    let mut locks = Vec::new();
    let mut leases = Vec::new();
    for id in &ids[..2] {
        let channel = Channel::from_shared(format!("http://{}", cluster.address(*id)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let lease = LeaseClient::new(channel.clone())
            .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        leases.push(lease);
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

/// etcd's election service: the first campaigner leads, proclaims a value
/// others read, and the next campaigner leads once it resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_has_one_leader_until_it_resigns() {
    use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
    use raftkv_proto::etcdserverpb::LeaseGrantRequest;
    use raftkv_proto::v3electionpb::election_client::ElectionClient;
    use raftkv_proto::v3electionpb::{
        CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
    };
    use std::time::Duration;
    let cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(Duration::from_secs(10));
    let channel = Channel::from_shared(format!(
        "http://{}",
        cluster.address(cluster.followers()[0])
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let leases = LeaseClient::new(channel.clone());
    let grant = || {
        let mut leases = leases.clone();
        async move {
            leases
                .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    let (first_lease, second_lease) = (grant().await, grant().await);
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

/// `--max-request-bytes` bounds requests on the etcd API, with etcd's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_max_request_bytes_is_refused() {
    let cluster = TestCluster::start_with(bin(), 1, &["--max-request-bytes", "1KiB"]);
    cluster.wait_leader(std::time::Duration::from_secs(10));
    let mut client = etcd(&cluster, cluster.ids()[0]).await;
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
    let channel = Channel::from_shared(format!("http://{}", cluster.address(follower)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut members = ClusterClient::new(channel);
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
