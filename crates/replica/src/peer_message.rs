//! The replica's own type for what crosses the network between peers: a raft
//! message the transport carries without looking inside. The server decodes
//! bytes into one ([`PeerMessage::decode`]), checks it with the replica's pure
//! checks, and steps it; it encodes outbound ones on its own tasks (off the
//! node thread) and routes them by [`PeerMessage::lane`]. Only this crate
//! knows they are raft-rs messages.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use raftkv_storage::SnapshotMeta;

/// Which connection a message goes on (see ARCHITECTURE.md, "Peer transport").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Votes, heartbeats, responses, `TimeoutNow`: small, never queued
    /// behind appends.
    Control,
    /// Appends, in order (and writes a follower passes to its leader).
    Data,
    /// A snapshot: the transport streams the file it names on a call of its
    /// own (`Peer.InstallSnapshot`).
    Snapshot,
}

/// A raft message to or from a peer.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerMessage(pub(crate) Message);

impl PeerMessage {
    /// Decodes a message received from a peer (not yet checked: see
    /// [`crate::check_envelope`]).
    pub fn decode(bytes: &Bytes) -> Result<PeerMessage, crate::Rejection> {
        Message::parse_from_carllerche_bytes(bytes)
            .map(PeerMessage)
            .map_err(|_| crate::Rejection::Undecodable)
    }

    /// The wire form.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        self.0.write_to_bytes().map_err(|e| e.to_string())
    }

    pub fn to(&self) -> u64 {
        self.0.to
    }

    pub fn from(&self) -> u64 {
        self.0.from
    }

    pub fn lane(&self) -> Lane {
        match self.0.get_msg_type() {
            // A write a follower passes to its leader may be large; a
            // refusal of one is small.
            MessageType::MsgAppend => Lane::Data,
            MessageType::MsgPropose if !self.0.reject => Lane::Data,
            MessageType::MsgSnapshot => Lane::Snapshot,
            _ => Lane::Control,
        }
    }

    /// A vote or pre-vote request.
    pub fn is_vote_request(&self) -> bool {
        matches!(
            self.0.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        )
    }

    /// Bytes of entry and snapshot data it carries.
    pub fn payload_bytes(&self) -> usize {
        let entries: usize = self.0.entries.iter().map(|e| e.data.len()).sum();
        entries + self.0.get_snapshot().data.len()
    }

    /// The snapshot a `Lane::Snapshot` message names.
    pub fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        (self.0.get_msg_type() == MessageType::MsgSnapshot).then(|| {
            let metadata = self.0.get_snapshot().get_metadata();
            SnapshotMeta {
                index: metadata.index,
                term: metadata.term,
            }
        })
    }

    /// Its raft type, for logs.
    pub fn kind(&self) -> String {
        format!("{:?}", self.0.get_msg_type())
    }
}

impl From<Message> for PeerMessage {
    fn from(message: Message) -> PeerMessage {
        PeerMessage(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 1;
        m.to = 2;
        m.term = 3;
        m
    }

    #[test]
    fn appends_go_on_the_data_lane_snapshots_on_their_own_the_rest_on_control() {
        assert_eq!(
            PeerMessage(message(MessageType::MsgAppend)).lane(),
            Lane::Data
        );
        assert_eq!(
            PeerMessage(message(MessageType::MsgSnapshot)).lane(),
            Lane::Snapshot
        );
        for kind in [
            MessageType::MsgHeartbeat,
            MessageType::MsgAppendResponse,
            MessageType::MsgRequestVote,
            MessageType::MsgTimeoutNow,
        ] {
            assert_eq!(PeerMessage(message(kind)).lane(), Lane::Control);
        }
    }

    #[test]
    fn a_message_survives_encoding_and_garbage_is_refused() {
        let original = PeerMessage(message(MessageType::MsgRequestPreVote));
        let bytes = Bytes::from(original.encode().unwrap());
        let decoded = PeerMessage::decode(&bytes).unwrap();
        assert_eq!(decoded, original);
        assert!(decoded.is_vote_request());
        assert_eq!((decoded.from(), decoded.to()), (1, 2));
        assert_eq!(
            PeerMessage::decode(&Bytes::from_static(&[0xff, 0xff, 0xff])),
            Err(crate::Rejection::Undecodable)
        );
    }
}
