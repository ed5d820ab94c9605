//! RaftKV client library.
//!
//! Give it any endpoints of a cluster: it finds the leader itself, follows
//! `NotLeader` redirects, retries retryable errors with backoff within one
//! overall deadline (`ClientOptions::timeout`), and numbers writes (client id +
//! sequence number) so that a retried write is applied once. Errors are typed
//! ([`Error`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftkv_client::Error> {
//! let client = raftkv_client::Client::new(&["127.0.0.1:7379".to_string()])?;
//! client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?, "hello");
//! # Ok(()) }
//! ```

mod auth;
mod client;
mod deadline;
mod error;
mod etcd;
mod session;

pub use auth::{Channel, Credentials, Token};
pub use client::{
    parse_endpoint, Client, ClientOptions, Consistency, KeyRevisions, ScanOptions, ScanPage,
};
pub use error::Error;
pub use etcd::{prefix_end, Condition, KeepAlive, Lease, WatchEvent};
/// etcd's v3 messages, for general transactions (`Client::txn`).
pub use raftkv_proto::etcdserverpb;
pub use raftkv_proto::v1 as proto;
