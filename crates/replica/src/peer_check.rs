//! Validation of raft messages that arrive from the network, before raft-rs sees them.
//!
//! raft-rs trusts its peers: it asserts on what a correct peer never sends (a commit
//! index past this node's log, an append response for entries this leader does not
//! have, a read-index message without its context entry) and takes local-only message
//! types (proposals, transfers, hup) from anyone. Any client can reach the peer
//! service (it shares the client port) and read the cluster id and node ids from
//! `raftkv status`, so every message from the network passes these checks first; what
//! fails is dropped and counted by reason (`raftkv_peer_messages_rejected_total`),
//! never stepped. Peers are not authenticated here (that needs TLS): a check rejects
//! what is *malformed* for this node, whoever sent it.
//!
//! Everything here is a pure function of the message, its envelope and a view of the
//! node's state, so that a simulator can drive it; it must not do I/O or keep state.

use std::sync::atomic::{AtomicU64, Ordering};

use raft::eraftpb::{Message, MessageType};

/// How a message reached this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// On a `Peer.Raft` stream.
    RaftStream,
    /// As the first chunk of `Peer.InstallSnapshot` (its file already verified).
    InstallSnapshot,
}

/// Why a message from the network was not stepped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The envelope or stream names another cluster.
    ClusterMismatch,
    /// The message is addressed to another node.
    WrongRecipient,
    /// The message's `from` is not the envelope's sender (or is 0, or this node).
    SenderMismatch,
    /// The sender is not in this node's configuration.
    NotAMember,
    /// A type that never crosses the network here (transfers, local messages,
    /// read-index traffic; proposals only as writes a follower passes to its
    /// leader), or a snapshot outside `InstallSnapshot`.
    UnexpectedType,
    /// A field no correct peer sends (term 0, entries out of sequence, a read
    /// context missing).
    Malformed,
    /// A commit index past this node's last index.
    CommitBeyondLog,
    /// An acknowledgement of entries past this leader's last index.
    AckBeyondLog,
    /// `TimeoutNow` from a node that is not this node's leader.
    NotFromLeader,
    /// The bytes do not decode as a raft message.
    Undecodable,
    /// A vote request to a node that has not learned the cluster's id from a
    /// node that has (see `cluster_id.rs`).
    VoteBeforeClusterId,
}

impl Rejection {
    pub const ALL: [Rejection; 11] = [
        Rejection::ClusterMismatch,
        Rejection::WrongRecipient,
        Rejection::SenderMismatch,
        Rejection::NotAMember,
        Rejection::UnexpectedType,
        Rejection::Malformed,
        Rejection::CommitBeyondLog,
        Rejection::AckBeyondLog,
        Rejection::NotFromLeader,
        Rejection::Undecodable,
        Rejection::VoteBeforeClusterId,
    ];

    /// The `reason` label of `raftkv_peer_messages_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::ClusterMismatch => "cluster_mismatch",
            Rejection::WrongRecipient => "wrong_recipient",
            Rejection::SenderMismatch => "sender_mismatch",
            Rejection::NotAMember => "not_a_member",
            Rejection::UnexpectedType => "unexpected_type",
            Rejection::Malformed => "malformed",
            Rejection::CommitBeyondLog => "commit_beyond_log",
            Rejection::AckBeyondLog => "ack_beyond_log",
            Rejection::NotFromLeader => "not_from_leader",
            Rejection::Undecodable => "undecodable",
            Rejection::VoteBeforeClusterId => "vote_before_cluster_id",
        }
    }

    fn index(self) -> usize {
        Rejection::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every rejection is listed")
    }
}

/// Counters of rejected messages by reason (shared by the node thread and the peer
/// service).
#[derive(Debug, Default)]
pub struct RejectionCounters([AtomicU64; Rejection::ALL.len()]);

impl RejectionCounters {
    pub fn count(&self, rejection: Rejection) {
        self.0[rejection.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count (zeros included).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Rejection::ALL
            .iter()
            .map(|r| (r.label(), self.0[r.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

/// What the checks need to know of the receiving node.
pub struct NodeView<'a> {
    /// Whether a node is in the configuration (voters, learners, outgoing,
    /// incoming); `None` while this node has no configuration yet (it is joining).
    pub is_member: Option<&'a dyn Fn(u64) -> bool>,
    /// The leader this node follows (0: none known).
    pub leader_id: u64,
    pub last_index: u64,
    /// The node's current term.
    pub term: u64,
}

fn is_vote_request(kind: MessageType) -> bool {
    matches!(
        kind,
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    )
}

/// Checks what needs no node state: addressing, sender, type and shape.
pub fn check_envelope(
    message: &crate::PeerMessage,
    envelope_from: u64,
    own_id: u64,
    arrival: Arrival,
) -> Result<(), Rejection> {
    check_raft_envelope(&message.0, envelope_from, own_id, arrival)
}

pub(crate) fn check_raft_envelope(
    message: &Message,
    envelope_from: u64,
    own_id: u64,
    arrival: Arrival,
) -> Result<(), Rejection> {
    use MessageType::*;
    if message.to != own_id {
        return Err(Rejection::WrongRecipient);
    }
    if message.from != envelope_from || message.from == 0 || message.from == own_id {
        return Err(Rejection::SenderMismatch);
    }
    let kind = message.get_msg_type();
    let allowed = match arrival {
        Arrival::InstallSnapshot => kind == MsgSnapshot,
        Arrival::RaftStream => matches!(
            kind,
            MsgAppend
                | MsgAppendResponse
                | MsgRequestVote
                | MsgRequestVoteResponse
                | MsgRequestPreVote
                | MsgRequestPreVoteResponse
                | MsgHeartbeat
                | MsgHeartbeatResponse
                | MsgTimeoutNow
                // A write a follower passes to its leader, or the leader's
                // refusal of one: taken by the node, never stepped into
                // raft (see `node/forwarding.rs`).
                | MsgPropose
        ),
    };
    if !allowed {
        return Err(Rejection::UnexpectedType);
    }
    if message.term == 0 {
        return Err(Rejection::Malformed);
    }
    if kind == MsgAppend {
        check_append_shape(message)?;
    }
    Ok(())
}

/// An append's entries must follow `index` one by one, in terms that never fall
/// and never pass the message's term.
fn check_append_shape(message: &Message) -> Result<(), Rejection> {
    // Only the empty log's index 0 has term 0; raft-rs reads any index past
    // its log as term 0 too, so such an append would "match" and commit past
    // the log.
    if message.log_term > message.term || (message.log_term == 0 && message.index != 0) {
        return Err(Rejection::Malformed);
    }
    let mut previous_term = message.log_term;
    for (offset, entry) in message.entries.iter().enumerate() {
        let expected_index = message.index.checked_add(1 + offset as u64);
        if Some(entry.index) != expected_index
            || entry.term < previous_term
            || entry.term > message.term
        {
            return Err(Rejection::Malformed);
        }
        previous_term = entry.term;
    }
    Ok(())
}

/// Whether `from` may send to a node whose configuration holds `members`. A node
/// with no configuration yet (joining, `members` empty) hears from anyone.
pub fn check_membership(from: u64, members: &[u64]) -> Result<(), Rejection> {
    check_member(
        from,
        (!members.is_empty()).then_some(&|id| members.contains(&id)),
    )
}

fn check_member(from: u64, is_member: Option<&dyn Fn(u64) -> bool>) -> Result<(), Rejection> {
    match is_member {
        Some(is_member) if !is_member(from) => Err(Rejection::NotAMember),
        _ => Ok(()),
    }
}

/// Checks against the node's state what raft-rs would otherwise assert on.
pub fn check_against_node(message: &Message, node: &NodeView<'_>) -> Result<(), Rejection> {
    use MessageType::*;
    let kind = message.get_msg_type();
    // Vote requests from outside the configuration are answered by the peer service
    // (the candidate learns it was removed). A leader's messages of this term or a
    // later one are taken from anyone: a follower that missed the change adding its
    // new leader learns it only from that leader. Everything else must come from a
    // member.
    let from_a_leader =
        matches!(kind, MsgAppend | MsgHeartbeat | MsgSnapshot) && message.term >= node.term;
    if !is_vote_request(kind) && !from_a_leader {
        check_member(message.from, node.is_member)?;
    }
    match kind {
        MsgHeartbeat if message.commit > node.last_index => Err(Rejection::CommitBeyondLog),
        MsgAppendResponse if !message.reject && message.index > node.last_index => {
            Err(Rejection::AckBeyondLog)
        }
        MsgTimeoutNow if message.from != node.leader_id => Err(Rejection::NotFromLeader),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    }

    fn check(message: &Message, members: &[u64]) -> Result<(), Rejection> {
        let is_member = |id: u64| members.contains(&id);
        let view = NodeView {
            is_member: (!members.is_empty()).then_some(&is_member as &dyn Fn(u64) -> bool),
            leader_id: 2,
            last_index: 10,
            term: 3,
        };
        check_against_node(message, &view)
    }

    #[test]
    fn addressing_and_sender_must_match_the_envelope() {
        let m = message(MessageType::MsgHeartbeat, 2, 1, 3);
        assert_eq!(check_raft_envelope(&m, 2, 1, Arrival::RaftStream), Ok(()));
        assert_eq!(
            check_raft_envelope(&m, 2, 3, Arrival::RaftStream),
            Err(Rejection::WrongRecipient)
        );
        assert_eq!(
            check_raft_envelope(&m, 3, 1, Arrival::RaftStream),
            Err(Rejection::SenderMismatch)
        );
        let own = message(MessageType::MsgHeartbeat, 1, 1, 3);
        assert_eq!(
            check_raft_envelope(&own, 1, 1, Arrival::RaftStream),
            Err(Rejection::SenderMismatch)
        );
    }

    #[test]
    fn local_types_and_snapshots_on_the_stream_are_refused() {
        let proposal = message(MessageType::MsgPropose, 2, 1, 3);
        assert_eq!(
            check_raft_envelope(&proposal, 2, 1, Arrival::RaftStream),
            Ok(())
        );
        for kind in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgTransferLeader,
            MessageType::MsgReadIndex,
            MessageType::MsgReadIndexResp,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
            MessageType::MsgSnapshot,
        ] {
            let m = message(kind, 2, 1, 3);
            assert_eq!(
                check_raft_envelope(&m, 2, 1, Arrival::RaftStream),
                Err(Rejection::UnexpectedType),
                "{kind:?}"
            );
        }
        let snapshot = message(MessageType::MsgSnapshot, 2, 1, 3);
        assert_eq!(
            check_raft_envelope(&snapshot, 2, 1, Arrival::InstallSnapshot),
            Ok(())
        );
        let append = message(MessageType::MsgAppend, 2, 1, 3);
        assert_eq!(
            check_raft_envelope(&append, 2, 1, Arrival::InstallSnapshot),
            Err(Rejection::UnexpectedType)
        );
    }

    #[test]
    fn appends_must_be_in_sequence() {
        let mut m = message(MessageType::MsgAppend, 2, 1, 5);
        m.index = 7;
        m.log_term = 4;
        m.entries = vec![
            Entry {
                index: 8,
                term: 4,
                ..Default::default()
            },
            Entry {
                index: 9,
                term: 5,
                ..Default::default()
            },
        ]
        .into();
        assert_eq!(check_raft_envelope(&m, 2, 1, Arrival::RaftStream), Ok(()));
        let mut gap = m.clone();
        gap.entries[1].index = 11;
        let mut back_in_time = m.clone();
        back_in_time.entries[1].term = 3;
        let mut future = m.clone();
        future.entries[1].term = 6;
        let mut rewinds = m.clone();
        rewinds.entries[0].index = 1;
        let mut overflow = m.clone();
        overflow.index = u64::MAX;
        for bad in [gap, back_in_time, future, rewinds, overflow] {
            assert_eq!(
                check_raft_envelope(&bad, 2, 1, Arrival::RaftStream),
                Err(Rejection::Malformed)
            );
        }
        let mut past_the_log = m.clone();
        past_the_log.log_term = 0;
        past_the_log.entries.clear();
        assert_eq!(
            check_raft_envelope(&past_the_log, 2, 1, Arrival::RaftStream),
            Err(Rejection::Malformed)
        );
        let mut no_term = m;
        no_term.term = 0;
        assert_eq!(
            check_raft_envelope(&no_term, 2, 1, Arrival::RaftStream),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn what_raft_would_assert_on_is_refused() {
        let members = [1, 2, 3];
        let mut heartbeat = message(MessageType::MsgHeartbeat, 2, 1, 3);
        heartbeat.commit = 10;
        assert_eq!(check(&heartbeat, &members), Ok(()));
        heartbeat.commit = 1_000_000;
        assert_eq!(check(&heartbeat, &members), Err(Rejection::CommitBeyondLog));
        let mut ack = message(MessageType::MsgAppendResponse, 3, 1, 3);
        ack.index = 11;
        assert_eq!(check(&ack, &members), Err(Rejection::AckBeyondLog));
        ack.reject = true;
        assert_eq!(check(&ack, &members), Ok(()));
        let timeout_now = message(MessageType::MsgTimeoutNow, 3, 1, 3);
        assert_eq!(check(&timeout_now, &members), Err(Rejection::NotFromLeader));
    }

    #[test]
    fn strangers_are_refused_but_a_joining_node_hears_anyone() {
        let ack = message(MessageType::MsgAppendResponse, 9, 1, 3);
        assert_eq!(check(&ack, &[1, 2, 3]), Err(Rejection::NotAMember));
        assert_eq!(check(&ack, &[]), Ok(()));
        // A leader this node does not know yet (added while it was away).
        let heartbeat = message(MessageType::MsgHeartbeat, 9, 1, 3);
        assert_eq!(check(&heartbeat, &[1, 2, 3]), Ok(()));
        let stale = message(MessageType::MsgHeartbeat, 9, 1, 2);
        assert_eq!(check(&stale, &[1, 2, 3]), Err(Rejection::NotAMember));
        // Vote requests from non-members are answered by the peer service.
        let vote = message(MessageType::MsgRequestVote, 9, 1, 3);
        assert_eq!(check(&vote, &[1, 2, 3]), Ok(()));
    }

    #[test]
    fn counters_count_by_reason() {
        let counters = RejectionCounters::default();
        counters.count(Rejection::Malformed);
        counters.count(Rejection::Malformed);
        counters.count(Rejection::NotAMember);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.len(), Rejection::ALL.len());
        assert!(snapshot.contains(&("malformed", 2)));
        assert!(snapshot.contains(&("not_a_member", 1)));
        assert!(snapshot.contains(&("undecodable", 0)));
    }
}
