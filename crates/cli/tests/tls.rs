//! Acceptance (issue 22): TLS for clients and peers on real server
//! processes, with a throwaway PKI made at run time: the CLI, the client
//! library and etcdctl work over https://, and what should not get in does
//! not — a plaintext client, a certificate from another CA, an expired one,
//! no certificate where one is required, and a process with a certificate
//! from another CA that tries to speak the peer protocol.

mod common;

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use raftkv_net::tls::{CertFiles, ClientTls, ClientTlsFiles};
use raftkv_proto::v1::peer_client::PeerClient;
use raftkv_proto::v1::RaftEnvelope;
use raftkv_testkit::pki::{Issued, TestCa, Validity};
use raftkv_testkit::{ClientCreds, TestCluster};

use common::{bin, sample};

/// Client CA, peer CA and a stranger's CA; the servers' certificates.
struct Pki {
    dir: tempfile::TempDir,
    client_ca: TestCa,
    peer_ca: TestCa,
    other_ca: TestCa,
    server: Issued,
    peer: Issued,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let client_ca = TestCa::new(dir.path(), "client-ca");
        let peer_ca = TestCa::new(dir.path(), "peer-ca");
        let other_ca = TestCa::new(&dir.path().join("other"), "other-ca");
        let server = client_ca.issue("server");
        let peer = peer_ca.issue("peer");
        Pki {
            dir,
            client_ca,
            peer_ca,
            other_ca,
            server,
            peer,
        }
    }

    fn path(&self, issued: &Path) -> String {
        issued.display().to_string()
    }

    /// Every node's TLS flags: client TLS with client certificates
    /// required, and peer TLS.
    fn server_args(&self) -> Vec<String> {
        vec![
            "--cert-file".into(),
            self.path(&self.server.cert),
            "--key-file".into(),
            self.path(&self.server.key),
            "--trusted-ca-file".into(),
            self.path(&self.client_ca.cert),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            self.path(&self.peer.cert),
            "--peer-key-file".into(),
            self.path(&self.peer.key),
            "--peer-trusted-ca-file".into(),
            self.path(&self.peer_ca.cert),
        ]
    }

    fn alice(&self) -> ClientCreds {
        ClientCreds {
            cacert: self.client_ca.cert.clone(),
            cert: Some(self.client_ca.issue("alice")),
        }
    }
}

fn start(pki: &Pki, nodes: usize) -> TestCluster {
    let args = pki.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = TestCluster::start_tls(bin(), nodes, &args, pki.alice());
    cluster.wait_leader(Duration::from_secs(10));
    cluster
}

/// `raftkv ARGS --endpoints https://<node 1>` with exactly `tls` flags (not
/// the kit's).
fn cli_as(cluster: &TestCluster, tls: &[String], args: &[&str]) -> raftkv_testkit::CliOutput {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push("--endpoints".into());
    all.push(format!("https://{}", cluster.address(1)));
    all.extend(tls.iter().cloned());
    raftkv_testkit::run_cli(&bin(), &all)
}

/// `--cacert CA [--cert C --key K]`.
fn tls_flags(ca: &Path, cert: Option<&Issued>) -> Vec<String> {
    let mut args = vec!["--cacert".to_string(), ca.display().to_string()];
    if let Some(cert) = cert {
        args.extend([
            "--cert".to_string(),
            cert.cert.display().to_string(),
            "--key".to_string(),
            cert.key.display().to_string(),
        ]);
    }
    args
}

/// GET `path` over https with `tls` (HTTP/1.1 inside TLS): status and body.
async fn https_get(address: &str, path: &str, tls: &ClientTls) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut stream = tls.connect("127.0.0.1", stream).await.expect("TLS");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn refused_count(metrics: &str, reason: &str) -> f64 {
    sample(
        metrics,
        &format!("raftkv_tls_refused_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_its_clients_and_refuses_the_others_with_a_reason() {
    let pki = Pki::new();
    let cluster = start(&pki, 3);
    // The CLI with a client certificate, through every member.
    cluster.cli(&["put", "tls/k", "v1"]).assert_ok();
    for id in cluster.ids() {
        let got = cluster.cli_at(id, &["get", "tls/k"]);
        got.assert_ok();
        assert_eq!(got.stdout_text().trim(), "v1");
    }
    // The client library.
    let client = cluster.client();
    client.put("tls/lib", "v2").await.expect("put over TLS");
    assert_eq!(client.get("tls/lib").await.unwrap(), "v2");

    // etcdctl 3.4, as its users call it.
    if etcd_installed() {
        let alice = pki.alice();
        let cert = alice.cert.as_ref().unwrap();
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("https://{}", cluster.address(2))])
            .args(["--cacert", &pki.client_ca.cert.display().to_string()])
            .args(["--cert", &cert.cert.display().to_string()])
            .args(["--key", &cert.key.display().to_string()])
            .args(["--command-timeout", "10s", "get", "tls/k"])
            .output()
            .expect("etcdctl runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "etcdctl over TLS: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, "tls/k\nv1\n");
    }

    // Refused, each with its reason.
    let plain = raftkv_testkit::run_cli(
        &bin(),
        &[
            "get".into(),
            "tls/k".into(),
            "--endpoints".into(),
            cluster.address(1),
        ],
    );
    plain.assert_error(3, "TLS required (server has --cert-file)");
    let anonymous = cli_as(
        &cluster,
        &tls_flags(&pki.client_ca.cert, None),
        &["get", "tls/k"],
    );
    anonymous.assert_error(
        3,
        "client certificate required (server has --client-cert-auth)",
    );
    let mallory = pki.other_ca.issue("mallory");
    let stranger = cli_as(
        &cluster,
        &tls_flags(&pki.client_ca.cert, Some(&mallory)),
        &["get", "tls/k"],
    );
    stranger.assert_error(
        3,
        "the server refused this client's certificate: signed by an authority it does not trust",
    );
    let old = pki.client_ca.issue_with("old", Validity::Expired);
    let expired = cli_as(
        &cluster,
        &tls_flags(&pki.client_ca.cert, Some(&old)),
        &["get", "tls/k"],
    );
    expired.assert_error(
        3,
        "the server refused this client's certificate: it has expired",
    );
    let bob = pki.client_ca.issue("bob");
    let distrustful = cli_as(
        &cluster,
        &tls_flags(&pki.other_ca.cert, Some(&bob)),
        &["get", "tls/k"],
    );
    distrustful.assert_error(3, "certificate signed by unknown authority");
    for refused in [&plain, &anonymous, &stranger, &expired, &distrustful] {
        assert!(
            refused.elapsed < Duration::from_secs(3),
            "a TLS refusal is final, not retried until the deadline: {}",
            refused.describe()
        );
    }
    // Usage errors for what cannot work.
    cli_as(&cluster, &[], &["get", "tls/k"]).assert_error(2, "https:// endpoints need --cacert");
    let mut mixed = vec![
        "get".to_string(),
        "tls/k".into(),
        "--endpoints".into(),
        format!("http://{}", cluster.address(1)),
    ];
    mixed.extend(tls_flags(&pki.client_ca.cert, None));
    raftkv_testkit::run_cli(&bin(), &mixed).assert_error(2, "is http:// (plaintext) but --cacert");

    // etcd's member list gives https:// URLs.
    if etcd_installed() {
        let alice = pki.alice();
        let cert = alice.cert.as_ref().unwrap();
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("https://{}", cluster.address(1))])
            .args(["--cacert", &pki.client_ca.cert.display().to_string()])
            .args(["--cert", &cert.cert.display().to_string()])
            .args(["--key", &cert.key.display().to_string()])
            .args(["member", "list"])
            .output()
            .expect("etcdctl runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert_eq!(stdout.matches("https://").count(), 6, "{stdout}");
    }

    // /metrics follows the client port's TLS, and counts the refusals.
    let (code, body) = common::http_get(&cluster.address(1), "/metrics");
    assert_eq!(code, 403, "plaintext /metrics: {body}");
    let (code, metrics) =
        https_get(&cluster.address(1), "/metrics", &pki.alice().client_tls()).await;
    assert_eq!(code, 200);
    assert!(refused_count(&metrics, "plaintext") >= 2.0, "{metrics}");
    assert!(refused_count(&metrics, "no_client_cert") >= 1.0);
    assert!(refused_count(&metrics, "handshake") >= 2.0);
}

fn etcd_installed() -> bool {
    let installed = Path::new("/usr/bin/etcdctl").exists();
    if !installed {
        assert!(
            std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"),
            "etcdctl is required (RAFTKV_REQUIRE_ETCD=1): apt-get install etcd-client"
        );
        eprintln!("etcdctl part skipped: etcd-client is not installed");
    }
    installed
}

/// A Raft envelope claiming to come from member `from` with a term far
/// ahead: a node that took it would step down (or up) to that term.
fn forged_vote(cluster_id: u64, from: u64, to: u64, term: u64) -> RaftEnvelope {
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
    m.from = from;
    m.to = to;
    m.term = term + 100;
    m.log_term = term + 100;
    m.index = 1_000_000;
    RaftEnvelope {
        cluster_id,
        from,
        to,
        chunk: protobuf::Message::write_to_bytes(&m).unwrap().into(),
        last: true,
        sender_out_of_space: false,
        bootstrap_id: 0,
        sender_log_version: 2,
        sender_settings: None,
        sender_takes_proposals: false,
    }
}

/// Sends `envelope` on the peer service of `address` through a connection
/// made with `tls` (plaintext when `None`); the call's outcome.
async fn send_raft(
    address: &str,
    tls: Option<Arc<ClientTls>>,
    envelope: RaftEnvelope,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_with_connector(raftkv_net::connector(tls))
        .await
        .map_err(|e| {
            raftkv_net::tls::describe_failure(&e).unwrap_or_else(|| format!("connect: {e}"))
        })?;
    let mut peer = PeerClient::new(channel);
    let call = peer.raft(futures::stream::iter(vec![envelope]));
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(raftkv_net::tls::describe_failure(&status)
            .unwrap_or_else(|| status.message().to_string())),
        Err(_) => Err("no answer in 10 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_speak_raft_and_rotated_certificates_are_taken_up() {
    let pki = Pki::new();
    let mut cluster = start(&pki, 3);
    cluster.cli(&["put", "peer/before", "1"]).assert_ok();
    let leader = cluster.leader();
    let before: Vec<(u64, u64)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.status(id).unwrap().term))
        .collect();
    let status = cluster.status(1).unwrap();
    let cluster_id = u64::from_str_radix(status.json["cluster_id"].as_str().unwrap(), 16).unwrap();
    let target = cluster.followers()[0];
    let address = cluster.address(target);
    let vote = || forged_vote(cluster_id, leader, target, status.term);

    // Plaintext, a client's certificate, and a certificate from another CA
    // that asks to be treated as a member: none reaches raft.
    let plain = send_raft(&address, None, vote()).await.unwrap_err();
    assert!(plain.contains("member's certificate"), "{plain}");
    let client = send_raft(&address, Some(pki.alice().client_tls()), vote())
        .await
        .unwrap_err();
    assert!(client.contains("member's certificate"), "{client}");
    let impostor = pki.other_ca.issue("impostor");
    let impostor = ClientTls::new(&ClientTlsFiles {
        trusted_ca: pki.peer_ca.cert.clone(),
        identity: Some(CertFiles {
            cert: impostor.cert,
            key: impostor.key,
        }),
        peer: true,
    })
    .unwrap();
    let refused = send_raft(&address, Some(impostor), vote())
        .await
        .unwrap_err();
    assert!(
        refused.contains("refused this client's certificate"),
        "{refused}"
    );

    // A server with the impostor's certificate cannot join.
    let port = raftkv_testkit::free_ports(1)[0];
    let data_dir = pki.dir.path().join("impostor-data");
    let impostor_cert = pki.other_ca.issue("impostor-node");
    let mut impostor_args: Vec<String> = vec![
        "server".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--join".into(),
        cluster.address(1),
    ];
    for (flag, value) in [
        ("--peer-cert-file", &impostor_cert.cert),
        ("--peer-key-file", &impostor_cert.key),
        ("--peer-trusted-ca-file", &pki.peer_ca.cert),
    ] {
        impostor_args.push(flag.into());
        impostor_args.push(value.display().to_string());
    }
    let mut joiner = std::process::Command::new(bin())
        .args(&impostor_args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the impostor");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = joiner.kill();
    let output = joiner.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("refused this client's certificate"),
        "the impostor says why it cannot join:\n{log}"
    );
    // Nor can a server that shows only a client certificate: it would be
    // added and then never reached.
    let port = raftkv_testkit::free_ports(1)[0];
    let client_only = std::process::Command::new(bin())
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--data-dir",
            &pki.dir.path().join("client-only").display().to_string(),
        ])
        .args(["--join", &cluster.address(1)])
        .args(["--cert-file", &pki.server.cert.display().to_string()])
        .args(["--key-file", &pki.server.key.display().to_string()])
        .args([
            "--trusted-ca-file",
            &pki.client_ca.cert.display().to_string(),
        ])
        .output()
        .expect("run the joiner");
    let log = String::from_utf8_lossy(&client_only.stderr);
    assert!(!client_only.status.success());
    assert!(
        log.contains("joining needs a member's certificate"),
        "the joiner says why it is refused:\n{log}"
    );

    let members = cluster.cli(&["cluster", "members", "--json"]);
    members.assert_ok();
    let members: serde_json::Value = serde_json::from_str(&members.stdout_text()).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");

    // No node moved to the forged term; the leader is the same.
    for (id, term) in &before {
        assert_eq!(cluster.status(*id).unwrap().term, *term, "node {id}'s term");
    }
    assert_eq!(cluster.leader(), leader);
    let (_, metrics) = https_get(&address, "/metrics", &pki.alice().client_tls()).await;
    assert!(refused_count(&metrics, "not_a_member") >= 2.0, "{metrics}");
    assert!(refused_count(&metrics, "handshake") >= 1.0);

    // Rotation: every node's peer certificate files are replaced; the
    // cluster goes on, new connections get the new certificate, and a
    // restarted node (new connections both ways) rejoins with it.
    let rotated = pki.peer_ca.issue("peer");
    cluster
        .cli(&["put", "peer/after-rotation", "2"])
        .assert_ok();
    let member = ClientTls::new(&ClientTlsFiles {
        trusted_ca: pki.peer_ca.cert.clone(),
        identity: Some(CertFiles {
            cert: rotated.cert.clone(),
            key: rotated.key.clone(),
        }),
        peer: true,
    })
    .unwrap();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let tls = member.connect("127.0.0.1", stream).await.unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let expected = pem_der(&rotated.cert);
    assert_eq!(
        served, expected,
        "a new connection is served the new certificate"
    );
    cluster.kill(target);
    cluster.restart(target);
    cluster.wait_caught_up(Duration::from_secs(20));
    let got = cluster.cli_at(target, &["get", "peer/after-rotation"]);
    got.assert_ok();
    assert_eq!(got.stdout_text().trim(), "2");
}

/// The DER of the first certificate in a PEM file.
fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[test]
fn a_server_whose_certificate_does_not_name_its_address_does_not_start() {
    let pki = Pki::new();
    let elsewhere = pki
        .client_ca
        .issue_for("elsewhere", &["10.9.9.9"], Validity::Current);
    let dir = pki.dir.path().join("data");
    let out = std::process::Command::new(bin())
        .args(["server", "--listen", "127.0.0.1:7379"])
        .args(["--data-dir", &dir.display().to_string()])
        .args(["--cert-file", &elsewhere.cert.display().to_string()])
        .args(["--key-file", &elsewhere.key.display().to_string()])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does not name 127.0.0.1") && stderr.contains("add IP:127.0.0.1"),
        "{stderr}"
    );
    assert!(
        !dir.exists(),
        "nothing is written before the flags are checked"
    );
    // A key that does not go with its certificate, and a missing file,
    // are named by their flag.
    let out = std::process::Command::new(bin())
        .args(["server", "--listen", "127.0.0.1:7379"])
        .args(["--data-dir", &dir.display().to_string()])
        .args(["--cert-file", &pki.server.cert.display().to_string()])
        .args(["--key-file", &pki.peer.key.display().to_string()])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--cert-file/--key-file: the key in"),
        "{stderr}"
    );
    let out = std::process::Command::new(bin())
        .args(["server", "--peer-cert-file", "peer.pem"])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing: --peer-key-file, --peer-trusted-ca-file"),
        "{stderr}"
    );
}

/// A member's own connection: the peer certificate, trusting the peer CA.
fn member_tls(pki: &Pki) -> Arc<ClientTls> {
    ClientTls::new(&ClientTlsFiles {
        trusted_ca: pki.peer_ca.cert.clone(),
        identity: Some(CertFiles {
            cert: pki.peer.cert.clone(),
            key: pki.peer.key.clone(),
        }),
        peer: true,
    })
    .unwrap()
}

/// Issue 22, `--listen-peer`: with a separate peer listener, raft messages
/// and snapshots travel only there (members' certificates only), the client
/// port refuses raft saying where it goes, and a node that joins with a peer
/// listener of its own is added with it and caught up through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_separate_peer_listeners_raft_travels_only_there() {
    let pki = Pki::new();
    let args = pki.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = TestCluster::start_with_peer_listeners(bin(), 3, &args, Some(pki.alice()));
    cluster.wait_leader(Duration::from_secs(10));
    cluster.cli(&["put", "split/a", "1"]).assert_ok();

    // Every member is listed with its peer listener.
    let members = cluster.cli(&["cluster", "members"]);
    members.assert_ok();
    for id in cluster.ids() {
        let listed = format!(
            "{}/{}",
            cluster.address(id),
            cluster.peer_address(id).unwrap()
        );
        assert!(
            members.stdout_text().contains(&listed),
            "{}",
            members.describe()
        );
    }

    let leader = cluster.leader();
    let status = cluster.status(1).unwrap();
    let cluster_id = u64::from_str_radix(status.json["cluster_id"].as_str().unwrap(), 16).unwrap();
    let target = cluster.followers()[0];
    let terms = |cluster: &TestCluster| -> Vec<u64> {
        cluster
            .ids()
            .into_iter()
            .map(|id| cluster.status(id).unwrap().term)
            .collect()
    };
    let before = terms(&cluster);
    let vote = || forged_vote(cluster_id, leader, target, status.term);

    // Raft on the client port, even with a member's certificate: refused,
    // saying where peer traffic goes.
    let on_client_port = send_raft(&cluster.address(target), Some(member_tls(&pki)), vote())
        .await
        .unwrap_err();
    assert!(on_client_port.contains("peer listener"), "{on_client_port}");
    // The peer listener does not take a client's certificate, nor plaintext.
    let peer_address = cluster.peer_address(target).unwrap();
    let client_cert = send_raft(&peer_address, Some(pki.alice().client_tls()), vote()).await;
    assert!(client_cert.is_err(), "a client certificate reached raft");
    let plain = send_raft(&peer_address, None, vote()).await.unwrap_err();
    assert!(plain.contains("member's certificate"), "{plain}");
    // A client that mistakes it for the client port is told where to go.
    let lost = raftkv_testkit::run_cli(
        &bin(),
        &[
            "get".into(),
            "split/a".into(),
            "--endpoints".into(),
            peer_address.clone(),
        ],
    );
    lost.assert_error(3, &format!("clients use {}", cluster.address(target)));
    assert_eq!(terms(&cluster), before, "no node moved to the forged term");

    // A node joining with a peer listener of its own is added with it,
    // receives the data through it and becomes a voter.
    let joined = cluster.join_node(1, false);
    let listed = format!(
        "{}/{}",
        cluster.address(joined),
        cluster.peer_address(joined).unwrap()
    );
    raftkv_testkit::poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let members = cluster.cli(&["cluster", "members"]);
        let text = members.stdout_text();
        text.lines()
            .any(|line| line.contains(&listed) && line.contains("follower"))
            .then_some(())
    })
    .unwrap_or_else(|_| cluster.fail(&format!("node {joined} did not become a voter at {listed}")));
    cluster.cli(&["put", "split/b", "2"]).assert_ok();
    let index = cluster.wait_caught_up(Duration::from_secs(30));
    assert!(cluster.status(joined).unwrap().applied_index >= index);
    let got = cluster.cli_at(joined, &["get", "split/a", "--consistency", "stale"]);
    got.assert_ok();
    assert_eq!(got.stdout_text().trim(), "1");
}
