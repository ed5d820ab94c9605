//! The write-ahead log as a whole: the ordered set of segments under `<data-dir>/wal/`,
//! replay at startup (with torn-tail repair of the last segment), group-commit writes
//! with one fdatasync each, segment rollover (by size, or forced to carry a new log start
//! in a header), deleting old segments after compaction, and positioned reads of entries.
//!
//! Fail-stop: once an fsync fails (or a failed write cannot be undone) every later
//! write returns `FailStopped`; an fsync is never retried. A failed write that was
//! undone (ENOSPC, typically) leaves the log as it was, so the caller may retry.
//! This file must not interpret the log's contents beyond checking that every segment
//! starts with its own header; what the records mean is `file_storage.rs`'s business.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, HardState};

use crate::entry_log::EntryLocation;
use crate::error::StorageError;
use crate::frame::RecordKind;
use crate::membership::MembershipRecord;
use crate::record::{Record, SegmentHeader, SnapshotState};
use crate::segment::{parse_segment_file_name, seal_batch, sync_dir, Segment, BATCH_PREFIX_BYTES};

/// Name of the WAL directory inside the data directory.
pub const WAL_DIR_NAME: &str = "wal";

/// Where `Wal::write` puts a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// In the active segment (a new one once it is full).
    Append,
    /// At the start of a new segment.
    NewSegment,
    /// At the start of a new segment that marks every older one obsolete.
    ReplacingOlderSegments,
}

/// The durable metadata a new segment's header carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct DurableMeta {
    pub log_start_index: u64,
    pub log_start_term: u64,
    pub hard_state: HardState,
    pub membership: MembershipRecord,
    pub latest_snapshot: Option<SnapshotState>,
}

impl DurableMeta {
    fn header_record(&self, seq: u64, replaces_older_segments: bool) -> Record {
        Record::SegmentHeader(Box::new(SegmentHeader {
            format_version: crate::record::FORMAT_VERSION,
            seq,
            log_start_index: self.log_start_index,
            log_start_term: self.log_start_term,
            hard_state: self.hard_state.clone(),
            membership: self.membership.clone(),
            latest_snapshot: self.latest_snapshot.clone(),
            replaces_older_segments,
        }))
    }
}

/// The sequence number below which every segment is obsolete: that of the newest
/// intact header marked `replaces_older_segments` (0 if none).
pub(crate) fn obsolete_below_seq(headers: &[SegmentHeader]) -> u64 {
    headers
        .iter()
        .filter(|header| header.replaces_older_segments)
        .map(|header| header.seq)
        .max()
        .unwrap_or(0)
}

/// The intact headers of the segments in `<data_dir>/wal/` (best effort: a missing
/// directory gives none, an unreadable or damaged header is skipped — the full replay
/// reports it). Read before the replay to learn the newest log start any header carries.
pub(crate) fn read_segment_headers(data_dir: &Path) -> Result<Vec<SegmentHeader>, StorageError> {
    let dir = data_dir.join(WAL_DIR_NAME);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut headers = Vec::new();
    for seq in list_segment_seqs(&dir)? {
        if let Some(header) = Segment::open(&dir, seq, false)
            .ok()
            .and_then(|segment| segment.read_header())
        {
            headers.push(header);
        }
    }
    Ok(headers)
}

/// Deletes segments a snapshot install made obsolete but a crash (or an unlink error)
/// left behind. Best effort: one that cannot be deleted is skipped at every start
/// until it can.
/// Returns the ones still there.
fn remove_obsolete_segments(dir: &Path, seqs: &[u64]) -> Vec<u64> {
    let mut removed = false;
    let mut left = Vec::new();
    for seq in seqs {
        let path = dir.join(crate::segment::segment_file_name(*seq));
        match fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(
                    path = %path.display(),
                    %err,
                    "cannot delete a WAL segment a snapshot install made obsolete; it is ignored"
                );
                left.push(*seq);
            }
        }
    }
    if removed {
        if let Err(err) = sync_dir(dir) {
            tracing::warn!(%err, "fsync of the WAL directory after deleting obsolete segments");
        }
    }
    left
}

/// Where a replayed record sits; handed to the replay visitor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordPosition<'a> {
    pub path: &'a Path,
    pub segment_seq: u64,
    pub offset_bytes: u64,
    pub payload_len_bytes: u32,
}

/// Where a batch landed: its segment and the offset of its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchPosition {
    pub segment_seq: u64,
    pub offset_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    /// Live segments by sequence number; the last one is the one being written.
    segments: BTreeMap<u64, Segment>,
    segment_size_limit_bytes: u64,
    /// Why the WAL stopped accepting writes, once it has.
    fail_stopped: Option<String>,
    /// Segments a snapshot install made obsolete that could not be deleted yet.
    /// While any is left, no segment is deleted: the one marking them obsolete
    /// must stay (see `Wal::delete_segments_through`).
    obsolete_left: Vec<u64>,
}

impl Wal {
    /// Opens the WAL directory (creating it) and replays every record, in order, through
    /// `visit(position, record)`. Segments below `obsolete_below_seq` (see
    /// [`obsolete_below_seq`]) are left out of the replay and deleted. The last
    /// segment's torn tail is cut off; every other problem is an error. Call
    /// [`Wal::ensure_writable_segment`] next.
    pub fn open(
        data_dir: &Path,
        segment_size_limit_bytes: u64,
        obsolete_below_seq: u64,
        mut visit: impl FnMut(RecordPosition<'_>, &Record) -> Result<(), StorageError>,
    ) -> Result<Wal, StorageError> {
        let dir = data_dir.join(WAL_DIR_NAME);
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|err| StorageError::io(&dir, err))?;
            sync_dir(data_dir)?;
        }
        let mut seqs = list_segment_seqs(&dir)?;
        let obsolete: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|seq| *seq < obsolete_below_seq)
            .collect();
        if !obsolete.is_empty() {
            seqs.retain(|seq| *seq >= obsolete_below_seq);
            tracing::info!(
                segments = obsolete.len(),
                "skipping WAL segments older than the last snapshot install"
            );
        }
        let obsolete_left = remove_obsolete_segments(&dir, &obsolete);
        if let Some(pair) = seqs.windows(2).find(|pair| pair[1] != pair[0] + 1) {
            return Err(StorageError::Inconsistent {
                dir,
                reason: format!(
                    "segments {:016x} and {:016x} are not consecutive",
                    pair[0], pair[1]
                ),
            });
        }
        let mut segments = BTreeMap::new();
        for (position, &seq) in seqs.iter().enumerate() {
            let is_last = position + 1 == seqs.len();
            let mut segment = Segment::open(&dir, seq, is_last)?;
            let path = segment.path().to_path_buf();
            let end = segment.scan(is_last, |offset_bytes, record, payload_len_bytes| {
                check_header_placement(&path, segment.seq(), offset_bytes, record)?;
                let position = RecordPosition {
                    path: &path,
                    segment_seq: segment.seq(),
                    offset_bytes,
                    payload_len_bytes,
                };
                visit(position, record)
            })?;
            if let Some(reason) = &end.torn_tail {
                tracing::warn!(
                    path = %path.display(),
                    offset = end.valid_len_bytes,
                    cut_bytes = segment.len_bytes() - end.valid_len_bytes,
                    %reason,
                    "truncating torn tail of the last WAL segment"
                );
                segment.truncate(end.valid_len_bytes)?;
            }
            segment.set_scanned(&end);
            // Only the newest segment may lack a header (a crash while creating it);
            // an empty older one means its records were lost.
            if !is_last && end.valid_len_bytes == 0 {
                return Err(StorageError::corrupted(&path, 0, "older segment is empty"));
            }
            segments.insert(seq, segment);
        }
        Ok(Wal {
            dir,
            segments,
            segment_size_limit_bytes,
            fail_stopped: None,
            obsolete_left,
        })
    }

    /// Makes sure the last segment exists and starts with a header: on a fresh directory,
    /// or when a crash left the newest segment empty (its header torn off), it writes a
    /// header carrying `meta`, the state replayed from the older segments.
    pub fn ensure_writable_segment(&mut self, meta: &DurableMeta) -> Result<(), StorageError> {
        let last = self
            .segments
            .last_key_value()
            .map(|(seq, segment)| (*seq, segment.len_bytes()));
        match last {
            Some((seq, 0)) => {
                let segment = self.segments.get_mut(&seq).expect("segment exists");
                let mut buf = Vec::new();
                meta.header_record(seq, false).encode_into(&mut buf)?;
                segment.append(&buf)?;
                segment.sync_data()?;
                segment.set_batched();
                // The file may date from a crash before its directory entry was synced.
                sync_dir(&self.dir)?;
            }
            Some(_) => {}
            None => {
                let (segment, _) = self.create_segment(1, meta, &mut new_batch(), false)?;
                self.segments.insert(1, segment);
            }
        }
        let active = self
            .segments
            .values()
            .next_back()
            .expect("a segment exists");
        active.preallocate(self.segment_size_limit_bytes);
        Ok(())
    }

    /// Creates segment `seq`, writes its header then `batch` (see [`new_batch`]; nothing
    /// if it holds no record), fsyncs it and the directory, then preallocates the file;
    /// returns it with the offset `batch` went to.
    /// The first write appends to an empty file, so a crash keeps all of it or a prefix,
    /// never a batch without the header. If the write fails the file is removed again so
    /// a retry starts clean; if a sync fails the error is `FailStopped`.
    fn create_segment(
        &self,
        seq: u64,
        meta: &DurableMeta,
        batch: &mut [u8],
        replaces_older_segments: bool,
    ) -> Result<(Segment, u64), StorageError> {
        let mut buf = Vec::with_capacity(batch.len() + 256);
        meta.header_record(seq, replaces_older_segments)
            .encode_into(&mut buf)?;
        let batch_offset = buf.len() as u64;
        if holds_records(batch) {
            seal_batch(batch, seq, batch_offset)?;
            buf.extend_from_slice(batch);
        }
        let mut segment = Segment::create(&self.dir, seq)?;
        if let Err(err) = segment.append(&buf) {
            let path = segment.path().to_path_buf();
            drop(segment);
            if let Err(remove_err) = fs::remove_file(&path) {
                return Err(StorageError::FailStopped {
                    reason: format!(
                        "writing {} failed ({err}) and removing it failed too ({remove_err})",
                        path.display()
                    ),
                });
            }
            return Err(err);
        }
        segment
            .sync_data()
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|err| StorageError::FailStopped {
                reason: format!("fsync failed: {err}"),
            })?;
        segment.preallocate(self.segment_size_limit_bytes);
        Ok((segment, batch_offset))
    }

    /// True once a write failure made the WAL refuse all further writes.
    pub fn fail_stop_reason(&self) -> Option<&str> {
        self.fail_stopped.as_deref()
    }

    /// Writes `batch` (from [`new_batch`], with the framed records appended) as one batch
    /// frame and fdatasyncs once; the returned position is where `batch[0]` landed.
    /// Rolls over to a new segment first when the current one has reached the size
    /// limit; the new segment's header carries `meta`, which must describe what is
    /// durable *before* this batch.
    pub fn write_batch(
        &mut self,
        batch: &mut [u8],
        meta: &DurableMeta,
    ) -> Result<BatchPosition, StorageError> {
        self.write(batch, meta, Placement::Append)
    }

    /// Like [`Wal::write_batch`], but always starts a new segment, whose header carries
    /// `meta`. Used to make a new log start durable in a header before older segments
    /// are deleted.
    pub fn roll_over(
        &mut self,
        batch: &mut [u8],
        meta: &DurableMeta,
    ) -> Result<BatchPosition, StorageError> {
        self.write(batch, meta, Placement::NewSegment)
    }

    /// Like [`Wal::roll_over`], and the new segment's header marks every older segment
    /// obsolete (a snapshot install): once it is durable, replay skips the older ones
    /// however many of them are still on disk.
    pub fn roll_over_replacing_older(
        &mut self,
        batch: &mut [u8],
        meta: &DurableMeta,
    ) -> Result<BatchPosition, StorageError> {
        self.write(batch, meta, Placement::ReplacingOlderSegments)
    }

    fn write(
        &mut self,
        batch: &mut [u8],
        meta: &DurableMeta,
        placement: Placement,
    ) -> Result<BatchPosition, StorageError> {
        self.check_not_fail_stopped()?;
        let result = self.write_batch_inner(batch, meta, placement);
        if let Err(err) = &result {
            if !is_retryable(err) {
                let reason = match err {
                    StorageError::FailStopped { reason } => reason.clone(),
                    other => other.to_string(),
                };
                self.fail_stopped = Some(reason);
            }
        }
        result
    }

    fn check_not_fail_stopped(&self) -> Result<(), StorageError> {
        match &self.fail_stopped {
            Some(reason) => Err(StorageError::FailStopped {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn write_batch_inner(
        &mut self,
        batch: &mut [u8],
        meta: &DurableMeta,
        placement: Placement,
    ) -> Result<BatchPosition, StorageError> {
        let (&active_seq, active) = self
            .segments
            .last_key_value()
            .expect("ensure_writable_segment ran at open");
        if placement != Placement::Append || active.len_bytes() >= self.segment_size_limit_bytes {
            // The active segment was fsynced by the sync that wrote its last batch. It is
            // about to become an older segment, which must end exactly at its data.
            let active = self
                .segments
                .get_mut(&active_seq)
                .expect("active segment exists");
            active.trim().map_err(|err| StorageError::FailStopped {
                reason: format!("cutting a full WAL segment back to its data failed: {err}"),
            })?;
            let seq = active_seq + 1;
            let replaces = placement == Placement::ReplacingOlderSegments;
            let (segment, offset_bytes) = self.create_segment(seq, meta, batch, replaces)?;
            tracing::debug!(path = %segment.path().display(), "rolled over to a new WAL segment");
            self.segments.insert(seq, segment);
            return Ok(BatchPosition {
                segment_seq: seq,
                offset_bytes,
            });
        }
        let active = self
            .segments
            .get_mut(&active_seq)
            .expect("active segment exists");
        let offset_bytes = active.len_bytes();
        if !holds_records(batch) {
            return Ok(BatchPosition {
                segment_seq: active_seq,
                offset_bytes,
            });
        }
        seal_batch(batch, active_seq, offset_bytes)?;
        active.append(batch)?;
        // Not retryable: see `Segment::sync_data`.
        active
            .sync_data()
            .map_err(|err| StorageError::FailStopped {
                reason: format!("fsync failed: {err}"),
            })?;
        Ok(BatchPosition {
            segment_seq: active_seq,
            offset_bytes,
        })
    }

    /// Reads the entry at `location` back from disk, verifying its checksum.
    pub fn read_entry(&self, location: EntryLocation) -> Result<Entry, StorageError> {
        let segment =
            self.segments
                .get(&location.segment_seq)
                .ok_or_else(|| StorageError::Inconsistent {
                    dir: self.dir.clone(),
                    reason: format!(
                        "entry points at missing segment {:016x}",
                        location.segment_seq
                    ),
                })?;
        let payload = segment.read_payload_at(
            location.offset_bytes,
            RecordKind::Entry,
            location.payload_len_bytes,
        )?;
        match Record::decode(RecordKind::Entry, payload) {
            Ok(Record::Entry(entry)) => Ok(entry),
            Ok(_) => unreachable!("an Entry record decodes to an entry"),
            Err(reason) => Err(StorageError::corrupted(
                segment.path(),
                location.offset_bytes,
                reason,
            )),
        }
    }

    /// Deletes every segment with a sequence number up to `last_seq`, oldest first, then
    /// fsyncs `wal/`. The active (newest) segment is never deleted. Deletion stops at the
    /// first failure so the remaining segments stay consecutive. Nothing is deleted
    /// while a segment a snapshot install made obsolete is still on disk (the oldest
    /// live segment marks it so, and must outlive it). A failed directory fsync
    /// fail-stops the WAL. Returns how many files were deleted.
    pub fn delete_segments_through(&mut self, last_seq: u64) -> Result<u64, StorageError> {
        self.check_not_fail_stopped()?;
        if !self.obsolete_left.is_empty() {
            self.obsolete_left = remove_obsolete_segments(&self.dir, &self.obsolete_left);
            if !self.obsolete_left.is_empty() {
                // The oldest live segment marks them obsolete: it stays, and so
                // (to stay consecutive) do the ones after it.
                return Ok(0);
            }
        }
        let active_seq = self.active_seq();
        let doomed: Vec<u64> = self
            .segments
            .range(..=last_seq)
            .map(|(seq, _)| *seq)
            .filter(|seq| *seq != active_seq)
            .collect();
        let mut deleted = 0u64;
        let mut unlink_error = None;
        for seq in doomed {
            let path = self.segment_path(seq);
            match fs::remove_file(&path) {
                Ok(()) => {
                    self.segments.remove(&seq);
                    deleted += 1;
                    tracing::debug!(path = %path.display(), "deleted compacted WAL segment");
                }
                Err(err) => {
                    unlink_error = Some(StorageError::io(path, err));
                    break;
                }
            }
        }
        if deleted > 0 {
            if let Err(err) = sync_dir(&self.dir) {
                let reason =
                    format!("fsync of the WAL directory after deleting segments failed: {err}");
                self.fail_stopped = Some(reason.clone());
                return Err(StorageError::FailStopped { reason });
            }
        }
        match unlink_error {
            Some(err) => Err(err),
            None => Ok(deleted),
        }
    }

    /// Sequence numbers of the live segments, oldest first.
    pub fn segment_seqs(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }

    /// The segment being written.
    pub fn active_seq(&self) -> u64 {
        *self
            .segments
            .last_key_value()
            .expect("ensure_writable_segment ran at open")
            .0
    }

    pub fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(crate::segment::segment_file_name(seq))
    }

    pub fn segment_count(&self) -> u64 {
        self.segments.len() as u64
    }

    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(Segment::len_bytes).sum()
    }
}

/// An empty batch: room for the batch frame's prefix, to which the caller appends framed
/// records and then hands to [`Wal::write_batch`] or [`Wal::roll_over`]. A record's
/// offset in the buffer plus the returned position is its offset in the segment.
pub(crate) fn new_batch() -> Vec<u8> {
    vec![0u8; BATCH_PREFIX_BYTES]
}

/// Whether a batch from [`new_batch`] has had any record appended.
fn holds_records(batch: &[u8]) -> bool {
    batch.len() > BATCH_PREFIX_BYTES
}

/// A failed write that was undone can be retried (after freeing space); a failed
/// fsync or a failed undo cannot.
fn is_retryable(err: &StorageError) -> bool {
    matches!(
        err,
        StorageError::Io { .. } | StorageError::RecordTooLarge { .. }
    )
}

/// Every segment starts with its own header, and only there.
fn check_header_placement(
    path: &Path,
    seq: u64,
    offset: u64,
    record: &Record,
) -> Result<(), StorageError> {
    match (offset, record) {
        (0, Record::SegmentHeader(header)) if header.seq == seq => Ok(()),
        (0, Record::SegmentHeader(header)) => Err(StorageError::corrupted(
            path,
            0,
            format!(
                "segment header says sequence {:016x}, file name says {seq:016x}",
                header.seq
            ),
        )),
        (0, other) => Err(StorageError::corrupted(
            path,
            0,
            format!(
                "segment starts with a {:?} record instead of its header",
                other.kind()
            ),
        )),
        (_, Record::SegmentHeader(_)) => Err(StorageError::corrupted(
            path,
            offset,
            "segment header in the middle of a segment",
        )),
        _ => Ok(()),
    }
}

/// Sequence numbers of the segment files in `dir`, ascending. Other files are ignored
/// (and logged) so that an operator's stray file does not stop the node.
fn list_segment_seqs(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut seqs = Vec::new();
    for dir_entry in fs::read_dir(dir).map_err(|err| StorageError::io(dir, err))? {
        let dir_entry = dir_entry.map_err(|err| StorageError::io(dir, err))?;
        let name = dir_entry.file_name();
        match name.to_str().and_then(parse_segment_file_name) {
            Some(seq) => seqs.push(seq),
            None => {
                tracing::warn!(file = ?dir_entry.path(), "ignoring a file that is not a WAL segment")
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}
