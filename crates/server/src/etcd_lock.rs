//! etcd's `v3lockpb.Lock` service (what `etcdctl lock` and the clients'
//! lock helpers call), built as etcd builds it, on a lease and revisions:
//! the caller's key is `NAME/LEASE` (hex), created with its lease if it
//! does not exist; the lock is held once no key under `NAME/` was created
//! before it. A holder that dies loses its lease, its key is deleted, and
//! the next waiter in creation order gets the lock.

use std::sync::Arc;

use bytes::Bytes;
use raftkv_kv::KeyRange;
use raftkv_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use raftkv_proto::v3lockpb::lock_server::Lock;
use raftkv_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use crate::etcd_kv::{etcd_header, is_forwarded, EtcdKv};

pub struct EtcdLock {
    pub kv: Arc<EtcdKv>,
}

/// The end of the range of keys starting with `prefix` (etcd's prefix end).
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

#[tonic::async_trait]
impl Lock for EtcdLock {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        if request.lease <= 0 {
            return Err(Status::invalid_argument(
                "a lock needs a lease (its holder's session): grant one and pass its id",
            ));
        }
        let mut prefix = request.name.to_vec();
        prefix.push(b'/');
        let key =
            Bytes::from([prefix.clone(), format!("{:x}", request.lease).into_bytes()].concat());
        // Create the key with the lease unless it exists (a retried lock).
        let create = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                range_end: Bytes::new(),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    lease: request.lease,
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
            }],
        };
        let response = self.kv.txn_write(create, forwarded).await?;
        let created = if response.succeeded {
            response.header.as_ref().map_or(0, |h| h.revision) as u64
        } else {
            match response.responses.first().and_then(|r| r.response.as_ref()) {
                Some(response_op::Response::ResponseRange(r)) if !r.kvs.is_empty() => {
                    r.kvs[0].create_revision as u64
                }
                _ => return Err(Status::unavailable("etcdserver: lock key vanished; retry")),
            }
        };
        // Wait until no key under the prefix was created before ours.
        let replica = &self.kv.replica;
        let range = KeyRange::Between(Bytes::from(prefix.clone()), prefix_end(&prefix));
        let mut revisions = replica.subscribe_revision();
        loop {
            revisions.borrow_and_update();
            {
                let state = replica.kv();
                if state.revision() >= created {
                    let (holders, _) = state
                        .range_at(&range, 0, 0)
                        .map_err(|e| Status::out_of_range(e.to_string()))?;
                    if !holders.iter().any(|(k, _)| *k == key) {
                        return Err(Status::not_found(
                            "etcdserver: requested lease not found (the lock's key was \
                             deleted while waiting)",
                        ));
                    }
                    if holders.iter().all(|(_, r)| r.create_revision >= created) {
                        let revision = state.revision();
                        drop(state);
                        return Ok(Response::new(LockResponse {
                            header: Some(etcd_header(replica, Some(revision))),
                            key,
                        }));
                    }
                }
            }
            if revisions.changed().await.is_err() {
                return Err(Status::unavailable("etcdserver: server stopped"));
            }
        }
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let request = request.into_inner();
        let delete = raftkv_kv::etcd::single(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: request.key,
                ..Default::default()
            },
        ));
        let response = self.kv.txn_write(delete, forwarded).await?;
        Ok(Response::new(UnlockResponse {
            header: response.header,
        }))
    }
}
