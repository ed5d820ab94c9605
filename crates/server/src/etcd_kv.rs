//! etcd's v3 `KV` service (`etcdserverpb.KV`) on the node's port, beside
//! `raftkv.v1`, so etcdctl and etcd client libraries work unchanged.
//!
//! etcd clients spread requests over every endpoint and do not follow
//! redirects, so every member takes every request: a member that does not
//! lead forwards writes and linearizable reads to the leader's same service
//! (one hop: a forwarded request that finds no leader is answered as etcd
//! answers a leader change), and serves `serializable` reads from its own
//! state. Writes go into the log as etcd transactions and are applied with
//! etcd's semantics (`raftkv_kv::etcd`); errors carry etcd's codes and
//! texts, which clients match on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

use crate::auth::{caller_of, check, check_txn, etcd_denied, forward_as};
use raftkv_kv::auth::Access;
use raftkv_kv::etcd::{is_read_only, single, KEY_NOT_FOUND, LEASE_NOT_FOUND};
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::kv_server::Kv;
use raftkv_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use raftkv_replica::{Caller, Replica, ReplicaError, Write, WriteSession};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// etcd's `--max-request-bytes` default: a request (and so a value) larger
/// than this is refused; large values belong on `raftkv.v1`.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1536 * 1024;
/// etcd's `--max-txn-ops` default.
pub const MAX_TXN_OPS: usize = 128;
/// How long a write or a read barrier is waited for.
const WAIT: Duration = Duration::from_secs(10);
/// Marks a request one member forwarded to the leader.
const FORWARDED: &str = "raftkv-forwarded";

// etcd's texts (api/v3rpc/rpctypes), which clients match on.
const EMPTY_KEY: &str = "etcdserver: key is not provided";
const TOO_LARGE: &str = "etcdserver: request is too large";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const NO_LEADER: &str = "etcdserver: no leader";
const LEADER_CHANGED: &str = "etcdserver: leader changed";
const TIMED_OUT: &str = "etcdserver: request timed out";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

pub struct EtcdKv {
    pub replica: Replica,
    forward: Forwarder,
    /// `--max-request-bytes`.
    max_request_bytes: usize,
    /// Counts and times the calls of clients (not those forwarded here).
    metrics: Arc<Metrics>,
}

/// Channels to the leader, for what a member that does not lead forwards.
/// Clones share the channels.
#[derive(Clone)]
pub struct Forwarder {
    replica: Replica,
    /// What the node's own connections present and trust.
    tls: crate::OutgoingTls,
    /// By address.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Forwarder {
    pub fn new(replica: Replica, tls: crate::OutgoingTls) -> Forwarder {
        Forwarder {
            replica,
            tls,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A channel to the leader, or why there is none.
    pub fn leader(&self) -> Result<Channel, Status> {
        let status = self.replica.status();
        if status.leader_id == 0 || status.leader_id == status.id {
            return Err(Status::unavailable(NO_LEADER));
        }
        let Some(address) = self
            .replica
            .membership()
            .addresses
            .get(&status.leader_id)
            .cloned()
        else {
            return Err(Status::unavailable(NO_LEADER));
        };
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(channel) = channels.get(&address) {
            return Ok(channel.clone());
        }
        let channel = Channel::from_shared(format!("http://{address}"))
            .map_err(|e| Status::unavailable(format!("etcdserver: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .connect_with_connector_lazy(raftkv_net::connector(self.tls.clone()));
        channels.insert(address, channel.clone());
        Ok(channel)
    }

    /// `request` for the leader, marked as forwarded, with a token for
    /// `caller`.
    pub fn request_as<T>(&self, request: T, caller: &Caller) -> Request<T> {
        let mut request = Forwarder::request(request);
        forward_as(&self.replica, caller, &mut request);
        request
    }

    /// `request` for the leader, marked as forwarded.
    pub fn request<T>(request: T) -> Request<T> {
        let mut request = Request::new(request);
        request.set_timeout(WAIT);
        request
            .metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        request
    }
}

/// etcd's header: cluster id, this member, the store revision (`None`: the
/// current one), the term.
pub fn etcd_header(replica: &Replica, revision: Option<u64>) -> ResponseHeader {
    let status = replica.status();
    ResponseHeader {
        cluster_id: status.cluster_id,
        member_id: status.id,
        revision: revision.unwrap_or_else(|| replica.revision()) as i64,
        raft_term: status.term,
    }
}

/// A reply that carries etcd's response header.
pub trait EtcdReply {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! etcd_reply {
    ($($reply:ty),*) => {
        $(impl EtcdReply for $reply {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        })*
    };
}

etcd_reply!(
    RangeResponse,
    TxnResponse,
    CompactionResponse,
    raftkv_proto::etcdserverpb::LeaseGrantResponse,
    raftkv_proto::etcdserverpb::LeaseRevokeResponse,
    raftkv_proto::etcdserverpb::LeaseTimeToLiveResponse,
    raftkv_proto::etcdserverpb::MemberAddResponse,
    raftkv_proto::etcdserverpb::MemberRemoveResponse,
    raftkv_proto::etcdserverpb::MemberPromoteResponse,
    raftkv_proto::etcdserverpb::AlarmResponse,
    raftkv_proto::etcdserverpb::AuthEnableResponse,
    raftkv_proto::etcdserverpb::AuthDisableResponse,
    raftkv_proto::etcdserverpb::AuthStatusResponse,
    raftkv_proto::etcdserverpb::AuthenticateResponse,
    raftkv_proto::etcdserverpb::AuthUserAddResponse,
    raftkv_proto::etcdserverpb::AuthUserGetResponse,
    raftkv_proto::etcdserverpb::AuthUserListResponse,
    raftkv_proto::etcdserverpb::AuthUserDeleteResponse,
    raftkv_proto::etcdserverpb::AuthUserChangePasswordResponse,
    raftkv_proto::etcdserverpb::AuthUserGrantRoleResponse,
    raftkv_proto::etcdserverpb::AuthUserRevokeRoleResponse,
    raftkv_proto::etcdserverpb::AuthRoleAddResponse,
    raftkv_proto::etcdserverpb::AuthRoleGetResponse,
    raftkv_proto::etcdserverpb::AuthRoleListResponse,
    raftkv_proto::etcdserverpb::AuthRoleDeleteResponse,
    raftkv_proto::etcdserverpb::AuthRoleGrantPermissionResponse,
    raftkv_proto::etcdserverpb::AuthRoleRevokePermissionResponse
);

/// The leader's reply to a request this member forwarded, as this
/// member's own: etcd's header names the member the client asked.
pub fn answered_here<T: EtcdReply>(
    replica: &Replica,
    reply: Result<Response<T>, Status>,
) -> Result<Response<T>, Status> {
    let mut reply = reply?;
    if let Some(header) = reply.get_mut().header_mut() {
        let status = replica.status();
        header.member_id = status.id;
        header.raft_term = status.term;
    }
    Ok(reply)
}

/// etcd's status for a replica error.
pub fn etcd_status(error: ReplicaError) -> Status {
    match error {
        ReplicaError::NotLeader { leader_id: 0, .. } => Status::unavailable(NO_LEADER),
        ReplicaError::NotLeader { .. } => Status::unavailable(LEADER_CHANGED),
        ReplicaError::UnknownOutcome(_) => Status::unavailable(TIMED_OUT),
        ReplicaError::NoSpace(_) => Status::resource_exhausted(NO_SPACE),
        ReplicaError::PermissionDenied(text) if text == crate::auth::USER_EMPTY => {
            Status::invalid_argument(text)
        }
        // Which key, in RaftKV's words, is not etcd's: its clients match
        // on the one text.
        ReplicaError::PermissionDenied(_) => {
            Status::permission_denied(crate::auth::PERMISSION_DENIED)
        }
        ReplicaError::Rejected(text) => {
            let code = if text == KEY_NOT_FOUND {
                Code::InvalidArgument
            } else if text == LEASE_NOT_FOUND {
                Code::NotFound
            } else if text == raftkv_kv::leases::LEASE_EXISTS {
                Code::FailedPrecondition
            } else if text.starts_with("mvcc: ") {
                // etcd's gRPC texts carry the prefix; etcdctl prints the
                // bare error only for texts it knows.
                return Status::out_of_range(format!("etcdserver: {text}"));
            } else {
                Code::FailedPrecondition
            };
            Status::new(code, text)
        }
        other => Status::unavailable(format!("etcdserver: {other}")),
    }
}

fn revision_status(error: raftkv_kv::RevisionError) -> Status {
    Status::out_of_range(format!("etcdserver: {error}"))
}

/// Checks what etcd checks before proposing a transaction: sizes, the
/// number of operations, and that no branch writes a key twice (nested
/// transactions included; the two branches apart).
fn check_txn_shape(txn: &TxnRequest) -> Result<(), Status> {
    for branch in [&txn.success, &txn.failure] {
        if count_ops(branch) > MAX_TXN_OPS || txn.compare.len() > MAX_TXN_OPS {
            return Err(Status::invalid_argument(TOO_MANY_OPS));
        }
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        collect_writes(branch, &mut puts, &mut deletes);
        puts.sort();
        if puts.windows(2).any(|w| w[0] == w[1]) {
            return Err(Status::invalid_argument(DUPLICATE_KEY));
        }
        let overlaps = puts.iter().any(|key| {
            deletes
                .iter()
                .any(|range: &raftkv_kv::KeyRange| range.contains(key))
        });
        if overlaps {
            return Err(Status::invalid_argument(DUPLICATE_KEY));
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                return Err(Status::invalid_argument(EMPTY_KEY))
            }
            Some(request_op::Request::RequestPut(p)) if p.key.is_empty() => {
                return Err(Status::invalid_argument(EMPTY_KEY))
            }
            Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(Status::invalid_argument(EMPTY_KEY))
            }
            Some(request_op::Request::RequestTxn(nested)) => check_txn_shape(nested)?,
            _ => {}
        }
    }
    Ok(())
}

fn count_ops(branch: &[RequestOp]) -> usize {
    branch
        .iter()
        .map(|op| match &op.request {
            Some(request_op::Request::RequestTxn(t)) => {
                1 + count_ops(&t.success).max(count_ops(&t.failure))
            }
            _ => 1,
        })
        .sum()
}

fn collect_writes(
    branch: &[RequestOp],
    puts: &mut Vec<bytes::Bytes>,
    deletes: &mut Vec<raftkv_kv::KeyRange>,
) {
    for op in branch {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => puts.push(p.key.clone()),
            Some(request_op::Request::RequestDeleteRange(d)) => deletes.push(
                raftkv_kv::KeyRange::from_etcd(d.key.clone(), d.range_end.clone()),
            ),
            Some(request_op::Request::RequestTxn(t)) => {
                // Either branch of a nested transaction may run.
                collect_writes(&t.success, puts, deletes);
                collect_writes(&t.failure, puts, deletes);
            }
            _ => {}
        }
    }
}

pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

impl EtcdKv {
    pub fn new(
        replica: Replica,
        max_request_bytes: u64,
        metrics: Arc<Metrics>,
        tls: crate::OutgoingTls,
    ) -> EtcdKv {
        EtcdKv {
            forward: Forwarder::new(replica.clone(), tls),
            replica,
            max_request_bytes: max_request_bytes as usize,
            metrics,
        }
    }

    fn header(&self, revision: Option<u64>) -> ResponseHeader {
        etcd_header(&self.replica, revision)
    }

    /// A client of the leader's etcd KV service, or why there is none.
    fn leader(&self) -> Result<KvClient<Channel>, Status> {
        Ok(KvClient::new(self.forward.leader()?)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    /// `request` for the leader, with a token for `caller`.
    fn forwarded<T>(&self, request: T, caller: &Caller) -> Request<T> {
        self.forward.request_as(request, caller)
    }

    /// Waits until a read of this node's state is linearizable (this node
    /// leads and has confirmed it, by its lease or a ReadIndex round).
    async fn read_barrier(&self) -> Result<(), ReplicaError> {
        self.replica.check_cluster_contact(false)?;
        if self.replica.has_read_lease() {
            return Ok(());
        }
        match tokio::time::timeout(WAIT, self.replica.read_index_timed()).await {
            Ok(result) => result.map(crate::slow::note_stages),
            Err(_) => Err(ReplicaError::UnknownOutcome(
                "read barrier timed out".into(),
            )),
        }
    }

    /// Readies a linearizable read of this member's state (false), or says
    /// it goes to the leader (true).
    async fn read_here_or_forward(&self, forwarded: bool) -> Result<bool, Status> {
        match self.read_barrier().await {
            Ok(()) => Ok(false),
            Err(ReplicaError::NotLeader { leader_id, .. }) if !forwarded && leader_id != 0 => {
                Ok(true)
            }
            Err(e) => Err(etcd_status(e)),
        }
    }

    /// Proposes `txn` if this node leads, or passes it to the leader
    /// through raft if `through_leader`; the response, once applied here.
    async fn propose(
        &self,
        txn: TxnRequest,
        caller: &Caller,
        through_leader: bool,
    ) -> Result<TxnResponse, ReplicaError> {
        self.replica.check_cluster_contact(false)?;
        let (write, session, caller) =
            (Write::EtcdTxn(txn), WriteSession::default(), caller.clone());
        let write = if through_leader {
            futures::future::Either::Left(self.replica.write_through_leader(write, session, caller))
        } else {
            futures::future::Either::Right(self.replica.write_as(write, session, caller))
        };
        let written = match tokio::time::timeout(WAIT, write).await {
            Ok(result) => result?,
            Err(_) => return Err(ReplicaError::UnknownOutcome("not applied in time".into())),
        };
        crate::slow::note_stages(written.stages);
        let mut response = *written.txn.expect("an etcd transaction has a response");
        response.header = Some(self.header(Some(written.revision)));
        Ok(response)
    }

    /// A write: proposed here, or forwarded once to the leader.
    /// `caller`'s permissions are checked here, and again when applied.
    pub async fn txn_write(
        &self,
        txn: TxnRequest,
        forwarded: bool,
        caller: &Caller,
    ) -> Result<TxnResponse, Status> {
        check_txn(&self.replica, caller, &txn).map_err(etcd_denied)?;
        // A client's write at a follower goes to the leader through raft's
        // message stream (`Replica::write_through_leader`); if the leader's
        // build does not take writes passed on that way, or it just lost the
        // lead and refused it, the leader this node knows then takes it
        // over a call of the etcd API, once.
        match self.propose(txn.clone(), caller, !forwarded).await {
            Ok(response) => return Ok(response),
            Err(ReplicaError::NotLeader { leader_id, .. }) if !forwarded && leader_id != 0 => {}
            Err(e) => return Err(etcd_status(e)),
        }
        let mut leader = self.leader()?;
        let sent = Instant::now();
        let reply = leader.txn(self.forwarded(txn, caller)).await;
        crate::slow::note_forward(sent.elapsed());
        Ok(answered_here(&self.replica, reply)?.into_inner())
    }

    fn only_response(response: TxnResponse) -> Result<response_op::Response, Status> {
        response
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response)
            .ok_or_else(|| Status::internal("etcdserver: empty transaction response"))
    }
}

/// The etcd KV calls themselves; `impl Kv` times and counts them.
impl EtcdKv {
    /// Runs one call, counted and timed as `op` unless another member
    /// forwarded it (its client was counted there).
    async fn counted<T>(
        &self,
        op: &str,
        forwarded: bool,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let (result, trace) = crate::slow::traced(call).await;
        if forwarded {
            // Its client was counted at the member that forwarded it; what
            // it took here is still logged if slow (not counted again).
            self.metrics.log_if_slow(op, started.elapsed(), &trace);
        } else {
            self.metrics.observe(op, &result, started, &trace);
        }
        result
    }

    async fn serve_range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        if request.key.is_empty() {
            return Err(Status::invalid_argument(EMPTY_KEY));
        }
        crate::slow::note_sizes(request.key.len(), 0);
        check(
            &self.replica,
            &caller,
            Access::Read,
            &request.key,
            &request.range_end,
        )
        .map_err(etcd_denied)?;
        if !request.serializable {
            if self.read_here_or_forward(forwarded).await? {
                let mut leader = self.leader()?;
                let sent = Instant::now();
                let reply = leader.range(self.forwarded(request, &caller)).await;
                crate::slow::note_forward(sent.elapsed());
                return answered_here(&self.replica, reply);
            }
        } else {
            self.replica
                .check_cluster_contact(true)
                .map_err(etcd_status)?;
        }
        let mut response = self
            .replica
            .kv()
            .etcd_range(&request)
            .map_err(revision_status)?;
        let revision = response.header.as_ref().map(|h| h.revision as u64);
        response.header = Some(self.header(revision));
        Ok(Response::new(response))
    }

    async fn serve_put(
        &self,
        request: Request<PutRequest>,
    ) -> Result<Response<PutResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        if request.key.is_empty() {
            return Err(Status::invalid_argument(EMPTY_KEY));
        }
        if request.key.len() + request.value.len() > self.max_request_bytes {
            return Err(Status::invalid_argument(TOO_LARGE));
        }
        crate::slow::note_sizes(request.key.len(), request.value.len());
        let txn = single(request_op::Request::RequestPut(request));
        let response = self.txn_write(txn, forwarded, &caller).await?;
        let header = response.header;
        match Self::only_response(response)? {
            response_op::Response::ResponsePut(put) => {
                Ok(Response::new(PutResponse { header, ..put }))
            }
            _ => Err(Status::internal("etcdserver: unexpected response")),
        }
    }

    async fn serve_delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        if request.key.is_empty() {
            return Err(Status::invalid_argument(EMPTY_KEY));
        }
        crate::slow::note_sizes(request.key.len(), 0);
        let txn = single(request_op::Request::RequestDeleteRange(request));
        let response = self.txn_write(txn, forwarded, &caller).await?;
        let header = response.header;
        match Self::only_response(response)? {
            response_op::Response::ResponseDeleteRange(delete) => {
                Ok(Response::new(DeleteRangeResponse { header, ..delete }))
            }
            _ => Err(Status::internal("etcdserver: unexpected response")),
        }
    }

    async fn serve_txn(
        &self,
        request: Request<TxnRequest>,
    ) -> Result<Response<TxnResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let txn = request.into_inner();
        if prost::Message::encoded_len(&txn) > self.max_request_bytes {
            return Err(Status::invalid_argument(TOO_LARGE));
        }
        // A transaction's size, all of it counted as value.
        crate::slow::note_sizes(0, prost::Message::encoded_len(&txn));
        check_txn_shape(&txn)?;
        if !is_read_only(&txn) {
            return Ok(Response::new(
                self.txn_write(txn, forwarded, &caller).await?,
            ));
        }
        check_txn(&self.replica, &caller, &txn).map_err(etcd_denied)?;
        // Only reads: served like a linearizable range, not through the log.
        if self.read_here_or_forward(forwarded).await? {
            let mut leader = self.leader()?;
            let reply = leader.txn(self.forwarded(txn, &caller)).await;
            return answered_here(&self.replica, reply);
        }
        let state = self.replica.kv().clone();
        let mut response = state
            .read_only_txn(&txn)
            .map_err(|text| etcd_status(ReplicaError::Rejected(text)))?;
        response.header = Some(self.header(Some(state.revision())));
        Ok(Response::new(response))
    }

    async fn serve_compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        let revision = request.revision.max(0) as u64;
        self.replica
            .check_cluster_contact(false)
            .map_err(etcd_status)?;
        let write = self.replica.write_as(
            Write::Compact(revision),
            WriteSession::default(),
            caller.clone(),
        );
        let result = match tokio::time::timeout(WAIT, write).await {
            Ok(result) => result,
            Err(_) => Err(ReplicaError::UnknownOutcome("not applied in time".into())),
        };
        match result {
            Ok(written) => Ok(Response::new(CompactionResponse {
                header: Some(self.header(Some(written.revision))),
            })),
            Err(ReplicaError::NotLeader { leader_id, .. }) if !forwarded && leader_id != 0 => {
                let mut leader = self.leader()?;
                let reply = leader.compact(self.forwarded(request, &caller)).await;
                answered_here(&self.replica, reply)
            }
            Err(e) => Err(etcd_status(e)),
        }
    }
}

#[tonic::async_trait]
impl Kv for EtcdKv {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        self.counted("etcd_range", forwarded, self.serve_range(request))
            .await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let forwarded = is_forwarded(&request);
        self.counted("etcd_put", forwarded, self.serve_put(request))
            .await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        self.counted(
            "etcd_delete_range",
            forwarded,
            self.serve_delete_range(request),
        )
        .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let forwarded = is_forwarded(&request);
        self.counted("etcd_txn", forwarded, self.serve_txn(request))
            .await
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let forwarded = is_forwarded(&request);
        self.counted("etcd_compact", forwarded, self.serve_compact(request))
            .await
    }
}
