//! Acceptance: dynamic membership (issue 5), with real processes — growing a
//! cluster with `--join` and shrinking it (the leader among the removed)
//! under a running writer, replacing a node in one joint-consensus step,
//! learners that receive data without being needed for a quorum, removed
//! nodes that stay quiet and refuse requests, membership that survives a
//! restart of every node, bad requests refused without changing anything,
//! and the debug commands on every node.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftkv_client::Consistency;
use raftkv_testkit::TestCluster;
use serde_json::Value;

use common::storage::{assert_same_hash_when_idle, debug_json, single_json};
use common::{assert_all_acked_present, bin, scan_all, Writer};

const MEMBERSHIP_WAIT: Duration = Duration::from_secs(60);
const CHANGE_TIMEOUT: &str = "30s";

/// One member as `cluster members --json` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    role: String,
    voter: bool,
    address: String,
    reachable: bool,
}

/// `cluster members --json` (the leader's view): id -> member, and joint.
fn members(cluster: &TestCluster) -> Result<(BTreeMap<u64, Member>, bool), String> {
    let out = cluster.cli(&["cluster", "members", "--json", "--timeout", "2s"]);
    if out.code != 0 {
        return Err(out.describe());
    }
    let json = single_json(&out);
    let mut map = BTreeMap::new();
    for m in json["members"].as_array().ok_or("no members array")? {
        map.insert(
            m["id"].as_u64().ok_or("member without id")?,
            Member {
                role: m["role"].as_str().unwrap_or_default().to_string(),
                voter: m["voter"].as_bool().unwrap_or_default(),
                address: m["address"].as_str().unwrap_or_default().to_string(),
                reachable: m["reachable"].as_bool().unwrap_or_default(),
            },
        );
    }
    Ok((map, json["joint"].as_bool().unwrap_or_default()))
}

/// Voter ids and learner ids, from `members`.
fn voters_and_learners(members: &BTreeMap<u64, Member>) -> (Vec<u64>, Vec<u64>) {
    let voters = members.iter().filter(|(_, m)| m.voter).map(|(id, _)| *id);
    let learners = members.iter().filter(|(_, m)| !m.voter).map(|(id, _)| *id);
    (voters.collect(), learners.collect())
}

/// Waits until the leader reports exactly these voters and learners, not
/// joint.
fn wait_members(cluster: &TestCluster, voters: &[u64], learners: &[u64]) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < MEMBERSHIP_WAIT {
        match members(cluster) {
            Ok((map, joint)) => {
                let (v, l) = voters_and_learners(&map);
                if v == voters && l == learners && !joint {
                    eprintln!(
                        "members: voters {v:?} learners {l:?} after {:?}",
                        started.elapsed()
                    );
                    return;
                }
                last = format!("voters {v:?} learners {l:?} joint {joint}");
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.fail(&format!(
        "members did not become voters {voters:?} learners {learners:?} in {MEMBERSHIP_WAIT:?}; \
         last: {last}"
    ));
}

/// Waits until node `id` says its role is `role`.
fn wait_role(cluster: &TestCluster, id: u64, role: &str) {
    let started = Instant::now();
    loop {
        let seen = cluster.status(id).map(|s| s.role).unwrap_or_default();
        if seen == role {
            return;
        }
        if started.elapsed() > MEMBERSHIP_WAIT {
            cluster.fail(&format!(
                "node {id} is {seen:?}, not {role:?}, after {MEMBERSHIP_WAIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until node `id`'s own state (a stale read there) has `key` = `value`.
fn wait_local_value(cluster: &TestCluster, id: u64, key: &str, value: &str) {
    let started = Instant::now();
    let expected = format!("{value}\n");
    loop {
        let out = cluster.cli_at(id, &["get", key, "--consistency", "stale"]);
        if out.code == 0 && out.stdout == expected.as_bytes() {
            return;
        }
        assert!(
            started.elapsed() < MEMBERSHIP_WAIT,
            "node {id} never had {key} = {value}: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn change(cluster: &TestCluster, args: &[&str]) -> raftkv_testkit::CliOutput {
    let mut all = vec!["cluster"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--timeout", CHANGE_TIMEOUT]);
    cluster.cli_bounded(&cluster.endpoints(), &all, Duration::from_secs(60))
}

/// `debug raft`, `debug storage`, `debug snapshot` and `debug check` answer
/// on every member, each about itself.
fn debug_commands_work_on_every_node(cluster: &TestCluster) {
    for id in cluster.member_ids() {
        let raft = debug_json(cluster, id, &["raft"]);
        assert!(raft["term"].as_u64().unwrap_or(0) >= 1, "node {id}: {raft}");
        assert!(raft["commit_index"].as_u64().is_some(), "node {id}: {raft}");
        assert!(
            raft["voters"].as_array().is_some_and(|v| !v.is_empty()),
            "{raft}"
        );
        if raft["role"] == "leader" {
            let progress = raft["progress"].as_array().expect("progress");
            assert_eq!(
                progress.len(),
                cluster.member_ids().len(),
                "node {id}: {raft}"
            );
        }
        let storage = debug_json(cluster, id, &["storage"]);
        assert!(
            storage["last_index"].as_u64().unwrap_or(0) > 0,
            "node {id}: {storage}"
        );
        let snapshot = debug_json(cluster, id, &["snapshot"]);
        assert!(
            snapshot["snapshot_index"].as_u64().unwrap_or(0) > 0,
            "node {id}: {snapshot}"
        );
        // Asked at any node, it checks every member.
        let check = cluster.cli_at(id, &["debug", "check", "--json", "--timeout", "20s"]);
        let check = single_json(check.assert_ok());
        assert_eq!(check["consistent"].as_bool(), Some(true), "{check}");
        let ids: Vec<u64> = check["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| n["id"].as_u64())
            .collect();
        assert!(ids.contains(&id), "{check}");
        assert_eq!(ids.len(), cluster.member_ids().len(), "{check}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_one_to_five_with_join_and_shrink_to_three_under_a_writer() {
    let mut cluster = TestCluster::start(bin(), 1);
    // One writer for the whole test; its client is given every address the
    // cluster will have (nodes not started yet are just unreachable).
    let mut endpoints = cluster.endpoint_list();
    endpoints.extend(cluster.reserve_join_addresses(4));
    let client = raftkv_client::Client::new(&endpoints).expect("client");
    let writer = Writer::spawn(client, "grow/");
    writer.wait_for_acks(100, Duration::from_secs(30)).await;

    // 1 -> 3: two nodes join through node 1 and are promoted once caught up.
    let two = cluster.join_node(1, false);
    let three = cluster.join_node(1, false);
    wait_members(&cluster, &[1, two, three], &[]);
    let acked = writer.acked_count();
    writer
        .wait_for_acks(acked + 100, Duration::from_secs(30))
        .await;

    // 3 -> 5, joining through nodes other than the first.
    let four = cluster.join_node(two, false);
    let five = cluster.join_node(three, false);
    wait_members(&cluster, &[1, two, three, four, five], &[]);
    let acked = writer.acked_count();
    writer
        .wait_for_acks(acked + 100, Duration::from_secs(30))
        .await;

    // 5 -> 3 under the same writer: the leader first, then another node.
    let leader = cluster.leader();
    change(&cluster, &["remove", &leader.to_string()]).assert_ok();
    cluster.set_removed(leader);
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader, "leadership moved off the removed node");
    let acked = writer.acked_count();
    writer
        .wait_for_acks(acked + 100, Duration::from_secs(30))
        .await;
    let other = *cluster
        .member_ids()
        .iter()
        .find(|id| **id != new_leader)
        .expect("another member");
    change(&cluster, &["remove", &other.to_string()]).assert_ok();
    cluster.set_removed(other);
    let remaining = cluster.member_ids();
    assert_eq!(remaining.len(), 3);
    wait_members(&cluster, &remaining, &[]);
    let acked = writer.acked_count();
    writer
        .wait_for_acks(acked + 100, Duration::from_secs(30))
        .await;
    let report = writer.stop().await;
    eprintln!(
        "grown to 5 and shrunk to 3 with {} writes acknowledged ({} retried errors)",
        report.acked.len(),
        report.retried_errors.len()
    );
    wait_role(&cluster, leader, "removed");
    wait_role(&cluster, other, "removed");

    let state = scan_all(&cluster.client(), "", Consistency::Linearizable).await;
    assert_all_acked_present(&report.acked, &state, "after growing and shrinking");
    assert_same_hash_when_idle(&cluster, Duration::from_secs(60));
    for id in remaining.iter().filter(|id| **id != 1) {
        let local = scan_all(&cluster.client_at(*id), "", Consistency::Stale).await;
        assert_eq!(local, state, "joined node {id} holds all the data");
    }
    debug_commands_work_on_every_node(&cluster);

    // Restart every node, removed ones too: the membership is the new one.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.leader();
    wait_members(&cluster, &remaining, &[]);
    for id in [leader, other] {
        wait_role(&cluster, id, "removed");
    }
    let after = scan_all(&cluster.client(), "", Consistency::Linearizable).await;
    assert_eq!(after, state, "data after restarting every node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_node_in_one_joint_step_under_load() {
    let mut cluster = TestCluster::start(bin(), 3);
    let writer = Writer::spawn(cluster.client(), "replace/");
    writer.wait_for_acks(100, Duration::from_secs(30)).await;

    // The replacement starts as a learner, then one joint step swaps it in
    // for node 2. The debug mode keeps the joint configuration until it is
    // left by hand, so that `members` can be seen showing it.
    let four = cluster.join_node(1, true);
    wait_members(&cluster, &[1, 2, 3], &[four]);
    let add = format!("{four}={}", cluster.address(four));
    change(
        &cluster,
        &["change", "--add", &add, "--remove", "2", "--explicit-joint"],
    )
    .assert_ok();
    let (joint_members, joint) = members(&cluster).expect("members while joint");
    assert!(
        joint,
        "members shows the joint configuration: {joint_members:?}"
    );
    assert!(
        joint_members.contains_key(&2),
        "outgoing node 2 still listed while joint"
    );
    assert!(
        joint_members[&four].voter,
        "incoming node {four} is a voter while joint"
    );
    let acked = writer.acked_count();
    writer
        .wait_for_acks(acked + 50, Duration::from_secs(30))
        .await;
    change(&cluster, &["change", "--leave-joint"]).assert_ok();
    cluster.set_removed(2);
    wait_members(&cluster, &[1, 3, four], &[]);

    // The ordinary form: the new node is added, caught up and swapped in
    // within one command, and the joint configuration is left by itself.
    let five = cluster.join_node(1, true);
    let add = format!("{five}={}", cluster.address(five));
    let out = change(
        &cluster,
        &["change", "--add", &add, "--remove", "3", "--json"],
    );
    let reply = single_json(out.assert_ok());
    assert_eq!(reply["joint"], Value::Bool(false), "{reply}");
    cluster.set_removed(3);
    wait_members(&cluster, &[1, four, five], &[]);

    let acked = writer.acked_count();
    writer
        .wait_for_acks(acked + 100, Duration::from_secs(30))
        .await;
    let report = writer.stop().await;
    let state = scan_all(&cluster.client(), "replace/", Consistency::Linearizable).await;
    assert_all_acked_present(&report.acked, &state, "after replacing two nodes");
    assert_same_hash_when_idle(&cluster, Duration::from_secs(60));
}

#[test]
fn a_learner_gets_the_data_but_is_not_part_of_the_quorum() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "k", "v1"]).assert_ok();
    let learner = cluster.join_node(1, true);
    wait_members(&cluster, &[1, 2, 3], &[learner]);
    assert_eq!(cluster.status(learner).unwrap().role, "learner");
    cluster.cli(&["put", "k", "v2"]).assert_ok();
    // The learner replicates: its local state catches up.
    wait_local_value(&cluster, learner, "k", "v2");
    // Two of three voters down: no quorum, even with the learner up.
    let leader = cluster.leader();
    let down: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    for id in &down {
        cluster.kill(*id);
    }
    let put = cluster.cli(&["put", "k", "v3", "--timeout", "3s"]);
    put.assert_code(3);
    assert!(put.error_line().is_some(), "{}", put.describe());
    // With them back, writes resume.
    for id in &down {
        cluster.restart(*id);
    }
    cluster.leader();
    let started = Instant::now();
    while cluster.cli(&["put", "k", "v4"]).code != 0 {
        assert!(started.elapsed() < MEMBERSHIP_WAIT, "writes did not resume");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(cluster.cli(&["get", "k"]).assert_ok().stdout, b"v4\n");
    // An operator promotes the caught-up learner.
    change(&cluster, &["promote", &learner.to_string()]).assert_ok();
    wait_members(&cluster, &[1, 2, 3, learner], &[]);
}

#[test]
fn removed_nodes_stay_quiet_and_refuse_requests() {
    let mut cluster = TestCluster::start(bin(), 3);
    let four = cluster.join_node(1, false);
    let five = cluster.join_node(1, false);
    wait_members(&cluster, &[1, 2, 3, four, five], &[]);
    cluster.cli(&["put", "k", "v"]).assert_ok();

    // Node 5 is removed while it is down (it cannot learn of it then);
    // node 4 is removed while it runs.
    cluster.kill(five);
    change(&cluster, &["remove", &five.to_string()]).assert_ok();
    cluster.set_removed(five);
    change(&cluster, &["remove", &four.to_string()]).assert_ok();
    cluster.set_removed(four);
    wait_members(&cluster, &[1, 2, 3], &[]);
    cluster.restart(five);

    let leader = cluster.leader();
    let term = cluster.status(leader).unwrap().term;
    for id in [four, five] {
        wait_role(&cluster, id, "removed");
    }
    // 30 s with both removed nodes running: no election in the cluster.
    std::thread::sleep(Duration::from_secs(30));
    for id in [1, 2, 3] {
        let status = cluster.status(id).unwrap();
        assert_eq!(status.leader_id, leader, "node {id}: {:?}", status.json);
        assert_eq!(
            status.term, term,
            "node {id} saw an election: {:?}",
            status.json
        );
    }
    // Requests sent to a removed node are refused, saying why.
    for id in [four, five] {
        let out = cluster.cli_at(id, &["put", "k", "other"]);
        out.assert_error(3, "removed from the cluster");
        let out = cluster.cli_at(id, &["get", "k"]);
        out.assert_error(3, "removed from the cluster");
        // Its own state stopped following the cluster's: not even stale reads.
        let out = cluster.cli_at(id, &["get", "k", "--consistency", "stale"]);
        out.assert_error(3, "removed from the cluster");
    }
    assert_eq!(cluster.cli(&["get", "k"]).assert_ok().stdout, b"v\n");
}

#[test]
fn bad_membership_requests_are_refused_and_change_nothing() {
    let mut cluster = TestCluster::start(bin(), 3);
    let learner = cluster.join_node(1, true);
    wait_members(&cluster, &[1, 2, 3], &[learner]);
    let before = members(&cluster).unwrap();
    let taken = cluster.address(2);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["add".into(), "2".into(), "127.0.0.1:1".into()],
            "already a voter",
        ),
        (
            vec!["add".into(), "9".into(), taken.clone()],
            "belongs to node 2",
        ),
        (vec!["remove".into(), "9".into()], "not a member"),
        (vec!["promote".into(), "2".into()], "already a voter"),
        (vec!["promote".into(), "9".into()], "not a member"),
        (
            vec!["add".into(), "9".into(), "no-port".into()],
            "invalid node address",
        ),
        (
            vec!["change".into(), "--add".into(), format!("2={taken}")],
            "already a voter",
        ),
        (
            vec!["transfer-leader".into(), learner.to_string()],
            "not a voter",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = change(&cluster, &args);
        assert_ne!(out.code, 0, "{args:?} succeeded\n{}", out.describe());
        let line = out.error_line().unwrap_or_default().to_string();
        assert!(
            line.contains(needle),
            "{args:?}: expected {needle:?}\n{}",
            out.describe()
        );
        assert_eq!(
            members(&cluster).unwrap(),
            before,
            "{args:?} changed the membership"
        );
    }

    // A change while another is in progress (a joint configuration held
    // open) is refused with a retryable error.
    let add = format!("{learner}={}", cluster.address(learner));
    change(
        &cluster,
        &["change", "--add", &add, "--remove", "3", "--explicit-joint"],
    )
    .assert_ok();
    let out = change(&cluster, &["remove", "2"]);
    out.assert_error(3, "unavailable");
    assert!(
        out.error_line().unwrap().contains("in progress"),
        "{}",
        out.describe()
    );
    change(&cluster, &["change", "--leave-joint"]).assert_ok();
    cluster.set_removed(3);
    wait_members(&cluster, &[1, 2, learner], &[]);

    // Removing a node so that no quorum of live voters is left is refused
    // without --force.
    let leader = cluster.leader();
    let victim = *[1, 2, learner].iter().find(|id| **id != leader).unwrap();
    let keep = *[1, 2, learner]
        .iter()
        .find(|id| **id != leader && **id != victim)
        .unwrap();
    cluster.kill(victim);
    // The leader notices the dead voter within a few heartbeats.
    let started = Instant::now();
    while members(&cluster)
        .map(|(m, _)| m[&victim].reachable)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < MEMBERSHIP_WAIT,
            "node {victim} still shown reachable"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = change(&cluster, &["remove", &keep.to_string()]);
    out.assert_error(3, "live voter");
    assert!(
        out.error_line().unwrap().contains("--force"),
        "{}",
        out.describe()
    );
    let (after, _) = members(&cluster).unwrap();
    assert!(after.contains_key(&keep), "refused removal changed nothing");
}

#[test]
fn a_wiped_node_comes_back_only_by_being_removed_and_added_again() {
    let mut cluster = TestCluster::start(bin(), 3);
    for i in 0..50 {
        cluster
            .cli(&["put", &format!("w/{i}"), "before"])
            .assert_ok();
    }
    let learner = cluster.join_node(1, true);
    wait_members(&cluster, &[1, 2, 3], &[learner]);
    cluster.wait_caught_up(Duration::from_secs(30));
    // The leader's latest snapshot now lists the learner.
    let leader = cluster.leader();
    debug_json(&cluster, leader, &["snapshot"]);

    // Wiped, it may not take its old place: it lost what it had.
    cluster.kill(learner);
    cluster.wipe(learner);
    let refused = cluster.start_expecting_failure(learner, Duration::from_secs(20));
    assert!(
        refused.exited,
        "a wiped node was let back in:\n{}",
        refused.log
    );
    assert_eq!(refused.code, Some(3), "exit code\n{}", refused.log);
    assert!(refused.log.contains("must be removed"), "{}", refused.log);

    // Removed and added again as a new member, it gets everything. Enough
    // writes follow that the log is compacted past the old snapshot.
    change(&cluster, &["remove", &learner.to_string()]).assert_ok();
    for i in 0..50 {
        cluster
            .cli(&["put", &format!("w/{i}"), "after"])
            .assert_ok();
    }
    debug_json(&cluster, leader, &["compact"]);
    cluster.wipe(learner);
    cluster.restart(learner);
    wait_members(&cluster, &[1, 2, 3], &[learner]);
    wait_local_value(&cluster, learner, "w/49", "after");
    assert_eq!(cluster.status(learner).unwrap().role, "learner");
}

#[test]
fn a_wiped_static_node_is_refused_under_its_old_identity() {
    let mut cluster = TestCluster::start(bin(), 3);
    for i in 0..10 {
        cluster.cli(&["put", &format!("s/{i}"), "v"]).assert_ok();
    }
    cluster.wait_caught_up(Duration::from_secs(30));
    let victim = cluster.followers()[0];
    cluster.kill(victim);
    cluster.wipe(victim);
    let refused = cluster.start_expecting_failure(victim, Duration::from_secs(20));
    assert!(
        refused.exited,
        "a wiped node started again:\n{}",
        refused.log
    );
    assert_eq!(refused.code, Some(3), "{}", refused.log);
    assert!(refused.log.contains("wiped"), "{}", refused.log);
    // The cluster is fine, and the way back is as a new member.
    cluster.set_removed(victim);
    change(&cluster, &["remove", &victim.to_string()]).assert_ok();
    let via = cluster.leader();
    let new = cluster.join_node(via, false);
    let mut voters: Vec<u64> = cluster.member_ids();
    voters.sort_unstable();
    wait_members(&cluster, &voters, &[]);
    assert!(voters.contains(&new));
}

#[test]
fn a_joined_node_stopped_before_its_first_snapshot_restarts_without_join() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "k", "v"]).assert_ok();
    // Node 4 will be added, but no raft message reaches it yet.
    for id in cluster.ids() {
        cluster.set_net_faults(id, "drop 4\n");
    }
    let four = cluster.join_node(1, true);
    assert_eq!(four, 4);
    cluster.kill(four);
    // Restarted with only --data-dir and --listen: it knows the members it
    // learned when it joined, and gets its snapshot once messages flow.
    cluster.restart(four);
    cluster.heal();
    wait_members(&cluster, &[1, 2, 3], &[four]);
    wait_local_value(&cluster, four, "k", "v");
}

/// The new user's sequences: a change that adds a node that never starts
/// promotes nobody and removes no voter; what it added is rolled back before
/// it answers; a refused change leaves `cluster members` exactly as it was.
#[test]
fn a_change_adding_a_node_that_never_starts_changes_nothing() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "k", "v"]).assert_ok();
    // Who is a member, as what, where (the leader may move: removing the
    // leader hands leadership on before anything else).
    let membership = |cluster: &TestCluster| {
        let (members, joint) = members(cluster).unwrap();
        let view: Vec<(u64, bool, String)> = members
            .into_iter()
            .map(|(id, m)| (id, m.voter, m.address))
            .collect();
        (view, joint)
    };
    let before = membership(&cluster);
    // Addresses where nothing runs.
    let nowhere: Vec<String> = raftkv_testkit::free_ports(2)
        .into_iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "change".into(),
            "--add".into(),
            format!("6={}", nowhere[0]),
            "--remove".into(),
            "3".into(),
        ],
        vec!["add".into(), "7".into(), nowhere[1].clone()],
        vec![
            "change".into(),
            "--add".into(),
            format!("7={}", nowhere[0]),
            "--add".into(),
            format!("8={}", nowhere[1]),
        ],
    ];
    for args in &cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--timeout", "4s"]);
        let out = cluster.cli(&[&["cluster"][..], &args].concat());
        assert_eq!(out.code, 3, "{args:?}\n{}", out.describe());
        let line = out.error_line().unwrap_or_default();
        assert!(
            line.contains("has not acknowledged any entry") && line.contains("rolled back"),
            "{args:?}: the error says why and that it was undone\n{}",
            out.describe()
        );
        assert_eq!(
            membership(&cluster),
            before,
            "{args:?} left the membership changed"
        );
    }

    // Refused up front (the removal would leave one live voter of two):
    // nothing is added first.
    let leader = cluster.leader();
    let dead = cluster.followers()[0];
    let other = *cluster
        .ids()
        .iter()
        .find(|id| **id != leader && **id != dead)
        .unwrap();
    cluster.kill(dead);
    let started = Instant::now();
    while members(&cluster)
        .map(|(m, _)| m[&dead].reachable)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < MEMBERSHIP_WAIT,
            "node {dead} still shown reachable"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = members(&cluster).unwrap();
    let add = format!("6={}", nowhere[0]);
    let out = change(
        &cluster,
        &["change", "--add", &add, "--remove", &other.to_string()],
    );
    out.assert_error(3, "live voter");
    assert_eq!(
        members(&cluster).unwrap(),
        before,
        "a refused change added nothing"
    );
}

/// A follower that was down while a new member joined and took over as
/// leader does not know that leader when it comes back; it must still take
/// the leader's log (and so learn the change) rather than refuse a stranger.
#[test]
fn a_follower_back_from_downtime_follows_a_leader_it_has_not_heard_of() {
    let mut cluster = TestCluster::start(bin(), 3);
    let away = cluster.followers()[0];
    cluster.kill(away);
    let leader = cluster.leader();
    let new = cluster.join_node(leader, false);
    let mut voters: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != new).collect();
    voters.push(new);
    voters.sort_unstable();
    wait_members(&cluster, &voters, &[]);
    change(&cluster, &["transfer-leader", &new.to_string()]).assert_ok();
    assert_eq!(cluster.leader(), new);
    cluster.cli(&["put", "while-away", "yes"]).assert_ok();
    cluster.restart(away);
    wait_local_value(&cluster, away, "while-away", "yes");
}

/// A node that leads when the joint configuration removing it is left stops
/// leading, and the remaining voters elect one of their own (it used to keep
/// renewing its read lease, so they followed it and never elected).
#[test]
fn a_leader_removed_by_a_joint_change_steps_down() {
    let mut cluster = TestCluster::start(bin(), 5);
    let _ = cluster.wait_leader(raftkv_testkit::LEADER_WAIT);
    change(
        &cluster,
        &[
            "change",
            "--remove",
            "4",
            "--remove",
            "5",
            "--explicit-joint",
        ],
    )
    .assert_ok();
    // Leadership on a node being removed, as an election in the middle of a
    // change can put it there: pause leaders until 4 or 5 wins one.
    let mut removed_leader = 0;
    for _ in 0..20 {
        let leader = cluster.wait_leader(raftkv_testkit::LEADER_WAIT);
        if leader >= 4 {
            removed_leader = leader;
            break;
        }
        cluster.pause(leader);
        let started = Instant::now();
        while cluster.live_ids().iter().all(|id| {
            *id == leader || cluster.status(*id).map(|s| s.role).unwrap_or_default() != "leader"
        }) && started.elapsed() < MEMBERSHIP_WAIT
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.resume(leader);
    }
    assert!(
        removed_leader >= 4,
        "no election put node 4 or 5 in the lead"
    );
    change(&cluster, &["change", "--leave-joint"]).assert_ok();
    wait_role(&cluster, removed_leader, "removed");
    cluster.set_removed(4);
    cluster.set_removed(5);
    // A write goes through a leader among the remaining voters.
    let out = cluster.cli_with_endpoints(
        &format!(
            "{},{},{}",
            cluster.address(1),
            cluster.address(2),
            cluster.address(3)
        ),
        &["put", "after", "removal", "--timeout", "30s"],
    );
    out.assert_ok();
    let leader = cluster.status(1).expect("status").leader_id;
    assert!((1..=3).contains(&leader), "leader {leader}");
}

/// A member whose process is stopped (SIGSTOP) keeps its connections open
/// but answers nothing: it does not count as live when a change is checked
/// for the quorum it would leave.
#[test]
fn a_stopped_member_does_not_count_as_live() {
    let mut cluster = TestCluster::start(bin(), 4);
    let leader = cluster.wait_leader(raftkv_testkit::LEADER_WAIT);
    let followers = cluster.followers();
    let (paused, a, b) = (followers[0], followers[1], followers[2]);
    cluster.pause(paused);
    // Longer than an election timeout (1 s): it has not been heard since.
    std::thread::sleep(Duration::from_secs(3));
    let out = cluster.cli_with_endpoints(
        &cluster.address(leader),
        &[
            "cluster",
            "change",
            "--remove",
            &a.to_string(),
            "--remove",
            &b.to_string(),
            "--timeout",
            CHANGE_TIMEOUT,
        ],
    );
    out.assert_error(3, "would leave 1 live voter(s) of 2");
    cluster.resume(paused);
    wait_members(&cluster, &[1, 2, 3, 4], &[]);
}

/// Leadership does not move while a membership change runs: the change
/// would be left half done (a learner its leader could no longer remove).
#[test]
fn transfer_leader_waits_for_a_change_in_progress() {
    let mut cluster = TestCluster::start(bin(), 3);
    let leader = cluster.wait_leader(raftkv_testkit::LEADER_WAIT);
    let target = cluster.followers()[0];
    // A node that never starts: the add waits for it until its deadline.
    let address = cluster.reserve_join_addresses(1).remove(0);
    let endpoints = cluster.endpoints();
    let bin_path = bin();
    let add = std::thread::spawn(move || {
        raftkv_testkit::run_cli(
            &bin_path,
            &[
                "cluster",
                "add",
                "9",
                &address,
                "--timeout",
                "6s",
                "--endpoints",
                &endpoints,
            ]
            .map(String::from),
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    let out = cluster.cli(&["cluster", "transfer-leader", &target.to_string()]);
    out.assert_error(3, "in progress");
    let add = add.join().expect("add thread");
    assert_ne!(add.code, 0, "{}", add.describe());
    assert_eq!(cluster.wait_leader(raftkv_testkit::LEADER_WAIT), leader);
    // The add rolled back what it added.
    wait_members(&cluster, &[1, 2, 3], &[]);
}
