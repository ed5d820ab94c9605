//! The `Cluster` and `Debug` gRPC services: status, membership queries and
//! the debug views of raft and storage.
//!
//! Membership changes (add, promote, remove, change, transfer-leader) are
//! carried out by `membership.rs` on the leader; other nodes answer
//! `NotLeader` with the leader's address and the client follows it.

use raftkv_proto::v1::cluster_server::Cluster;
use raftkv_proto::v1::debug_server::Debug;
use raftkv_proto::v1::{
    AddNodeRequest, ChangeMembershipRequest, CheckRequest, CheckResponse, CompactRequest,
    CompactResponse, Member, MembersRequest, MembersResponse, PeerProgress, PromoteNodeRequest,
    RaftStateRequest, RaftStateResponse, RemoveNodeRequest, SetMemberAddressRequest, StatusRequest,
    StatusResponse, StorageStateRequest, StorageStateResponse, TransferLeaderRequest,
    TriggerSnapshotRequest, TriggerSnapshotResponse,
};
use raftkv_replica::{MembersInfo, Replica, ReplicaError, SnapshotMeta, SnapshotStore};
use std::path::Path;

use tonic::{Request, Response, Status};

use crate::deadline::deadline_of;
use crate::errors::{invalid_argument, replica_status};
use crate::kv_service::header_of;
use crate::membership::{ChangePlan, Membership};

pub struct AdminService {
    /// Joining needs a member's certificate then (`add_node` with `empty`).
    pub peer_tls: bool,
    pub replica: Replica,
    pub membership: Membership,
    pub address: String,
    pub snapshots: SnapshotStore,
    pub corruption: std::sync::Arc<crate::corruption::CorruptionAlarm>,
    /// This node's settings a joining node must share (see `join.rs`).
    pub join_settings: raftkv_proto::v1::JoinSettings,
}

impl AdminService {
    /// `StatusResponse.alarms`.
    fn alarms(&self) -> Vec<String> {
        let mut alarms = Vec::new();
        if self.replica.is_out_of_space() {
            alarms.push(
                "NOSPACE: this node's disk is short of space; writes are refused".to_string(),
            );
        }
        if self.replica.quota_alarm() {
            let used = {
                let kv = self.replica.kv();
                kv.data_bytes() + kv.history_size().0
            };
            alarms.push(format!(
                "NOSPACE: the space quota (--quota-bytes) was passed; the state and its history \
                 take {used} bytes now; writes that add data are refused until the alarm is \
                 disarmed (`raftkv alarm disarm`)"
            ));
        }
        alarms.extend(
            self.corruption
                .alarms()
                .into_iter()
                .map(|(_, why)| format!("CORRUPT: {why}")),
        );
        alarms
    }

    /// Bytes the data dir takes on disk (see `raftkv_storage::disk::allocated_bytes`).
    async fn data_dir_bytes(&self) -> u64 {
        let Some(data_dir) = self.snapshots.dir().parent().map(Path::to_path_buf) else {
            return 0;
        };
        tokio::task::spawn_blocking(move || raftkv_storage::disk::allocated_bytes(&data_dir))
            .await
            .unwrap_or(0)
    }
}

fn members_of(info: &MembersInfo) -> Vec<Member> {
    info.members
        .iter()
        .map(|m| Member {
            id: m.id,
            address: m.address.clone(),
            peer_address: m.peer_address.clone().unwrap_or_default(),
            role: m.role.as_str().to_string(),
            voter: m.voter,
            match_index: m.match_index,
            lag: m.lag,
            reachable: m.reachable,
        })
        .collect()
}

impl AdminService {
    /// A replica error as a status carrying this node's header.
    fn replica_error(&self, error: ReplicaError) -> Status {
        replica_status(error, header_of(&self.replica))
    }

    /// An address peers can dial: HOST:PORT.
    fn check_address(&self, address: &str) -> Result<String, Status> {
        crate::config::check_address(address, "node address")
            .map_err(|e| invalid_argument(e, header_of(&self.replica)))
    }

    /// A node's peer listener as requested: empty for none, else HOST:PORT.
    fn check_peer_address(&self, address: &str) -> Result<Option<String>, Status> {
        if address.is_empty() {
            return Ok(None);
        }
        crate::config::check_address(address, "peer listener address")
            .map(Some)
            .map_err(|e| invalid_argument(e, header_of(&self.replica)))
    }

    async fn apply(
        &self,
        plan: ChangePlan,
        deadline: tokio::time::Instant,
    ) -> Result<Response<MembersResponse>, Status> {
        self.membership
            .change(plan, deadline)
            .await
            .map_err(|e| self.replica_error(e))?;
        self.members_reply().await
    }

    async fn members_reply(&self) -> Result<Response<MembersResponse>, Status> {
        let members = self.members_info().await?;
        Ok(Response::new(MembersResponse {
            header: Some(header_of(&self.replica)),
            members: members_of(&members),
            joint: members.joint,
            cluster_id: self.replica.cluster_id(),
            config_index: members.config_index,
            bootstrap_id: self.replica.cluster_ids().bootstrap_id,
        }))
    }

    async fn members_info(&self) -> Result<MembersInfo, Status> {
        self.replica
            .members()
            .await
            .map_err(|e| self.replica_error(e))
    }
}

#[tonic::async_trait]
impl Cluster for AdminService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let members = self.members_info().await?;
        let status = self.replica.status();
        let (leader_id, leader_address) = self.replica.leader_hint();
        let (keys, data_bytes) = {
            let kv = self.replica.kv();
            (kv.len() as u64, kv.data_bytes())
        };
        Ok(Response::new(StatusResponse {
            header: Some(header_of(&self.replica)),
            id: status.id,
            role: status.role.as_str().to_string(),
            term: status.term,
            leader_id,
            leader_address: leader_address.unwrap_or_default(),
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            members: members_of(&members),
            joint: members.joint,
            keys,
            data_bytes,
            disk_bytes: self.data_dir_bytes().await,
            cluster_id: status.cluster_id,
            address: self.address.clone(),
            alarms: self.alarms(),
            log_version: self.replica.log_version(),
            cluster_log_version: self.replica.cluster_log_version().version,
            problem: if status.role == raftkv_replica::Role::Removed {
                format!(
                    "node {} has been removed from the cluster: it serves nothing",
                    status.id
                )
            } else {
                self.replica
                    .check_cluster_contact(false)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            },
        }))
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.members_reply().await
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let deadline = deadline_of(&request);
        let member = request
            .extensions()
            .get::<raftkv_net::tls::ConnInfo>()
            .is_some_and(|c| c.peer);
        let request = request.into_inner();
        if self.peer_tls && request.empty && !member {
            // It would be added, then never reached: raft traffic needs a
            // certificate from the peer CA.
            return Err(Status::permission_denied(
                "joining needs a member's certificate: this cluster has peer TLS, so start the \
                 joining node with --peer-cert-file, --peer-key-file and --peer-trusted-ca-file \
                 (a certificate signed by the cluster's peer CA)",
            ));
        }
        if request.empty {
            // A node of a build from before joins sent settings sends none:
            // it has the oldest log version and is not compared otherwise.
            let theirs = request
                .settings
                .clone()
                .unwrap_or(raftkv_proto::v1::JoinSettings {
                    log_version: raftkv_kv::RULES_UNREPORTED,
                    ..self.join_settings.clone()
                });
            let needed = self.replica.log_version_to_join();
            let node = self.replica.node_id();
            crate::join::check_join_settings(node, &self.join_settings, &theirs, needed)
                .map_err(Status::invalid_argument)?;
        }
        let address = self.check_address(&request.address)?;
        let peer_address = self.check_peer_address(&request.peer_address)?;
        if self.replica.cluster_id() == 0 {
            // A joining node records the id; it must be the cluster's own.
            return Err(self.replica_error(ReplicaError::Unavailable(
                "the cluster has not chosen its id yet (it was just bootstrapped); retry".into(),
            )));
        }
        let id = request.id;
        let mut plan = ChangePlan {
            empty: request.empty,
            ..Default::default()
        };
        if request.learner {
            plan.learners.insert(id, address);
        } else {
            plan.voters.insert(id, address);
        }
        if let Some(peer_address) = peer_address {
            plan.peer_addresses.insert(id, peer_address);
        }
        self.apply(plan, deadline).await
    }

    async fn promote_node(
        &self,
        request: Request<PromoteNodeRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let deadline = deadline_of(&request);
        let plan = ChangePlan {
            promote: vec![request.into_inner().id],
            ..Default::default()
        };
        self.apply(plan, deadline).await
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        let plan = ChangePlan {
            remove: vec![request.id],
            force: request.force,
            ..Default::default()
        };
        self.apply(plan, deadline).await
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        if request.leave_joint {
            self.membership
                .leave_joint(deadline)
                .await
                .map_err(|e| self.replica_error(e))?;
            return self.members_reply().await;
        }
        if request.add.is_empty() && request.remove.is_empty() {
            return Err(invalid_argument(
                "a membership change needs at least one node to add or remove",
                header_of(&self.replica),
            ));
        }
        let mut plan = ChangePlan {
            remove: request.remove,
            force: request.force,
            explicit: request.explicit_joint,
            ..Default::default()
        };
        for node in request.add {
            if node.id == 0 {
                return Err(invalid_argument(
                    "node id 0 is not valid",
                    header_of(&self.replica),
                ));
            }
            let address = self.check_address(&node.address)?;
            if let Some(peer_address) = self.check_peer_address(&node.peer_address)? {
                plan.peer_addresses.insert(node.id, peer_address);
            }
            plan.voters.insert(node.id, address);
        }
        self.apply(plan, deadline).await
    }

    async fn set_member_address(
        &self,
        request: Request<SetMemberAddressRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        let own = self.replica.cluster_ids();
        let same_cluster = if request.cluster_id != 0 && own.cluster_id != 0 {
            request.cluster_id == own.cluster_id
        } else {
            request.bootstrap_id != 0 && request.bootstrap_id == own.bootstrap_id
        };
        if !same_cluster {
            return Err(self.replica_error(ReplicaError::Rejected(format!(
                "node {} asking to be recorded at {} is not of this cluster (its cluster \
                 {:016x}, bootstrap {:016x}; this cluster {:016x}, bootstrap {:016x}): a node of \
                 another cluster may not change this one's membership",
                request.id,
                request.address,
                request.cluster_id,
                request.bootstrap_id,
                own.cluster_id,
                own.bootstrap_id
            ))));
        }
        let address = self.check_address(&request.address)?;
        let peer_address = self.check_peer_address(&request.peer_address)?;
        self.membership
            .set_address(request.id, address, peer_address, deadline)
            .await
            .map_err(|e| self.replica_error(e))?;
        self.members_reply().await
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let deadline = deadline_of(&request);
        let to = request.into_inner().id;
        self.membership
            .transfer(to, deadline)
            .await
            .map_err(|e| self.replica_error(e))?;
        self.members_reply().await
    }
}

#[tonic::async_trait]
impl Debug for AdminService {
    async fn raft_state(
        &self,
        _: Request<RaftStateRequest>,
    ) -> Result<Response<RaftStateResponse>, Status> {
        let state = self
            .replica
            .raft_state()
            .await
            .map_err(|e| self.replica_error(e))?;
        Ok(Response::new(RaftStateResponse {
            header: Some(header_of(&self.replica)),
            term: state.status.term,
            vote: state.vote,
            commit_index: state.status.commit_index,
            applied_index: state.status.applied_index,
            leader_id: state.status.leader_id,
            role: state.status.role.as_str().to_string(),
            first_index: state.first_index,
            last_index: state.last_index,
            progress: state
                .progress
                .iter()
                .map(|p| PeerProgress {
                    id: p.id,
                    match_index: p.match_index,
                    next_index: p.next_index,
                    state: p.state.clone(),
                    paused: p.paused,
                    recent_active: p.recent_active,
                    pending_snapshot: p.pending_snapshot,
                })
                .collect(),
            voters: state.voters,
            learners: state.learners,
            voters_outgoing: state.voters_outgoing,
        }))
    }

    async fn storage_state(
        &self,
        _: Request<StorageStateRequest>,
    ) -> Result<Response<StorageStateResponse>, Status> {
        let stats = self
            .replica
            .storage_stats()
            .await
            .map_err(|e| self.replica_error(e))?;
        Ok(Response::new(StorageStateResponse {
            header: Some(header_of(&self.replica)),
            first_index: stats.first_index,
            last_index: stats.last_index,
            snapshot_index: stats.snapshot_index,
            snapshot_term: stats.snapshot_term,
            snapshot_bytes: self.snapshots.size_bytes(SnapshotMeta {
                index: stats.snapshot_index,
                term: stats.snapshot_term,
            }),
            segments: stats.segments,
            disk_bytes: self.data_dir_bytes().await,
            log_bytes: stats.disk_bytes,
        }))
    }

    async fn trigger_snapshot(
        &self,
        _: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let info = self
            .replica
            .trigger_snapshot()
            .await
            .map_err(|e| self.replica_error(e))?;
        Ok(Response::new(TriggerSnapshotResponse {
            header: Some(header_of(&self.replica)),
            snapshot_index: info.meta.index,
            snapshot_bytes: info.size_bytes,
        }))
    }

    async fn compact(
        &self,
        _: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        let result = self
            .replica
            .compact()
            .await
            .map_err(|e| self.replica_error(e))?;
        Ok(Response::new(CompactResponse {
            header: Some(header_of(&self.replica)),
            first_index: result.first_index,
            segments_removed: result.segments_removed,
        }))
    }

    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let (applied_index, hash, keys) = crate::kv_service::on_state_copy(&self.replica, |kv| {
            (kv.applied_index(), kv.content_hash(), kv.len() as u64)
        })
        .await?;
        Ok(Response::new(CheckResponse {
            header: Some(header_of(&self.replica)),
            applied_index,
            hash,
            keys,
        }))
    }
}
