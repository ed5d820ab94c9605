//! What a new user meets in the first hour, replayed with the real binary:
//! errors that name their cause (and come at once when nothing can be
//! reached), usage errors with exit 2, JSON on every command that writes and
//! on errors, closed pipes, the playground on taken ports, help that lists
//! only the flags a command takes, and the quorum-lost message.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftkv_testkit::{free_ports, run_cli, CliOutput, TestCluster, LEADER_WAIT};

fn raftkv(args: &[&str]) -> CliOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_cli(&common::bin(), &args)
}

/// A port nothing listens on (chosen free, not bound).
fn closed_port() -> String {
    format!("127.0.0.1:{}", free_ports(1)[0])
}

/// The one JSON error object `--json` prints on stderr.
fn json_error(output: &CliOutput) -> serde_json::Value {
    let line = output.stderr.lines().next().unwrap_or("");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("stderr is not one JSON object ({e})\n{}", output.describe()))
}

#[test]
fn a_closed_port_is_reported_at_once_naming_the_endpoint() {
    let endpoint = closed_port();
    for command in [
        vec!["get", "k"],
        vec!["put", "k", "v"],
        vec!["delete", "k"],
        vec!["scan", ""],
        vec!["cluster", "members"],
    ] {
        let mut args = vec!["--endpoints", endpoint.as_str()];
        args.extend(&command);
        let out = raftkv(&args);
        out.assert_error(3, &format!("cannot reach {endpoint}: connection refused"));
        // A refused connection carried no request: a write was not applied.
        assert!(
            !out.stderr.contains("outcome unknown"),
            "{}",
            out.describe()
        );
        // The default --timeout is 5 s; a refused connection must not wait for it.
        assert!(
            out.elapsed < Duration::from_secs(3),
            "{command:?} took {:?}\n{}",
            out.elapsed,
            out.describe()
        );
    }
    // Every endpoint refused: all of them are named.
    let other = closed_port();
    let both = format!("{endpoint},{other}");
    let out = raftkv(&["--endpoints", &both, "get", "k"]);
    out.assert_code(3);
    let line = out.error_line().expect("error line");
    assert!(
        line.contains(&endpoint) && line.contains(&other),
        "{}",
        out.describe()
    );
}

#[test]
fn a_name_that_does_not_resolve_is_named() {
    let out = raftkv(&["--endpoints", "nosuchhost.invalid:7379", "get", "k"]);
    // "cannot resolve" where a resolver answers; whatever happens, the
    // endpoint is named.
    out.assert_error(3, "nosuchhost.invalid:7379");
}

#[test]
fn endpoints_are_checked_as_usage() {
    // An http:// prefix is accepted (etcd users write it); https:// needs the
    // CA to trust, and --cert needs --cacert.
    let endpoint = closed_port();
    let http = format!("http://{endpoint}");
    raftkv(&["--endpoints", &http, "get", "k"])
        .assert_error(3, &format!("cannot reach {endpoint}"));
    raftkv(&["--endpoints", "127.0.0.1", "get", "k"]).assert_error(2, "no port");
    raftkv(&["get", "k", "--endpoints", "127.0.0.1:0"]).assert_error(2, "bad port");
    raftkv(&["--endpoints", "https://127.0.0.1:7379", "get", "k"])
        .assert_error(2, "https:// endpoints need --cacert");
    raftkv(&["--cert", "c.pem", "--key", "k.pem", "get", "k"])
        .assert_error(2, "--cert/--key are for TLS: give --cacert");
    raftkv(&["--cacert", "/nonexistent/ca.pem", "get", "k"])
        .assert_error(2, "cannot read certificates from /nonexistent/ca.pem");
    raftkv(&["--timeout", "soon", "get", "k"]).assert_error(2, "--timeout");
    // Client options belong to client commands.
    raftkv(&["--endpoints", &endpoint, "server"]).assert_error(2, "client options");
    let help = raftkv(&["server", "--help"]);
    help.assert_ok();
    let text = help.stdout_text();
    for flag in ["--endpoints", "--timeout", "--json"] {
        assert!(!text.contains(flag), "server --help lists {flag}:\n{text}");
    }
    assert!(text.contains("--data-dir"), "{text}");
    let help = raftkv(&["get", "--help"]).stdout_text();
    assert!(
        help.contains("--endpoints") && help.contains("linearizable"),
        "{help}"
    );
    assert!(help.contains("The key to read"), "{help}");
}

#[test]
fn errors_under_json_are_one_object_with_kind_and_message() {
    let endpoint = closed_port();
    let out = raftkv(&["--json", "--endpoints", &endpoint, "get", "k"]);
    out.assert_code(3);
    let error = json_error(&out);
    assert_eq!(error["kind"], "unavailable", "{}", out.describe());
    assert_eq!(error["exit_code"], 3);
    assert!(error["message"].as_str().unwrap_or("").contains(&endpoint));
    // Usage errors too, whether clap or the endpoint check finds them.
    let out = raftkv(&["get", "--json"]);
    out.assert_code(2);
    assert_eq!(json_error(&out)["kind"], "usage");
    let out = raftkv(&["--endpoints", "nowhere", "get", "k", "--json"]);
    out.assert_code(2);
    assert_eq!(json_error(&out)["kind"], "usage");
    // A command without its subcommand too.
    let out = raftkv(&["--json", "cluster"]);
    out.assert_code(2);
    assert_eq!(json_error(&out)["kind"], "usage");
    // A bench that measured nothing fails, saying why.
    let out = raftkv(&["bench", "--duration", "1s", "--endpoints", &endpoint]);
    out.assert_error(3, "every operation failed");
    assert!(
        out.stderr.contains("connection refused"),
        "{}",
        out.describe()
    );
    // --learner only means something with --join.
    raftkv(&["server", "--learner"]).assert_error(2, "--join");
}

#[test]
fn writes_print_json_and_closed_pipes_stop_quietly() {
    let cluster = TestCluster::start(common::bin(), 1);
    let out = cluster.cli(&["put", "k1", "hello", "--json"]);
    out.assert_ok();
    let put: serde_json::Value = serde_json::from_slice(&out.stdout).expect("put --json");
    assert_eq!(put["ok"], true);
    assert_eq!(put["op"], "put");
    assert_eq!(put["key"], "k1");
    assert_eq!(put["value_bytes"], 5);
    let out = cluster.cli(&["delete", "k1", "--json"]);
    out.assert_ok();
    let deleted: serde_json::Value = serde_json::from_slice(&out.stdout).expect("delete --json");
    assert_eq!(deleted["op"], "delete");
    assert_eq!(deleted["key"], "k1");
    // Without --json a write prints nothing.
    let out = cluster.cli(&["put", "k1", "hello"]);
    out.assert_ok();
    assert!(out.stdout.is_empty());

    cluster
        .cli(&["bench", "--ops", "50", "--keys", "50", "--prefix", "pipe/"])
        .assert_ok();
    for command in [
        vec!["scan", ""],
        vec!["status"],
        vec!["scan", "", "--json"],
        vec!["cluster", "members"],
        vec!["get", "k1"],
    ] {
        // `raftkv ... | head -1` once head has gone: standard output is a
        // pipe whose read end is already closed, so the first write fails.
        let (read_end, write_end) = pipe();
        drop(read_end);
        let out = Command::new(common::bin())
            .args(["--endpoints", &cluster.endpoints()])
            .args(&command)
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .output()
            .expect("run raftkv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{command:?}: {}; stderr: {stderr}",
            out.status
        );
        assert!(
            stderr.is_empty(),
            "{command:?} on a closed pipe said: {stderr}"
        );
    }
}

/// A pipe (read end, write end).
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "pipe: {}", std::io::Error::last_os_error());
    // SAFETY: pipe(2) succeeded, so both are open descriptors owned by nobody else.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn scan_escape_keeps_one_pair_per_line() {
    let cluster = TestCluster::start(common::bin(), 1);
    cluster.cli(&["put", "a\tb", "line1\nline2\\"]).assert_ok();
    let out = cluster.cli(&["scan", "a", "--escape"]);
    out.assert_ok();
    assert_eq!(out.stdout_text(), "a\\tb\tline1\\nline2\\\\\n");
    cluster
        .cli(&["scan", "a", "--escape", "--json"])
        .assert_code(2);
}

#[test]
fn debug_storage_reports_what_the_data_dir_takes_on_disk() {
    let cluster = TestCluster::start(common::bin(), 1);
    let out = cluster.cli(&["debug", "storage", "--json"]);
    out.assert_ok();
    let storage: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let disk = storage["disk_bytes"].as_u64().expect("disk_bytes");
    let log = storage["log_bytes"].as_u64().expect("log_bytes");
    // The WAL segment being written is preallocated (64 MiB by default).
    assert!(disk >= 64 * 1024 * 1024, "disk_bytes {disk}");
    assert!(log < disk, "log_bytes {log}, disk_bytes {disk}");
}

#[test]
fn bench_writes_under_its_own_prefix_and_cleans_up_when_asked() {
    let cluster = TestCluster::start(common::bin(), 1);
    let out = cluster.cli(&[
        "bench",
        "--ops",
        "200",
        "--keys",
        "50",
        "--clients",
        "2",
        "--prefix",
        "mine/",
    ]);
    out.assert_ok();
    assert!(out.stderr.contains("mine/"), "{}", out.describe());
    let scan = cluster.cli(&["scan", "mine/", "--keys-only"]);
    assert_eq!(scan.stdout_lines().len(), 50, "{}", scan.describe());
    // The default prefix differs from run to run, and --cleanup removes the keys.
    let out = cluster.cli(&["bench", "--ops", "100", "--keys", "20", "--cleanup"]);
    out.assert_ok();
    assert!(out.stderr.contains("bench/"), "{}", out.describe());
    let left = cluster.cli(&["scan", "bench/", "--keys-only"]);
    left.assert_ok();
    assert!(left.stdout.is_empty(), "{}", left.describe());
}

#[test]
fn the_playground_refuses_taken_ports_and_moves_with_port() {
    let cluster = TestCluster::start(common::bin(), 1);
    // The single node's port is the playground's first.
    let taken = cluster.address(1);
    let port = taken.rsplit(':').next().expect("port").to_string();
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("pg");
    let out = raftkv(&[
        "playground",
        "--port",
        &port,
        "--data-dir",
        data.to_str().expect("utf-8"),
    ]);
    out.assert_error(3, &format!("{taken} is not free"));
    assert!(out.stderr.contains("--port"), "{}", out.describe());
    // Nothing was started: the unrelated node still has its one key space.
    cluster.cli(&["put", "still", "mine"]).assert_ok();

    // On free ports it runs, prints the endpoints and the leader.
    let base = raftkv_testkit::free_port_block(3);
    let mut child = Playground(
        Command::new(common::bin())
            .args(["playground", "--port", &base.to_string(), "--data-dir"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the playground"),
    );
    let mut stdout = child.0.stdout.take().expect("stdout");
    let started = Instant::now();
    let mut printed = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&printed).contains("Ctrl-C") {
        assert!(
            started.elapsed() < LEADER_WAIT * 3,
            "playground output: {}",
            String::from_utf8_lossy(&printed)
        );
        let n = stdout.read(&mut buffer).expect("read");
        assert!(
            n > 0,
            "playground ended: {}",
            String::from_utf8_lossy(&printed)
        );
        printed.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&printed).to_string();
    let status = child.stop();
    let endpoints = format!(
        "127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}",
        base + 1,
        base + 2
    );
    assert!(text.contains(&endpoints), "{text}");
    assert!(text.contains("leader: node"), "{text}");
    assert!(status.success(), "playground stopped with {status}");
}

/// A playground started by a test: SIGTERM (it stops its nodes) when the
/// test is done with it or fails.
struct Playground(std::process::Child);

impl Playground {
    fn stop(&mut self) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.0.try_wait() {
            return status;
        }
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        self.0.wait().expect("wait for the playground")
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn without_quorum_the_error_names_the_unreachable_members() {
    let mut cluster = TestCluster::start(common::bin(), 3);
    let leader = cluster.wait_leader(LEADER_WAIT);
    let survivor = cluster.followers()[0];
    for id in cluster.ids() {
        if id != survivor {
            cluster.kill(id);
        }
    }
    let _ = leader;
    let address = cluster.address(survivor);
    let out = cluster.cli_with_endpoints(&address, &["put", "k", "v", "--timeout", "5s"]);
    out.assert_code(3);
    let line = out.error_line().expect("error line").to_string();
    assert!(line.contains("quorum lost"), "{}", out.describe());
    for id in cluster.ids() {
        if id != survivor {
            assert!(
                line.contains(&cluster.address(id)),
                "{id} not named: {}",
                out.describe()
            );
        }
    }
}

#[test]
fn after_transfer_leader_the_members_table_is_the_new_leaders() {
    let cluster = TestCluster::start(common::bin(), 3);
    let leader = cluster.wait_leader(LEADER_WAIT);
    cluster.cli(&["put", "k", "v"]).assert_ok();
    let target = cluster.followers()[0];
    let out = cluster.cli(&[
        "cluster",
        "transfer-leader",
        &target.to_string(),
        "--json",
        "--timeout",
        "20s",
    ]);
    out.assert_ok();
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(members["progress_known"], true, "{}", out.describe());
    for m in members["members"].as_array().expect("members") {
        assert!(
            m["match_index"].as_u64().unwrap_or(0) > 0,
            "{}",
            out.describe()
        );
        if m["id"] == target {
            assert_eq!(m["role"], "leader", "{}", out.describe());
        }
    }
    // A follower's own view shows no progress it does not know.
    let follower = if leader == target {
        cluster.followers()[0]
    } else {
        leader
    };
    let out = cluster.cli_at(follower, &["cluster", "members"]);
    out.assert_ok();
    let text = out.stdout_text();
    assert!(text.contains("leader"), "{text}");
}

#[test]
fn the_server_says_which_data_dir_it_uses_and_errors_once() {
    let mut cluster = TestCluster::start(common::bin(), 1);
    let data_dir = cluster.data_dir(1);
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("log");
    assert!(
        log.contains(&format!("created a new data dir {}", data_dir.display())),
        "{log}"
    );
    cluster.kill(1);
    cluster.restart(1);
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("log");
    assert!(
        log.contains(&format!("opened data dir {} (node 1", data_dir.display())),
        "{log}"
    );
    // A data dir that cannot be created: the OS error once, not twice.
    let port = free_ports(1)[0];
    let out = raftkv(&[
        "server",
        "--data-dir",
        "/proc/nope/raftkv",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    out.assert_error(3, "/proc/nope");
    let line = out.error_line().expect("error line");
    assert_eq!(line.matches("os error").count(), 1, "{}", out.describe());
}

#[test]
fn bench_progress_shows_no_p99_it_has_not_measured() {
    let cluster = TestCluster::start(common::bin(), 1);
    let out = cluster.cli(&["bench", "--duration", "3s", "--clients", "2"]);
    out.assert_ok();
    let progress: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("p99"))
        .collect();
    assert!(!progress.is_empty(), "{}", out.describe());
    for line in progress {
        let p99 = line
            .split("p99")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a p99 field");
        assert!(
            p99 == "-" || p99.parse::<f64>().is_ok_and(|v| v > 0.0),
            "progress line {line:?}"
        );
    }
}

#[test]
fn help_explains_arguments_and_joining() {
    let add = raftkv(&["cluster", "add", "--help"]).stdout_text();
    assert!(add.contains("--join"), "{add}");
    assert!(add.contains("The new node's id"), "{add}");
    let get = raftkv(&["get", "--help"]).stdout_text();
    assert!(get.contains("lease") && get.contains("stale"), "{get}");
    let scan = raftkv(&["scan", "--help"]).stdout_text();
    assert!(
        scan.contains("--escape") && scan.contains("ambiguous"),
        "{scan}"
    );
}
