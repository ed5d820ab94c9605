//! The typed records of the WAL and their payload encodings.
//!
//! | kind            | payload                                                        |
//! |-----------------|----------------------------------------------------------------|
//! | SegmentHeader   | magic "RKVW", format version, segment sequence number,         |
//! |                 | snapshot index and term, hard state, membership (see below)    |
//! | Entry           | protobuf `eraftpb::Entry`                                      |
//! | HardState       | protobuf `eraftpb::HardState`                                  |
//! | Membership      | prost `internal::Membership`                                   |
//! | SnapshotMarker  | snapshot index u64 LE, snapshot term u64 LE                    |
//!
//! Framing and checksums live in `frame.rs`; this file must not do I/O.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use crate::error::StorageError;
use crate::frame::{encode_record, RecordKind};
use crate::membership::MembershipRecord;

/// "RKVW" — tells a RaftKV segment from any other file that ended up in `wal/`.
const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"RKVW");
/// Bumped on any incompatible change of the on-disk format.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// First record of every segment: the whole durable metadata at the moment the segment
/// was created, so every older segment can later be deleted without losing it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SegmentHeader {
    pub seq: u64,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub hard_state: HardState,
    pub membership: MembershipRecord,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Record {
    SegmentHeader(SegmentHeader),
    Entry(Entry),
    HardState(HardState),
    Membership(MembershipRecord),
    /// Everything up to `index` (whose term is `term`) is covered by a snapshot.
    SnapshotMarker {
        index: u64,
        term: u64,
    },
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::SegmentHeader(_) => RecordKind::SegmentHeader,
            Record::Entry(_) => RecordKind::Entry,
            Record::HardState(_) => RecordKind::HardState,
            Record::Membership(_) => RecordKind::Membership,
            Record::SnapshotMarker { .. } => RecordKind::SnapshotMarker,
        }
    }

    /// Frames the record onto `out`; returns its length on disk.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<u64, StorageError> {
        encode_record(self.kind(), &self.payload(), out)
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Record::SegmentHeader(header) => {
                let hard_state = encode_protobuf(&header.hard_state);
                let membership = header.membership.encode();
                let mut out = Vec::with_capacity(40 + hard_state.len() + membership.len());
                out.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
                out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
                out.extend_from_slice(&header.seq.to_le_bytes());
                out.extend_from_slice(&header.snapshot_index.to_le_bytes());
                out.extend_from_slice(&header.snapshot_term.to_le_bytes());
                put_len_prefixed(&mut out, &hard_state);
                put_len_prefixed(&mut out, &membership);
                out
            }
            Record::Entry(entry) => encode_protobuf(entry),
            Record::HardState(hard_state) => encode_protobuf(hard_state),
            Record::Membership(membership) => membership.encode(),
            Record::SnapshotMarker { index, term } => {
                let mut out = Vec::with_capacity(16);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&term.to_le_bytes());
                out
            }
        }
    }

    /// Decodes a checksum-verified payload. An error here means the writer and reader
    /// disagree on the format (or a bug), never a torn write: the checksum matched.
    pub fn decode(kind: RecordKind, payload: Bytes) -> Result<Record, String> {
        match kind {
            RecordKind::SegmentHeader => {
                let mut reader = Reader::new(&payload);
                let magic = reader.u32()?;
                if magic != SEGMENT_MAGIC {
                    return Err(format!("segment header magic {magic:#x} is not RaftKV's"));
                }
                let version = reader.u32()?;
                if version != FORMAT_VERSION {
                    return Err(format!(
                        "segment format version {version}, this build reads {FORMAT_VERSION}"
                    ));
                }
                let seq = reader.u64()?;
                let snapshot_index = reader.u64()?;
                let snapshot_term = reader.u64()?;
                let hard_state =
                    HardState::parse_from_bytes(reader.len_prefixed()?).map_err(|err| {
                        format!("hard state in segment header does not decode: {err}")
                    })?;
                let membership = MembershipRecord::decode(reader.len_prefixed()?)?;
                reader.finish()?;
                Ok(Record::SegmentHeader(SegmentHeader {
                    seq,
                    snapshot_index,
                    snapshot_term,
                    hard_state,
                    membership,
                }))
            }
            // Parsing from `Bytes` lets the entry's data share the read buffer.
            RecordKind::Entry => Entry::parse_from_carllerche_bytes(&payload)
                .map(Record::Entry)
                .map_err(|err| format!("entry does not decode: {err}")),
            RecordKind::HardState => HardState::parse_from_bytes(&payload)
                .map(Record::HardState)
                .map_err(|err| format!("hard state does not decode: {err}")),
            RecordKind::Membership => MembershipRecord::decode(&payload).map(Record::Membership),
            RecordKind::SnapshotMarker => {
                let mut reader = Reader::new(&payload);
                let index = reader.u64()?;
                let term = reader.u64()?;
                reader.finish()?;
                Ok(Record::SnapshotMarker { index, term })
            }
        }
    }
}

fn encode_protobuf(message: &impl protobuf::Message) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("encoding a raft message into memory cannot fail")
}

fn put_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("metadata is far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Bounds-checked little-endian reader for the hand-laid-out payloads.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < len {
            return Err(format!(
                "payload ends early: wanted {len} more bytes, {} left",
                self.rest.len()
            ));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn finish(&self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} unexpected bytes after the payload",
                self.rest.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_header, HEADER_LEN_BYTES};

    fn round_trip(record: Record) {
        let mut buf = Vec::new();
        record.encode_into(&mut buf).unwrap();
        let header = decode_header(&buf[..HEADER_LEN_BYTES].try_into().unwrap()).unwrap();
        let payload = Bytes::copy_from_slice(&buf[HEADER_LEN_BYTES..]);
        assert_eq!(Record::decode(header.kind, payload).unwrap(), record);
    }

    #[test]
    fn every_record_kind_round_trips() {
        round_trip(Record::Entry(Entry {
            index: 5,
            term: 2,
            data: Bytes::from_static(b"put x 1"),
            ..Default::default()
        }));
        let hard_state = HardState {
            term: 3,
            vote: 2,
            commit: 9,
            ..Default::default()
        };
        round_trip(Record::HardState(hard_state.clone()));
        let mut membership = MembershipRecord {
            index: 1,
            ..Default::default()
        };
        membership.conf_state.voters = vec![1, 2];
        membership.addresses.insert(1, "h1:7001".into());
        round_trip(Record::Membership(membership.clone()));
        round_trip(Record::SnapshotMarker { index: 10, term: 4 });
        round_trip(Record::SegmentHeader(SegmentHeader {
            seq: 3,
            snapshot_index: 10,
            snapshot_term: 4,
            hard_state,
            membership,
        }));
    }

    #[test]
    fn a_foreign_segment_header_is_rejected() {
        let mut payload = Record::SnapshotMarker { index: 1, term: 1 }.payload();
        payload.extend_from_slice(&[0; 24]);
        let err = Record::decode(RecordKind::SegmentHeader, payload.into()).unwrap_err();
        assert!(err.contains("magic"), "{err}");
    }
}
