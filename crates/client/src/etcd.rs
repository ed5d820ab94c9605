//! Revisions, compare-and-swap, watches and leases, through the node's etcd
//! API (the same port as `raftkv.v1`). Every member takes these requests —
//! one that does not lead forwards them — so any endpoint serves.
//!
//! Writes (`put_if`, `txn`, lease grant and revoke) are sent once, to the
//! first endpoint: an error may leave their outcome unknown, and repeating a
//! compare-and-swap could report a swap it made itself as lost. Reads,
//! keep-alives and watches move on to the next endpoint when one fails; a
//! watch resumes from the revision after the last one it delivered, so no
//! change is missed or repeated across reconnects and leader changes.

use std::time::Duration;

use crate::auth::Channel;
use bytes::Bytes;
use raftkv_proto::etcdserverpb::kv_client::KvClient as EtcdKvClient;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::etcdserverpb::{
    compare, request_op, watch_request, Compare, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchRequest,
};
use raftkv_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::Error;

/// What a conditional put requires of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// At this version (puts since it was created; 0: absent).
    Version(u64),
    /// Last written at this store revision.
    ModRevision(u64),
    /// Holding this value.
    Value(Bytes),
    /// Not existing.
    Absent,
}

/// A lease: its id and the TTL the cluster granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
}

/// One change a watch delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The revision of the change.
    pub revision: u64,
    pub key: Bytes,
    /// The new value; `None`: the key was deleted.
    pub value: Option<Bytes>,
}

fn status_error(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::Unavailable => Error::Unavailable(status.message().to_string()),
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
            Error::InvalidArgument(status.message().to_string())
        }
        tonic::Code::DeadlineExceeded => Error::UnknownOutcome(status.message().to_string()),
        tonic::Code::PermissionDenied => Error::PermissionDenied(status.message().to_string()),
        tonic::Code::Unauthenticated => Error::Unauthenticated(status.message().to_string()),
        _ => Error::Rejected(status.message().to_string()),
    }
}

impl Client {
    /// The first endpoint's channel, logged in first if the client has
    /// credentials.
    async fn first_channel(&self) -> Result<Channel, Error> {
        self.ensure_login().await?;
        self.channel(&self.endpoints()[0])
    }

    fn timed<T>(&self, request: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.options().timeout);
        request
    }

    /// Puts `value` at `key` only if `condition` holds, atomically (one
    /// etcd transaction). `Ok(false)`: it did not hold; nothing written.
    pub async fn put_if(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        condition: Condition,
    ) -> Result<bool, Error> {
        let key = key.into();
        let (target, union) = match condition {
            Condition::Version(v) => (
                compare::CompareTarget::Version,
                compare::TargetUnion::Version(v as i64),
            ),
            Condition::Absent => (
                compare::CompareTarget::Version,
                compare::TargetUnion::Version(0),
            ),
            Condition::ModRevision(r) => (
                compare::CompareTarget::Mod,
                compare::TargetUnion::ModRevision(r as i64),
            ),
            Condition::Value(v) => (
                compare::CompareTarget::Value,
                compare::TargetUnion::Value(v),
            ),
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: target as i32,
                key: key.clone(),
                target_union: Some(union),
                range_end: Bytes::new(),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key,
                    value: value.into(),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        Ok(self.txn(txn).await?.succeeded)
    }

    /// An etcd transaction: compares, then the success or the failure
    /// branch, atomically at one revision.
    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, Error> {
        let mut kv = EtcdKvClient::new(self.first_channel().await?);
        Ok(kv
            .txn(self.timed(txn))
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Grants a lease of (at least) `ttl`; keys put with it go when it
    /// expires or is revoked.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, Error> {
        let mut leases = LeaseClient::new(self.first_channel().await?);
        let reply = leases
            .lease_grant(self.timed(LeaseGrantRequest {
                ttl: ttl.as_secs().max(1) as i64,
                id: 0,
            }))
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(Lease {
            id: reply.id,
            ttl: Duration::from_secs(reply.ttl.max(0) as u64),
        })
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let mut leases = LeaseClient::new(self.first_channel().await?);
        leases
            .lease_revoke(self.timed(LeaseRevokeRequest { id }))
            .await
            .map_err(status_error)?;
        Ok(())
    }

    /// Keeps lease `lease` alive from a background task, renewing it every
    /// third of its TTL through any endpoint; stops when the returned
    /// handle is dropped, or when the lease no longer exists.
    pub fn lease_keep_alive(&self, lease: Lease) -> KeepAlive {
        let client = self.clone();
        let task = tokio::spawn(async move {
            let every = (lease.ttl / 3).max(Duration::from_millis(100));
            let mut endpoint = 0;
            loop {
                let address = client.endpoints()[endpoint % client.endpoints().len()].clone();
                if let Ok(channel) = client.channel(&address) {
                    // The first request is queued before the call is
                    // awaited: etcd sends the stream's headers only with
                    // its first reply.
                    let (tx, rx) = mpsc::channel(1);
                    let renew = LeaseKeepAliveRequest { id: lease.id };
                    let _ = tx.send(renew).await;
                    let stream = LeaseClient::new(channel)
                        .lease_keep_alive(ReceiverStream::new(rx))
                        .await;
                    if let Ok(stream) = stream {
                        let mut replies = stream.into_inner();
                        loop {
                            match replies.message().await {
                                Ok(Some(reply)) if reply.ttl <= 0 => return,
                                Ok(Some(_)) => tokio::time::sleep(every).await,
                                _ => break,
                            }
                            if tx.send(renew).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // This endpoint failed: the next one, soon.
                endpoint += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        KeepAlive { task }
    }

    /// Watches `key` (with `prefix`: every key starting with it) from
    /// revision `from` (`None`: changes after now). The stream resumes on
    /// another endpoint when one fails or loses its leader (for three
    /// election timeouts), from the revision after the last one delivered;
    /// it ends with an error when its position is no longer in the history
    /// (compacted).
    pub fn watch(
        &self,
        key: impl Into<Bytes>,
        prefix: bool,
        from: Option<u64>,
    ) -> ReceiverStream<Result<WatchEvent, Error>> {
        let key = key.into();
        let range_end = if prefix {
            prefix_end(&key)
        } else {
            Bytes::new()
        };
        let client = self.clone();
        let (out, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut next = from.unwrap_or(0);
            let mut endpoint = 0;
            loop {
                let address = client.endpoints()[endpoint % client.endpoints().len()].clone();
                endpoint += 1;
                let Ok(channel) = client.channel(&address) else {
                    continue;
                };
                let (tx, requests) = mpsc::channel(1);
                let create = WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(
                        WatchCreateRequest {
                            key: key.clone(),
                            range_end: range_end.clone(),
                            start_revision: next as i64,
                            ..Default::default()
                        },
                    )),
                };
                if tx.send(create).await.is_err() {
                    return;
                }
                // Ask the member to end the stream if it loses its leader
                // (etcd's `hasleader`): an isolated member would otherwise
                // keep it open with nothing to send.
                let mut request = tonic::Request::new(ReceiverStream::new(requests));
                request.metadata_mut().insert(
                    "hasleader",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                let stream = WatchClient::new(channel).watch(request).await;
                if let Ok(stream) = stream {
                    let mut responses = stream.into_inner();
                    while let Ok(Some(response)) = responses.message().await {
                        if response.created && next == 0 {
                            // From now on: the revision after creation.
                            let current = response.header.as_ref().map_or(0, |h| h.revision);
                            next = current as u64 + 1;
                        }
                        if response.canceled {
                            let why = format!(
                                "{} (oldest revision served: {})",
                                response.cancel_reason, response.compact_revision
                            );
                            let _ = out.send(Err(Error::InvalidArgument(why))).await;
                            return;
                        }
                        for event in response.events {
                            let kv = event.kv.unwrap_or_default();
                            let revision = kv.mod_revision as u64;
                            let put = event.r#type == EventType::Put as i32;
                            let change = WatchEvent {
                                revision,
                                key: kv.key,
                                value: put.then_some(kv.value),
                            };
                            if out.send(Ok(change)).await.is_err() {
                                return;
                            }
                            next = next.max(revision + 1);
                        }
                    }
                }
                drop(tx);
                if out.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ReceiverStream::new(rx)
    }
}

/// A lease kept alive in the background (see `Client::lease_keep_alive`).
pub struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The end of the range of keys starting with `prefix`, as etcd computes
/// it (`range_end` for a prefix; `"\0"`, every key from the start, when the
/// prefix is all 0xff bytes or empty).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}
