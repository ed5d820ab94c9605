//! One WAL segment file `<seq:016x>.wal`: creating it, appending to it, fsyncing it,
//! scanning it record by record at startup, and positioned reads of single records.
//!
//! The scan applies the torn-tail rule, and only to the file the caller says is the
//! last segment: a partial header, a record running past end of file, a final record
//! whose payload checksum fails and which ends exactly at end of file, or trailing
//! zero bytes mark where an interrupted write stopped. Any other failed check is
//! corruption. This file must not interpret records (that is the caller's job) and
//! must never skip a bad record to reach the ones after it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::StorageError;
use crate::frame::{decode_header, RecordKind, HEADER_LEN_BYTES};
use crate::record::{Record, SegmentHeader};

/// An fsync slower than this is logged: the disk is the cluster's latency floor.
const SLOW_FSYNC_WARN: Duration = Duration::from_secs(1);

const SEGMENT_SUFFIX: &str = ".wal";

pub(crate) fn segment_file_name(seq: u64) -> String {
    format!("{seq:016x}{SEGMENT_SUFFIX}")
}

/// The sequence number of a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    if stem.len() != 16 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|err| StorageError::io(dir, err))
}

/// How a scan ended.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Length of the intact prefix of the file.
    pub valid_len_bytes: u64,
    /// Set when the last segment ends in a torn record that must be cut off.
    pub torn_tail: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
    len_bytes: u64,
}

impl Segment {
    /// Creates a new, empty segment. Fails if the file exists: segments are never reused.
    pub fn create(wal_dir: &Path, seq: u64) -> Result<Segment, StorageError> {
        let path = wal_dir.join(segment_file_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|err| StorageError::io(&path, err))?;
        Ok(Segment {
            seq,
            path,
            file,
            len_bytes: 0,
        })
    }

    /// Opens an existing segment; `writable` for the one that may be repaired and appended to.
    pub fn open(wal_dir: &Path, seq: u64, writable: bool) -> Result<Segment, StorageError> {
        let path = wal_dir.join(segment_file_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .map_err(|err| StorageError::io(&path, err))?;
        let len_bytes = file
            .metadata()
            .map_err(|err| StorageError::io(&path, err))?
            .len();
        Ok(Segment {
            seq,
            path,
            file,
            len_bytes,
        })
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Writes `buf` at the end of the file (not durable until [`Segment::sync_data`]).
    /// On failure the file is cut back to its previous length so a later retry (after
    /// ENOSPC, say) does not leave a half-written record in the middle of the log; if
    /// even that fails the error is `FailStopped`.
    pub fn append(&mut self, buf: &[u8]) -> Result<(), StorageError> {
        if let Err(err) = self.file.write_all_at(buf, self.len_bytes) {
            if let Err(undo_err) = self.file.set_len(self.len_bytes) {
                return Err(StorageError::FailStopped {
                    reason: format!(
                        "write to {} failed ({err}) and cutting it back to {} bytes failed too ({undo_err})",
                        self.path.display(),
                        self.len_bytes
                    ),
                });
            }
            return Err(StorageError::io(&self.path, err));
        }
        self.len_bytes += buf.len() as u64;
        Ok(())
    }

    /// fdatasync. The caller must treat a failure as fatal and never retry: after a
    /// failed fsync the kernel may have dropped the dirty pages and a second fsync
    /// would report success for data that is gone.
    pub fn sync_data(&self) -> Result<(), StorageError> {
        let started = Instant::now();
        let result = match crate::disk::injected_fsync_error() {
            Some(err) => Err(err),
            None => self.file.sync_data(),
        };
        let elapsed = started.elapsed();
        if elapsed > SLOW_FSYNC_WARN {
            tracing::warn!(path = %self.path.display(), elapsed_ms = elapsed.as_millis() as u64, "slow fsync");
        }
        result.map_err(|err| StorageError::io(&self.path, err))
    }

    /// Cuts the file to `len_bytes` and makes that durable (torn-tail repair).
    pub fn truncate(&mut self, len_bytes: u64) -> Result<(), StorageError> {
        self.file
            .set_len(len_bytes)
            .and_then(|()| self.file.sync_all())
            .map_err(|err| StorageError::io(&self.path, err))?;
        self.len_bytes = len_bytes;
        Ok(())
    }

    /// Reads and verifies the record at `offset_bytes`, which the caller's index says is
    /// a `kind` record with a payload of `payload_len_bytes`. Works through `&self`.
    pub fn read_payload_at(
        &self,
        offset_bytes: u64,
        kind: RecordKind,
        payload_len_bytes: u32,
    ) -> Result<Bytes, StorageError> {
        let mut buf = vec![0u8; HEADER_LEN_BYTES + payload_len_bytes as usize];
        self.file
            .read_exact_at(&mut buf, offset_bytes)
            .map_err(|err| StorageError::io(&self.path, err))?;
        let corrupted = |reason: String| StorageError::corrupted(&self.path, offset_bytes, reason);
        let header_bytes: &[u8; HEADER_LEN_BYTES] =
            buf[..HEADER_LEN_BYTES].try_into().expect("header length");
        let header =
            decode_header(header_bytes).map_err(|problem| corrupted(problem.to_string()))?;
        if header.kind != kind || header.payload_len_bytes != payload_len_bytes {
            return Err(corrupted(format!(
                "expected a {kind:?} record of {payload_len_bytes} bytes, found {:?} of {} bytes",
                header.kind, header.payload_len_bytes
            )));
        }
        let payload = Bytes::from(buf).slice(HEADER_LEN_BYTES..);
        if !header.payload_matches(&payload) {
            return Err(corrupted("payload checksum mismatch".to_string()));
        }
        Ok(payload)
    }

    /// The segment's header, if its first record is an intact header; `None` for anything
    /// else (an empty or damaged file): this is a best-effort look used to find the log
    /// start before the full scan, which reports any damage.
    pub fn read_header(&self) -> Option<SegmentHeader> {
        let mut header_bytes = [0u8; HEADER_LEN_BYTES];
        self.file.read_exact_at(&mut header_bytes, 0).ok()?;
        let header = decode_header(&header_bytes).ok()?;
        if header.kind != RecordKind::SegmentHeader || header.record_len_bytes() > self.len_bytes {
            return None;
        }
        let mut payload = vec![0u8; header.payload_len_bytes as usize];
        self.file
            .read_exact_at(&mut payload, HEADER_LEN_BYTES as u64)
            .ok()?;
        if !header.payload_matches(&payload) {
            return None;
        }
        match Record::decode(RecordKind::SegmentHeader, Bytes::from(payload)) {
            Ok(Record::SegmentHeader(segment_header)) => Some(*segment_header),
            _ => None,
        }
    }

    /// Reads the whole segment and hands every intact record to `visit` with its offset
    /// and on-disk length. `is_last` enables the torn-tail rule; the repair itself
    /// (truncation) is left to the caller, who logs it.
    pub fn scan(
        &self,
        is_last: bool,
        mut visit: impl FnMut(u64, &Record, u32) -> Result<(), StorageError>,
    ) -> Result<ScanEnd, StorageError> {
        let mut data = vec![0u8; self.len_bytes as usize];
        self.file
            .read_exact_at(&mut data, 0)
            .map_err(|err| StorageError::io(&self.path, err))?;
        let file_len = data.len();
        let mut offset = 0usize;
        while offset < file_len {
            let rest = &data[offset..];
            let torn = |reason: String| {
                if is_last {
                    Ok(ScanEnd {
                        valid_len_bytes: offset as u64,
                        torn_tail: Some(reason),
                    })
                } else {
                    Err(StorageError::corrupted(&self.path, offset as u64, reason))
                }
            };
            if rest.len() < HEADER_LEN_BYTES {
                return torn(format!(
                    "partial record header ({} of {HEADER_LEN_BYTES} bytes)",
                    rest.len()
                ));
            }
            let header =
                match decode_header(rest[..HEADER_LEN_BYTES].try_into().expect("header length")) {
                    Ok(header) => header,
                    // Zeros past the last record are what a crash after the file grew but
                    // before its data pages were written leaves behind.
                    Err(_) if rest.iter().all(|byte| *byte == 0) => {
                        return torn(format!("{} trailing zero bytes", rest.len()));
                    }
                    Err(problem) => {
                        return Err(StorageError::corrupted(
                            &self.path,
                            offset as u64,
                            problem.to_string(),
                        ));
                    }
                };
            let record_len = header.record_len_bytes() as usize;
            if rest.len() < record_len {
                return torn(format!(
                    "record of {record_len} bytes runs past end of file ({} bytes left)",
                    rest.len()
                ));
            }
            let payload = &rest[HEADER_LEN_BYTES..record_len];
            if !header.payload_matches(payload) {
                if offset + record_len == file_len {
                    return torn("payload checksum mismatch in the final record".to_string());
                }
                return Err(StorageError::corrupted(
                    &self.path,
                    offset as u64,
                    "payload checksum mismatch",
                ));
            }
            // Copy so a cached entry keeps only its own record alive, not the segment.
            let record = Record::decode(header.kind, Bytes::copy_from_slice(payload))
                .map_err(|reason| StorageError::corrupted(&self.path, offset as u64, reason))?;
            visit(offset as u64, &record, header.payload_len_bytes)?;
            offset += record_len;
        }
        Ok(ScanEnd {
            valid_len_bytes: file_len as u64,
            torn_tail: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_sequence_number() {
        assert_eq!(segment_file_name(3), "0000000000000003.wal");
        assert_eq!(parse_segment_file_name("00000000000000ff.wal"), Some(255));
        assert_eq!(parse_segment_file_name("ff.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000003.wal.tmp"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn a_partial_record_in_a_non_final_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = Segment::create(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        Record::LogStart { index: 1, term: 1 }
            .encode_into(&mut buf)
            .unwrap();
        let first_len = buf.len();
        Record::LogStart { index: 2, term: 1 }
            .encode_into(&mut buf)
            .unwrap();
        segment.append(&buf[..buf.len() - 1]).unwrap();

        let end = segment.scan(true, |_, _, _| Ok(())).unwrap();
        assert_eq!(end.valid_len_bytes, first_len as u64);
        assert!(end.torn_tail.is_some());

        let err = segment.scan(false, |_, _, _| Ok(())).unwrap_err();
        match err {
            StorageError::Corrupted { offset, .. } => assert_eq!(offset, first_len as u64),
            other => panic!("expected Corrupted, got {other}"),
        }
    }
}
