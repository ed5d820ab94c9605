//! Acceptance (issue 22): TLS for clients and peers on real server
//! processes, with a throwaway PKI made at run time: the CLI, the client
//! library and etcdctl work over https://, and what should not get in does
//! not — a plaintext client, a certificate from another CA, an expired one,
//! no certificate where one is required, and a process with a certificate
//! from another CA that tries to speak the peer protocol.

mod common;

use std::path::Path;
use std::time::Duration;

use raftkv_testkit::pki::{Issued, TestCa, Validity};
use raftkv_testkit::{ClientCreds, TestCluster};

use common::bin;

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

#[test]
fn a_tls_cluster_serves_its_clients_and_refuses_the_others_with_a_reason() {
    let pki = Pki::new();
    let cluster = start(&pki, 3);
    // The CLI with the kit's credentials, through every member.
    cluster.cli(&["put", "tls/k", "v1"]).assert_ok();
    for id in cluster.ids() {
        let got = cluster.cli_at(id, &["get", "tls/k"]);
        got.assert_ok();
        assert_eq!(got.stdout_text().trim(), "v1");
    }

    let ca = |ca: &Path| vec!["--cacert".to_string(), ca.display().to_string()];
    let with_cert = |ca_path: &Path, cert: &Issued| {
        let mut args = ca(ca_path);
        args.extend([
            "--cert".to_string(),
            cert.cert.display().to_string(),
            "--key".to_string(),
            cert.key.display().to_string(),
        ]);
        args
    };
    // Plaintext.
    let mut plain: Vec<String> = vec!["get".into(), "tls/k".into(), "--endpoints".into()];
    plain.push(cluster.address(1));
    let out = raftkv_testkit::run_cli(&bin(), &plain);
    eprintln!("plaintext: {}", out.describe());
    // No client certificate.
    let out = cli_as(&cluster, &ca(&pki.client_ca.cert), &["get", "tls/k"]);
    eprintln!("no cert: {}", out.describe());
    // A certificate from another CA.
    let mallory = pki.other_ca.issue("mallory");
    let out = cli_as(&cluster, &with_cert(&pki.client_ca.cert, &mallory), &["get", "tls/k"]);
    eprintln!("other CA: {}", out.describe());
    // An expired certificate.
    let old = pki.client_ca.issue_with("old", Validity::Expired);
    let out = cli_as(&cluster, &with_cert(&pki.client_ca.cert, &old), &["get", "tls/k"]);
    eprintln!("expired: {}", out.describe());
    // A server this client does not trust.
    let out = cli_as(&cluster, &with_cert(&pki.other_ca.cert, &pki.client_ca.issue("bob")), &["get", "tls/k"]);
    eprintln!("untrusted server: {}", out.describe());
    let _ = &pki.peer_ca;
    let _ = &pki.dir;
    panic!("look");
}
