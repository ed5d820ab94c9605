//! etcd's v3 `Cluster` and `Maintenance` services, as far as RaftKV maps
//! them: the member list; `MemberAdd` of a learner, `MemberPromote` and
//! `MemberRemove` through the change job (as `raftkv cluster` does;
//! forwarded to the leader by a member that does not lead); a member's
//! status, and the alarm list (NOSPACE while this node is short of disk
//! space). A voter is added only as a learner first (RaftKV does not grow
//! the quorum with a member that has not caught up), and the maintenance
//! calls RaftKV has no counterpart of yet answer `Unimplemented` saying
//! what to use.

use std::pin::Pin;

use futures::Stream;
use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;
use raftkv_proto::etcdserverpb::cluster_server::Cluster;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::maintenance_server::Maintenance;
use raftkv_proto::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use raftkv_replica::{member_ids, ChangePlan, Replica, ReplicaError, Role};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::etcd_kv::{answered_here, etcd_header, etcd_status, is_forwarded, Forwarder};
use crate::membership::Membership;
use raftkv_proto::etcdserverpb::ResponseHeader;

/// How long a membership change through etcd's API may take.
const CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";

/// The etcd API version this server speaks (clients gate features on it).
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct EtcdCluster {
    replica: Replica,
    /// The corruption check's findings (this node's, while it leads).
    corruption: std::sync::Arc<crate::corruption::CorruptionAlarm>,
    membership: Membership,
    forward: Forwarder,
    /// `https` where client (and peer) traffic is TLS, in member URLs.
    client_scheme: &'static str,
    peer_scheme: &'static str,
}

fn not_here(what: &str, instead: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not served by RaftKV's etcd API; use {instead}"
    ))
}

impl EtcdCluster {
    pub fn new(
        replica: Replica,
        corruption: std::sync::Arc<crate::corruption::CorruptionAlarm>,
        tls: crate::OutgoingTls,
        files: &raftkv_net::tls::ServerTlsFiles,
    ) -> EtcdCluster {
        let scheme = |on: bool| if on { "https" } else { "http" };
        EtcdCluster {
            corruption,
            membership: Membership::new(replica.clone()),
            forward: Forwarder::new(replica.clone(), tls),
            replica,
            client_scheme: scheme(files.client_tls()),
            peer_scheme: scheme(files.peer_tls()),
        }
    }

    /// etcd's Cluster service leaves the revision out of its header.
    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: 0,
            ..etcd_header(&self.replica, None)
        })
    }

    /// Carries out `plan` here if this node leads; `Ok(false)`: it does not
    /// and the request should go to the leader (unless it came from a member).
    async fn change(&self, plan: ChangePlan, forwarded: bool) -> Result<bool, Status> {
        let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
        match self.membership.change(plan, deadline).await {
            Ok(()) => Ok(true),
            Err(ReplicaError::NotLeader { leader_id, .. }) if !forwarded && leader_id != 0 => {
                Ok(false)
            }
            Err(e) => Err(etcd_status(e)),
        }
    }

    fn leader(&self) -> Result<ClusterClient<Channel>, Status> {
        Ok(ClusterClient::new(self.forward.leader()?))
    }

    fn members(&self) -> Vec<Member> {
        let membership = self.replica.membership();
        let conf = &membership.conf_state;
        member_ids(conf)
            .into_iter()
            .map(|id| {
                let url = |scheme: &str, address: Option<&String>| {
                    address.map(|a| format!("{scheme}://{a}"))
                };
                Member {
                    id,
                    name: format!("node-{id}"),
                    peer_ur_ls: url(self.peer_scheme, membership.peer_address(id))
                        .into_iter()
                        .collect(),
                    client_ur_ls: url(self.client_scheme, membership.addresses.get(&id))
                        .into_iter()
                        .collect(),
                    is_learner: conf.learners.contains(&id) || conf.learners_next.contains(&id),
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for EtcdCluster {
    /// A learner at the first peer URL, under the next free id; start it
    /// with `raftkv server --id ID --listen ADDRESS --join MEMBER`, then
    /// promote it (`MemberPromote`) once it has caught up.
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = crate::auth::caller_of(&request);
        let add = request.into_inner();
        if !add.is_learner {
            return Err(Status::failed_precondition(
                "RaftKV adds a voter only once it has caught up: add it as a learner \
                 (etcdctl member add --learner), start it, then promote it \
                 (etcdctl member promote); or start it with `raftkv server --join`",
            ));
        }
        let Some(url) = add.peer_ur_ls.first() else {
            return Err(Status::invalid_argument("etcdserver: no peer URL given"));
        };
        let address = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .unwrap_or(url);
        let address = crate::config::check_address(address, "peer URL")
            .map_err(|e| Status::invalid_argument(format!("etcdserver: {e} (got {url})")))?;
        let members = member_ids(&self.replica.membership().conf_state);
        let id = members.iter().max().map_or(1, |max| max + 1);
        let plan = ChangePlan {
            learners: [(id, address.clone())].into(),
            ..Default::default()
        };
        if !self.change(plan, forwarded).await? {
            let reply = self
                .leader()?
                .member_add(self.forward.request_as(add, &caller))
                .await;
            return answered_here(&self.replica, reply);
        }
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: vec![format!("{}://{address}", self.peer_scheme)],
                client_ur_ls: Vec::new(),
                is_learner: true,
            }),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = crate::auth::caller_of(&request);
        let remove = request.into_inner();
        if !member_ids(&self.replica.membership().conf_state).contains(&remove.id) {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        }
        let plan = ChangePlan {
            remove: vec![remove.id],
            ..Default::default()
        };
        if !self.change(plan, forwarded).await? {
            let reply = self
                .leader()?
                .member_remove(self.forward.request_as(remove, &caller))
                .await;
            return answered_here(&self.replica, reply);
        }
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_here("MemberUpdate", "a restart with the new --listen"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = crate::auth::caller_of(&request);
        let promote = request.into_inner();
        let conf = self.replica.membership().conf_state;
        if !member_ids(&conf).contains(&promote.id) {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        }
        if !conf.learners.contains(&promote.id) {
            return Err(Status::failed_precondition(NOT_LEARNER));
        }
        let plan = ChangePlan {
            promote: vec![promote.id],
            ..Default::default()
        };
        if !self.change(plan, forwarded).await? {
            let reply = self
                .leader()?
                .member_promote(self.forward.request_as(promote, &caller))
                .await;
            return answered_here(&self.replica, reply);
        }
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// Bytes of a backup per `SnapshotResponse`.
const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

/// Sends `file` (`size` bytes) in chunks into `tx`, then the backup tail
/// (`crate::backup::backup_tail`), unless the receiver goes away; an error
/// ends the stream with it.
fn send_file(
    mut file: std::fs::File,
    size: u64,
    header: ResponseHeader,
    tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    use sha2::Digest as _;
    use std::io::Read as _;
    let total = size + crate::backup::tail_len(size);
    let mut hasher = sha2::Sha256::new();
    let mut sent = 0u64;
    let mut header = Some(header);
    while sent < size {
        let mut blob = vec![0u8; BACKUP_CHUNK_BYTES.min((size - sent) as usize)];
        let mut filled = 0;
        while filled < blob.len() {
            match file.read(&mut blob[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!(
                        "reading the snapshot failed: {e}"
                    ))));
                    return;
                }
            }
        }
        if filled == 0 {
            let _ = tx.blocking_send(Err(Status::internal(format!(
                "the snapshot file ended after {sent} of {size} bytes"
            ))));
            return;
        }
        blob.truncate(filled);
        hasher.update(&blob);
        sent += filled as u64;
        let response = SnapshotResponse {
            header: header.take(),
            remaining_bytes: total - sent,
            blob: blob.into(),
        };
        if tx.blocking_send(Ok(response)).is_err() {
            return;
        }
    }
    let tail = crate::backup::backup_tail(size, hasher);
    let _ = tx.blocking_send(Ok(SnapshotResponse {
        header: header.take(),
        remaining_bytes: 0,
        blob: tail.into(),
    }));
}

#[tonic::async_trait]
impl Maintenance for EtcdCluster {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = crate::auth::caller_of(&request);
        let request = request.into_inner();
        let status = self.replica.status();
        if request.action == alarm_request::AlarmAction::Deactivate as i32 {
            // The quota alarm is the leader's: disarmed there.
            if request.alarm != AlarmType::Nospace as i32 && request.alarm != AlarmType::None as i32
            {
                return Err(not_here(
                    "disarming this alarm",
                    "replacing the member it names (CORRUPT clears itself once every member \
                     agrees)",
                ));
            }
            if status.role != Role::Leader && !forwarded {
                let reply = MaintenanceClient::new(self.forward.leader()?)
                    .alarm(self.forward.request_as(request, &caller))
                    .await;
                return answered_here(&self.replica, reply);
            }
            let disarmed = self.replica.disarm_quota();
            if disarmed {
                tracing::info!("NOSPACE alarm (space quota) disarmed");
            }
            return Ok(Response::new(AlarmResponse {
                header: Some(etcd_header(&self.replica, None)),
                alarms: disarmed
                    .then_some(AlarmMember {
                        member_id: status.id,
                        alarm: AlarmType::Nospace as i32,
                    })
                    .into_iter()
                    .collect(),
            }));
        }
        if request.action != alarm_request::AlarmAction::Get as i32 {
            return Err(not_here(
                "activating alarms",
                "the node's own checks (disk space, --quota-bytes, the corruption check)",
            ));
        }
        // The quota and corruption alarms are the leader's: a member that
        // does not lead lists the leader's, and its own disk's.
        if status.role != Role::Leader && !forwarded {
            if let Ok(leader) = self.forward.leader() {
                let reply = MaintenanceClient::new(leader)
                    .alarm(self.forward.request_as(request, &caller))
                    .await;
                let mut reply = answered_here(&self.replica, reply)?;
                if self.replica.is_out_of_space() {
                    reply.get_mut().alarms.push(AlarmMember {
                        member_id: status.id,
                        alarm: AlarmType::Nospace as i32,
                    });
                }
                return Ok(reply);
            }
        }
        let mut alarms = if self.replica.nospace_alarm() {
            vec![AlarmMember {
                member_id: status.id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        };
        alarms.extend(
            self.corruption
                .alarms()
                .into_iter()
                .map(|(id, _)| AlarmMember {
                    member_id: id,
                    alarm: AlarmType::Corrupt as i32,
                }),
        );
        Ok(Response::new(AlarmResponse {
            header: Some(etcd_header(&self.replica, None)),
            alarms,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let status = self.replica.status();
        let (data_bytes, revision) = {
            let kv = self.replica.kv();
            (kv.data_bytes(), kv.revision())
        };
        let mut errors = Vec::new();
        if self.replica.nospace_alarm() {
            errors.push("memberID:".to_string() + &status.id.to_string() + " alarm:NOSPACE");
        }
        for (id, _) in self.corruption.alarms() {
            errors.push(format!("memberID:{id} alarm:CORRUPT"));
        }
        Ok(Response::new(StatusResponse {
            header: Some(etcd_header(&self.replica, Some(revision))),
            version: ETCD_API_VERSION.into(),
            db_size: data_bytes as i64,
            leader: status.leader_id,
            raft_index: status.commit_index,
            raft_term: status.term,
            raft_applied_index: status.applied_index,
            errors,
            db_size_in_use: data_bytes as i64,
            is_learner: status.role == Role::Learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_here(
            "Defragment",
            "`raftkv debug compact` (the log is compacted by itself)",
        ))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, revision) = crate::kv_service::on_state_copy(&self.replica, |kv| {
            (kv.content_hash(), kv.revision())
        })
        .await?;
        Ok(Response::new(HashResponse {
            header: Some(etcd_header(&self.replica, Some(revision))),
            hash: crate::corruption::fold(hash),
        }))
    }

    /// A hash of the keyspace as of a revision, equal on every member that
    /// serves it (`etcdctl endpoint hashkv` compares members with it).
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.into_inner().revision.max(0) as u64;
        let (hash, current, compacted) =
            crate::kv_service::on_state_copy(&self.replica, move |kv| {
                let hash = kv
                    .hash_at(revision)
                    .map_err(|e| Status::out_of_range(e.to_string()))?;
                Ok::<_, Status>((hash, kv.revision(), kv.compacted_revision()))
            })
            .await??;
        Ok(Response::new(HashKvResponse {
            header: Some(etcd_header(&self.replica, Some(current))),
            hash: (hash ^ (hash >> 32)) as u32,
            compact_revision: compacted as i64,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// A backup: a snapshot the leader takes once a ReadIndex round has
    /// confirmed it leads and it has applied everything committed before the
    /// call (so it holds every write acknowledged before the backup began),
    /// streamed as its file (RaftKV's snapshot format, checksummed; not a
    /// bbolt database). A member that does not lead passes the leader's
    /// stream on.
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        if self.replica.status().role != Role::Leader && !is_forwarded(&request) {
            let caller = crate::auth::caller_of(&request);
            let mut leader = MaintenanceClient::new(self.forward.leader()?)
                .max_decoding_message_size(2 * BACKUP_CHUNK_BYTES);
            let reply = leader
                .snapshot(self.forward.request_as(request.into_inner(), &caller))
                .await?;
            let stream: SnapshotStream = Box::pin(reply.into_inner());
            return Ok(Response::new(stream));
        }
        self.replica.read_index().await.map_err(etcd_status)?;
        let barrier = self.replica.status().applied_index;
        let mut info = self.replica.trigger_snapshot().await.map_err(etcd_status)?;
        // One being written when asked may be older than the barrier.
        for _ in 0..3 {
            if info.meta.index >= barrier {
                break;
            }
            info = self.replica.trigger_snapshot().await.map_err(etcd_status)?;
        }
        if info.meta.index < barrier {
            return Err(Status::unavailable(
                "the snapshot taken for the backup is older than the backup's start; retry",
            ));
        }
        // Opened now: a newer snapshot may delete the file while it is sent.
        let file = std::fs::File::open(&info.path).map_err(|e| {
            Status::unavailable(format!("cannot open snapshot {}: {e}", info.path.display()))
        })?;
        tracing::info!(
            "sending a backup: snapshot at index {} ({} bytes)",
            info.meta.index,
            info.size_bytes
        );
        let header = etcd_header(&self.replica, None);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let size = info.size_bytes;
        tokio::task::spawn_blocking(move || send_file(file, size, header, tx));
        let stream: SnapshotStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(not_here(
            "MoveLeader",
            "`raftkv cluster transfer-leader ID`",
        ))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_here("Downgrade", "a restart on the older build"))
    }
}
