//! The `KV` gRPC service: validates requests against the limits of
//! docs/REFERENCE.md §2, proposes writes through the replica, and serves reads at the
//! requested consistency.

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use raftkv_kv::auth::Access;
use raftkv_proto::v1::kv_server::Kv;
use raftkv_proto::v1::{
    batch_op, BatchGetRequest, BatchGetResponse, BatchGetResult, BatchRequest, BatchResponse,
    Consistency, DeleteRequest, DeleteResponse, GetChunk, GetRequest, GetResponse, KeyValue,
    PutChunk, PutRequest, PutResponse, ResponseHeader, Revisions, ScanRequest, ScanResponse,
};
use raftkv_replica::{Caller, Op, Replica, ReplicaError, ScanQuery, Write, WriteSession};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{caller_of, check, denied_status};
use crate::deadline::deadline_of;
use crate::errors::{invalid_argument, key_not_found, replica_status, timed_out};
use crate::units::format_size;

/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 4096;
/// Values larger than this are not returned inline by `Get`: the reply says
/// `use_stream` and the client fetches the value with `GetStream`.
pub const INLINE_VALUE_BYTES: usize = 1024 * 1024;
/// Piece size of streamed values.
pub const VALUE_CHUNK_BYTES: usize = 1024 * 1024;
pub const DEFAULT_SCAN_LIMIT: u32 = 1000;
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Matches a scan may skip (`offset`): skipping walks the map, so it is
/// bounded like every other piece of work a request can ask for. Deeper pages
/// are reached with the `after` cursor, which costs nothing to skip.
pub const MAX_SCAN_OFFSET: u64 = 100_000;
/// Scans that may walk more than this many keys run on a blocking thread, not
/// on an async worker.
const INLINE_SCAN_KEYS: u64 = 2_000;
/// A scan page stops early (with `more`) past this many bytes.
pub const MAX_SCAN_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Operations in one batch.
pub const MAX_BATCH_OPS: usize = 10_000;
/// How long the server waits for a write to commit or a read barrier,
/// whatever the client's own deadline (which usually ends it sooner).
const SERVER_WAIT: Duration = Duration::from_secs(30);

pub struct KvService {
    pub replica: Replica,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub max_value_bytes: u64,
    /// The test hook `RAFTKV_TEST_NEXT_LOG_VERSION` is on: puts of keys
    /// under `test-next-kind/` are proposed as the test-only entry kind.
    pub test_next_kind: bool,
}

/// Runs `work` on an O(1) copy of the state machine, on a blocking thread
/// and without holding the state's lock (which applying entries waits
/// for): what hashes or walks the whole state.
pub(crate) async fn on_state_copy<T: Send + 'static>(
    replica: &Replica,
    work: impl FnOnce(raftkv_replica::KvState) -> T + Send + 'static,
) -> Result<T, Status> {
    let state = replica.kv().clone();
    tokio::task::spawn_blocking(move || work(state))
        .await
        .map_err(|e| Status::internal(format!("reading the state failed: {e}")))
}

pub(crate) fn header_of(replica: &Replica) -> ResponseHeader {
    let status = replica.status();
    ResponseHeader {
        node_id: status.id,
        term: status.term,
        applied_index: status.applied_index,
        cluster_id: status.cluster_id,
        leader_id: status.leader_id,
        revision: replica.revision(),
    }
}

/// A key's revisions as the API carries them.
fn revisions_of(record: &raftkv_replica::Record) -> Revisions {
    Revisions {
        create_revision: record.create_revision,
        mod_revision: record.mod_revision,
        version: record.version,
        lease: record.lease,
    }
}

fn session_of(session: Option<raftkv_proto::v1::WriteSession>) -> WriteSession {
    session.map_or_else(WriteSession::default, |s| WriteSession {
        client_id: s.client_id,
        seq: s.seq,
        first_incomplete_seq: s.first_incomplete_seq,
    })
}

/// Waits until this node (as leader) may serve a linearizable read.
pub(crate) async fn read_barrier(replica: &Replica, consistency: i32) -> Result<(), Status> {
    let consistency = Consistency::try_from(consistency).unwrap_or(Consistency::Linearizable);
    let status = replica.status();
    if status.role == raftkv_replica::Role::Removed {
        // Its state stopped following the cluster's when it was removed; said
        // first, since a removed node that restarted hears no member either.
        return Err(replica_status(
            ReplicaError::Removed(format!(
                "node {} has been removed from the cluster; send requests to a member",
                status.id
            )),
            header_of(replica),
        ));
    }
    // Stale reads included: a node only another cluster reaches serves nothing.
    replica
        .check_cluster_contact(consistency == Consistency::Stale)
        .map_err(|e| replica_status(e, header_of(replica)))?;
    if consistency == Consistency::Stale {
        return Ok(());
    }
    // A lease read needs no quorum round while this node holds the lease;
    // otherwise (not leader, lease expired or being renewed, a transfer in
    // progress, `--lease-read false`) it falls back to ReadIndex.
    if consistency == Consistency::Lease && replica.has_read_lease() {
        return Ok(());
    }
    match tokio::time::timeout(SERVER_WAIT, replica.read_index_timed()).await {
        Ok(Ok(stages)) => {
            crate::slow::note_stages(stages);
            Ok(())
        }
        Ok(Err(e)) => Err(replica_status(e, header_of(replica))),
        Err(_) => Err(timed_out("read", header_of(replica))),
    }
}

impl KvService {
    fn header(&self) -> ResponseHeader {
        header_of(&self.replica)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(invalid_argument("key must not be empty", self.header()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid_argument(
                format!(
                    "key is {} bytes; the limit is {MAX_KEY_BYTES} bytes (4KiB)",
                    key.len()
                ),
                self.header(),
            ));
        }
        Ok(())
    }

    fn check_value_size(&self, size: u64) -> Result<(), Status> {
        if size > self.max_value_bytes {
            return Err(invalid_argument(
                format!(
                    "value is {size} bytes; the limit (--max-value-size) is {}",
                    format_size(self.max_value_bytes)
                ),
                self.header(),
            ));
        }
        Ok(())
    }

    /// Proposes `ops` and waits until they are applied, or until `deadline`
    /// (the caller's, see `deadline_of`): then the write is answered as of
    /// unknown outcome, since an entry in the log may still commit later.
    async fn write(
        &self,
        ops: Vec<Op>,
        session: WriteSession,
        deadline: tokio::time::Instant,
        caller: &Caller,
    ) -> Result<ResponseHeader, Status> {
        for op in &ops {
            self.check_access(caller, Access::Write, &op.key, &[])?;
            crate::slow::note_sizes(op.key.len(), op.value.len());
        }
        self.replica
            .check_cluster_contact(false)
            .map_err(|e| replica_status(e, self.header()))?;
        let deadline = deadline.min(tokio::time::Instant::now() + SERVER_WAIT);
        let next_kind = self.test_next_kind
            && ops
                .iter()
                .all(|op| !op.delete && op.key.starts_with(b"test-next-kind/"));
        let write = if next_kind {
            Write::TestNextKind(ops)
        } else {
            Write::Ops(ops)
        };
        let write = self.replica.write_as(write, session, caller.clone());
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(written)) => {
                crate::slow::note_stages(written.stages);
                Ok(ResponseHeader {
                    // The write's own revision, not whatever came after it.
                    revision: written.revision,
                    ..self.header()
                })
            }
            Ok(Err(e)) => Err(replica_status(e, self.header())),
            Err(_) => Err(replica_status(
                ReplicaError::UnknownOutcome(
                    "the write was not committed before the deadline; it may still be applied \
                     (retrying with the same session is safe)"
                        .into(),
                ),
                self.header(),
            )),
        }
    }

    /// Whether `caller` may `access` these keys (checked again when a write
    /// is applied).
    fn check_access(
        &self,
        caller: &Caller,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Status> {
        check(&self.replica, caller, access, key, range_end)
            .map_err(|denied| denied_status(denied, self.header()))
    }

    fn put_op(key: Bytes, value: Bytes) -> Op {
        Op {
            key,
            value,
            delete: false,
        }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<GetChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let started = std::time::Instant::now();
        let (result, trace): (Result<Response<PutResponse>, Status>, _) =
            crate::slow::traced(async move {
                let deadline = deadline_of(&request);
                let caller = caller_of(&request);
                let request = request.into_inner();
                self.check_key(&request.key)?;
                self.check_value_size(request.value.len() as u64)?;
                let header = self
                    .write(
                        vec![Self::put_op(request.key, request.value)],
                        session_of(request.session),
                        deadline,
                        &caller,
                    )
                    .await?;
                Ok(Response::new(PutResponse {
                    header: Some(header),
                }))
            })
            .await;
        self.metrics.observe("put", &result, started, &trace);
        result
    }

    async fn put_stream(
        &self,
        request: Request<Streaming<PutChunk>>,
    ) -> Result<Response<PutResponse>, Status> {
        let started = std::time::Instant::now();
        let (result, trace): (Result<Response<PutResponse>, Status>, _) =
            crate::slow::traced(async move {
                let caller = caller_of(&request);
                let mut stream = request.into_inner();
                let Some(first) = stream.message().await? else {
                    return Err(invalid_argument("empty put stream", self.header()));
                };
                self.check_key(&first.key)?;
                // Refused before the value is taken in.
                self.check_access(&caller, Access::Write, &first.key, &[])?;
                self.check_value_size(first.value_size)?;
                let expected = first.value_size as usize;
                let mut value = BytesMut::with_capacity(expected);
                value.extend_from_slice(&first.data);
                while let Some(chunk) = stream.message().await? {
                    if value.len() + chunk.data.len() > expected {
                        return Err(invalid_argument(
                            format!("put stream sent more than the announced {expected} bytes"),
                            self.header(),
                        ));
                    }
                    value.extend_from_slice(&chunk.data);
                }
                if value.len() != expected {
                    return Err(invalid_argument(
                        format!(
                            "put stream ended after {} of the announced {expected} bytes",
                            value.len()
                        ),
                        self.header(),
                    ));
                }
                // The value may have taken long to arrive: the wait for the
                // commit starts now.
                let header = self
                    .write(
                        vec![Self::put_op(first.key, value.freeze())],
                        session_of(first.session),
                        tokio::time::Instant::now() + SERVER_WAIT,
                        &caller,
                    )
                    .await?;
                Ok(Response::new(PutResponse {
                    header: Some(header),
                }))
            })
            .await;
        self.metrics.observe("put_stream", &result, started, &trace);
        result
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let started = std::time::Instant::now();
        let (result, trace): (Result<Response<GetResponse>, Status>, _) =
            crate::slow::traced(async move {
                let caller = caller_of(&request);
                let request = request.into_inner();
                self.check_key(&request.key)?;
                crate::slow::note_sizes(request.key.len(), 0);
                self.check_access(&caller, Access::Read, &request.key, &[])?;
                read_barrier(&self.replica, request.consistency).await?;
                let record = self.replica.kv().get_record(&request.key).cloned();
                let header = self.header();
                match record {
                    None => Err(key_not_found(header)),
                    Some(record) if record.value.len() > INLINE_VALUE_BYTES => {
                        Ok(Response::new(GetResponse {
                            header: Some(header),
                            value: Bytes::new(),
                            use_stream: true,
                            value_size: record.value.len() as u64,
                            revisions: Some(revisions_of(&record)),
                        }))
                    }
                    Some(record) => Ok(Response::new(GetResponse {
                        header: Some(header),
                        value_size: record.value.len() as u64,
                        revisions: Some(revisions_of(&record)),
                        value: record.value,
                        use_stream: false,
                    })),
                }
            })
            .await;
        self.metrics.observe("get", &result, started, &trace);
        result
    }

    type GetStreamStream = ChunkStream;

    async fn get_stream(
        &self,
        request: Request<GetRequest>,
    ) -> Result<Response<Self::GetStreamStream>, Status> {
        let started = std::time::Instant::now();
        let (result, trace): (Result<Response<Self::GetStreamStream>, Status>, _) =
            crate::slow::traced(async move {
                let caller = caller_of(&request);
                let request = request.into_inner();
                self.check_key(&request.key)?;
                self.check_access(&caller, Access::Read, &request.key, &[])?;
                read_barrier(&self.replica, request.consistency).await?;
                let record = self.replica.kv().get_record(&request.key).cloned();
                let header = self.header();
                let Some(record) = record else {
                    return Err(key_not_found(header));
                };
                let revisions = revisions_of(&record);
                let value = record.value;
                let size = value.len();
                let mut chunks = Vec::with_capacity(size / VALUE_CHUNK_BYTES + 1);
                let mut offset = 0;
                loop {
                    let end = (offset + VALUE_CHUNK_BYTES).min(size);
                    chunks.push(Ok(GetChunk {
                        header: (offset == 0).then_some(header),
                        value_size: size as u64,
                        data: value.slice(offset..end),
                        revisions: (offset == 0).then_some(revisions),
                    }));
                    if end == size {
                        break;
                    }
                    offset = end;
                }
                let stream: Self::GetStreamStream = Box::pin(tokio_stream::iter(chunks));
                Ok(Response::new(stream))
            })
            .await;
        self.metrics.observe("get_stream", &result, started, &trace);
        result
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let started = std::time::Instant::now();
        let (result, trace): (Result<Response<DeleteResponse>, Status>, _) =
            crate::slow::traced(async move {
                let deadline = deadline_of(&request);
                let caller = caller_of(&request);
                let request = request.into_inner();
                self.check_key(&request.key)?;
                let op = Op {
                    key: request.key,
                    value: Bytes::new(),
                    delete: true,
                };
                let header = self
                    .write(vec![op], session_of(request.session), deadline, &caller)
                    .await?;
                Ok(Response::new(DeleteResponse {
                    header: Some(header),
                }))
            })
            .await;
        self.metrics.observe("delete", &result, started, &trace);
        result
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let started = std::time::Instant::now();
        let (result, trace): (Result<Response<ScanResponse>, Status>, _) =
            crate::slow::traced(async move {
                let caller = caller_of(&request);
                let request = request.into_inner();
                crate::slow::note_sizes(request.prefix.len(), 0);
                if request.prefix.is_empty() {
                    self.check_access(&caller, Access::Read, b"\0", b"\0")?;
                } else {
                    let end = raftkv_client::prefix_end(&request.prefix);
                    self.check_access(&caller, Access::Read, &request.prefix, &end)?;
                }
                let limit = match request.limit {
                    0 => DEFAULT_SCAN_LIMIT,
                    n if n > MAX_SCAN_LIMIT => {
                        return Err(invalid_argument(
                            format!("scan limit {n} is over the maximum of {MAX_SCAN_LIMIT}"),
                            self.header(),
                        ))
                    }
                    n => n,
                };
                if request.offset > MAX_SCAN_OFFSET {
                    return Err(invalid_argument(
                        format!(
                        "scan offset {} is over the maximum of {MAX_SCAN_OFFSET}; page through \
                         the keys with `after` (the previous page's last key, --after on the \
                         command line) instead",
                        request.offset
                    ),
                        self.header(),
                    ));
                }
                read_barrier(&self.replica, request.consistency).await?;
                // A point-in-time copy (O(1): a persistent map): the walk below
                // never holds the lock the node thread needs to apply entries.
                let state = self.replica.kv().clone();
                let scan = move || {
                    state.scan(&ScanQuery {
                        prefix: &request.prefix,
                        after: (!request.after.is_empty()).then_some(&request.after[..]),
                        offset: request.offset,
                        limit: limit as usize,
                        keys_only: request.keys_only,
                    })
                };
                let page = if request.offset + u64::from(limit) > INLINE_SCAN_KEYS {
                    tokio::task::spawn_blocking(scan)
                        .await
                        .map_err(|e| Status::internal(format!("scan failed: {e}")))?
                } else {
                    scan()
                };
                let mut pairs = Vec::with_capacity(page.pairs.len());
                let mut reply_bytes = 0;
                let mut more = page.more;
                for (key, record) in page.pairs {
                    let size = key.len() + record.value.len();
                    if !pairs.is_empty() && reply_bytes + size > MAX_SCAN_REPLY_BYTES {
                        more = true;
                        break;
                    }
                    reply_bytes += size;
                    pairs.push(KeyValue {
                        key,
                        revisions: Some(revisions_of(&record)),
                        value: record.value,
                    });
                }
                let next_after = pairs.last().map(|kv| kv.key.clone()).unwrap_or_default();
                Ok(Response::new(ScanResponse {
                    header: Some(self.header()),
                    pairs,
                    more,
                    next_after,
                }))
            })
            .await;
        self.metrics.observe("scan", &result, started, &trace);
        result
    }

    async fn batch(
        &self,
        request: Request<BatchRequest>,
    ) -> Result<Response<BatchResponse>, Status> {
        let started = std::time::Instant::now();
        let (result, trace): (Result<Response<BatchResponse>, Status>, _) =
            crate::slow::traced(async move {
                let deadline = deadline_of(&request);
                let caller = caller_of(&request);
                let request = request.into_inner();
                if request.ops.len() > MAX_BATCH_OPS {
                    return Err(invalid_argument(
                        format!(
                            "batch of {} operations is over the maximum of {MAX_BATCH_OPS}",
                            request.ops.len()
                        ),
                        self.header(),
                    ));
                }
                let mut ops = Vec::with_capacity(request.ops.len());
                let mut total_bytes = 0u64;
                for op in request.ops {
                    match op.op {
                        Some(batch_op::Op::Put(put)) => {
                            self.check_key(&put.key)?;
                            total_bytes += put.value.len() as u64;
                            ops.push(Self::put_op(put.key, put.value));
                        }
                        Some(batch_op::Op::Delete(delete)) => {
                            self.check_key(&delete.key)?;
                            ops.push(Op {
                                key: delete.key,
                                value: Bytes::new(),
                                delete: true,
                            });
                        }
                        None => {
                            return Err(invalid_argument(
                                "batch operation without a kind",
                                self.header(),
                            ))
                        }
                    }
                }
                self.check_value_size(total_bytes)?;
                let header = self
                    .write(ops, session_of(request.session), deadline, &caller)
                    .await?;
                Ok(Response::new(BatchResponse {
                    header: Some(header),
                }))
            })
            .await;
        self.metrics.observe("batch", &result, started, &trace);
        result
    }

    async fn batch_get(
        &self,
        request: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        let started = std::time::Instant::now();
        let (result, trace): (Result<Response<BatchGetResponse>, Status>, _) =
            crate::slow::traced(async move {
                let caller = caller_of(&request);
                let request = request.into_inner();
                if request.keys.len() > MAX_BATCH_OPS {
                    return Err(invalid_argument(
                        format!(
                            "batch of {} keys is over the maximum of {MAX_BATCH_OPS}",
                            request.keys.len()
                        ),
                        self.header(),
                    ));
                }
                for key in &request.keys {
                    self.check_key(key)?;
                    crate::slow::note_sizes(key.len(), 0);
                    self.check_access(&caller, Access::Read, key, &[])?;
                }
                read_barrier(&self.replica, request.consistency).await?;
                // A point-in-time copy (O(1)), so the lookups never hold the lock.
                let kv = self.replica.kv().clone();
                let results = request
                    .keys
                    .into_iter()
                    .map(|key| {
                        let value = kv.get(&key);
                        BatchGetResult {
                            found: value.is_some(),
                            value: value.unwrap_or_default(),
                            key,
                        }
                    })
                    .collect();
                drop(kv);
                Ok(Response::new(BatchGetResponse {
                    header: Some(self.header()),
                    results,
                }))
            })
            .await;
        self.metrics.observe("batch_get", &result, started, &trace);
        result
    }
}
