//! The leader's membership change job (`node/change_job.rs`), step by step
//! on a cluster driven turn by turn on a manual clock: every node in this
//! thread (`ReplicaCore`), messages delivered between turns, nothing timed
//! by the machine — so each test runs the same way every time.
//!
//! What a caller of `raftkv cluster add/promote/remove/transfer-leader`
//! relies on: a node is promoted only once caught up and the change ends
//! outside the joint configuration; a change that cannot complete undoes
//! what it added; removing the leader moves leadership first and names the
//! new leader; one change at a time; refusals name their cause.

mod common;

use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use common::{Answer, Cluster};
use raftkv_replica::{member_ids, ChangePlan, Op, ReplicaError, WriteSession};

fn sorted(mut ids: Vec<u64>) -> Vec<u64> {
    ids.sort_unstable();
    ids
}

#[test]
fn a_learner_is_promoted_once_caught_up_and_the_change_leaves_the_joint_configuration() {
    let mut cluster = Cluster::new(&[1, 2, 3], &[4], &[1, 2, 3, 4]);
    let leader = cluster.wait_leader();
    let plan = ChangePlan {
        promote: vec![4],
        ..Default::default()
    };
    let answer = cluster.change(leader, plan, Duration::from_secs(10));
    let (result, seen) = cluster.finish(answer, Duration::from_secs(12));
    result.expect("the promotion succeeds");
    let conf = cluster.conf(leader);
    assert_eq!(sorted(conf.voters.clone()), vec![1, 2, 3, 4]);
    assert!(conf.learners.is_empty(), "{conf:?}");
    assert!(
        conf.voters_outgoing.is_empty(),
        "answered while still joint: {conf:?}"
    );
    // Every configuration on the way had node 4 as a learner or a voter.
    assert!(seen
        .iter()
        .all(|c| member_ids(c).contains(&4) && c.voters.len() <= 4));
}

#[test]
fn a_voter_that_never_catches_up_is_rolled_back_and_the_membership_is_as_before() {
    // Node 5 is asked for but never runs: it is added as a learner, cannot
    // catch up, and must not stay behind as a member.
    let mut cluster = Cluster::new(&[1, 2, 3], &[], &[1, 2, 3]);
    let leader = cluster.wait_leader();
    let before = cluster.conf(leader);
    let plan = ChangePlan {
        voters: [(5, "node-5".to_string())].into(),
        ..Default::default()
    };
    let answer = cluster.change(leader, plan, Duration::from_secs(4));
    let (result, seen) = cluster.finish(answer, Duration::from_secs(6));
    let error = result.expect_err("a node that never answers is not promoted");
    let text = error.to_string();
    assert!(text.contains("node 5"), "{text}");
    assert!(text.contains("rolled back"), "{text}");
    assert!(
        seen.iter().any(|c| c.learners.contains(&5)),
        "node 5 was never added as a learner: {seen:?}"
    );
    assert!(
        seen.iter().all(|c| !c.voters.contains(&5)),
        "node 5 became a voter: {seen:?}"
    );
    cluster.run_until(Duration::from_secs(2), |c| c.conf(leader) == before);
}

#[test]
fn removing_the_leader_moves_leadership_first_and_names_the_new_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3], &[], &[1, 2, 3]);
    let leader = cluster.wait_leader();
    let plan = ChangePlan {
        remove: vec![leader],
        ..Default::default()
    };
    let answer = cluster.change(leader, plan.clone(), Duration::from_secs(10));
    let (result, _) = cluster.finish(answer, Duration::from_secs(12));
    let new_leader = match result {
        Err(ReplicaError::NotLeader { leader_id, .. }) => leader_id,
        other => panic!("expected NotLeader naming the new leader, got {other:?}"),
    };
    assert_ne!(new_leader, leader);
    assert_ne!(new_leader, 0, "the new leader is named");
    // Nothing was removed yet: the caller repeats the request there.
    assert_eq!(sorted(cluster.conf(new_leader).voters), vec![1, 2, 3]);
    cluster.run_until(Duration::from_secs(5), |c| c.leader() == Some(new_leader));
    let answer = cluster.change(new_leader, plan, Duration::from_secs(10));
    let (result, _) = cluster.finish(answer, Duration::from_secs(12));
    result.expect("the removal succeeds at the new leader");
    let conf = cluster.conf(new_leader);
    assert!(!member_ids(&conf).contains(&leader), "{conf:?}");
    assert_eq!(conf.voters.len(), 2);
    assert!(conf.voters_outgoing.is_empty(), "{conf:?}");
}

#[test]
fn one_change_at_a_time() {
    let mut cluster = Cluster::new(&[1, 2, 3], &[], &[1, 2, 3]);
    let leader = cluster.wait_leader();
    let slow = ChangePlan {
        voters: [(5, "node-5".to_string())].into(),
        ..Default::default()
    };
    let mut first = cluster.change(leader, slow, Duration::from_secs(4));
    // Sent to the node (a request is sent when first polled), and started.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(first.as_mut().poll(&mut cx).is_pending());
    for _ in 0..50 {
        cluster.step();
    }
    let second = ChangePlan {
        remove: vec![if leader == 3 { 2 } else { 3 }],
        ..Default::default()
    };
    let second = cluster.change(leader, second, Duration::from_secs(4));
    let (result, _) = cluster.finish(second, Duration::from_secs(1));
    let text = result.expect_err("refused while another runs").to_string();
    assert!(
        text.contains("another membership change is in progress"),
        "{text}"
    );
    let (result, _) = cluster.finish(first, Duration::from_secs(6));
    assert!(result.is_err());
    // Once the first is done, the next is taken.
    let remove = if leader == 3 { 2 } else { 3 };
    let plan = ChangePlan {
        remove: vec![remove],
        ..Default::default()
    };
    let answer = cluster.change(leader, plan, Duration::from_secs(10));
    let (result, _) = cluster.finish(answer, Duration::from_secs(12));
    result.expect("the removal succeeds");
    assert!(!member_ids(&cluster.conf(leader)).contains(&remove));
}

#[test]
fn refusals_name_their_cause_and_change_nothing() {
    let mut cluster = Cluster::new(&[1, 2, 3], &[4], &[1, 2, 3, 4]);
    let leader = cluster.wait_leader();
    let before = cluster.conf(leader);
    let follower = if leader == 1 { 2 } else { 1 };
    let cases: Vec<(u64, ChangePlan, &str)> = vec![
        (
            leader,
            ChangePlan {
                promote: vec![9],
                ..Default::default()
            },
            "node 9 is not a member; add it first",
        ),
        (
            leader,
            ChangePlan {
                promote: vec![follower],
                ..Default::default()
            },
            "is already a voter",
        ),
        (
            follower,
            ChangePlan {
                promote: vec![4],
                ..Default::default()
            },
            "",
        ),
    ];
    for (at, plan, expected) in cases {
        let answer = cluster.change(at, plan, Duration::from_secs(5));
        let (result, _) = cluster.finish(answer, Duration::from_secs(1));
        match result {
            Err(ReplicaError::NotLeader { leader_id, .. }) if expected.is_empty() => {
                assert_eq!(leader_id, leader, "a follower names the leader");
            }
            Err(e) => assert!(e.to_string().contains(expected), "{e}"),
            Ok(()) => panic!("accepted: expected {expected:?}"),
        }
        assert_eq!(cluster.conf(leader), before);
    }
}

#[test]
fn a_transfer_answers_once_the_target_leads() {
    let mut cluster = Cluster::new(&[1, 2, 3], &[], &[1, 2, 3]);
    let leader = cluster.wait_leader();
    let to = if leader == 3 { 1 } else { 3 };
    let replica = cluster.nodes[&leader].replica.clone();
    let answer: Answer =
        Box::pin(async move { replica.transfer(to, Duration::from_secs(5)).await });
    let (result, _) = cluster.finish(answer, Duration::from_secs(6));
    result.expect("the transfer succeeds");
    cluster.run_until(Duration::from_secs(2), |c| c.leader() == Some(to));
}

/// A leader elected moments ago counts the entries of the old term it has
/// not applied yet as a pending configuration change (raft would drop a
/// change proposed before they apply): a change asked of it then — as
/// `raftkv cluster remove` repeats a request at a new leader at once — waits
/// for them instead of being refused as "in progress".
#[test]
fn a_change_asked_of_a_leader_elected_moments_ago_waits_for_its_log_to_apply() {
    let mut cluster = Cluster::new(&[1, 2, 3], &[], &[1, 2, 3]);
    let old = cluster.wait_leader();
    // A write reaches the followers but the leader stops before it hears
    // back: whoever leads next holds it unapplied.
    let replica = cluster.nodes[&old].replica.clone();
    let ops = vec![Op {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        delete: false,
    }];
    let session = WriteSession {
        client_id: 42,
        seq: 1,
        first_incomplete_seq: 1,
    };
    let mut write = Box::pin(async move { replica.propose(ops, session).await });
    let mut cx = Context::from_waker(Waker::noop());
    assert!(write.as_mut().poll(&mut cx).is_pending());
    cluster.step();
    cluster.up.lock().unwrap().retain(|id| *id != old);
    cluster.nodes.remove(&old);
    cluster.run_until(Duration::from_secs(10), |c| c.leader().is_some());
    let new_leader = cluster.leader().unwrap();
    let view = cluster.nodes[&new_leader].core.raft_view();
    assert!(
        view.applied_index < view.last_index,
        "the new leader has applied its whole log already; the test needs it not to: {view:?}"
    );
    let plan = ChangePlan {
        remove: vec![old],
        ..Default::default()
    };
    let answer = cluster.change(new_leader, plan, Duration::from_secs(10));
    let (result, _) = cluster.finish(answer, Duration::from_secs(12));
    result.expect("the removal waits for the new leader's log and succeeds");
    let conf = cluster.conf(new_leader);
    assert_eq!(sorted(conf.voters.clone()), {
        let mut rest: Vec<u64> = vec![1, 2, 3];
        rest.retain(|id| *id != old);
        rest
    });
    assert!(conf.voters_outgoing.is_empty(), "{conf:?}");
}

/// A leader elected by a transfer can win with the old leader's vote alone
/// and have heard nothing from the other follower yet (a follower hears only
/// from the leader): the quorum check of a change asked of it at once waits
/// until it has, rather than counting that follower dead.
#[test]
fn a_new_leader_hears_from_its_voters_before_it_judges_a_change() {
    let mut cluster = Cluster::new(&[1, 2, 3], &[], &[1, 2, 3]);
    let old = cluster.wait_leader();
    let mut others = [1, 2, 3].into_iter().filter(|id| *id != old);
    let (target, other) = (others.next().unwrap(), others.next().unwrap());
    // The other follower hears nothing while leadership moves.
    cluster.up.lock().unwrap().retain(|id| *id != other);
    let replica = cluster.nodes[&old].replica.clone();
    let mut transfer = Some(Box::pin(async move {
        replica.transfer(target, Duration::from_secs(5)).await
    }));
    cluster.run_until(Duration::from_secs(10), |c| {
        let mut cx = Context::from_waker(Waker::noop());
        if transfer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(&mut cx).is_ready())
        {
            transfer = None;
        }
        c.leader() == Some(target)
    });
    cluster.up.lock().unwrap().push(other);
    let plan = ChangePlan {
        remove: vec![old],
        ..Default::default()
    };
    let answer = cluster.change(target, plan, Duration::from_secs(10));
    let (result, _) = cluster.finish(answer, Duration::from_secs(12));
    result.expect("the removal of the old leader succeeds at the new one");
    let conf = cluster.conf(target);
    assert!(!member_ids(&conf).contains(&old), "{conf:?}");
}
