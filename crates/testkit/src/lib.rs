//! Test kit: real `raftkv server` processes on loopback, for the acceptance tests.
//!
//! A [`TestCluster`] starts N servers as child processes of the test (static
//! `--peers` cluster, ports picked free at run time, each node in its own temp
//! directory with its log), waits for a leader, and lets a test kill (SIGKILL),
//! pause (SIGSTOP), resume (SIGCONT) and restart nodes by PID. Everything it
//! starts is killed and reaped when it is dropped, even when the test panics.
//!
//! What it must never do: signal a process it did not start, listen on anything
//! but 127.0.0.1, or wait without a deadline. It observes the cluster only as a
//! user would: through the `raftkv` binary (`status --json`) and the client
//! library, so a test can never pass because of a back door.

mod cli;
mod cluster;
pub mod etcd_ops;
mod etcd_server;
pub mod history;
pub mod jepsen;
mod limit;
pub mod pki;
mod ports;
mod process;
mod status;
mod wait;

pub use cli::{run_cli, run_cli_bounded, run_cli_with_stdin, CliOutput, CLI_KILL_AFTER};
pub use cluster::{ClientCreds, FailedStart, NodeCommand, TestCluster, LEADER_WAIT};
pub use etcd_server::{etcd_available, EtcdCluster, ETCD_BIN};
pub use limit::MAX_RUNNING_CLUSTERS;
pub use ports::{free_port_block, free_ports};
pub use status::NodeStatus;
pub use wait::poll_until;
