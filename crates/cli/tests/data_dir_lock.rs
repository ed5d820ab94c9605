//! One server per data dir: a second `raftkv server` on a data dir in use is
//! refused at once, names the dir and the holder's PID, and the first server
//! keeps every acknowledged write (through a restart too).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftkv_testkit::{free_ports, TestCluster};

/// How long the refused second server may take to exit.
const REFUSAL_WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_second_server_on_a_data_dir_in_use_is_refused_and_the_data_survives() {
    let mut cluster = TestCluster::start(common::bin(), 1);
    for i in 0..10 {
        cluster
            .cli(&["put", &format!("dup/{i}"), &format!("value {i}")])
            .assert_ok();
    }
    let data_dir = cluster.data_dir(1);
    let holder = cluster.pid(1).expect("node 1 runs");
    let port = free_ports(1)[0];
    let mut second = Command::new(common::bin())
        .arg("server")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second server");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait for the second server") {
            break status;
        }
        if started.elapsed() > REFUSAL_WAIT {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second server on a data dir in use was still running after {REFUSAL_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = second.wait_with_output().expect("collect output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "the second server must fail: {stderr}");
    assert!(
        stderr.contains(&data_dir.display().to_string()) && stderr.contains("in use"),
        "the error names the data dir in use: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {holder}")),
        "the error names the holder's PID {holder}: {stderr}"
    );

    // The first server never noticed, and keeps everything after a restart.
    for round in ["before", "after"] {
        if round == "after" {
            cluster.kill(1);
            cluster.restart(1);
            cluster.wait_leader(Duration::from_secs(10));
        }
        for i in 0..10 {
            let out = cluster.cli(&["get", &format!("dup/{i}")]);
            out.assert_ok();
            assert_eq!(
                out.stdout_text().trim_end(),
                format!("value {i}"),
                "{round} restart"
            );
        }
    }
}
