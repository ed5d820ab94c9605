//! etcd's v3 `Lease` service. Grants and revokes go through the log (the
//! grant's id chosen here, before proposing, so every replica has the same
//! one); keep-alives and time-to-live questions are answered by the
//! leader, which keeps the timers (`replica/src/node/lease_timers.rs`); a
//! member that does not lead forwards them, as it forwards writes.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::lease_server::Lease;
use raftkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use raftkv_replica::{Replica, ReplicaError, Write, WriteSession};
use rand::Rng as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::caller_of;
use crate::etcd_kv::{answered_here, etcd_header, etcd_status, is_forwarded, Forwarder};
use raftkv_replica::Caller;

/// etcd's largest lease TTL, seconds.
const MAX_TTL: i64 = 9_000_000_000;
const TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
const WAIT: Duration = Duration::from_secs(10);

pub struct EtcdLease {
    replica: Replica,
    forward: Forwarder,
    /// The shortest TTL granted (etcd's: 1.5 election timeouts, rounded
    /// up): a shorter lease could expire in a leader change.
    min_ttl: u64,
}

impl EtcdLease {
    pub fn new(replica: Replica, election_timeout: Duration, tls: crate::OutgoingTls) -> EtcdLease {
        let min_ttl = (election_timeout.as_millis() * 3).div_ceil(2000).max(1) as u64;
        EtcdLease {
            forward: Forwarder::new(replica.clone(), tls),
            replica,
            min_ttl,
        }
    }

    fn leader(&self) -> Result<LeaseClient<Channel>, Status> {
        Ok(LeaseClient::new(self.forward.leader()?))
    }

    async fn write(&self, write: Write, caller: &Caller) -> Result<u64, ReplicaError> {
        self.replica.check_cluster_contact(false)?;
        let written = self
            .replica
            .write_as(write, WriteSession::default(), caller.clone());
        match tokio::time::timeout(WAIT, written).await {
            Ok(result) => Ok(result?.revision),
            Err(_) => Err(ReplicaError::UnknownOutcome("not applied in time".into())),
        }
    }

    /// A keep-alive here, or at the leader; the TTL (0: no such lease).
    async fn keep_alive(&self, id: i64, forwarded: bool, caller: &Caller) -> Result<i64, Status> {
        match self.replica.lease_keep_alive(id as u64).await {
            Ok(ttl) => Ok(ttl as i64),
            Err(ReplicaError::NotLeader { leader_id, .. }) if !forwarded && leader_id != 0 => {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.send(LeaseKeepAliveRequest { id }).await;
                drop(tx);
                let request = self
                    .forward
                    .request_as(tokio_stream::wrappers::ReceiverStream::new(rx), caller);
                let mut replies = self.leader()?.lease_keep_alive(request).await?.into_inner();
                match replies.message().await? {
                    Some(reply) => Ok(reply.ttl),
                    None => Err(Status::unavailable("etcdserver: leader changed")),
                }
            }
            Err(e) => Err(etcd_status(e)),
        }
    }
}

use tonic::transport::Channel;

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for EtcdLease {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        if request.ttl > MAX_TTL {
            return Err(Status::out_of_range(TTL_TOO_LARGE));
        }
        let ttl = (request.ttl.max(0) as u64).max(self.min_ttl);
        let id = if request.id > 0 {
            request.id as u64
        } else {
            // Positive and non-zero, as etcd's ids are.
            rand::thread_rng().gen_range(1..=i64::MAX as u64)
        };
        let revision = match self.write(Write::LeaseGrant { id, ttl }, &caller).await {
            Ok(revision) => revision,
            Err(ReplicaError::NotLeader { leader_id, .. }) if !forwarded && leader_id != 0 => {
                let reply = self
                    .leader()?
                    .lease_grant(self.forward.request_as(request, &caller))
                    .await;
                return answered_here(&self.replica, reply);
            }
            Err(e) => return Err(etcd_status(e)),
        };
        Ok(Response::new(LeaseGrantResponse {
            header: Some(etcd_header(&self.replica, Some(revision))),
            id: id as i64,
            ttl: ttl as i64,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        let revision = match self
            .write(Write::LeaseRevoke(request.id.max(0) as u64), &caller)
            .await
        {
            Ok(revision) => revision,
            Err(ReplicaError::NotLeader { leader_id, .. }) if !forwarded && leader_id != 0 => {
                let reply = self
                    .leader()?
                    .lease_revoke(self.forward.request_as(request, &caller))
                    .await;
                return answered_here(&self.replica, reply);
            }
            Err(e) => return Err(etcd_status(e)),
        };
        Ok(Response::new(LeaseRevokeResponse {
            header: Some(etcd_header(&self.replica, Some(revision))),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let lease = EtcdLease {
            replica: self.replica.clone(),
            forward: self.forward.clone(),
            min_ttl: self.min_ttl,
        };
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                let reply = lease
                    .keep_alive(request.id, forwarded, &caller)
                    .await
                    .map(|ttl| LeaseKeepAliveResponse {
                        header: Some(etcd_header(&lease.replica, None)),
                        id: request.id,
                        ttl,
                    });
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        let stream: Self::LeaseKeepAliveStream = crate::streams::until_stopped(
            &self.replica,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        );
        Ok(Response::new(stream))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        match self
            .replica
            .lease_time_to_live(request.id.max(0) as u64)
            .await
        {
            Ok(info) => {
                if let Some(info) = info.as_ref().filter(|_| request.keys) {
                    // The keys' names are data: only for a caller who may
                    // read every one of them (etcd's rule since 3.4.26).
                    for key in &info.keys {
                        crate::auth::check(
                            &self.replica,
                            &caller,
                            raftkv_kv::auth::Access::Read,
                            key,
                            &[],
                        )
                        .map_err(crate::auth::etcd_denied)?;
                    }
                }
                let header = Some(etcd_header(&self.replica, None));
                Ok(Response::new(match info {
                    Some(info) => LeaseTimeToLiveResponse {
                        header,
                        id: request.id,
                        ttl: info.remaining as i64,
                        granted_ttl: info.granted as i64,
                        keys: if request.keys { info.keys } else { Vec::new() },
                    },
                    // etcd: an unknown lease has TTL -1.
                    None => LeaseTimeToLiveResponse {
                        header,
                        id: request.id,
                        ttl: -1,
                        ..Default::default()
                    },
                }))
            }
            Err(ReplicaError::NotLeader { leader_id, .. }) if !forwarded && leader_id != 0 => {
                let reply = self
                    .leader()?
                    .lease_time_to_live(self.forward.request_as(request, &caller))
                    .await;
                answered_here(&self.replica, reply)
            }
            Err(e) => Err(etcd_status(e)),
        }
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .replica
            .kv()
            .leases()
            .map(|(id, _)| LeaseStatus { id: id as i64 })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(etcd_header(&self.replica, None)),
            leases,
        }))
    }
}
