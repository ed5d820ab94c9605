//! Addresses: every address is checked before anything is written to the
//! data dir, and a member restarted at a new address records it through the
//! log, so peers reach it and redirects point to it.

mod common;

use std::time::Duration;

use raftkv_testkit::{poll_until, run_cli, TestCluster};
use serde_json::Value;

use common::bin;

#[test]
fn a_bad_address_is_refused_before_the_data_dir_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases = [
        (vec!["--listen", "0.0.0.0:abc"], "port"),
        (vec!["--listen", "127.0.0.1:70000"], "port"),
        (vec!["--listen", "0.0.0.0:7379"], "--advertise"),
        (
            vec!["--listen", "127.0.0.1:7379", "--advertise", "nohost"],
            "HOST:PORT",
        ),
        (vec!["--peers", "1=127.0.0.1:x"], "port"),
        (vec!["--join", "127.0.0.1"], "--join"),
        // --peers gives this node another address than the one it listens at.
        (
            vec![
                "--id",
                "1",
                "--listen",
                "127.0.0.1:7379",
                "--peers",
                "1=127.0.0.1:7399",
            ],
            "--peers gives node 1 the address",
        ),
        // A separate peer listener: a port of its own, an address others
        // can reach, listed in --peers as it is.
        (
            vec![
                "--listen-peer",
                "127.0.0.1:7379",
                "--listen",
                "127.0.0.1:7379",
            ],
            "port of its own",
        ),
        (
            vec!["--advertise-peer", "127.0.0.1:7390"],
            "needs --listen-peer",
        ),
        (vec!["--listen-peer", "0.0.0.0:7390"], "--advertise-peer"),
        (
            vec!["--peers", "1=127.0.0.1:7379/127.0.0.1:7379"],
            "port of its own",
        ),
        (
            vec![
                "--id",
                "1",
                "--listen",
                "127.0.0.1:7379",
                "--listen-peer",
                "127.0.0.1:7390",
            ]
            .into_iter()
            .chain(["--peers", "1=127.0.0.1:7379/127.0.0.1:7391"])
            .collect(),
            "--peers gives node 1 the peer listener 127.0.0.1:7391",
        ),
        (
            vec![
                "--id",
                "1",
                "--listen",
                "127.0.0.1:7379",
                "--listen-peer",
                "127.0.0.1:7390",
            ]
            .into_iter()
            .chain(["--peers", "1=127.0.0.1:7379"])
            .collect(),
            "--peers does not list it",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["server".to_string(), "--data-dir".to_string()];
        args.push(data.display().to_string());
        args.extend(flags.iter().map(|f| f.to_string()));
        let out = run_cli(&bin(), &args);
        out.assert_error(2, needle);
        assert!(!data.exists(), "{flags:?} wrote to the data dir");
    }
    // Checks that need the system, also before the data dir is touched.
    let port = raftkv_testkit::free_ports(2);
    let listen = format!("127.0.0.1:{}", port[0]);
    let other = format!("127.0.0.1:{}", port[1]);
    let _taken = std::net::TcpListener::bind(&other).expect("bind a port to take");
    let cases = [
        // The metrics port is taken (by this very server's --listen).
        (
            vec!["--listen", &listen, "--metrics-listen", &listen],
            "--metrics-listen",
        ),
        // The peer listener's port is taken (by this test).
        (
            vec!["--listen", &listen, "--listen-peer", &other],
            "cannot listen on --listen-peer",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["server".to_string(), "--data-dir".to_string()];
        args.push(data.display().to_string());
        args.extend(flags.iter().map(|f| f.to_string()));
        let out = raftkv_testkit::run_cli_bounded(&bin(), &args, Duration::from_secs(20));
        out.assert_error(3, needle);
        assert!(!data.exists(), "{flags:?} wrote to the data dir");
    }
}

/// The leader's `cluster members --json`: id -> address.
fn member_addresses(cluster: &TestCluster) -> Option<Vec<(u64, String)>> {
    let out = cluster.cli(&["cluster", "members", "--json", "--timeout", "2s"]);
    if out.code != 0 {
        return None;
    }
    let json: Value = serde_json::from_str(out.stdout_text().trim()).ok()?;
    json["members"]
        .as_array()?
        .iter()
        .map(|m| Some((m["id"].as_u64()?, m["address"].as_str()?.to_string())))
        .collect()
}

#[test]
fn a_member_restarted_at_a_new_address_is_reached_there() {
    let mut cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "before", "1"]).assert_ok();
    let moved = cluster.followers()[0];
    cluster.kill(moved);
    let address = cluster.move_to_new_port(moved);
    cluster.restart(moved);
    let recorded = poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let members = member_addresses(&cluster)?;
        members
            .iter()
            .any(|(id, a)| *id == moved && *a == address)
            .then_some(members)
    });
    let members = recorded.unwrap_or_else(|_| {
        cluster.fail(&format!(
            "node {moved}'s new address {address} was never recorded"
        ))
    });
    eprintln!("members: {members:?}");
    // Peers replicate to it there, and a client that knows only the new
    // address is redirected to the leader by it.
    let out = cluster.cli_with_endpoints(&address, &["put", "after", "2"]);
    out.assert_ok();
    cluster.wait_caught_up(Duration::from_secs(30));
    for key in ["before", "after"] {
        cluster
            .cli_with_endpoints(&address, &["get", key, "--consistency", "stale"])
            .assert_ok();
    }
    // A restart of the whole cluster keeps the new address.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_leader(Duration::from_secs(20));
    let members = member_addresses(&cluster).expect("members");
    assert!(
        members.contains(&(moved, address.clone())),
        "{members:?} after a full restart"
    );
}
