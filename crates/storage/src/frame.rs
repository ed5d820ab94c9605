//! Record framing: how one record's bytes are laid out in a segment, and the checks
//! that decide whether a run of bytes is a whole, intact record.
//!
//! ```text
//! offset  size  field
//!      0     4  payload_len_bytes   u32 little endian
//!      4     1  kind                RecordKind as u8
//!      5     3  reserved            zero
//!      8     4  payload_crc         CRC32C of the payload
//!     12     4  header_crc          CRC32C of bytes 0..12
//!     16     n  payload
//! ```
//! The header has its own checksum so that a flipped bit in the length is reported as
//! corruption instead of being mistaken for "the record runs past the end of the file",
//! which is what a torn write looks like. The same framing is used by WAL segments and
//! by snapshot files (which have kinds of their own). This file knows nothing about what
//! payloads mean, about files, or about which failures are repairable.

use crate::error::StorageError;

/// Size of the fixed record header.
pub(crate) const HEADER_LEN_BYTES: usize = 16;

/// Where the kind byte lies in the header (the layout above); the three reserved zero
/// bytes follow it.
pub(crate) const KIND_OFFSET: usize = 4;

/// Upper bound on one payload. Raft entries are bounded far below this by the server's
/// request limits; the bound keeps a single record from asking for absurd allocations.
pub(crate) const MAX_PAYLOAD_BYTES: u32 = 256 * 1024 * 1024;

/// What a record's payload holds (see `record.rs` for the encodings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordKind {
    // WAL segments.
    SegmentHeader = 1,
    Entry = 2,
    HardState = 3,
    Membership = 4,
    /// The log start: entries up to here are compacted (was "snapshot marker").
    LogStart = 5,
    SnapshotRecorded = 6,
    SnapshotInstalled = 7,
    /// One group-commit write: the records of one `sync`, checked as a whole
    /// (`segment.rs`). Since WAL format version 3.
    Batch = 8,
    // Snapshot files.
    SnapshotFileHeader = 16,
    SnapshotData = 17,
    SnapshotTrailer = 18,
}

impl RecordKind {
    fn from_u8(byte: u8) -> Option<RecordKind> {
        Some(match byte {
            1 => RecordKind::SegmentHeader,
            2 => RecordKind::Entry,
            3 => RecordKind::HardState,
            4 => RecordKind::Membership,
            5 => RecordKind::LogStart,
            6 => RecordKind::SnapshotRecorded,
            7 => RecordKind::SnapshotInstalled,
            8 => RecordKind::Batch,
            16 => RecordKind::SnapshotFileHeader,
            17 => RecordKind::SnapshotData,
            18 => RecordKind::SnapshotTrailer,
            _ => return None,
        })
    }
}

/// A decoded, checksum-verified header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub kind: RecordKind,
    pub payload_len_bytes: u32,
    pub payload_crc: u32,
}

impl FrameHeader {
    /// Total size of the record on disk.
    pub fn record_len_bytes(&self) -> u64 {
        HEADER_LEN_BYTES as u64 + u64::from(self.payload_len_bytes)
    }

    pub fn payload_matches(&self, payload: &[u8]) -> bool {
        crc32c::crc32c(payload) == self.payload_crc
    }
}

/// Why a header was rejected. The caller decides whether that is corruption or a
/// torn tail, because only it knows where in which file the header sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    ChecksumMismatch,
    UnknownKind(u8),
    ReservedNotZero,
    PayloadTooLarge(u32),
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::ChecksumMismatch => write!(f, "header checksum mismatch"),
            HeaderProblem::UnknownKind(kind) => write!(f, "unknown record kind {kind}"),
            HeaderProblem::ReservedNotZero => write!(f, "reserved header bytes are not zero"),
            HeaderProblem::PayloadTooLarge(len) => {
                write!(f, "payload length {len} exceeds {MAX_PAYLOAD_BYTES}")
            }
        }
    }
}

/// Decodes and verifies a header from exactly `HEADER_LEN_BYTES` bytes.
pub(crate) fn decode_header(bytes: &[u8; HEADER_LEN_BYTES]) -> Result<FrameHeader, HeaderProblem> {
    let stored_header_crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[0..12]) != stored_header_crc {
        return Err(HeaderProblem::ChecksumMismatch);
    }
    let payload_len_bytes = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let kind_byte = bytes[KIND_OFFSET];
    let kind = RecordKind::from_u8(kind_byte).ok_or(HeaderProblem::UnknownKind(kind_byte))?;
    if bytes[KIND_OFFSET + 1..KIND_OFFSET + 4] != [0, 0, 0] {
        return Err(HeaderProblem::ReservedNotZero);
    }
    if payload_len_bytes > MAX_PAYLOAD_BYTES {
        return Err(HeaderProblem::PayloadTooLarge(payload_len_bytes));
    }
    let payload_crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    Ok(FrameHeader {
        kind,
        payload_len_bytes,
        payload_crc,
    })
}

/// Appends one framed record to `out`; returns the record's total length.
pub(crate) fn encode_record(
    kind: RecordKind,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<u64, StorageError> {
    let header = encode_header(kind, payload)?;
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(HEADER_LEN_BYTES as u64 + payload.len() as u64)
}

/// The header of a record carrying `payload`, for writers that write the payload
/// separately (large snapshot records are not copied into a buffer).
pub(crate) fn encode_header(
    kind: RecordKind,
    payload: &[u8],
) -> Result<[u8; HEADER_LEN_BYTES], StorageError> {
    let payload_len_bytes = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_PAYLOAD_BYTES)
        .ok_or(StorageError::RecordTooLarge {
            size_bytes: payload.len() as u64,
            max_bytes: u64::from(MAX_PAYLOAD_BYTES),
        })?;
    let mut header = [0u8; HEADER_LEN_BYTES];
    header[0..4].copy_from_slice(&payload_len_bytes.to_le_bytes());
    header[KIND_OFFSET] = kind as u8;
    header[8..12].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&header[0..12]);
    header[12..16].copy_from_slice(&header_crc.to_le_bytes());
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(buf: &[u8]) -> [u8; HEADER_LEN_BYTES] {
        buf[..HEADER_LEN_BYTES].try_into().unwrap()
    }

    #[test]
    fn encoded_record_decodes_with_its_length_and_payload_checksum() {
        let mut buf = Vec::new();
        let len = encode_record(RecordKind::Entry, b"hello", &mut buf).unwrap();
        assert_eq!(len, buf.len() as u64);
        let header = decode_header(&header_of(&buf)).unwrap();
        assert_eq!(header.kind, RecordKind::Entry);
        assert_eq!(header.payload_len_bytes, 5);
        assert!(header.payload_matches(&buf[HEADER_LEN_BYTES..]));
        assert!(!header.payload_matches(b"hellO"));
    }

    #[test]
    fn any_flipped_bit_in_the_header_is_detected() {
        let mut buf = Vec::new();
        encode_record(RecordKind::HardState, b"payload", &mut buf).unwrap();
        for byte in 0..HEADER_LEN_BYTES {
            for bit in 0..8 {
                let mut header = header_of(&buf);
                header[byte] ^= 1 << bit;
                assert!(
                    decode_header(&header).is_err(),
                    "byte {byte} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn an_all_zero_header_is_invalid() {
        // Zero-filled file tails must never parse as an (empty) record.
        assert_eq!(
            decode_header(&[0u8; HEADER_LEN_BYTES]),
            Err(HeaderProblem::ChecksumMismatch)
        );
    }
}
