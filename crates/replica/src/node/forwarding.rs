//! Writes a follower passes to its leader through raft's message stream, as
//! etcd's followers pass proposals on (raft's `MsgPropose`), so a client of
//! the etcd API that writes through a follower costs the cluster no second
//! client call.
//!
//! The follower sends the write's entry, naming itself as proposer and its
//! own proposal id, and waits for that entry to be applied on its own
//! replica (every replica applies it alike, so the result it computes is the
//! leader's). The leader never steps such a message into raft (raft-rs would
//! append the entries as they are): it takes each write out and proposes it
//! as one of its own clients' writes — the same disk, quota and log-version
//! checks, its own log clock and log version stamped on it — and answers the
//! follower only if it refuses one (a `MsgPropose` with `reject` set, one
//! `ProposalRefusal` per entry).
//!
//! What can be lost is answered as "outcome unknown", never left waiting: a
//! change of leader or term before the entry is applied here (the entry may
//! still commit), the leader reported unreachable (the message may have gone
//! with the connection), or no entry within `forward_timeout`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use raft::StateRole;
use raftkv_kv::{decode_command, encode_command, Command};
use raftkv_proto::internal::ProposalRefusal;

use super::{command_of, Caller, Node, Stamp, Write};
use crate::error::ReplicaError;
use crate::handle::WriteSession;
use crate::log_store::LogStore;
use crate::peer_message::PeerMessage;
use crate::proposals::{Forwarded, Times, WriteReply};

/// How long a follower waits for a write it passed on to be applied, while
/// the same leader leads, before it answers that the outcome is unknown (the
/// message or the leader's refusal may have been lost): ten election
/// timeouts, at least 3 s and at most the server's own wait (10 s).
pub(crate) fn forward_timeout(election_timeout: Duration) -> Duration {
    (10 * election_timeout).clamp(Duration::from_secs(3), Duration::from_secs(10))
}
/// How often writes passed on are looked at for the timeout.
const TIMEOUT_CHECK_INTERVAL: Duration = Duration::from_millis(100);

const NOT_LEADER: u32 = 1;
const NO_SPACE: u32 = 2;
const REJECTED: u32 = 3;
const UNAVAILABLE: u32 = 4;

/// Writes passed on this turn (all to the leader of the moment), and when
/// what was passed on was last checked.
#[derive(Default)]
pub(super) struct ForwardQueue {
    to: u64,
    entries: Vec<Entry>,
    /// The leader and term the writes waiting were last checked against.
    view: (u64, u64),
    /// When to look for writes waiting past `forward_timeout` next.
    next_timeout_check: Option<Instant>,
}

impl<S: LogStore> Node<S> {
    /// Whether this follower passes `write` to its leader: an etcd write
    /// (the etcd API's; `raftkv.v1` redirects its clients), to a leader
    /// whose build said it takes them.
    pub(super) fn leader_takes_forwarded(&self, write: &Write) -> bool {
        let leader = self.raw.raft.leader_id;
        leader != 0
            && leader != self.id
            && matches!(write, Write::EtcdTxn(_))
            && self
                .shared
                .peers_taking_proposals
                .lock()
                .expect("proposals lock poisoned")
                .contains(&leader)
    }

    /// Passes a client's write to the leader (this node follows it; see
    /// `leader_takes_forwarded`), with the others of this turn.
    pub(super) fn forward_write(
        &mut self,
        write: Write,
        session: WriteSession,
        caller: Caller,
        reply: WriteReply,
        times: Times,
    ) {
        if let Err(e) = self.check_pending_bound() {
            let _ = reply.send(Err(e));
            return;
        }
        let leader = self.raw.raft.leader_id;
        let proposal_id = self.proposals.next_id();
        // The leader stamps its own clock and log version; `rules` says
        // what this build's write needs at least.
        let stamp = Stamp {
            proposer: self.id,
            proposal_id,
            timestamp_ms: 0,
            rules: write.log_version(),
        };
        let command = command_of(write, session, &caller, stamp);
        let forwarded = Forwarded {
            leader,
            term: self.raw.raft.term,
            sent: self.now,
        };
        let times = Times {
            forwarded: true,
            ..times
        };
        self.proposals
            .insert_forwarded(proposal_id, reply, times, forwarded);
        tracing::debug!(
            "node {}: passes write {proposal_id:x} to leader {leader} (term {})",
            self.id,
            forwarded.term
        );
        if self.forward_queue.to != leader {
            self.send_forwarded();
            self.forward_queue.to = leader;
        }
        self.forward_queue.entries.push(Entry {
            data: Bytes::from(encode_command(&command)),
            ..Default::default()
        });
    }

    /// Sends the writes passed on this turn, in one message.
    pub(super) fn send_forwarded(&mut self) {
        if self.forward_queue.entries.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.forward_queue.entries);
        let (to, term) = (self.forward_queue.to, self.raw.raft.term);
        self.transport.send(vec![PeerMessage(proposal_message(
            self.id, to, term, false, entries,
        ))]);
    }

    /// A `MsgPropose` from a peer: writes a follower passed on (this node
    /// proposes them if it leads), or the leader's refusals of writes this
    /// node passed on. Never stepped into raft.
    pub(super) fn on_proposal_message(&mut self, message: Message) {
        if message.reject {
            self.on_refusals(&message);
            return;
        }
        let from = message.from;
        let mut refusals = Vec::new();
        for entry in message.entries.iter() {
            let command = match decode_command(&entry.data) {
                Ok(command) if command.proposer == from => command,
                _ => {
                    tracing::debug!(
                        "node {}: dropped a malformed write passed on by node {from}",
                        self.id
                    );
                    self.shared
                        .peer_rejections
                        .count(crate::peer_check::Rejection::Malformed);
                    continue;
                }
            };
            let proposal_id = command.proposal_id;
            if let Err(error) = self.propose_forwarded(command, from) {
                refusals.push(refusal_entry(proposal_id, &error));
            }
        }
        if !refusals.is_empty() {
            let term = self.raw.raft.term;
            self.transport.send(vec![PeerMessage(proposal_message(
                self.id, from, term, true, refusals,
            ))]);
        }
    }

    /// Proposes, as leader, a write follower `from` passed on.
    fn propose_forwarded(&mut self, command: Command, from: u64) -> Result<(), ReplicaError> {
        self.check_serving()?;
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        let (proposal_id, needs) = (command.proposal_id, command.rules);
        let (write, session, caller) = client_write(command).ok_or_else(|| {
            self.shared
                .peer_rejections
                .count(crate::peer_check::Rejection::Malformed);
            ReplicaError::Rejected("only a client's etcd write can be passed to the leader".into())
        })?;
        self.propose_write(write, session, &caller, from, proposal_id, needs)
    }

    /// The leader's refusals of writes this node passed to it.
    fn on_refusals(&mut self, message: &Message) {
        for entry in message.entries.iter() {
            let Ok(refusal) = ProposalRefusal::decode(entry.data.clone()) else {
                continue;
            };
            let sent_to = self.proposals.forwarded(refusal.proposal_id);
            if sent_to.is_some_and(|f| f.leader == message.from) {
                self.proposals
                    .complete(refusal.proposal_id, Err(refusal_error(refusal)));
            }
        }
    }

    /// Answers "outcome unknown" to every write passed to a leader that is
    /// no longer this node's leader (or term), and to those waiting longer
    /// than `forward_timeout`. Called after every turn.
    pub(super) fn check_forwarded(&mut self) {
        let view = (self.raw.raft.leader_id, self.raw.raft.term);
        if !self.proposals.any_forwarded() {
            self.forward_queue.view = view;
            return;
        }
        if self.forward_queue.view != view {
            self.forward_queue.view = view;
            let (leader, term) = view;
            // A follower between leaders (a pre-candidate knows none) may
            // hear from the same one again in the same term.
            self.proposals.fail_forwarded(
                |f| f.term != term || (leader != 0 && leader != f.leader),
                &ReplicaError::UnknownOutcome(
                    "the leader changed while the write passed to it was in flight; it may or \
                     may not have been applied"
                        .into(),
                ),
            );
        }
        let now = self.now;
        if self
            .forward_queue
            .next_timeout_check
            .is_some_and(|at| now < at)
        {
            return;
        }
        self.forward_queue.next_timeout_check = Some(now + TIMEOUT_CHECK_INTERVAL);
        let timeout = forward_timeout(self.config.election_timeout);
        self.proposals.fail_forwarded(
            |f| now.saturating_duration_since(f.sent) >= timeout,
            &ReplicaError::UnknownOutcome(format!(
                "the write passed to the leader was not applied here within {:.1} s; it may or \
                 may not be applied later",
                timeout.as_secs_f64()
            )),
        );
    }

    /// A snapshot replaced this node's state: writes passed on whose
    /// entries it covers will not be applied here one by one.
    pub(super) fn forwarded_in_snapshot(&mut self) {
        if !self.proposals.any_forwarded() {
            return;
        }
        self.proposals.fail_forwarded(
            |_| true,
            &ReplicaError::UnknownOutcome(
                "this member installed a snapshot from the leader while a write it passed on \
                 was in flight; it may or may not have been applied"
                    .into(),
            ),
        );
    }

    /// The transport lost `peer`: writes passed to it may have gone with
    /// the connection.
    pub(super) fn forwarded_unreachable(&mut self, peer: u64) {
        if !self.proposals.any_forwarded() {
            return;
        }
        self.proposals.fail_forwarded(
            |f| f.leader == peer,
            &ReplicaError::UnknownOutcome(format!(
                "the connection to the leader (node {peer}) failed while a write passed to it \
                 was in flight; it may or may not have been applied"
            )),
        );
    }
}

fn proposal_message(from: u64, to: u64, term: u64, reject: bool, entries: Vec<Entry>) -> Message {
    let mut message = Message {
        from,
        to,
        term,
        reject,
        entries: entries.into(),
        ..Default::default()
    };
    message.set_msg_type(MessageType::MsgPropose);
    message
}

/// The write, session and caller of a client's etcd write entry (the
/// inverse of `command_of` for what a follower passes on); None for
/// anything else — a follower passes on only its clients' etcd writes, never
/// one in the node's own name (which skips the auth checks).
fn client_write(command: Command) -> Option<(Write, WriteSession, Caller)> {
    let only_txn = command.ops.is_empty()
        && command.cluster_id.is_none()
        && command.member_address.is_none()
        && command.compact_revision == 0
        && command.lease_grant.is_none()
        && command.lease_revoke == 0
        && command.auth.is_none()
        && !command.test_next_kind
        && !command.by_node;
    let txn = command.etcd_txn.filter(|_| only_txn)?;
    let session = WriteSession {
        client_id: command.client_id,
        seq: command.seq,
        first_incomplete_seq: command.first_incomplete_seq,
    };
    let caller = if command.user.is_empty() {
        Caller::Anonymous
    } else {
        Caller::User(command.user)
    };
    Some((Write::EtcdTxn(txn), session, caller))
}

fn refusal_entry(proposal_id: u64, error: &ReplicaError) -> Entry {
    let (kind, leader_id) = match error {
        ReplicaError::NotLeader { leader_id, .. } => (NOT_LEADER, *leader_id),
        ReplicaError::NoSpace(_) => (NO_SPACE, 0),
        ReplicaError::Rejected(_) => (REJECTED, 0),
        _ => (UNAVAILABLE, 0),
    };
    let text = match error {
        ReplicaError::NotLeader { why, .. } => why.clone(),
        ReplicaError::NoSpace(text)
        | ReplicaError::Rejected(text)
        | ReplicaError::Unavailable(text) => text.clone(),
        other => other.to_string(),
    };
    let refusal = ProposalRefusal {
        proposal_id,
        kind,
        text,
        leader_id,
    };
    Entry {
        data: Bytes::from(refusal.encode_to_vec()),
        ..Default::default()
    }
}

fn refusal_error(refusal: ProposalRefusal) -> ReplicaError {
    match refusal.kind {
        NOT_LEADER => ReplicaError::NotLeader {
            leader_id: refusal.leader_id,
            leader_address: None,
            why: refusal.text,
        },
        NO_SPACE => ReplicaError::NoSpace(refusal.text),
        REJECTED => ReplicaError::Rejected(refusal.text),
        _ => ReplicaError::Unavailable(refusal.text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            proposer: 2,
            proposal_id: 11,
            timestamp_ms: 0,
            rules: 0,
        }
    }

    #[test]
    fn an_etcd_write_passed_on_is_proposed_as_the_same_write() {
        let txn =
            raftkv_kv::etcd::single(raftkv_proto::etcdserverpb::request_op::Request::RequestPut(
                raftkv_proto::etcdserverpb::PutRequest {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                },
            ));
        let write = Write::EtcdTxn(txn);
        for caller in [Caller::Anonymous, Caller::User("alice".into())] {
            let session = WriteSession {
                client_id: 3,
                seq: 4,
                first_incomplete_seq: 2,
            };
            let command = command_of(write.clone(), session, &caller, stamp());
            let (back, session_back, caller_back) =
                client_write(command).expect("a client's etcd write");
            assert_eq!(back, write);
            assert_eq!(caller_back, caller);
            assert_eq!(
                (
                    session_back.client_id,
                    session_back.seq,
                    session_back.first_incomplete_seq
                ),
                (3, 4, 2)
            );
        }
    }

    #[test]
    fn only_a_clients_etcd_write_is_taken_from_a_follower() {
        let session = WriteSession::default();
        let refused = [
            (Write::Ops(vec![]), Caller::Anonymous),
            (Write::Compact(7), Caller::Anonymous),
            (Write::LeaseGrant { id: 5, ttl: 9 }, Caller::Anonymous),
            (Write::LeaseRevoke(5), Caller::Anonymous),
            (Write::TestNextKind(vec![]), Caller::Anonymous),
            (Write::Auth(Default::default()), Caller::Anonymous),
            // In the node's own name, which skips the auth checks.
            (Write::EtcdTxn(Default::default()), Caller::Node),
        ];
        for (write, caller) in refused {
            let command = command_of(write.clone(), session, &caller, stamp());
            assert!(client_write(command).is_none(), "{write:?} {caller:?}");
        }
        let metadata = Command {
            cluster_id: Some(Default::default()),
            etcd_txn: Some(Default::default()),
            ..Default::default()
        };
        assert!(client_write(metadata).is_none());
    }

    #[test]
    fn a_refusal_keeps_its_kind_and_text() {
        let errors = [
            ReplicaError::NotLeader {
                leader_id: 3,
                leader_address: None,
                why: String::new(),
            },
            ReplicaError::NoSpace("disk".into()),
            ReplicaError::Rejected("log version".into()),
            ReplicaError::Unavailable("busy".into()),
        ];
        for error in errors {
            let entry = refusal_entry(9, &error);
            let refusal = ProposalRefusal::decode(entry.data.clone()).expect("decodes");
            assert_eq!(refusal.proposal_id, 9);
            assert_eq!(refusal_error(refusal), error);
        }
        let removed = refusal_entry(9, &ReplicaError::Removed("gone".into()));
        let refusal = ProposalRefusal::decode(removed.data.clone()).expect("decodes");
        assert!(matches!(
            refusal_error(refusal),
            ReplicaError::Unavailable(text) if text == "gone"
        ));
    }
}
