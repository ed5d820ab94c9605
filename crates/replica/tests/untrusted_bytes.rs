//! Property tests: any bytes that arrive on the peer service as a raft
//! message decode or are refused, and any decoded message is checked
//! without a panic (`peer_check.rs` decides what reaches raft; the
//! multi-process test `peer_messages.rs` steps the dangerous ones into a
//! live cluster). `PROPTEST_CASES=N` runs more cases (the long mode).

use bytes::Bytes;
use proptest::prelude::*;
use protobuf::Message as _;
use protobuf::ProtobufEnum as _;
use raft::eraftpb::{Entry, Message, MessageType};
use raftkv_replica::{check_envelope, check_membership, Arrival, PeerMessage};

/// A raft message with any type and wild numbers, as a hostile peer
/// could encode it.
fn message() -> impl Strategy<Value = Message> {
    (
        0..20i32,
        (0..5u64, 0..5u64),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::collection::vec((any::<u64>(), any::<u64>(), 0..3i32), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(kind, (from, to), (term, index, log_term, commit), entries, reject)| {
                let mut m = Message::default();
                m.set_msg_type(MessageType::from_i32(kind).unwrap_or(MessageType::MsgHup));
                m.from = from;
                m.to = to;
                m.term = term;
                m.index = index;
                m.log_term = log_term;
                m.commit = commit;
                m.reject = reject;
                m.entries = entries
                    .into_iter()
                    .map(|(index, term, kind)| {
                        let mut e = Entry {
                            index,
                            term,
                            ..Default::default()
                        };
                        e.set_entry_type(
                            raft::eraftpb::EntryType::from_i32(kind)
                                .unwrap_or(raft::eraftpb::EntryType::EntryNormal),
                        );
                        e
                    })
                    .collect::<Vec<_>>()
                    .into();
                m
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES (default 256) sets the number of cases.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_on_the_raft_stream_decode_or_are_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        envelope_from in 0..5u64,
        own in 1..4u64,
    ) {
        if let Ok(message) = PeerMessage::decode(&Bytes::from(bytes)) {
            let _ = check_envelope(&message, envelope_from, own, Arrival::RaftStream);
            let _ = check_envelope(&message, envelope_from, own, Arrival::InstallSnapshot);
        }
    }

    #[test]
    fn any_raft_message_is_checked_without_panic(
        m in message(),
        envelope_from in 0..5u64,
        own in 1..4u64,
    ) {
        let bytes = Bytes::from(m.write_to_bytes().unwrap());
        let message = PeerMessage::decode(&bytes).expect("a well-formed message decodes");
        let verdict = check_envelope(&message, envelope_from, own, Arrival::RaftStream);
        // A message whose sender is not the envelope's never passes.
        if m.from != envelope_from {
            prop_assert!(verdict.is_err(), "{:?} passed from envelope {}", m, envelope_from);
        }
        let _ = check_membership(envelope_from, &[1, 2, 3]);
    }
}
