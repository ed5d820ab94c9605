//! The data dir records its on-disk format. Data dirs written by earlier
//! builds are kept as fixtures (`tests/fixtures/datadir-v*`, each a single
//! node with the same writes: see `tests/fixtures/README.md`); this build
//! opens every one of them (upgrading it to its own format), serves exactly
//! the data written, and refuses a data dir of a newer format with a message
//! that says so, without touching it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raftkv_testkit::{free_ports, poll_until, run_cli, CliOutput};
use serde_json::Value;

use common::{bin, copy_dir};

/// A server this test started; killed (by PID) when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let address = format!("127.0.0.1:{}", free_ports(1)[0]);
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = Command::new(bin())
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &address])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the server");
        Server { child, address }
    }

    fn cli(&self, args: &[&str]) -> CliOutput {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--endpoints".to_string(), self.address.clone()]);
        run_cli(&bin(), &all)
    }

    fn wait_serving(&self) {
        let ready = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
            (self.cli(&["get", "fixture/key1", "--timeout", "1s"]).code == 0).then_some(())
        });
        assert!(
            ready.is_ok(),
            "the server on the fixture never served a read"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// What every fixture holds (the writes in `tests/fixtures/README.md`).
fn assert_fixture_data(server: &Server) {
    for i in 1..=4 {
        let out = server.cli(&["get", &format!("fixture/key{i}")]);
        assert_eq!(out.assert_ok().stdout_text(), format!("value{i}\n"));
    }
    server.cli(&["get", "fixture/key5"]).assert_code(1);
    let out = server.cli(&["get", "fixture/after-snapshot"]);
    assert_eq!(out.assert_ok().stdout_text(), "yes\n");
    for i in 1..=30 {
        let out = server.cli(&["get", &format!("fixture/big{i}")]);
        assert_eq!(
            out.assert_ok().stdout_text(),
            format!("{}{i}\n", "v".repeat(300))
        );
    }
    let out = server.cli(&["scan", "fixture/", "--keys-only"]);
    assert_eq!(out.assert_ok().stdout_lines().len(), 35);
}

/// (create_revision, mod_revision, version) of `key`, from `get --json`.
fn revisions(server: &Server, key: &str) -> (u64, u64, u64) {
    let out = server.cli(&["get", key, "--json"]);
    let pair: Value = serde_json::from_str(out.assert_ok().stdout_text().trim()).unwrap();
    let n = |field: &str| {
        pair[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}: {pair}"))
    };
    (n("create_revision"), n("mod_revision"), n("version"))
}

fn status(server: &Server) -> Value {
    let out = server.cli(&["status", "--json"]);
    serde_json::from_str(out.assert_ok().stdout_text().trim()).unwrap()
}

#[test]
fn every_older_data_dir_format_opens_with_its_data() {
    // (fixture, the cluster id it was written with: format 1 derived it from
    // the member list, and an upgraded cluster keeps it)
    for (name, cluster_id) in [
        ("datadir-v1", Some("af1c870b8e0020f8")),
        ("datadir-v2", None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        copy_dir(&fixture(name), &data);
        for round in ["first start", "restart"] {
            let server = Server::start(&data);
            server.wait_serving();
            assert_fixture_data(&server);
            // Written before revisions existed: created and modified at
            // revision 1; the first write since takes revision 2, and keeps
            // it across the restart.
            assert_eq!(revisions(&server, "fixture/key1"), (1, 1, 1), "{name}");
            if round == "first start" {
                server.cli(&["put", "upgraded/new", "v"]).assert_ok();
            }
            assert_eq!(
                revisions(&server, "upgraded/new"),
                (2, 2, 1),
                "{name}, {round}"
            );
            let status = status(&server);
            if let Some(id) = cluster_id {
                assert_eq!(status["cluster_id"], id, "{name}, {round}: {status}");
            }
            // The fixture was written on another port: the node records its
            // new address (through the log) and advertises it.
            let recorded = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
                let status = self::status(&server);
                (status["members"][0]["address"] == server.address.as_str()).then_some(())
            });
            assert!(recorded.is_ok(), "{name}, {round}: address not recorded");
        }
        let identity = std::fs::read_to_string(data.join("raftkv.id")).unwrap();
        assert!(
            identity.starts_with("raftkv-identity 2\nformat 2\n"),
            "{name}: upgraded to this build's format:\n{identity}"
        );
    }
}

#[test]
fn a_newer_data_dir_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&fixture("datadir-v2"), &data);
    let path = data.join("raftkv.id");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("format 2", "format 99");
    std::fs::write(&path, &text).unwrap();
    let wal_before = std::fs::read_dir(data.join("wal")).unwrap().count();
    let mut server = Server::start(&data);
    let status = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        server.child.try_wait().unwrap()
    })
    .expect("the server exits");
    assert!(!status.success());
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.contains("newer raftkv") && log.contains("format 99"),
        "the error says why: {log}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "left alone");
    assert_eq!(
        std::fs::read_dir(data.join("wal")).unwrap().count(),
        wal_before
    );
}
