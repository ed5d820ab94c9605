//! etcd's `v3lockpb.Lock` and `v3electionpb.Election` services (what
//! `etcdctl lock`/`elect` and the clients' helpers call), built as etcd
//! builds them, on a lease and revisions: the caller's key is `NAME/LEASE`
//! (hex), created with its lease if it does not exist; the lock is held
//! (the campaign won) once no key under `NAME/` was created before it. A
//! holder that dies loses its lease, its key is deleted, and the next
//! waiter in creation order gets its turn.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use raftkv_client::prefix_end;
use raftkv_kv::etcd::key_value;
use raftkv_kv::KeyRange;
use raftkv_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use raftkv_proto::v3electionpb::election_server::Election;
use raftkv_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use raftkv_proto::v3lockpb::lock_server::Lock;
use raftkv_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{caller_of, check, etcd_denied};
use crate::etcd_kv::{etcd_header, is_forwarded, EtcdKv};
use raftkv_replica::Caller;

pub struct EtcdLock {
    pub kv: Arc<EtcdKv>,
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

fn same_create_revision(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        range_end: Bytes::new(),
    }
}

/// Creates `key` with `lease` and `value` unless it exists (a retried
/// call); the revision that created it.
async fn create_own_key(
    kv: &EtcdKv,
    key: &Bytes,
    lease: i64,
    value: Bytes,
    forwarded: bool,
    caller: &Caller,
) -> Result<u64, Status> {
    let create = TxnRequest {
        compare: vec![same_create_revision(key, 0)],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                lease,
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
    let response = kv.txn_write(create, forwarded, caller).await?;
    if response.succeeded {
        return Ok(response.header.as_ref().map_or(0, |h| h.revision) as u64);
    }
    match response.responses.first().and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) if !r.kvs.is_empty() => {
            Ok(r.kvs[0].create_revision as u64)
        }
        _ => Err(Status::unavailable("etcdserver: the key vanished; retry")),
    }
}

/// Waits until no key under `prefix` was created before `key` (created at
/// `created`); the store revision then.
async fn wait_until_first(
    replica: &raftkv_replica::Replica,
    prefix: &[u8],
    key: &Bytes,
    created: u64,
) -> Result<u64, Status> {
    let range = KeyRange::Between(Bytes::copy_from_slice(prefix), prefix_end(prefix));
    let mut revisions = replica.subscribe_revision();
    loop {
        revisions.borrow_and_update();
        {
            let state = replica.kv();
            if state.revision() >= created {
                let (holders, _) = state
                    .range_at(&range, 0, 0)
                    .map_err(|e| Status::out_of_range(e.to_string()))?;
                if !holders.iter().any(|(k, _)| k == key) {
                    return Err(Status::not_found(
                        "etcdserver: requested lease not found (the key was deleted while \
                         waiting)",
                    ));
                }
                if holders.iter().all(|(_, r)| r.create_revision >= created) {
                    return Ok(state.revision());
                }
            }
        }
        if revisions.changed().await.is_err() {
            return Err(Status::unavailable("etcdserver: server stopped"));
        }
    }
}

/// The first key under `prefix` by creation (the holder, the leader).
fn first_created(
    replica: &raftkv_replica::Replica,
    prefix: &[u8],
) -> Option<(Bytes, raftkv_kv::Record)> {
    let range = KeyRange::Between(Bytes::copy_from_slice(prefix), prefix_end(prefix));
    let state = replica.kv();
    let (keys, _) = state.range_at(&range, 0, 0).ok()?;
    keys.into_iter().min_by_key(|(_, r)| r.create_revision)
}

#[tonic::async_trait]
impl Lock for EtcdLock {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        if request.lease <= 0 {
            return Err(Status::invalid_argument(
                "a lock needs a lease (its holder's session): grant one and pass its id",
            ));
        }
        let prefix = prefix_of(&request.name);
        let key =
            Bytes::from([prefix.clone(), format!("{:x}", request.lease).into_bytes()].concat());
        let created = create_own_key(
            &self.kv,
            &key,
            request.lease,
            Bytes::new(),
            forwarded,
            &caller,
        )
        .await?;
        let revision = wait_until_first(&self.kv.replica, &prefix, &key, created).await?;
        Ok(Response::new(LockResponse {
            header: Some(etcd_header(&self.kv.replica, Some(revision))),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        let delete = raftkv_kv::etcd::single(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: request.key,
                ..Default::default()
            },
        ));
        let response = self.kv.txn_write(delete, forwarded, &caller).await?;
        Ok(Response::new(UnlockResponse {
            header: response.header,
        }))
    }
}

/// etcd's `v3electionpb.Election` service (`etcdctl elect`), on the same
/// mechanism as the lock: campaigning creates `NAME/LEASE` with the
/// candidate's value, and the leader is the first key under `NAME/` by
/// creation.
pub struct EtcdElection {
    pub kv: Arc<EtcdKv>,
}

const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";

fn leader_of(request: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    request.ok_or_else(|| Status::invalid_argument(NOT_LEADER))
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for EtcdElection {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        if request.name.is_empty() || request.lease <= 0 {
            return Err(Status::invalid_argument(
                "a campaign needs a name and a lease (the candidate's session)",
            ));
        }
        let prefix = prefix_of(&request.name);
        let key =
            Bytes::from([prefix.clone(), format!("{:x}", request.lease).into_bytes()].concat());
        let created = create_own_key(
            &self.kv,
            &key,
            request.lease,
            request.value,
            forwarded,
            &caller,
        )
        .await?;
        let revision = wait_until_first(&self.kv.replica, &prefix, &key, created).await?;
        Ok(Response::new(CampaignResponse {
            header: Some(etcd_header(&self.kv.replica, Some(revision))),
            leader: Some(LeaderKey {
                name: request.name,
                key,
                rev: created as i64,
                lease: request.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        let leader = leader_of(request.leader)?;
        let txn = TxnRequest {
            compare: vec![same_create_revision(&leader.key, leader.rev)],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: leader.key.clone(),
                    value: request.value,
                    lease: leader.lease,
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        let response = self.kv.txn_write(txn, forwarded, &caller).await?;
        if !response.succeeded {
            return Err(Status::failed_precondition(NOT_LEADER));
        }
        Ok(Response::new(ProclaimResponse {
            header: response.header,
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let caller = caller_of(&request);
        let request = request.into_inner();
        let replica = &self.kv.replica;
        let prefix = prefix_of(&request.name);
        check_prefix(replica, &caller, &prefix)?;
        let Some((key, record)) = first_created(replica, &prefix) else {
            return Err(Status::not_found(NO_LEADER));
        };
        Ok(Response::new(LeaderResponse {
            header: Some(etcd_header(replica, None)),
            kv: Some(key_value(&key, &record, false)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = caller_of(&request);
        let prefix = prefix_of(&request.into_inner().name);
        let replica = self.kv.replica.clone();
        check_prefix(&replica, &caller, &prefix)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut revisions = replica.subscribe_revision();
            let mut last: Option<(Bytes, u64)> = None;
            loop {
                revisions.borrow_and_update();
                if let Some((key, record)) = first_created(&replica, &prefix) {
                    let now = (key.clone(), record.mod_revision);
                    if last.as_ref() != Some(&now) {
                        last = Some(now);
                        let response = LeaderResponse {
                            header: Some(etcd_header(&replica, None)),
                            kv: Some(key_value(&key, &record, false)),
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                if revisions.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(crate::streams::until_stopped(
            &self.kv.replica,
            ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let leader = leader_of(request.into_inner().leader)?;
        let txn = TxnRequest {
            compare: vec![same_create_revision(&leader.key, leader.rev)],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: leader.key,
                        ..Default::default()
                    },
                )),
            }],
            failure: Vec::new(),
        };
        let response = self.kv.txn_write(txn, forwarded, &caller).await?;
        if !response.succeeded {
            return Err(Status::failed_precondition(NOT_LEADER));
        }
        Ok(Response::new(ResignResponse {
            header: response.header,
        }))
    }
}

/// Whether `caller` may read every key under `prefix` (an election's
/// candidates).
fn check_prefix(
    replica: &raftkv_replica::Replica,
    caller: &Caller,
    prefix: &[u8],
) -> Result<(), Status> {
    let end = prefix_end(prefix);
    check(replica, caller, raftkv_kv::auth::Access::Read, prefix, &end).map_err(etcd_denied)
}
