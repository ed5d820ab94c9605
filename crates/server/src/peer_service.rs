//! Inbound peer traffic: the `Peer.Raft` stream. Reassembles chunked raft
//! messages, refuses envelopes of another cluster or for another node, and
//! hands each message to the replica.

use bytes::BytesMut;
use protobuf::Message as _;
use raft::eraftpb::Message;
use raftkv_proto::v1::peer_server::Peer;
use raftkv_proto::v1::{RaftAck, RaftEnvelope};
use raftkv_replica::Replica;
use tonic::{Request, Response, Status, Streaming};

pub struct PeerService {
    pub replica: Replica,
    /// Largest reassembled message accepted (bounds memory per stream).
    pub max_message_bytes: usize,
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut stream = request.into_inner();
        let mut partial = BytesMut::new();
        let cluster_id = self.replica.cluster_id();
        let node_id = self.replica.node_id();
        while let Some(envelope) = stream.message().await? {
            if envelope.cluster_id != cluster_id {
                tracing::warn!(
                    "refused raft messages from node {} of cluster {:x} (this is cluster {:x})",
                    envelope.from,
                    envelope.cluster_id,
                    cluster_id
                );
                return Err(Status::failed_precondition(format!(
                    "cluster id mismatch: node {node_id} belongs to cluster {cluster_id:x}, \
                     the sender to {:x}",
                    envelope.cluster_id
                )));
            }
            if envelope.to != node_id {
                return Err(Status::failed_precondition(format!(
                    "message for node {} reached node {node_id}",
                    envelope.to
                )));
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
            match Message::parse_from_carllerche_bytes(&encoded) {
                Ok(message) => self.replica.step(message),
                Err(e) => {
                    return Err(Status::invalid_argument(format!(
                        "undecodable raft message: {e}"
                    )))
                }
            }
        }
        Ok(Response::new(RaftAck {}))
    }
}
