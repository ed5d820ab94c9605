//! etcd 3.4 itself (Debian's `etcd-server`, `/usr/bin/etcd`) as the
//! reference the etcd-API tests run their assertions against: N members on
//! loopback ports chosen free at run time, each in a temp directory with its
//! log, killed and reaped by PID when dropped.
//!
//! A machine without etcd skips those tests ([`EtcdCluster::start`] returns
//! `None` and says so), unless `RAFTKV_REQUIRE_ETCD=1` (set by `.ci/run`),
//! where its absence fails them.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::limit::ClusterPermit;
use crate::ports::free_ports;
use crate::process::ServerProcess;
use crate::wait::poll_until;

/// Where Debian's `etcd-server` puts the server.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// Whether etcd is here to compare against: `false` (with a note on stderr)
/// when it is not installed; panics when it is required and missing.
pub fn etcd_available() -> bool {
    if Path::new(ETCD_BIN).exists() {
        return true;
    }
    assert!(
        std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"),
        "etcd is required (RAFTKV_REQUIRE_ETCD=1): apt-get install etcd-server etcd-client"
    );
    eprintln!("skipped: etcd 3.4 is not installed (apt-get install etcd-server etcd-client)");
    false
}

/// A running etcd cluster of child processes.
pub struct EtcdCluster {
    /// Killed and reaped when the cluster is dropped.
    _processes: Vec<ServerProcess>,
    client_ports: Vec<u16>,
    dir: TempDir,
    _permit: ClusterPermit,
}

impl EtcdCluster {
    /// Starts `nodes` etcd members (named node-1..node-N) with `extra_args`
    /// on each, and waits until every client port accepts connections;
    /// `None` when etcd is not installed (see [`etcd_available`]).
    pub fn start(nodes: usize, extra_args: &[&str]) -> Option<EtcdCluster> {
        if !etcd_available() {
            return None;
        }
        let permit = ClusterPermit::acquire();
        let dir = tempfile::Builder::new()
            .prefix("raftkv-etcd-")
            .tempdir()
            .expect("create temp dir");
        let ports = free_ports(2 * nodes);
        let (client_ports, peer_ports) = ports.split_at(nodes);
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("node-{}=http://127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut processes = Vec::new();
        for (i, (client, peer)) in client_ports.iter().zip(peer_ports).enumerate() {
            let name = format!("node-{}", i + 1);
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data_dir = dir.path().join(format!("data-{}", i + 1));
            let mut args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                &data_dir.display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                "new",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra_args.iter().map(|s| s.to_string()));
            let log = dir.path().join(format!("{name}.log"));
            let process =
                ServerProcess::spawn(Path::new(ETCD_BIN), &args, &log, &[]).expect("start etcd");
            processes.push(process);
        }
        let cluster = EtcdCluster {
            _processes: processes,
            client_ports: client_ports.to_vec(),
            dir,
            _permit: permit,
        };
        for port in &cluster.client_ports {
            let listening = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
                TcpStream::connect(("127.0.0.1", *port)).ok()
            });
            assert!(
                listening.is_ok(),
                "etcd did not listen on {port} within 20 s; logs in {}",
                cluster.dir.path().display()
            );
        }
        Some(cluster)
    }

    /// The members' client addresses (`127.0.0.1:PORT`), node-1 first.
    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}
