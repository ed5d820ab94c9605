//! Writes a follower passes to its leader through raft's message stream
//! (`Replica::write_through_leader`, `node/forwarding.rs`), on a cluster
//! driven turn by turn on a manual clock (see `common`).
//!
//! What the etcd API's clients rely on when they write through a follower:
//! the write is applied once, and answered once it is applied at the member
//! they asked; a refusal at the leader reaches them with its reason; a write
//! whose fate the follower cannot know (the leader crashed, the message was
//! lost) is answered "outcome unknown", never left waiting; and a follower
//! whose leader runs a build that does not take such writes says "not
//! leader" (the server then forwards over a client call).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Cluster;
use raftkv_proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
use raftkv_replica::{
    Clock, Lane, Op, ReplicaConfig, ReplicaError, Write, WriteResult, WriteSession,
};

/// An etcd put (what the etcd API's server passes on).
fn put(key: &str, value: &str) -> Write {
    Write::EtcdTxn(TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                ..Default::default()
            })),
        }],
        ..Default::default()
    })
}

/// A 3-node cluster whose members all said they take writes passed on.
fn cluster() -> (Cluster, u64, u64) {
    cluster_with(|_| {})
}

fn cluster_with(tweak: impl Fn(&mut ReplicaConfig)) -> (Cluster, u64, u64) {
    let mut cluster = Cluster::with_config(&[1, 2, 3], &[], &[1, 2, 3], tweak);
    for (id, node) in &cluster.nodes {
        for peer in [1, 2, 3] {
            if peer != *id {
                node.replica.note_peer_takes_proposals(peer, true);
            }
        }
    }
    let leader = cluster.wait_leader();
    let follower = if leader == 1 { 2 } else { 1 };
    // The follower knows its leader once it has heard from it.
    cluster.run_until(Duration::from_secs(2), |c| {
        c.nodes[&follower].replica.status().leader_id == leader
    });
    (cluster, leader, follower)
}

fn write_at(
    cluster: &mut Cluster,
    at: u64,
    write: Write,
    within: Duration,
) -> Result<WriteResult, ReplicaError> {
    let replica = cluster.nodes[&at].replica.clone();
    let answer = Box::pin(async move {
        replica
            .write_through_leader(write, WriteSession::default(), Default::default())
            .await
    });
    cluster.answer(answer, within)
}

fn value_at(cluster: &Cluster, at: u64, key: &str) -> Option<Bytes> {
    cluster.nodes[&at].replica.kv().get(key.as_bytes())
}

#[test]
fn a_follower_passes_a_write_to_the_leader_and_answers_once_it_is_applied_there_and_here() {
    let (mut cluster, leader, follower) = cluster();
    let before = cluster.nodes[&leader].replica.revision();
    let written = write_at(
        &mut cluster,
        follower,
        put("k", "v"),
        Duration::from_secs(5),
    )
    .expect("the write is applied");
    assert_eq!(written.revision, before + 1, "one write, one revision");
    assert_eq!(
        value_at(&cluster, follower, "k").as_deref(),
        Some(&b"v"[..])
    );
    assert!(
        written.stages.forward > Duration::ZERO,
        "{:?}",
        written.stages
    );
    // Applied once, at the same revision everywhere.
    cluster.run_until(Duration::from_secs(2), |c| {
        c.nodes.values().all(|n| n.replica.revision() == before + 1)
    });
    assert_eq!(value_at(&cluster, leader, "k").as_deref(), Some(&b"v"[..]));
    // And again: each write is its own entry.
    let again = write_at(
        &mut cluster,
        follower,
        put("k", "w"),
        Duration::from_secs(5),
    )
    .expect("the second write is applied");
    assert_eq!(again.revision, before + 2);
}

#[test]
fn the_leaders_refusal_reaches_the_follower_with_its_reason() {
    // A space quota of one byte: the first write fills it, and the leader
    // refuses writes that add data from then on, as it refuses its own
    // clients'.
    let (mut cluster, leader, follower) = cluster_with(|config| config.quota_bytes = 1);
    write_at(
        &mut cluster,
        follower,
        put("first", "v"),
        Duration::from_secs(5),
    )
    .expect("the first write fits");
    let error = write_at(
        &mut cluster,
        follower,
        put("second", "v"),
        Duration::from_secs(5),
    )
    .expect_err("the leader refuses it");
    match &error {
        ReplicaError::NoSpace(text) => assert!(text.contains("quota"), "{text}"),
        other => panic!("expected the leader's refusal, got {other:?}"),
    }
    // Nothing of it arrives later either.
    for _ in 0..500 {
        cluster.step();
    }
    assert_eq!(value_at(&cluster, leader, "second"), None);
    assert_eq!(value_at(&cluster, follower, "second"), None);
}

#[test]
fn only_etcd_writes_are_passed_on() {
    // `raftkv.v1` redirects its clients to the leader instead.
    let (mut cluster, leader, follower) = cluster();
    let ops = Write::Ops(vec![Op {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        delete: false,
    }]);
    let error =
        write_at(&mut cluster, follower, ops, Duration::from_secs(5)).expect_err("not passed on");
    assert!(
        matches!(error, ReplicaError::NotLeader { leader_id, .. } if leader_id == leader),
        "{error:?}"
    );
}

#[test]
fn a_write_passed_to_a_leader_that_crashes_has_an_unknown_outcome() {
    let (mut cluster, leader, follower) = cluster();
    // The leader crashes before the write reaches it.
    cluster.nodes.remove(&leader);
    cluster.up.lock().unwrap().retain(|id| *id != leader);
    let error = write_at(
        &mut cluster,
        follower,
        put("k", "v"),
        Duration::from_secs(10),
    )
    .expect_err("not applied");
    assert!(
        matches!(&error, ReplicaError::UnknownOutcome(text) if text.contains("leader changed")),
        "{error:?}"
    );
    // The two left elect a leader and take writes through the follower
    // again.
    let new_leader = cluster.wait_leader();
    let other = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader && *id != new_leader)
        .unwrap();
    cluster.run_until(Duration::from_secs(2), |c| {
        c.nodes[&other].replica.status().leader_id == new_leader
    });
    write_at(
        &mut cluster,
        other,
        put("k", "after"),
        Duration::from_secs(5),
    )
    .expect("applied through the new leader");
    assert_eq!(
        value_at(&cluster, other, "k").as_deref(),
        Some(&b"after"[..])
    );
}

#[test]
fn a_write_lost_on_the_way_is_answered_unknown_within_the_timeout() {
    let (mut cluster, leader, follower) = cluster();
    // Writes passed on travel on the follower's data lane (a follower sends
    // no appends): lose them, and only them.
    cluster.deliver = Box::new(move |m| !(m.from() == follower && m.lane() == Lane::Data));
    let started = cluster.clock.now();
    let error = write_at(
        &mut cluster,
        follower,
        put("k", "v"),
        Duration::from_secs(12),
    )
    .expect_err("never applied");
    let waited = cluster.clock.now() - started;
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
    assert!(
        // Ten election timeouts of 300 ms, at least 3 s.
        matches!(&error, ReplicaError::UnknownOutcome(text) if text.contains("within 3.0 s")),
        "{error:?}"
    );
    assert_eq!(cluster.leader(), Some(leader), "the leader never changed");
    assert_eq!(value_at(&cluster, leader, "k"), None);
}

#[test]
fn a_follower_whose_leader_does_not_take_writes_passed_on_says_not_leader() {
    let (mut cluster, leader, follower) = cluster();
    cluster.nodes[&follower]
        .replica
        .note_peer_takes_proposals(leader, false);
    let error = write_at(
        &mut cluster,
        follower,
        put("k", "v"),
        Duration::from_secs(5),
    )
    .expect_err("not passed on");
    assert!(
        matches!(error, ReplicaError::NotLeader { leader_id, .. } if leader_id == leader),
        "{error:?}"
    );
}
