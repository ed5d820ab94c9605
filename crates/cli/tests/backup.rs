//! Acceptance (issue 23, backup and restore) on real processes: a backup
//! taken through a follower while a writer runs holds every write
//! acknowledged before the backup began and none begun after it ended;
//! restored into a new 3-node cluster it serves exactly those keys, under a
//! new cluster id, with equal state hashes on every member; a backup with
//! one byte flipped is refused by `status` and `restore`, which then writes
//! nothing. etcdctl's `snapshot save` gets the same kind of file.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use raftkv_client::Consistency;
use raftkv_testkit::{run_cli, TestCluster};
use serde_json::Value;

use common::{bin, scan_all, Writer};

fn json_of(out: &raftkv_testkit::CliOutput) -> Value {
    out.assert_ok();
    serde_json::from_str(out.stdout_text().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

fn cluster_id(cluster: &TestCluster) -> String {
    cluster.status(1).unwrap().json["cluster_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn raftkv(args: &[&str]) -> raftkv_testkit::CliOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_cli(&bin(), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_a_new_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.snap");
    let backup_arg = backup.display().to_string();
    let old = TestCluster::start(bin(), 3);
    old.cli(&["lease", "grant", "600"]).assert_ok();
    let writer = Writer::spawn(old.client(), "bk/");
    writer.wait_for_acks(50, Duration::from_secs(30)).await;

    // Through a follower: it passes the leader's stream on.
    let follower = old.followers()[0];
    let began = Instant::now();
    let saved = tokio::task::block_in_place(|| {
        old.cli_at(follower, &["snapshot", "save", &backup_arg, "--json"])
    });
    let ended = Instant::now();
    writer
        .wait_for_acks(writer.acked_count() + 50, Duration::from_secs(30))
        .await;
    let report = writer.stop().await;
    let saved = json_of(&saved);
    assert!(!dir.path().join("backup.snap.part").exists());
    let status = json_of(&raftkv(&["snapshot", "status", &backup_arg, "--json"]));
    assert_eq!(status, saved, "status reads what save reported");
    assert_eq!(status["leases"], 1, "{status}");
    let old_id = cluster_id(&old);
    assert_eq!(status["cluster_id"], old_id.as_str());
    drop(old);

    // A new cluster of three, each member restored from the file.
    let mut restore = |id: u64, data_dir: &Path, peers: &str| {
        let out = raftkv(&[
            "snapshot",
            "restore",
            &backup_arg,
            "--data-dir",
            &data_dir.display().to_string(),
            "--id",
            &id.to_string(),
            "--peers",
            peers,
        ]);
        out.assert_ok();
    };
    let new = TestCluster::start_prepared(bin(), 3, &mut restore);
    assert_ne!(
        cluster_id(&new),
        old_id,
        "the restored cluster has an id of its own"
    );
    let state = scan_all(&new.client(), "bk/", Consistency::Linearizable).await;
    let mut before = 0;
    let mut after = 0;
    for write in &report.acked {
        if write.acked_at < began {
            before += 1;
            assert_eq!(
                state.get(write.key.as_bytes()).map(|v| &v[..]),
                Some(write.value.as_bytes()),
                "{} was acknowledged before the backup began",
                write.key
            );
        } else if write.first_attempt > ended {
            after += 1;
            assert!(
                !state.contains_key(write.key.as_bytes()),
                "{} began after the backup ended, yet it is in it",
                write.key
            );
        }
    }
    assert!(before >= 50 && after >= 1, "before {before}, after {after}");
    assert_eq!(state.len() as u64, status["keys"].as_u64().unwrap());
    let check = new.cli(&["debug", "check"]);
    check.assert_ok();
    assert!(
        check.stdout_text().contains("verdict: consistent"),
        "{}",
        check.describe()
    );
    // The new cluster takes writes.
    new.cli(&["put", "bk/new", "1"]).assert_ok();

    // A stray restore that names a live member among its peers, started at
    // another address, may not rewrite that cluster's membership.
    let ports = raftkv_testkit::free_ports(2);
    let stray_dir = dir.path().join("stray");
    let stray_peers = format!("1={},3=127.0.0.1:{}", new.address(1), ports[0]);
    raftkv(&[
        "snapshot",
        "restore",
        &backup_arg,
        "--data-dir",
        &stray_dir.display().to_string(),
        "--id",
        "3",
        "--peers",
        &stray_peers,
    ])
    .assert_ok();
    let stray_log = dir.path().join("stray.log");
    let mut stray = std::process::Command::new(bin())
        .args(["server", "--data-dir", &stray_dir.display().to_string()])
        .args(["--listen", &format!("127.0.0.1:{}", ports[1])])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stray_log).unwrap())
        .spawn()
        .expect("start the stray node");
    let refused =
        raftkv_testkit::poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
            let log = std::fs::read_to_string(&stray_log).ok()?;
            log.contains("is not of this cluster").then_some(())
        });
    let _ = stray.kill();
    let _ = stray.wait();
    refused.unwrap_or_else(|_| {
        new.fail(&format!(
            "the stray node was not refused:\n{}",
            std::fs::read_to_string(&stray_log).unwrap_or_default()
        ))
    });
    let members = new.cli(&["cluster", "members", "--json"]);
    assert!(
        members.stdout_text().contains(&new.address(3)),
        "node 3 keeps its address: {}",
        members.describe()
    );

    // One byte flipped: refused, and nothing is restored.
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let flipped = dir.path().join("flipped.snap");
    std::fs::write(&flipped, &bytes).unwrap();
    let flipped = flipped.display().to_string();
    // (The stream's SHA-256 no longer matches.)
    raftkv(&["snapshot", "status", &flipped]).assert_error(3, "is damaged");
    let target = dir.path().join("never");
    raftkv(&[
        "snapshot",
        "restore",
        &flipped,
        "--data-dir",
        &target.display().to_string(),
    ])
    .assert_error(3, "is damaged");
    assert!(!target.exists(), "a refused restore wrote a data dir");
    // Cut short: refused too.
    std::fs::write(dir.path().join("short.snap"), &bytes[..middle]).unwrap();
    let short = dir.path().join("short.snap").display().to_string();
    raftkv(&["snapshot", "status", &short]).assert_error(3, "not a usable RaftKV backup");
}

#[test]
fn etcdctl_snapshot_save_gets_a_raftkv_backup() {
    if !std::path::Path::new("/usr/bin/etcdctl").exists() {
        assert!(
            std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"),
            "etcdctl is required (RAFTKV_REQUIRE_ETCD=1): apt-get install etcd-client"
        );
        eprintln!("skipped: etcd-client is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(bin(), 1);
    cluster.cli(&["put", "e/k", "v"]).assert_ok();
    let file = dir.path().join("etcd.snap");
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &cluster.address(1)])
        .args(["snapshot", "save", &file.display().to_string()])
        .output()
        .expect("etcdctl runs");
    assert!(
        out.status.success(),
        "etcdctl snapshot save: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json_of(&raftkv(&[
        "snapshot",
        "status",
        &file.display().to_string(),
        "--json",
    ]));
    assert_eq!(status["keys"], 1, "{status}");
}
