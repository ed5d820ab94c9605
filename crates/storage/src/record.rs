//! The typed records of the WAL and their payload encodings.
//!
//! | kind (id)             | payload                                                   |
//! |-----------------------|-----------------------------------------------------------|
//! | SegmentHeader (1)     | magic "RKVW", format version, segment sequence number,    |
//! |                       | log start index and term, hard state, membership, and     |
//! |                       | (version 2) the latest snapshot (see below)               |
//! | Entry (2)             | protobuf `eraftpb::Entry`                                 |
//! | HardState (3)         | protobuf `eraftpb::HardState`                             |
//! | Membership (4)        | prost `internal::Membership`                              |
//! | LogStart (5)          | log start index u64 LE, its term u64 LE                   |
//! | SnapshotRecorded (6)  | snapshot index u64 LE, term u64 LE, membership (len-pref.)|
//! | SnapshotInstalled (7) | snapshot index u64 LE, term u64 LE, membership (len-pref.)|
//!
//! Segment header payload: magic u32, version u32, seq u64, log start index u64, log start
//! term u64, hard state (u32 length + protobuf), membership (u32 length + prost); version 2
//! then adds a flag byte (1 = a snapshot follows) and, if set, snapshot index u64, term u64
//! and its membership (u32 length + prost); version 4 then adds a flag byte (1 = this
//! segment replaces every older one: see `SegmentHeader::replaces_older_segments`).
//! Version 1 headers (no snapshot) are still read.
//!
//! Framing and checksums live in `frame.rs`; this file must not do I/O.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use crate::error::StorageError;
use crate::frame::{encode_record, RecordKind};
use crate::membership::MembershipRecord;
use crate::snapshot_file::SnapshotMeta;

/// "RKVW" — tells a RaftKV segment from any other file that ended up in `wal/`.
const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"RKVW");
/// Bumped on any incompatible change of the on-disk format. Version 2 added the latest
/// snapshot to the segment header; version 3 wraps each group-commit write in a batch
/// frame and preallocates segments; version 4 marks the segment a snapshot install
/// starts as replacing every older one. Versions 1 to 3 are still read.
pub(crate) const FORMAT_VERSION: u32 = 4;
const OLDEST_READABLE_VERSION: u32 = 1;

/// A snapshot recorded as durable, with the membership as of its index.
pub(crate) type SnapshotState = (SnapshotMeta, MembershipRecord);

/// First record of every segment: the whole durable metadata at the moment the segment
/// was created, so every older segment can later be deleted without losing it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SegmentHeader {
    /// The format version the segment was written in (new segments: `FORMAT_VERSION`);
    /// from version 3 on, its writes are batch frames in preallocated space.
    pub format_version: u32,
    pub seq: u64,
    pub log_start_index: u64,
    pub log_start_term: u64,
    pub hard_state: HardState,
    pub membership: MembershipRecord,
    pub latest_snapshot: Option<SnapshotState>,
    /// Every segment with a lower sequence number is obsolete (a snapshot install
    /// started this segment): replay skips them whether or not they were deleted yet.
    pub replaces_older_segments: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Record {
    SegmentHeader(Box<SegmentHeader>),
    Entry(Entry),
    HardState(HardState),
    Membership(MembershipRecord),
    /// Everything up to `index` (whose term is `term`) is compacted (or, at bootstrap,
    /// never existed): the log starts after it.
    LogStart {
        index: u64,
        term: u64,
    },
    /// The snapshot file for `meta` is durable; the latest snapshot from now on.
    SnapshotRecorded {
        meta: SnapshotMeta,
        membership: MembershipRecord,
    },
    /// A snapshot from the leader was installed: every entry is dropped, the log starts
    /// after `meta.index`, the membership is replaced and `meta` is the latest snapshot.
    SnapshotInstalled {
        meta: SnapshotMeta,
        membership: MembershipRecord,
    },
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::SegmentHeader(_) => RecordKind::SegmentHeader,
            Record::Entry(_) => RecordKind::Entry,
            Record::HardState(_) => RecordKind::HardState,
            Record::Membership(_) => RecordKind::Membership,
            Record::LogStart { .. } => RecordKind::LogStart,
            Record::SnapshotRecorded { .. } => RecordKind::SnapshotRecorded,
            Record::SnapshotInstalled { .. } => RecordKind::SnapshotInstalled,
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
                let mut out = Vec::with_capacity(64 + hard_state.len() + membership.len());
                out.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
                out.extend_from_slice(&header.format_version.to_le_bytes());
                out.extend_from_slice(&header.seq.to_le_bytes());
                out.extend_from_slice(&header.log_start_index.to_le_bytes());
                out.extend_from_slice(&header.log_start_term.to_le_bytes());
                put_len_prefixed(&mut out, &hard_state);
                put_len_prefixed(&mut out, &membership);
                match &header.latest_snapshot {
                    None => out.push(0),
                    Some((meta, membership)) => {
                        out.push(1);
                        put_snapshot(&mut out, meta, membership);
                    }
                }
                if header.format_version >= 4 {
                    out.push(u8::from(header.replaces_older_segments));
                }
                out
            }
            Record::Entry(entry) => encode_protobuf(entry),
            Record::HardState(hard_state) => encode_protobuf(hard_state),
            Record::Membership(membership) => membership.encode(),
            Record::LogStart { index, term } => {
                let mut out = Vec::with_capacity(16);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&term.to_le_bytes());
                out
            }
            Record::SnapshotRecorded { meta, membership }
            | Record::SnapshotInstalled { meta, membership } => {
                let mut out = Vec::new();
                put_snapshot(&mut out, meta, membership);
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
                if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
                    return Err(format!(
                        "segment format version {version}, this build reads \
                         {OLDEST_READABLE_VERSION} to {FORMAT_VERSION}"
                    ));
                }
                let seq = reader.u64()?;
                let log_start_index = reader.u64()?;
                let log_start_term = reader.u64()?;
                let hard_state =
                    HardState::parse_from_bytes(reader.len_prefixed()?).map_err(|err| {
                        format!("hard state in segment header does not decode: {err}")
                    })?;
                let membership = MembershipRecord::decode(reader.len_prefixed()?)?;
                let latest_snapshot = if version >= 2 {
                    match reader.u8()? {
                        0 => None,
                        1 => Some(reader.snapshot()?),
                        flag => return Err(format!("snapshot flag {flag} is neither 0 nor 1")),
                    }
                } else {
                    None
                };
                let replaces_older_segments = if version >= 4 {
                    match reader.u8()? {
                        0 => false,
                        1 => true,
                        flag => return Err(format!("replaces flag {flag} is neither 0 nor 1")),
                    }
                } else {
                    false
                };
                reader.finish()?;
                Ok(Record::SegmentHeader(Box::new(SegmentHeader {
                    format_version: version,
                    seq,
                    log_start_index,
                    log_start_term,
                    hard_state,
                    membership,
                    latest_snapshot,
                    replaces_older_segments,
                })))
            }
            // Parsing from `Bytes` lets the entry's data share the read buffer.
            RecordKind::Entry => Entry::parse_from_carllerche_bytes(&payload)
                .map(Record::Entry)
                .map_err(|err| format!("entry does not decode: {err}")),
            RecordKind::HardState => HardState::parse_from_bytes(&payload)
                .map(Record::HardState)
                .map_err(|err| format!("hard state does not decode: {err}")),
            RecordKind::Membership => MembershipRecord::decode(&payload).map(Record::Membership),
            RecordKind::LogStart => {
                let mut reader = Reader::new(&payload);
                let index = reader.u64()?;
                let term = reader.u64()?;
                reader.finish()?;
                Ok(Record::LogStart { index, term })
            }
            RecordKind::SnapshotRecorded | RecordKind::SnapshotInstalled => {
                let mut reader = Reader::new(&payload);
                let (meta, membership) = reader.snapshot()?;
                reader.finish()?;
                Ok(if kind == RecordKind::SnapshotRecorded {
                    Record::SnapshotRecorded { meta, membership }
                } else {
                    Record::SnapshotInstalled { meta, membership }
                })
            }
            RecordKind::SnapshotFileHeader
            | RecordKind::SnapshotData
            | RecordKind::SnapshotTrailer => Err(format!(
                "a snapshot-file record ({kind:?}) does not belong in a WAL segment"
            )),
            RecordKind::Batch => Err("a batch frame is not a record of its own".to_string()),
        }
    }
}

fn put_snapshot(out: &mut Vec<u8>, meta: &SnapshotMeta, membership: &MembershipRecord) {
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    put_len_prefixed(out, &membership.encode());
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

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
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

    fn snapshot(&mut self) -> Result<SnapshotState, String> {
        let index = self.u64()?;
        let term = self.u64()?;
        let membership = MembershipRecord::decode(self.len_prefixed()?)?;
        Ok((SnapshotMeta { index, term }, membership))
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
        membership.max_node_id = 2;
        round_trip(Record::Membership(membership.clone()));
        round_trip(Record::LogStart { index: 10, term: 4 });
        let meta = SnapshotMeta { index: 12, term: 4 };
        round_trip(Record::SnapshotRecorded {
            meta,
            membership: membership.clone(),
        });
        round_trip(Record::SnapshotInstalled {
            meta,
            membership: membership.clone(),
        });
        let header = SegmentHeader {
            format_version: FORMAT_VERSION,
            seq: 3,
            log_start_index: 10,
            log_start_term: 4,
            hard_state,
            membership: membership.clone(),
            latest_snapshot: None,
            replaces_older_segments: false,
        };
        round_trip(Record::SegmentHeader(Box::new(header.clone())));
        round_trip(Record::SegmentHeader(Box::new(SegmentHeader {
            latest_snapshot: Some((meta, membership)),
            replaces_older_segments: true,
            ..header
        })));
    }

    #[test]
    fn a_foreign_segment_header_is_rejected() {
        let mut payload = Record::LogStart { index: 1, term: 1 }.payload();
        payload.extend_from_slice(&[0; 24]);
        let err = Record::decode(RecordKind::SegmentHeader, payload.into()).unwrap_err();
        assert!(err.contains("magic"), "{err}");
    }

    #[test]
    fn a_version_1_segment_header_still_decodes_without_a_snapshot() {
        let hard_state = HardState {
            term: 2,
            commit: 5,
            ..Default::default()
        };
        let membership = MembershipRecord {
            index: 1,
            ..Default::default()
        };
        let mut payload = Vec::new();
        payload.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&7u64.to_le_bytes());
        payload.extend_from_slice(&3u64.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
        put_len_prefixed(&mut payload, &encode_protobuf(&hard_state));
        put_len_prefixed(&mut payload, &membership.encode());
        let decoded = Record::decode(RecordKind::SegmentHeader, payload.into()).unwrap();
        assert_eq!(
            decoded,
            Record::SegmentHeader(Box::new(SegmentHeader {
                format_version: 1,
                seq: 7,
                log_start_index: 3,
                log_start_term: 1,
                hard_state,
                membership,
                latest_snapshot: None,
                replaces_older_segments: false,
            }))
        );
    }
}
