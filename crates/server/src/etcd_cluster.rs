//! etcd's v3 `Cluster` and `Maintenance` services, as far as RaftKV maps
//! them: the member list, a member's status, and the alarm list (NOSPACE
//! while this node is short of disk space). Membership changes go through
//! `raftkv cluster ...` (the change job), not through etcd's `MemberAdd`
//! and friends, which answer `Unimplemented` saying so; the same for the
//! maintenance calls RaftKV has no counterpart of yet.

use std::pin::Pin;

use futures::Stream;
use raftkv_proto::etcdserverpb::cluster_server::Cluster;
use raftkv_proto::etcdserverpb::maintenance_server::Maintenance;
use raftkv_proto::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use raftkv_replica::{member_ids, Replica, Role};
use tonic::{Request, Response, Status};

use crate::etcd_kv::etcd_header;
use raftkv_proto::etcdserverpb::ResponseHeader;

/// The etcd API version this server speaks (clients gate features on it).
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct EtcdCluster {
    pub replica: Replica,
}

fn not_here(what: &str, instead: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not served by RaftKV's etcd API; use {instead}"
    ))
}

impl EtcdCluster {
    fn members(&self) -> Vec<Member> {
        let membership = self.replica.membership();
        let conf = &membership.conf_state;
        member_ids(conf)
            .into_iter()
            .map(|id| {
                let url = membership
                    .addresses
                    .get(&id)
                    .map(|address| format!("http://{address}"));
                Member {
                    id,
                    name: format!("node-{id}"),
                    peer_ur_ls: url.iter().cloned().collect(),
                    client_ur_ls: url.into_iter().collect(),
                    is_learner: conf.learners.contains(&id) || conf.learners_next.contains(&id),
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for EtcdCluster {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_here(
            "MemberAdd",
            "`raftkv server --join` on the new node",
        ))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_here("MemberRemove", "`raftkv cluster remove ID`"))
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
        // etcd's Cluster service leaves the revision out of its header.
        let header = ResponseHeader {
            revision: 0,
            ..etcd_header(&self.replica, None)
        };
        Ok(Response::new(MemberListResponse {
            header: Some(header),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_here("MemberPromote", "`raftkv cluster promote ID`"))
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for EtcdCluster {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let request = request.into_inner();
        if request.action != alarm_request::AlarmAction::Get as i32 {
            return Err(not_here(
                "activating or disarming alarms",
                "freeing disk space (NOSPACE clears itself)",
            ));
        }
        let status = self.replica.status();
        let alarms = if self.replica.is_out_of_space() {
            vec![AlarmMember {
                member_id: status.id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        };
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
        if self.replica.is_out_of_space() {
            errors.push("memberID:".to_string() + &status.id.to_string() + " alarm:NOSPACE");
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
        let (hash, revision) = {
            let kv = self.replica.kv();
            (kv.content_hash(), kv.revision())
        };
        Ok(Response::new(HashResponse {
            header: Some(etcd_header(&self.replica, Some(revision))),
            hash: (hash ^ (hash >> 32)) as u32,
        }))
    }

    /// A hash of the keyspace as of a revision, equal on every member that
    /// serves it (`etcdctl endpoint hashkv` compares members with it).
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.into_inner().revision.max(0) as u64;
        let (hash, current, compacted) = {
            let kv = self.replica.kv();
            let hash = kv
                .hash_at(revision)
                .map_err(|e| Status::out_of_range(e.to_string()))?;
            (hash, kv.revision(), kv.compacted_revision())
        };
        Ok(Response::new(HashKvResponse {
            header: Some(etcd_header(&self.replica, Some(current))),
            hash: (hash ^ (hash >> 32)) as u32,
            compact_revision: compacted as i64,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_here("Snapshot", "`raftkv debug snapshot`"))
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
