//! Encoding of the commands RaftKV writes into raft log entries.
//!
//! Commands are the prost type `raftkv_proto::internal::Command`. Decoding
//! from a `Bytes` buffer slices values out of it instead of copying, so a large
//! value exists once in memory (the entry) rather than twice.

use bytes::Bytes;
use prost::Message as _;

pub use raftkv_proto::internal::{ClusterIdChoice, Command, LeaseGrant, MemberAddress, Op};

/// Encodes a command for a log entry.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    cmd.encode_to_vec()
}

/// Decodes the data of an `EntryNormal` log entry.
pub fn decode_command(data: &Bytes) -> Result<Command, prost::DecodeError> {
    Command::decode(data.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_field() {
        let cmd = Command {
            proposer: 3,
            proposal_id: 99,
            client_id: 7,
            seq: 5,
            first_incomplete_seq: 4,
            timestamp_ms: 1_700_000_000_000,
            rules: 1,
            cluster_id: None,
            member_address: None,
            compact_revision: 0,
            etcd_txn: None,
            lease_grant: None,
            lease_revoke: 0,
            auth: None,
            user: "alice".into(),
            by_node: false,
            test_next_kind: true,
            ops: vec![
                Op {
                    key: Bytes::from_static(b"k\0ey"),
                    value: Bytes::from(vec![0u8; 3]),
                    delete: false,
                },
                Op {
                    key: Bytes::from_static(b"gone"),
                    value: Bytes::new(),
                    delete: true,
                },
            ],
        };
        let bytes = Bytes::from(encode_command(&cmd));
        assert_eq!(decode_command(&bytes).unwrap(), cmd);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_command(&Bytes::from_static(&[0xff, 0xff, 0xff])).is_err());
    }
}
