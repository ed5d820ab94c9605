//! Acceptance (issue 21): etcdctl works unchanged. One etcdctl 3.4 session
//! (`scripts/etcdctl-compare.py`: put/get/--prefix/--rev/json, del, txn
//! both branches, watch --prefix during a writer, watch --rev from the past,
//! leases, compaction, endpoint status, member list, lock, elect) runs
//! against etcd 3.4 and against a 1-node and a 3-node RaftKV built for these
//! tests; the normalized transcripts must be the same.
//!
//! Needs Debian's `etcd-server` and `etcd-client` (`.ci/run` installs them).
//! Without them the test says so and passes, unless RAFTKV_REQUIRE_ETCD=1
//! (set by `.ci/run`), where their absence fails it.

mod common;

use std::path::Path;
use std::process::Command;

use common::bin;

#[test]
fn an_etcdctl_session_gives_the_same_output_as_against_etcd() {
    let installed = ["/usr/bin/etcd", "/usr/bin/etcdctl"]
        .iter()
        .all(|p| Path::new(p).exists());
    if !installed {
        assert!(
            std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"),
            "etcd and etcdctl are required (RAFTKV_REQUIRE_ETCD=1): apt-get install etcd-server etcd-client"
        );
        eprintln!("skipped: etcd 3.4 is not installed (apt-get install etcd-server etcd-client)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/etcdctl-compare.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--raftkv")
        .arg(bin())
        .arg("--budget")
        .arg("240")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "etcdctl against RaftKV differs from etcdctl against etcd ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("SAME (etcd1 vs raftkv1, etcd3 vs raftkv3)"),
        "{stdout}"
    );
}
