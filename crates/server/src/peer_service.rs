//! Inbound peer traffic: the `Peer.Raft` stream (reassembles chunked raft
//! messages, refuses envelopes of another cluster or for another node, hands
//! each message to the replica) and `Peer.InstallSnapshot` (writes a snapshot
//! file to disk as it arrives, verifies every checksum, and only then hands
//! the leader's `MsgSnapshot` to raft).
//!
//! What a message must satisfy is decided by the replica's pure checks
//! (`raftkv_replica::check_envelope` here, the rest on the node thread); this
//! file only applies them and counts what they refuse. A stream whose envelopes
//! are addressed wrongly is closed; a message that fails a check is dropped
//! and the stream goes on.

use bytes::BytesMut;
use raftkv_proto::v1::peer_server::Peer;
use raftkv_proto::v1::{RaftAck, RaftEnvelope, SnapshotFileChunk};
use raftkv_replica::{
    admit_cluster, check_envelope, vote_allowed, Arrival, ClusterIds, PeerMessage, Rejection,
    Replica, SnapshotStore,
};
use tonic::{Request, Response, Status, Streaming};

pub struct PeerService {
    pub replica: Replica,
    pub snapshots: SnapshotStore,
    /// Largest reassembled message accepted (bounds memory per stream).
    pub max_message_bytes: usize,
    /// This node's settings every member must share (compared with what a
    /// peer's stream starts with).
    pub settings: raftkv_proto::v1::JoinSettings,
}

impl PeerService {
    /// Checks an envelope's cluster ids and recipient (`admit_cluster`). A
    /// sender of another cluster is refused with this node's cluster id in
    /// the `CLUSTER_MISMATCH` metadata, and both sides remember the contact:
    /// a node that only another cluster reaches serves no clients.
    fn check_sender(&self, sender: ClusterIds, from: u64, to: u64) -> Result<(), Status> {
        let own = self.replica.cluster_ids();
        let node_id = self.replica.node_id();
        if let Err(refusal) = admit_cluster(own, sender) {
            self.replica.count_rejection(Rejection::ClusterMismatch);
            self.replica.note_foreign_peer(from, sender.cluster_id);
            tracing::warn!("refused raft traffic from node {from}: {refusal}");
            let mut status = Status::failed_precondition(format!(
                "node {node_id} refuses node {from}: {refusal}"
            ));
            if let Ok(value) = format!("{:016x}", own.cluster_id).parse() {
                status.metadata_mut().insert(CLUSTER_MISMATCH, value);
            }
            return Err(status);
        }
        if to != node_id {
            self.replica.count_rejection(Rejection::WrongRecipient);
            return Err(Status::failed_precondition(format!(
                "message for node {to} reached node {node_id}"
            )));
        }
        self.replica.note_peer_contact(sender);
        Ok(())
    }

    /// Checks a decoded message against its envelope; counts and logs a refusal.
    fn check_message(
        &self,
        message: &PeerMessage,
        envelope_from: u64,
        sender: ClusterIds,
        arrival: Arrival,
    ) -> Result<(), Rejection> {
        check_envelope(message, envelope_from, self.replica.node_id(), arrival)
            .and_then(|()| {
                if vote_allowed(
                    self.replica.cluster_ids(),
                    sender,
                    message.is_vote_request(),
                ) || self.replica.may_vote_without_cluster_id()
                {
                    Ok(())
                } else {
                    Err(Rejection::VoteBeforeClusterId)
                }
            })
            .inspect_err(|rejection| {
                self.replica.count_rejection(*rejection);
                tracing::debug!(
                    "dropped a {} from node {envelope_from}: {}",
                    message.kind(),
                    rejection.label()
                );
            })
    }
}

/// Metadata on the status that refuses a removed node's vote request: the
/// index of the refusing node's configuration (see `REMOVED_AT` users).
pub const REMOVED_AT: &str = "raftkv-removed-at";

/// Metadata on the status that refuses a node of another cluster: the
/// refusing node's cluster id (hexadecimal).
pub const CLUSTER_MISMATCH: &str = "raftkv-cluster-mismatch";

impl PeerService {
    /// A vote request from a node outside this node's configuration comes
    /// from a node that was removed without learning it (or from a member
    /// this node does not know yet, which ignores the answer: its own
    /// configuration is newer). The stream is refused with this node's
    /// configuration index, so a removed node stops campaigning.
    fn refuse_removed_candidate(&self, message: &PeerMessage) -> Result<(), Status> {
        let Err(index) = self.replica.check_candidate_is_member(message) else {
            return Ok(());
        };
        let mut status = Status::failed_precondition(format!(
            "node {} is not a member of the cluster as of configuration index {index}",
            message.from()
        ));
        if let Ok(value) = index.to_string().parse() {
            status.metadata_mut().insert(REMOVED_AT, value);
        }
        Err(status)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotFileChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let sender = ClusterIds {
            cluster_id: first.cluster_id,
            bootstrap_id: first.bootstrap_id,
        };
        self.check_sender(sender, first.from, first.to)?;
        let message = PeerMessage::decode(&first.message).map_err(|rejection| {
            self.replica.count_rejection(rejection);
            Status::invalid_argument("undecodable snapshot message")
        })?;
        self.check_message(&message, first.from, sender, Arrival::InstallSnapshot)
            .map_err(|rejection| {
                Status::invalid_argument(format!("snapshot refused: {}", rejection.label()))
            })?;
        let meta = message
            .snapshot_meta()
            .ok_or_else(|| Status::invalid_argument("not a snapshot message"))?;
        if let Err(e) = self.replica.check_room_for_snapshot(first.total_bytes) {
            tracing::warn!(
                "refused the snapshot at index {} from node {}: {e}",
                meta.index,
                first.from
            );
            return Err(Status::resource_exhausted(e.to_string()));
        }
        tracing::info!(
            "receiving snapshot at index {} ({} bytes) from node {}",
            meta.index,
            first.total_bytes,
            first.from
        );
        let mut receiver = self
            .snapshots
            .receive(meta, first.total_bytes)
            .map_err(|e| Status::internal(format!("cannot store the snapshot: {e}")))?;
        let mut chunk = first.data;
        loop {
            crate::metrics::PEER_BYTES
                .received
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            receiver
                .write_chunk(&chunk)
                .map_err(|e| Status::internal(format!("cannot store the snapshot: {e}")))?;
            match stream.message().await? {
                Some(next) => chunk = next.data,
                None => break,
            }
        }
        // fsync and a full checksum pass: off the async workers.
        let info = tokio::task::spawn_blocking(move || receiver.finish())
            .await
            .map_err(|e| Status::internal(format!("snapshot check failed: {e}")))?
            .map_err(|e| Status::data_loss(format!("received snapshot is invalid: {e}")))?;
        tracing::info!(
            "received snapshot {} ({} bytes)",
            info.path.display(),
            info.size_bytes
        );
        self.replica.step(message);
        Ok(Response::new(RaftAck {}))
    }

    async fn raft(
        &self,
        request: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut stream = request.into_inner();
        let mut partial = BytesMut::new();
        let mut sender_out_of_space = false;
        // What the sender's build reported (log version, takes proposals).
        let mut sender_build = None;
        // A peer keeps its stream open for as long as it runs: end it once
        // this node has stopped, so a shutdown need not wait for the peers.
        let replica = self.replica.clone();
        let stopped = replica.stopped();
        tokio::pin!(stopped);
        loop {
            let envelope = tokio::select! {
                message = stream.message() => match message? {
                    Some(envelope) => envelope,
                    None => break,
                },
                _ = &mut stopped => break,
            };
            crate::metrics::PEER_BYTES.received.fetch_add(
                envelope.chunk.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            let sender = ClusterIds {
                cluster_id: envelope.cluster_id,
                bootstrap_id: envelope.bootstrap_id,
            };
            self.check_sender(sender, envelope.from, envelope.to)?;
            // Told while it lasts (refreshing the time), and once when it ends.
            if envelope.sender_out_of_space || sender_out_of_space {
                self.replica
                    .note_peer_space(envelope.from, envelope.sender_out_of_space);
                sender_out_of_space = envelope.sender_out_of_space;
            }
            if let Some(theirs) = &envelope.sender_settings {
                let ours = format!("this node ({})", self.replica.node_id());
                let them = format!("node {}", envelope.from);
                let differ =
                    crate::join::settings_differences(&self.settings, theirs, &ours, &them);
                if !differ.is_empty() {
                    tracing::warn!(
                        "node {} runs with other settings than this node: {}; {}",
                        envelope.from,
                        differ.join("; "),
                        crate::join::MUST_MATCH
                    );
                }
            }
            let build = (envelope.sender_log_version, envelope.sender_takes_proposals);
            if sender_build != Some(build) {
                self.replica
                    .note_peer_log_version(envelope.from, envelope.sender_log_version);
                self.replica
                    .note_peer_takes_proposals(envelope.from, envelope.sender_takes_proposals);
                sender_build = Some(build);
            }
            if partial.len() + envelope.chunk.len() > self.max_message_bytes {
                return Err(Status::resource_exhausted(format!(
                    "raft message larger than {} bytes",
                    self.max_message_bytes
                )));
            }
            let encoded = if partial.is_empty() && envelope.last {
                envelope.chunk
            } else {
                partial.extend_from_slice(&envelope.chunk);
                if !envelope.last {
                    continue;
                }
                partial.split().freeze()
            };
            match PeerMessage::decode(&encoded) {
                Ok(message) => {
                    if self
                        .check_message(&message, envelope.from, sender, Arrival::RaftStream)
                        .is_ok()
                    {
                        self.refuse_removed_candidate(&message)?;
                        self.replica.step(message)
                    }
                }
                Err(rejection) => {
                    self.replica.count_rejection(rejection);
                    return Err(Status::invalid_argument("undecodable raft message"));
                }
            }
        }
        Ok(Response::new(RaftAck {}))
    }
}
