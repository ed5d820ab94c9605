//! Acceptance: disk faults (issue 6), through the storage's test-only hook
//! (`RAFTKV_DISK_FAULTS`, see `raftkv_storage::disk`): a full disk makes
//! writes fail with `NoSpace` while reads go on and nothing acknowledged is
//! lost, and writes resume once space is back; a snapshot that would eat into
//! a follower's disk reserve is refused until there is room; a failed fsync stops the
//! node (fail-stop), and the node comes back only as a new member with an
//! empty data dir.

mod common;

use std::time::{Duration, Instant};

use raftkv_testkit::{poll_until, TestCluster};

use common::bin;
use common::storage::{assert_same_hash_when_idle, compact, storage, take_snapshot};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `put KEY VALUE` until it succeeds (bounded).
fn put_eventually(cluster: &TestCluster, key: &str, value: &str) {
    let started = Instant::now();
    loop {
        let out = cluster.cli(&["put", key, value]);
        if out.code == 0 {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "put never succeeded: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let cluster = TestCluster::start(bin(), 3);
    for i in 0..20 {
        cluster
            .cli(&["put", &format!("d/{i}"), "before"])
            .assert_ok();
    }
    let leader = cluster.leader();
    cluster.set_disk_faults(leader, "free 0\n");
    // Within a tick the leader refuses writes, saying why.
    let started = Instant::now();
    let refused = loop {
        let out = cluster.cli(&["put", "d/full", "x"]);
        if out.code != 0 {
            break out;
        }
        assert!(started.elapsed() < WAIT, "writes were never refused");
        std::thread::sleep(Duration::from_millis(100));
    };
    refused.assert_error(3, "no space");
    // Reads go on, linearizable and stale.
    assert_eq!(cluster.cli(&["get", "d/0"]).assert_ok().stdout, b"before\n");
    let stale = cluster.cli_at(leader, &["get", "d/19", "--consistency", "stale"]);
    assert_eq!(stale.assert_ok().stdout, b"before\n");
    // Space is back: writes resume.
    cluster.set_disk_faults(leader, "");
    put_eventually(&cluster, "d/after", "yes");

    // A follower with a full disk does not stop a quorum of others; it
    // catches up once it has space again.
    let follower = cluster.followers()[0];
    cluster.set_disk_faults(follower, "free 0\n");
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..20 {
        cluster
            .cli(&["put", &format!("d/{i}"), "during"])
            .assert_ok();
    }
    let behind = cluster.cli_at(follower, &["get", "d/19", "--consistency", "stale"]);
    assert_eq!(
        behind.assert_ok().stdout,
        b"before\n",
        "the full follower took no entries"
    );
    cluster.set_disk_faults(follower, "");
    assert_same_hash_when_idle(&cluster, Duration::from_secs(60));
    for i in 0..20 {
        let out = cluster.cli(&["get", &format!("d/{i}")]);
        assert_eq!(out.assert_ok().stdout, b"during\n", "d/{i}");
    }
    assert_eq!(
        cluster.cli(&["get", "d/after"]).assert_ok().stdout,
        b"yes\n"
    );
}

#[test]
fn a_failed_fsync_stops_the_node_and_it_returns_as_a_new_member() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "f/0", "v0"]).assert_ok();
    let leader = cluster.leader();
    let victim = cluster.followers()[0];
    cluster.set_disk_faults(victim, "fsync-error\n");
    std::thread::sleep(Duration::from_millis(300)); // the hook is re-read every 100 ms
                                                    // The next write reaches the victim's log; its fsync fails; it stops.
    put_eventually(&cluster, "f/1", "v1");
    let code = cluster.wait_exit(victim, WAIT);
    assert!(
        matches!(code, Some(Some(c)) if c != 0),
        "node {victim} did not stop with an error after a failed fsync: {code:?}\n{}",
        cluster.diagnostics()
    );
    let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap();
    assert!(log.contains("fsync failed"), "the log names the cause");
    // The other two go on.
    cluster.set_removed(victim);
    put_eventually(&cluster, "f/2", "v2");

    // It comes back only as a new member with an empty data dir.
    let out = cluster.cli(&["cluster", "remove", &victim.to_string(), "--timeout", "20s"]);
    out.assert_ok();
    let new = cluster.join_node(leader, false);
    let started = Instant::now();
    loop {
        let out = cluster.cli(&["cluster", "members", "--json"]);
        let text = out.stdout_text();
        if text.contains(&format!("\"id\":{new}")) && !text.contains(&format!("\"id\":{victim},")) {
            let voters = text.matches("\"voter\":true").count();
            if voters == 3 {
                break;
            }
        }
        assert!(
            started.elapsed() < WAIT,
            "new member never became a voter: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = cluster.cli_at(new, &["get", "f/2", "--consistency", "stale"]);
    assert!(got.code == 0 || got.code == 1, "{}", got.describe());
    assert_same_hash_when_idle(&cluster, Duration::from_secs(60));
    assert_eq!(
        cluster
            .cli_at(new, &["get", "f/2", "--consistency", "stale"])
            .assert_ok()
            .stdout,
        b"v2\n"
    );
}

/// A follower whose disk has less free space than a snapshot needs above the
/// reserve (`--max-value-size` + 64 MiB) refuses it instead of filling the
/// disk; the leader sends it again later, and once space is back the
/// follower installs it and catches up.
#[test]
fn a_follower_refuses_a_snapshot_that_would_eat_into_its_disk_reserve() {
    const RESERVE: u64 = (1 << 20) + (64 << 20);
    let mut cluster = TestCluster::start_with(bin(), 3, &["--max-value-size", "1MiB"]);
    let lagging = cluster.followers()[0];
    cluster.kill(lagging);
    let value = "v".repeat(1000);
    for i in 0..200 {
        cluster
            .cli(&["put", &format!("s/{i:03}"), &value])
            .assert_ok();
    }
    for id in cluster.live_ids() {
        take_snapshot(&cluster, id);
        compact(&cluster, id);
    }
    cluster.set_disk_faults(lagging, &format!("free {}\n", RESERVE + 1000));
    cluster.restart(lagging);
    let refused = poll_until(WAIT, Duration::from_millis(200), || {
        let log = std::fs::read_to_string(cluster.log_path(lagging)).unwrap_or_default();
        log.contains("refused the snapshot").then_some(())
    });
    assert!(
        refused.is_ok(),
        "follower {lagging} never refused the snapshot"
    );
    assert_eq!(
        storage(&cluster, lagging).snapshot_index,
        0,
        "follower {lagging} installed no snapshot"
    );
    cluster.cli(&["put", "s/during", "x"]).assert_ok();
    cluster.set_disk_faults(lagging, "");
    assert_same_hash_when_idle(&cluster, Duration::from_secs(60));
    let got = cluster.cli_at(lagging, &["get", "s/199", "--consistency", "stale"]);
    assert_eq!(got.assert_ok().stdout_text().trim_end(), value);
}

/// Two followers of three out of space drop appends but still answer
/// heartbeats. The leader hears of it with their messages and refuses new
/// writes at once (`no space on a quorum`) instead of holding them until the
/// caller gives up; reads go on; once space is back, writes resume and every
/// acknowledged write is there. A write the leader cannot commit is answered
/// at the caller's deadline as of unknown outcome (here: a leader cut off
/// from its followers, with a deadline shorter than the election timeout).
#[test]
fn writes_are_refused_while_a_quorum_is_out_of_space() {
    let cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "q/before", "1"]).assert_ok();
    let leader = cluster.leader();
    let followers = cluster.followers();
    for follower in &followers {
        cluster.set_disk_faults(*follower, "free 0\n");
    }
    let started = Instant::now();
    let refused = loop {
        let out = cluster.cli(&["put", "q/during", "x", "--timeout", "3s"]);
        if out.code != 0 && out.stderr.contains("no space on a quorum") {
            break out;
        }
        assert!(
            started.elapsed() < WAIT,
            "writes were never refused for lack of space on a quorum: {}",
            out.describe()
        );
    };
    refused.assert_error(3, "no space");
    let asked = Instant::now();
    cluster
        .cli(&["put", "q/during", "x", "--timeout", "3s"])
        .assert_error(3, "no space on a quorum");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "refused at once, not at the deadline ({:?})",
        asked.elapsed()
    );
    assert_eq!(cluster.cli(&["get", "q/before"]).assert_ok().stdout, b"1\n");
    for follower in &followers {
        cluster.set_disk_faults(*follower, "");
    }
    put_eventually(&cluster, "q/after", "2");
    assert_eq!(cluster.cli(&["get", "q/after"]).assert_ok().stdout, b"2\n");

    // A write that cannot commit: the caller's deadline ends the wait.
    cluster.isolate(leader);
    std::thread::sleep(Duration::from_millis(400)); // the rules are re-read every 100 ms
    let out = cluster.cli_at(leader, &["put", "q/cut-off", "y", "--timeout", "600ms"]);
    out.assert_error(3, "outcome unknown");
    cluster.heal();
    assert_same_hash_when_idle(&cluster, Duration::from_secs(60));
}
