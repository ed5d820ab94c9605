//! Property tests: the state machine and its decoders take any bytes a log
//! entry, an etcd request or a snapshot record could hold — random bytes,
//! and well-formed commands with wild fields — and answer or refuse, never
//! panic; the store revision never goes back. `PROPTEST_CASES=N` runs more
//! cases than the bounded default (the long mode).

use bytes::Bytes;
use proptest::prelude::*;
use raftkv_kv::{decode_command, Command, KvState, LeaseGrant, Op, SessionLimits};
use raftkv_proto::etcdserverpb::{RangeRequest, TxnRequest};

fn small_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}

/// A protobuf message decoded from random bytes (often the default, often
/// with odd fields set), or the default when they do not decode.
fn decoded<M: prost::Message + Default + std::fmt::Debug>() -> impl Strategy<Value = M> {
    proptest::collection::vec(any::<u8>(), 0..64)
        .prop_map(|bytes| M::decode(bytes.as_slice()).unwrap_or_default())
}

/// A command as a (possibly hostile) leader could have put it in the log.
fn command() -> impl Strategy<Value = Command> {
    (
        proptest::collection::vec((small_bytes(), small_bytes(), any::<bool>()), 0..4),
        decoded::<TxnRequest>(),
        0..4u8,
        (0..4u64, 0..8u64, 0..3u64),
        (any::<u64>(), 0..3u32),
    )
        .prop_map(
            |(ops, txn, kind, (client_id, seq, lease), (stamp, rules))| {
                let mut cmd = Command {
                    client_id,
                    seq,
                    first_incomplete_seq: seq.saturating_sub(2),
                    timestamp_ms: stamp % 1_000_000,
                    rules,
                    ops: ops
                        .into_iter()
                        .map(|(key, value, delete)| Op { key, value, delete })
                        .collect(),
                    ..Default::default()
                };
                match kind {
                    0 => cmd.etcd_txn = Some(txn),
                    1 => cmd.compact_revision = lease * 3,
                    2 => {
                        cmd.lease_grant = Some(LeaseGrant {
                            id: lease,
                            ttl: stamp % 10,
                        })
                    }
                    _ => cmd.lease_revoke = lease,
                }
                cmd
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
    fn random_entry_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_command(&Bytes::from(bytes));
    }

    #[test]
    fn any_sequence_of_commands_applies_without_panic(commands in proptest::collection::vec(command(), 1..24)) {
        let mut state = KvState::new(SessionLimits::default());
        let mut revision = state.revision();
        for (i, cmd) in commands.iter().enumerate() {
            let _ = state.apply(i as u64 + 1, 1, cmd);
            prop_assert!(state.revision() >= revision, "the revision went back");
            revision = state.revision();
        }
        // Reads of any shape on the result.
        for request in [
            RangeRequest { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0"), ..Default::default() },
            RangeRequest { key: Bytes::from_static(b"a"), revision: 1, count_only: true, ..Default::default() },
        ] {
            let _ = state.etcd_range(&request);
        }
    }

    #[test]
    fn etcd_requests_of_any_shape_are_answered_or_refused(
        range in decoded::<RangeRequest>(),
        txn in decoded::<TxnRequest>(),
        setup in proptest::collection::vec(command(), 0..8),
    ) {
        let mut state = KvState::new(SessionLimits::default());
        for (i, cmd) in setup.iter().enumerate() {
            let _ = state.apply(i as u64 + 1, 1, cmd);
        }
        let _ = state.etcd_range(&range);
        let _ = state.read_only_txn(&txn);
    }

    #[test]
    fn random_snapshot_records_restore_or_fail(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..128), 0..6),
    ) {
        let mut records = records.into_iter().map(Bytes::from);
        let _ = KvState::restore_snapshot::<std::convert::Infallible>(SessionLimits::default(), || {
            Ok(records.next())
        });
    }
}
