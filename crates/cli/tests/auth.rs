//! Acceptance (issue 22): users, roles and key-range permissions on real
//! server processes, set up and used as an operator and etcd's users do —
//! `raftkv user/role/auth` and `--user`, and etcdctl unchanged. With auth
//! on, a request without credentials is refused; a user reaches exactly the
//! keys its roles grant, through any member; only root changes membership
//! or auth; a revoked permission holds at once; all of it survives a
//! restart of every node. A client certificate's CN is a user too.

mod common;

use std::path::Path;
use std::time::Duration;

use raftkv_testkit::pki::TestCa;
use raftkv_testkit::{CliOutput, ClientCreds, TestCluster, LEADER_WAIT};

use common::bin;

const ALICE: [&str; 2] = ["--user", "alice:alicepw"];
const ROOT: [&str; 2] = ["--user", "root:rootpw"];

/// `args` followed by `user`'s --user flag.
fn with<'a>(user: [&'a str; 2], args: &[&'a str]) -> Vec<&'a str> {
    args.iter().chain(user.iter()).copied().collect()
}

fn run(cluster: &TestCluster, args: &[&str]) -> CliOutput {
    cluster.cli(args)
}

/// root (role root), alice with readwrite on the prefix `a/`, auth on.
fn set_up(cluster: &TestCluster) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "a-rw"],
        &[
            "role",
            "grant-permission",
            "a-rw",
            "readwrite",
            "a/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "a-rw"],
    ] {
        cluster.cli(args).assert_ok();
    }
    cluster
        .cli(&["auth", "enable"])
        .assert_ok()
        .stdout_text()
        .contains("Authentication Enabled");
}

fn etcdctl(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(cluster.endpoints())
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .expect("etcdctl runs")
}

#[test]
fn users_reach_exactly_what_their_roles_grant_and_nothing_without_credentials() {
    // Without peer TLS a node's own membership calls (joining, below) need
    // a root user, from its environment.
    let mut cluster = TestCluster::start_with_env(
        bin(),
        3,
        &[],
        &[("RAFTKV_USER", "root"), ("RAFTKV_PASSWORD", "rootpw")],
    );
    cluster.wait_leader(LEADER_WAIT);
    set_up(&cluster);

    // Without credentials every request is refused, reads and writes, the
    // etcd API and the admin calls alike.
    for args in [
        &["put", "a/1", "v"][..],
        &["get", "a/1"],
        &["scan", "a/"],
        &["delete", "a/1"],
        &["lease", "grant", "30"],
        &["compact", "1"],
        &["cluster", "remove", "3"],
        &["debug", "raft"],
        &["user", "list"],
    ] {
        let out = cluster.cli(args);
        assert_eq!(out.code, 3, "{args:?} without a user\n{}", out.describe());
        let line = out.error_line().unwrap_or_default().to_string();
        assert!(
            line.contains("authentication required") || line.contains("user name is empty"),
            "{args:?}: {}",
            out.describe()
        );
    }

    // alice: her prefix, through every member (followers forward).
    for id in cluster.member_ids() {
        let key = format!("a/{id}");
        cluster
            .cli_at(id, &with(ALICE, &["put", &key, "v"]))
            .assert_ok();
    }
    let out = run(&cluster, &with(ALICE, &["get", "a/1"]));
    assert_eq!(out.assert_ok().stdout_text().trim(), "v");
    let out = run(&cluster, &with(ALICE, &["scan", "a/"]));
    assert_eq!(
        out.assert_ok().stdout_lines().len(),
        3,
        "{}",
        out.describe()
    );
    // ... and nothing else, each refusal naming the user and the key.
    run(&cluster, &with(ROOT, &["put", "b/1", "root's"])).assert_ok();
    for (args, needle) in [
        (
            &["put", "b/1", "v"][..],
            "permission denied: user alice may not write key b/1",
        ),
        (
            &["get", "b/1"],
            "permission denied: user alice may not read key b/1",
        ),
        (&["scan", ""], "may not read every key"),
        (&["delete", "b/1"], "may not write key b/1"),
        (&["cluster", "remove", "3"], "root role"),
        (&["user", "list"], "permission denied"),
        (&["compact", "1"], "permission denied"),
    ] {
        run(&cluster, &with(ALICE, args)).assert_error(3, needle);
    }
    run(&cluster, &with(ROOT, &["get", "b/1"])).assert_ok();
    run(&cluster, &["get", "a/1", "--user", "alice:nope"]).assert_error(3, "authentication failed");

    // Watches: alice sees her prefix; a watch beyond it is refused.
    let out = cluster.cli_bounded(
        &cluster.endpoints(),
        &with(ALICE, &["watch", "a/", "--prefix", "--rev", "1"]),
        Duration::from_secs(3),
    );
    assert!(
        out.stdout_text().contains("a/1"),
        "alice's watch shows her keys\n{}",
        out.describe()
    );
    let out = cluster.cli_bounded(
        &cluster.endpoints(),
        &with(ALICE, &["watch", "b/", "--prefix", "--rev", "1"]),
        Duration::from_secs(3),
    );
    assert!(!out.stdout_text().contains("b/1"), "{}", out.describe());
    out.assert_error(3, "watch canceled: etcdserver: permission denied");
    // A watch of every key is sent only hers.
    let out = cluster.cli_bounded(
        &cluster.endpoints(),
        &with(ALICE, &["watch", "", "--prefix", "--rev", "1"]),
        Duration::from_secs(3),
    );
    let keys: Vec<String> = out
        .stdout_lines()
        .iter()
        .filter_map(|l| l.split('\t').nth(1).map(str::to_string))
        .collect();
    assert!(keys.contains(&"a/1".to_string()), "{}", out.describe());
    assert!(
        keys.iter().all(|k| k.starts_with("a/")),
        "alice's watch of every key shows only a/: {keys:?}"
    );

    // etcdctl, unchanged.
    if Path::new("/usr/bin/etcdctl").exists() {
        let put = etcdctl(&cluster, &["--user", "alice:alicepw", "put", "a/etcd", "x"]);
        assert!(put.status.success(), "{put:?}");
        let denied = etcdctl(&cluster, &["--user", "alice:alicepw", "put", "b/etcd", "x"]);
        assert!(!denied.status.success());
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("etcdserver: permission denied"),
            "{denied:?}"
        );
        let anonymous = etcdctl(&cluster, &["get", "a/etcd"]);
        assert!(
            String::from_utf8_lossy(&anonymous.stderr).contains("etcdserver: user name is empty"),
            "{anonymous:?}"
        );
        let user = etcdctl(&cluster, &["--user", "root:rootpw", "user", "get", "alice"]);
        assert!(
            String::from_utf8_lossy(&user.stdout).contains("Roles: a-rw"),
            "{user:?}"
        );
    } else {
        eprintln!("etcdctl is not installed: its part of the test is skipped");
    }

    // Her own user and roles she may read, not others'.
    let out = run(&cluster, &with(ALICE, &["user", "get", "alice"]));
    assert!(
        out.assert_ok().stdout_text().contains("a-rw"),
        "{}",
        out.describe()
    );
    run(&cluster, &with(ALICE, &["role", "get", "a-rw"])).assert_ok();
    run(&cluster, &with(ALICE, &["user", "get", "root"])).assert_error(3, "permission denied");
    run(&cluster, &with(ROOT, &["user", "passwd", "alice:"])).assert_error(3, "password is empty");

    // The leader fails: a logged-in client rides out the election.
    let leader = cluster.wait_leader(LEADER_WAIT);
    cluster.kill(leader);
    run(
        &cluster,
        &with(ALICE, &["put", "a/failover", "v", "--timeout", "20s"]),
    )
    .assert_ok();
    cluster.restart(leader);

    // Every node restarts: users, roles and the switch are still there.
    for id in cluster.member_ids() {
        cluster.kill(id);
        cluster.restart(id);
    }
    cluster.wait_leader(LEADER_WAIT);
    cluster
        .cli(&["get", "a/1"])
        .assert_error(3, "authentication required");
    let out = run(&cluster, &with(ALICE, &["get", "a/1"]));
    assert_eq!(out.assert_ok().stdout_text().trim(), "v");

    // A new member gets users and roles by snapshot install: every member
    // snapshots and compacts its log first, so the joiner cannot replay them.
    for id in cluster.member_ids() {
        cluster
            .cli_at(id, &with(ROOT, &["debug", "snapshot"]))
            .assert_ok();
        cluster
            .cli_at(id, &with(ROOT, &["debug", "compact"]))
            .assert_ok();
    }
    let leader = cluster.wait_leader(LEADER_WAIT);
    let joined = cluster.join_node(leader, false);
    let started = std::time::Instant::now();
    let out = loop {
        let out = cluster.cli_at(
            joined,
            &with(ALICE, &["get", "a/1", "--consistency", "stale"]),
        );
        if out.code == 0 || started.elapsed() > Duration::from_secs(30) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(out.assert_ok().stdout_text().trim(), "v");
    let storage = cluster.cli_at(joined, &with(ROOT, &["debug", "storage", "--json"]));
    let storage: serde_json::Value =
        serde_json::from_str(storage.assert_ok().stdout_text().trim()).unwrap();
    assert!(
        storage["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "node {joined} started from a snapshot: {storage}"
    );
    cluster
        .cli_at(
            joined,
            &with(ALICE, &["get", "b/1", "--consistency", "stale"]),
        )
        .assert_error(3, "may not read key b/1");
    cluster
        .cli_at(joined, &["get", "a/1", "--consistency", "stale"])
        .assert_error(3, "authentication required");

    // A permission taken back holds at once.
    run(
        &cluster,
        &with(
            ROOT,
            &["role", "revoke-permission", "a-rw", "a/", "--prefix"],
        ),
    )
    .assert_ok();
    run(&cluster, &with(ALICE, &["put", "a/1", "again"])).assert_error(3, "may not write key a/1");
    let out = run(&cluster, &with(ROOT, &["get", "a/1"]));
    assert_eq!(out.assert_ok().stdout_text().trim(), "v");

    // Auth off again (root only): anyone may.
    run(&cluster, &with(ALICE, &["auth", "disable"])).assert_error(3, "permission denied");
    run(&cluster, &with(ROOT, &["auth", "disable"])).assert_ok();
    cluster.cli(&["put", "b/2", "anyone"]).assert_ok();
}

/// etcd's rule: with no token, a verified client certificate's CN names
/// the user (a member's peer certificate never does).
#[test]
fn a_client_certificate_names_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "client-ca");
    let server = ca.issue("server");
    let path = |p: &Path| p.display().to_string();
    let (cert, key, trusted) = (path(&server.cert), path(&server.key), path(&ca.cert));
    let args = [
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &trusted,
        "--client-cert-auth",
    ];
    let cluster = TestCluster::start_tls(
        bin(),
        1,
        &args,
        ClientCreds {
            cacert: ca.cert.clone(),
            cert: Some(ca.issue("alice")),
        },
    );
    cluster.wait_leader(LEADER_WAIT);
    set_up(&cluster);
    // The kit's CLI presents the certificate of CN alice, and no --user.
    cluster.cli(&["put", "a/cert", "v"]).assert_ok();
    cluster
        .cli(&["put", "b/cert", "v"])
        .assert_error(3, "permission denied: user alice may not write key b/cert");
    // A password login still wins over the certificate.
    run(&cluster, &with(ROOT, &["put", "b/cert", "v"])).assert_ok();
}

/// The client library logs in with its credentials, gets the same refusals
/// as typed errors, and logs in again on its own once its token expires.
#[test]
fn the_library_logs_in_and_again_when_its_token_expires() {
    let cluster = TestCluster::start_with(bin(), 1, &["--auth-token-ttl", "2"]);
    cluster.wait_leader(LEADER_WAIT);
    set_up(&cluster);
    let options = raftkv_client::ClientOptions {
        credentials: Some(raftkv_client::Credentials {
            user: "alice".into(),
            password: "alicepw".into(),
        }),
        ..cluster.client_options()
    };
    let client = raftkv_client::Client::with_options(&cluster.endpoint_list(), options).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        client.put("a/lib", "1").await.expect("alice writes a/");
        let denied = client.put("b/lib", "1").await.expect_err("not b/");
        assert!(
            matches!(&denied, raftkv_client::Error::PermissionDenied(m)
                if m.contains("user alice may not write key b/lib")),
            "{denied:?}"
        );
        // Past the token's 2 s: the next call logs in again by itself.
        tokio::time::sleep(Duration::from_secs(3)).await;
        client
            .put("a/lib", "2")
            .await
            .expect("after the token expired");
        let value = client.get("a/lib").await.expect("read back");
        assert_eq!(&value[..], b"2");
        // Her password changed: the token she holds is no longer good, and
        // her old password does not get her a new one.
        let out = cluster.cli(&["user", "passwd", "alice:newpw", "--user", "root:rootpw"]);
        out.assert_ok();
        let refused = client
            .get("a/lib")
            .await
            .expect_err("old token, old password");
        assert!(
            matches!(&refused, raftkv_client::Error::Unauthenticated(m)
                if m.contains("authentication failed")),
            "{refused:?}"
        );
        let wrong = raftkv_client::Client::with_options(
            &cluster.endpoint_list(),
            raftkv_client::ClientOptions {
                credentials: Some(raftkv_client::Credentials {
                    user: "alice".into(),
                    password: "wrong".into(),
                }),
                ..cluster.client_options()
            },
        )
        .unwrap();
        let refused = wrong.get("a/lib").await.expect_err("wrong password");
        assert!(
            matches!(&refused, raftkv_client::Error::Unauthenticated(m)
                if m.contains("authentication failed")),
            "{refused:?}"
        );
    });
}

/// The same set-up and refusals with etcdctl alone (its `user`, `role` and
/// `auth` commands, and its requests through the etcd API).
#[test]
fn etcdctl_sets_up_users_and_roles_and_sees_the_same_refusals() {
    if !Path::new("/usr/bin/etcdctl").exists() {
        eprintln!("etcdctl is not installed: skipped");
        return;
    }
    let cluster = TestCluster::start(bin(), 3);
    cluster.wait_leader(LEADER_WAIT);
    let ok = |args: &[&str]| {
        let out = etcdctl(&cluster, args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = |args: &[&str], needle: &str| {
        let out = etcdctl(&cluster, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "etcdctl {args:?}: expected {needle:?}: {out:?}"
        );
    };
    ok(&["user", "add", "root:rootpw"]);
    ok(&["user", "grant-role", "root", "root"]);
    ok(&["user", "add", "alice:alicepw"]);
    ok(&["role", "add", "a-rw"]);
    ok(&[
        "role",
        "grant-permission",
        "a-rw",
        "readwrite",
        "a/",
        "--prefix=true",
    ]);
    ok(&["user", "grant-role", "alice", "a-rw"]);
    assert!(ok(&["auth", "enable"]).contains("Authentication Enabled"));

    refused(&["put", "a/1", "v"], "etcdserver: user name is empty");
    refused(&["get", "a/1"], "etcdserver: user name is empty");
    let alice = ["--user", "alice:alicepw"];
    ok(&[alice[0], alice[1], "put", "a/1", "v"]);
    assert!(ok(&[alice[0], alice[1], "get", "a/", "--prefix"]).contains("a/1"));
    refused(
        &[alice[0], alice[1], "put", "b/1", "v"],
        "etcdserver: permission denied",
    );
    refused(
        &[alice[0], alice[1], "get", "b/1"],
        "etcdserver: permission denied",
    );
    refused(
        &[alice[0], alice[1], "member", "remove", "1"],
        "etcdserver: permission denied",
    );
    refused(
        &[alice[0], alice[1], "user", "list"],
        "etcdserver: permission denied",
    );
    refused(
        &["--user", "alice:wrong", "get", "a/1"],
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let root = ["--user", "root:rootpw"];
    assert!(ok(&[root[0], root[1], "role", "get", "a-rw"]).contains("[a/, a0)"));
    ok(&[root[0], root[1], "user", "revoke-role", "alice", "a-rw"]);
    refused(
        &[alice[0], alice[1], "get", "a/1"],
        "etcdserver: permission denied",
    );
    assert!(ok(&[root[0], root[1], "auth", "disable"]).contains("Authentication Disabled"));
    ok(&["put", "b/1", "anyone"]);
}
