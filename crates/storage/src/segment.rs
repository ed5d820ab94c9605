//! One WAL segment file `<seq:016x>.wal`: creating and preallocating it, appending batch
//! frames to it, fsyncing it, scanning it at startup, and positioned reads of records.
//!
//! Since format version 3 a segment is its header record followed by *batch frames*, one
//! per group-commit write: a record of kind `Batch` whose payload starts with the frame's
//! own offset and the segment's seq (u64 LE each) and then holds the write's records,
//! each still framed and checksummed on its own (an entry's location points at its inner
//! record). Older segments hold the same records unwrapped; both are read.
//!
//! The active segment is preallocated (`fallocate`), so writes land inside the file and
//! its fdatasync commits no size change. The price is that a crash can now persist the
//! pages of the last, unacknowledged write in any order: its frame may be partly zeros,
//! partly data. Hence the end-of-data rule for the *last* segment: where the scan meets a
//! frame that fails a check, the data ends there if the rest of the file is zeros
//! (preallocated space, not damage); otherwise, past the header of a version 3 segment,
//! the rest is a torn write to cut off if no intact batch frame starts anywhere after it
//! — a write only starts after the previous one's fsync returned, so an intact frame
//! after a bad one proves the bad one was acknowledged, and that is corruption. What was
//! written by appending to the file (a version 3 segment's header, and every record of
//! an older segment) keeps the append rule: only a partial header, a record running past
//! the end of the file, or a final record whose payload fails and which ends exactly at
//! the end of the file is a torn tail. Any other failed check, anything but an exact end
//! in an older segment (which was cut back to its data and fsynced before the next one
//! was created), and any bad record inside a batch whose checksum holds, is corruption.
//! This file must not interpret records beyond a header's format version (that is the
//! caller's job) and must never skip a bad record to reach the ones after it.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::StorageError;
use crate::frame::{
    decode_header, encode_header, FrameHeader, RecordKind, HEADER_LEN_BYTES, KIND_OFFSET,
};
use crate::record::{Record, SegmentHeader};

/// The first format version whose segments are preallocated and written in batches.
const BATCHED_FORMAT_VERSION: u32 = 3;

/// An fsync slower than this is logged: the disk is the cluster's latency floor.
const SLOW_FSYNC_WARN: Duration = Duration::from_secs(1);

const SEGMENT_SUFFIX: &str = ".wal";

/// Bytes a batch frame puts before its records: the frame header, then the frame's own
/// offset and the segment's seq, which tell a real frame from bytes that look like one.
pub(crate) const BATCH_PREFIX_BYTES: usize = HEADER_LEN_BYTES + 16;

/// Turns `batch` — `BATCH_PREFIX_BYTES` of room followed by framed records — into the
/// batch frame that will be written at `offset_bytes` of segment `seq`.
pub(crate) fn seal_batch(
    batch: &mut [u8],
    seq: u64,
    offset_bytes: u64,
) -> Result<(), StorageError> {
    assert!(
        batch.len() > BATCH_PREFIX_BYTES,
        "a batch frame holds at least one record"
    );
    batch[HEADER_LEN_BYTES..HEADER_LEN_BYTES + 8].copy_from_slice(&offset_bytes.to_le_bytes());
    batch[HEADER_LEN_BYTES + 8..BATCH_PREFIX_BYTES].copy_from_slice(&seq.to_le_bytes());
    let header = encode_header(RecordKind::Batch, &batch[HEADER_LEN_BYTES..])?;
    batch[..HEADER_LEN_BYTES].copy_from_slice(&header);
    Ok(())
}

/// Why a frame failed its checks, and whether the failure is what an interrupted append
/// leaves at the end of a file (a partial header, a record running past the end, or a
/// final record whose payload fails and which ends exactly at the end).
#[derive(Debug)]
struct FrameProblem {
    reason: String,
    torn_if_appended: bool,
}

/// Checks the frame at `offset` of `data` (a whole segment, or a batch's extent): header,
/// length, payload checksum and, for a batch frame, that it names this place.
fn check_frame(data: &[u8], offset: usize, seq: u64) -> Result<FrameHeader, FrameProblem> {
    let problem = |reason: String, torn_if_appended: bool| FrameProblem {
        reason,
        torn_if_appended,
    };
    let rest = &data[offset..];
    if rest.len() < HEADER_LEN_BYTES {
        return Err(problem(
            format!(
                "partial record header ({} of {HEADER_LEN_BYTES} bytes)",
                rest.len()
            ),
            true,
        ));
    }
    let header = decode_header(rest[..HEADER_LEN_BYTES].try_into().expect("header length"))
        .map_err(|header_problem| problem(header_problem.to_string(), false))?;
    let record_len = header.record_len_bytes() as usize;
    if rest.len() < record_len {
        return Err(problem(
            format!(
                "record of {record_len} bytes runs past the end ({} bytes left)",
                rest.len()
            ),
            true,
        ));
    }
    let payload = &rest[HEADER_LEN_BYTES..record_len];
    if !header.payload_matches(payload) {
        return Err(problem(
            "payload checksum mismatch".to_string(),
            record_len == rest.len(),
        ));
    }
    if header.kind == RecordKind::Batch {
        let named = |range: std::ops::Range<usize>| {
            payload
                .get(range)
                .map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
        };
        if named(0..8) != Some(offset as u64) || named(8..16) != Some(seq) {
            return Err(problem(
                "batch frame names another place".to_string(),
                false,
            ));
        }
    }
    Ok(header)
}

/// The offset of the first intact batch frame starting at or after `from`, if any.
/// A batch's kind is not zero, so it lies in one of `extents` (the parts of `data` that
/// may hold data, in order): only offsets that put the kind there are tried.
fn find_intact_batch(
    data: &[u8],
    extents: &[Range<usize>],
    from: usize,
    seq: u64,
) -> Option<usize> {
    let last_start = data.len().checked_sub(BATCH_PREFIX_BYTES)?;
    extents
        .iter()
        .flat_map(|extent| {
            let first = extent.start.saturating_sub(KIND_OFFSET).max(from);
            let last = extent.end.saturating_sub(KIND_OFFSET).min(last_start + 1);
            first..last
        })
        .find(|&offset| {
            data[offset + KIND_OFFSET] == RecordKind::Batch as u8
                && data[offset + KIND_OFFSET + 1..offset + KIND_OFFSET + 4] == [0, 0, 0]
                && check_frame(data, offset, seq).is_ok()
        })
}

/// The byte ranges of the first `len_bytes` of `file` that may hold data, in order: what
/// `lseek(SEEK_DATA / SEEK_HOLE)` reports. Holes and unwritten (preallocated) space read
/// as zeros by definition, so a reader may skip them. The whole range where the file
/// system cannot tell.
fn data_extents(file: &File, len_bytes: u64) -> Vec<Range<usize>> {
    let whole = std::iter::once(0..len_bytes as usize).collect::<Vec<_>>();
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut position = 0u64;
    while position < len_bytes {
        let Ok(from) = libc::off_t::try_from(position) else {
            return whole;
        };
        // SAFETY: lseek only moves the file's offset, which nothing here relies on: every
        // read and write of a segment is positioned.
        let start = unsafe { libc::lseek(fd, from, libc::SEEK_DATA) };
        if start < 0 {
            return match std::io::Error::last_os_error().raw_os_error() {
                // No data at or after `position`.
                Some(libc::ENXIO) => extents,
                _ => whole,
            };
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let (Ok(start), Ok(end)) = (u64::try_from(start), u64::try_from(end)) else {
            return whole;
        };
        if start >= len_bytes {
            break;
        }
        let end = end.min(len_bytes);
        if end <= start {
            return whole;
        }
        extents.push(start as usize..end as usize);
        position = end;
    }
    extents
}

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
    /// Where the data ends: the intact frames, without the zeros (preallocated space)
    /// or the torn write that may follow them.
    pub valid_len_bytes: u64,
    /// Set when the last segment ends in a torn record that must be cut off.
    pub torn_tail: Option<String>,
    /// The segment's header says it is written in batch frames (format version 3 on).
    pub batched: bool,
}

#[derive(Debug)]
pub(crate) struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
    /// Where the data ends (the file may be longer: preallocated). Before the scan at
    /// open, the file's length.
    len_bytes: u64,
    /// Written in batch frames (format version 3 on), and so may be preallocated.
    batched: bool,
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
            batched: true,
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
            batched: false,
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

    /// Allocates the file up to `size_bytes` (fallocate, mode 0: the size grows, the new
    /// blocks read as zeros), so that appends inside it change no file size and their
    /// fdatasync commits less metadata. Best effort: where fallocate is unsupported or
    /// space is short the file simply grows with each write.
    pub fn preallocate(&self, size_bytes: u64) {
        if !self.batched {
            // Records appended one by one rely on the file size to fence a torn write.
            return;
        }
        let Ok(physical) = self.file.metadata().map(|meta| meta.len()) else {
            return;
        };
        if physical >= size_bytes {
            return;
        }
        let (Ok(offset), Ok(len)) = (
            libc::off_t::try_from(physical),
            libc::off_t::try_from(size_bytes - physical),
        ) else {
            return;
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is open for writing.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, offset, len) };
        if rc != 0 {
            tracing::debug!(path = %self.path.display(), error = %std::io::Error::last_os_error(), "WAL segment not preallocated");
        }
    }

    /// Gives back the preallocated space past the data of a segment about to stop being
    /// written, durably: an older segment must end exactly at its data (see the scan).
    pub fn trim(&mut self) -> Result<(), StorageError> {
        self.truncate(self.len_bytes)
    }

    /// The segment has just been given a header of this build's format.
    pub fn set_batched(&mut self) {
        self.batched = true;
    }

    /// What the scan found: where the data ends (the file may be longer: preallocated)
    /// and whether the segment is written in batch frames.
    pub fn set_scanned(&mut self, end: &ScanEnd) {
        self.len_bytes = end.valid_len_bytes;
        self.batched = end.batched;
    }

    /// fdatasync. The caller must treat a failure as fatal and never retry: after a
    /// failed fsync the kernel may have dropped the dirty pages and a second fsync
    /// would report success for data that is gone.
    pub fn sync_data(&self) -> Result<(), StorageError> {
        let started = Instant::now();
        let result = match crate::disk::apply_fsync_faults() {
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

    /// Reads the file's data and hands every intact record to `visit` with its offset and
    /// on-disk length (a batch's records one by one, at their own offsets), applying the
    /// end-of-data rule of this module's comment; `is_last` allows a torn tail and free
    /// space after the data. The repair itself (truncation) is left to the caller.
    pub fn scan(
        &self,
        is_last: bool,
        mut visit: impl FnMut(u64, &Record, u32) -> Result<(), StorageError>,
    ) -> Result<ScanEnd, StorageError> {
        // Only the parts that may hold data are read: a preallocated segment is mostly
        // unwritten space, which reads as the zeros the buffer already holds.
        let extents = data_extents(&self.file, self.len_bytes);
        let mut data = vec![0u8; self.len_bytes as usize];
        for extent in &extents {
            self.file
                .read_exact_at(&mut data[extent.clone()], extent.start as u64)
                .map_err(|err| StorageError::io(&self.path, err))?;
        }
        let corrupted = |offset: usize, reason: String| {
            StorageError::corrupted(&self.path, offset as u64, reason)
        };
        let mut batched = false;
        let mut offset = 0usize;
        while offset < data.len() {
            let header = match check_frame(&data, offset, self.seq) {
                Ok(header) => header,
                Err(problem) => {
                    let (valid_len_bytes, torn_tail) =
                        self.end_of_data(&data, &extents, offset, is_last, batched, problem)?;
                    return Ok(ScanEnd {
                        valid_len_bytes,
                        torn_tail,
                        batched,
                    });
                }
            };
            let record_end = offset + header.record_len_bytes() as usize;
            if header.kind == RecordKind::Batch {
                // The batch's checksum holds: whatever is wrong inside is damage, not a tear.
                let batch = &data[..record_end];
                let mut inner = offset + BATCH_PREFIX_BYTES;
                while inner < record_end {
                    let inner_header = check_frame(batch, inner, self.seq).map_err(|problem| {
                        corrupted(inner, format!("inside a batch: {}", problem.reason))
                    })?;
                    if matches!(
                        inner_header.kind,
                        RecordKind::Batch | RecordKind::SegmentHeader
                    ) {
                        return Err(corrupted(
                            inner,
                            format!("a {:?} record inside a batch", inner_header.kind),
                        ));
                    }
                    let record = self.decode_record(batch, inner, inner_header)?;
                    visit(inner as u64, &record, inner_header.payload_len_bytes)?;
                    inner += inner_header.record_len_bytes() as usize;
                }
            } else {
                let record = self.decode_record(&data, offset, header)?;
                if let Record::SegmentHeader(segment_header) = &record {
                    batched = segment_header.format_version >= BATCHED_FORMAT_VERSION;
                }
                visit(offset as u64, &record, header.payload_len_bytes)?;
            }
            offset = record_end;
        }
        Ok(ScanEnd {
            valid_len_bytes: data.len() as u64,
            torn_tail: None,
            batched,
        })
    }

    /// The scan met a frame at `offset` that failed its checks: the data ends there,
    /// with the torn tail's reason if one must be cut; or the corruption (the module
    /// comment has the rule).
    fn end_of_data(
        &self,
        data: &[u8],
        extents: &[Range<usize>],
        offset: usize,
        is_last: bool,
        batched: bool,
        problem: FrameProblem,
    ) -> Result<(u64, Option<String>), StorageError> {
        let corrupted = |reason: String| StorageError::corrupted(&self.path, offset as u64, reason);
        let end = |torn_tail| (offset as u64, torn_tail);
        if !is_last {
            return Err(corrupted(problem.reason));
        }
        // Outside the extents the buffer holds zeros it was never given: check only inside.
        let zeros_from_offset = extents.iter().all(|extent| {
            data[extent.start.max(offset)..extent.end.max(offset)]
                .iter()
                .all(|byte| *byte == 0)
        });
        if zeros_from_offset {
            return Ok(end(None));
        }
        if !batched {
            // Written by appending: a crash leaves a prefix of the last write.
            return if problem.torn_if_appended {
                Ok(end(Some(problem.reason)))
            } else {
                Err(corrupted(problem.reason))
            };
        }
        match find_intact_batch(data, extents, offset + 1, self.seq) {
            None => Ok(end(Some(problem.reason))),
            Some(next) => Err(corrupted(format!(
                "{}, yet an intact batch follows at offset {next}",
                problem.reason
            ))),
        }
    }

    /// Decodes the checked record at `offset` of `data`.
    fn decode_record(
        &self,
        data: &[u8],
        offset: usize,
        header: FrameHeader,
    ) -> Result<Record, StorageError> {
        let payload = &data[offset + HEADER_LEN_BYTES..offset + header.record_len_bytes() as usize];
        // Copy so a cached entry keeps only its own record alive, not the segment.
        Record::decode(header.kind, Bytes::copy_from_slice(payload))
            .map_err(|reason| StorageError::corrupted(&self.path, offset as u64, reason))
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
    fn data_extents_cover_every_written_byte_and_skip_preallocated_space() {
        let dir = tempfile::tempdir().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("extents"))
            .unwrap();
        const MIB: u64 = 1 << 20;
        file.write_all_at(&[7u8; 100], 0).unwrap();
        file.write_all_at(&[9u8; 100], MIB).unwrap();
        // SAFETY: plain integer arguments on an fd open for writing.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 8 * MIB as libc::off_t) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let extents = data_extents(&file, 8 * MIB);
        let covered = |offset: u64| {
            extents
                .iter()
                .any(|extent| extent.contains(&(offset as usize)))
        };
        for offset in (0..100).chain(MIB..MIB + 100) {
            assert!(covered(offset), "byte {offset} not in {extents:?}");
        }
        // The file system here (ext4, xfs, btrfs and tmpfs alike) reports unwritten space.
        assert!(!covered(4 * MIB), "{extents:?}");
        assert!(extents.windows(2).all(|pair| pair[0].end <= pair[1].start));
        // Past the end asked for, nothing.
        assert!(data_extents(&file, 50)
            .iter()
            .all(|extent| extent.end <= 50));
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

    fn one_extent(range: Range<usize>) -> Vec<Range<usize>> {
        std::iter::once(range).collect()
    }

    #[test]
    fn a_batch_frame_is_intact_only_where_it_was_sealed_for() {
        let mut batch = vec![0u8; BATCH_PREFIX_BYTES];
        Record::LogStart { index: 1, term: 1 }
            .encode_into(&mut batch)
            .unwrap();
        seal_batch(&mut batch, 7, 100).unwrap();
        let mut data = vec![0u8; 100];
        data.extend_from_slice(&batch);
        assert_eq!(check_frame(&data, 100, 7).unwrap().kind, RecordKind::Batch);
        let all = one_extent(0..data.len());
        assert_eq!(find_intact_batch(&data, &all, 0, 7), Some(100));
        // The same bytes in another segment, or at another offset, are not this batch.
        assert!(check_frame(&data, 100, 8).is_err());
        assert_eq!(find_intact_batch(&data, &all, 0, 8), None);
        let shifted: Vec<u8> = [0u8; 3].iter().chain(&data).copied().collect();
        assert_eq!(
            find_intact_batch(&shifted, &one_extent(0..shifted.len()), 0, 7),
            None
        );
        // Found from the extent that holds its kind, even when its first bytes lie in
        // the extent before; not from one that ends before the kind.
        let kind_at = 100 + KIND_OFFSET;
        assert_eq!(
            find_intact_batch(&data, &one_extent(kind_at..data.len()), 0, 7),
            Some(100)
        );
        assert_eq!(
            find_intact_batch(&data, &one_extent(0..kind_at), 0, 7),
            None
        );
    }

    fn header_record(format_version: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        Record::SegmentHeader(Box::new(SegmentHeader {
            format_version,
            seq: 1,
            log_start_index: 0,
            log_start_term: 0,
            hard_state: Default::default(),
            membership: Default::default(),
            latest_snapshot: None,
            replaces_older_segments: false,
        }))
        .encode_into(&mut buf)
        .unwrap();
        buf
    }

    fn log_start(index: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        Record::LogStart { index, term: 1 }
            .encode_into(&mut buf)
            .unwrap();
        buf
    }

    /// A segment file holding `bytes`, scanned as the last segment.
    fn scan_last(bytes: &[u8]) -> Result<ScanEnd, StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = Segment::create(dir.path(), 1).unwrap();
        segment.append(bytes).unwrap();
        let segment = Segment::open(dir.path(), 1, false).unwrap();
        segment.scan(true, |_, _, _| Ok(()))
    }

    #[test]
    fn an_older_format_segment_keeps_the_append_rule_for_its_last_records() {
        let mut bytes = header_record(2);
        let header_len = bytes.len();
        bytes.extend(log_start(1));
        let first_end = bytes.len();
        bytes.extend(log_start(2));
        bytes.extend(log_start(3));
        // A damaged middle record (no batch frame anywhere) is still corruption...
        let mut damaged = bytes.clone();
        damaged[first_end + HEADER_LEN_BYTES] ^= 1;
        match scan_last(&damaged) {
            Err(StorageError::Corrupted { offset, .. }) => assert_eq!(offset, first_end as u64),
            other => panic!("expected Corrupted, got {other:?}"),
        }
        // ...and a cut final record a torn tail.
        let end = scan_last(&bytes[..bytes.len() - 3]).unwrap();
        assert!(end.torn_tail.is_some());
        assert!(!end.batched);
        assert!(end.valid_len_bytes > header_len as u64);
    }

    #[test]
    fn a_damaged_header_of_a_header_only_last_segment_is_corruption() {
        // Compaction can leave a newest segment holding its header alone; cutting it
        // would start the node with no term, vote or membership. The file was
        // preallocated once the header was synced, so the header does not end the file
        // the way an interrupted append would.
        let mut bytes = header_record(crate::record::FORMAT_VERSION);
        bytes[HEADER_LEN_BYTES + 20] ^= 1;
        bytes.extend(vec![0u8; 4096]);
        assert!(matches!(
            scan_last(&bytes),
            Err(StorageError::Corrupted { offset: 0, .. })
        ));
    }

    #[test]
    fn a_bad_record_inside_a_batch_whose_checksum_holds_is_corruption() {
        let mut bytes = header_record(crate::record::FORMAT_VERSION);
        let batch_at = bytes.len();
        let mut batch = vec![0u8; BATCH_PREFIX_BYTES];
        batch.extend(log_start(1));
        let inner_at = batch_at + batch.len();
        let mut bad = log_start(2);
        bad[HEADER_LEN_BYTES] ^= 1;
        batch.extend(bad);
        seal_batch(&mut batch, 1, batch_at as u64).unwrap();
        bytes.extend(&batch);
        match scan_last(&bytes) {
            Err(StorageError::Corrupted { offset, .. }) => assert_eq!(offset, inner_at as u64),
            other => panic!("expected Corrupted, got {other:?}"),
        }
    }
}
