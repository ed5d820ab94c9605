//! One snapshot file `<data-dir>/snap/<term:016x>-<index:016x>.snap`: its format, the
//! streaming writer (to a `.snap.tmp` file renamed into place), the streaming, verifying
//! reader, and raw positioned reads for sending the file to a peer.
//!
//! ```text
//! record 0      SnapshotFileHeader  magic "RKVS" u32, format version u32 (1),
//!                                   index u64, term u64                   (all LE)
//! record 1..=n  SnapshotData        one opaque payload each, as the caller wrote it
//! record n+1    SnapshotTrailer     record count n u64, total payload bytes u64,
//!                                   CRC32C of every file byte before the trailer u32
//! end of file
//! ```
//! Every record uses the WAL framing (`frame.rs`: length, kind, payload CRC, header CRC).
//! The trailer's whole-file CRC makes the file verifiable as a unit (after a transfer,
//! say), on top of the per-record checks. Any failed check — a record CRC, a bad header,
//! a record running past end of file, a missing or disagreeing trailer, bytes after the
//! trailer — is `StorageError::Corrupted` naming the file and the offset of the record.
//! This file must not know what payloads mean (the state machine's business) nor manage
//! the directory (`snapshot_store.rs` does).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::StorageError;
use crate::frame::{decode_header, encode_header, FrameHeader, RecordKind, HEADER_LEN_BYTES};
use crate::segment::sync_dir;

/// "RKVS" — a RaftKV snapshot file.
const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"RKVS");
const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const HEADER_PAYLOAD_BYTES: usize = 24;
const TRAILER_PAYLOAD_BYTES: usize = 20;
const IO_BUFFER_BYTES: usize = 256 * 1024;

pub(crate) const SNAPSHOT_SUFFIX: &str = ".snap";
pub(crate) const TEMP_SUFFIX: &str = ".snap.tmp";
pub(crate) const PARTIAL_SUFFIX: &str = ".snap.partial";

/// Which raft snapshot a file holds: the last log index it covers and that entry's term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
}

impl SnapshotMeta {
    /// `<term:016x>-<index:016x>.snap`
    pub fn file_name(&self) -> String {
        format!("{:016x}-{:016x}{SNAPSHOT_SUFFIX}", self.term, self.index)
    }
}

/// A complete snapshot file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// The meta a complete snapshot's file name encodes; `None` for any other name.
pub(crate) fn parse_snapshot_file_name(name: &str) -> Option<SnapshotMeta> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    let (term, index) = stem.split_once('-')?;
    let parse = |hex: &str| {
        (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
    };
    Some(SnapshotMeta {
        index: parse(index)?,
        term: parse(term)?,
    })
}

fn header_payload(meta: SnapshotMeta) -> [u8; HEADER_PAYLOAD_BYTES] {
    let mut out = [0u8; HEADER_PAYLOAD_BYTES];
    out[0..4].copy_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out[8..16].copy_from_slice(&meta.index.to_le_bytes());
    out[16..24].copy_from_slice(&meta.term.to_le_bytes());
    out
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

/// One verified record as read from a snapshot file.
struct Frame {
    header: FrameHeader,
    header_bytes: [u8; HEADER_LEN_BYTES],
    payload: Vec<u8>,
}

/// Writes a snapshot to `<name>.snap.tmp`; [`SnapshotWriter::finish`] makes it durable
/// and renames it into place. Dropped without `finish`, it removes the temporary file.
#[derive(Debug)]
pub struct SnapshotWriter {
    meta: SnapshotMeta,
    dir: PathBuf,
    tmp_path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    /// CRC32C of every byte written so far.
    file_crc: u32,
    record_count: u64,
    payload_bytes: u64,
    /// Set once a write failed: the file's contents are unknown, only dropping is left.
    failed: bool,
    finished: bool,
}

impl SnapshotWriter {
    pub(crate) fn create(dir: &Path, meta: SnapshotMeta) -> Result<SnapshotWriter, StorageError> {
        let tmp_path = dir.join(format!(
            "{}{}",
            meta.file_name()
                .strip_suffix(SNAPSHOT_SUFFIX)
                .expect("snapshot file name"),
            TEMP_SUFFIX
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|err| StorageError::io(&tmp_path, err))?;
        let mut writer = SnapshotWriter {
            meta,
            dir: dir.to_path_buf(),
            tmp_path,
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
            offset: 0,
            file_crc: 0,
            record_count: 0,
            payload_bytes: 0,
            failed: false,
            finished: false,
        };
        writer.write_framed(RecordKind::SnapshotFileHeader, &header_payload(meta))?;
        Ok(writer)
    }

    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    fn write_framed(&mut self, kind: RecordKind, payload: &[u8]) -> Result<(), StorageError> {
        if self.failed {
            return Err(StorageError::InvalidRequest {
                reason: format!(
                    "an earlier write to {} failed; drop this writer",
                    self.tmp_path.display()
                ),
            });
        }
        let header = encode_header(kind, payload)?;
        let result = self
            .out
            .write_all(&header)
            .and_then(|()| self.out.write_all(payload));
        if let Err(err) = result {
            self.failed = true;
            return Err(StorageError::io(&self.tmp_path, err));
        }
        self.file_crc = crc32c::crc32c_append(self.file_crc, &header);
        self.file_crc = crc32c::crc32c_append(self.file_crc, payload);
        self.offset += (HEADER_LEN_BYTES + payload.len()) as u64;
        Ok(())
    }

    /// Appends one payload (one record; at most the frame limit of 256 MiB).
    pub fn write_record(&mut self, payload: &[u8]) -> Result<(), StorageError> {
        self.write_framed(RecordKind::SnapshotData, payload)?;
        self.record_count += 1;
        self.payload_bytes += payload.len() as u64;
        Ok(())
    }

    /// Writes the trailer, fsyncs the file, renames it to `<name>.snap` and fsyncs `snap/`.
    pub fn finish(mut self) -> Result<SnapshotInfo, StorageError> {
        let mut trailer = [0u8; TRAILER_PAYLOAD_BYTES];
        trailer[0..8].copy_from_slice(&self.record_count.to_le_bytes());
        trailer[8..16].copy_from_slice(&self.payload_bytes.to_le_bytes());
        trailer[16..20].copy_from_slice(&self.file_crc.to_le_bytes());
        self.write_framed(RecordKind::SnapshotTrailer, &trailer)?;
        self.failed = true; // from here on, any failure leaves the writer unusable
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_all())
            .map_err(|err| StorageError::io(&self.tmp_path, err))?;
        let info = publish_snapshot(&self.dir, &self.tmp_path, self.meta, self.offset)?;
        self.finished = true;
        Ok(info)
    }
}

/// Renames a complete, fsynced snapshot file into place under its final name
/// and fsyncs the directory, so the name survives a crash.
pub(crate) fn publish_snapshot(
    dir: &Path,
    from: &Path,
    meta: SnapshotMeta,
    size_bytes: u64,
) -> Result<SnapshotInfo, StorageError> {
    let final_path = dir.join(meta.file_name());
    fs::rename(from, &final_path).map_err(|err| StorageError::io(&final_path, err))?;
    sync_dir(dir)?;
    Ok(SnapshotInfo {
        meta,
        path: final_path,
        size_bytes,
    })
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(err) = fs::remove_file(&self.tmp_path) {
                tracing::warn!(path = %self.tmp_path.display(), %err, "could not remove an unfinished snapshot");
            }
        }
    }
}

/// Reads a snapshot file's payloads in order, verifying every record as it goes and the
/// trailer at the end. Memory use is one buffer plus the current record.
#[derive(Debug)]
pub struct SnapshotReader {
    meta: SnapshotMeta,
    path: PathBuf,
    input: BufReader<File>,
    file_len: u64,
    offset: u64,
    file_crc: u32,
    record_count: u64,
    payload_bytes: u64,
    done: bool,
    failed: bool,
}

impl SnapshotReader {
    /// Opens `path` and checks its header; `expected` (when given) must match it.
    pub(crate) fn open(
        path: &Path,
        expected: Option<SnapshotMeta>,
    ) -> Result<SnapshotReader, StorageError> {
        SnapshotReader::open_prefix(path, expected, None)
    }

    /// Opens a snapshot file outside a data dir (a backup), checking its header;
    /// with `len`, the snapshot is the file's first `len` bytes (a backup stream
    /// carries more after it).
    pub fn open_file(path: &Path, len: Option<u64>) -> Result<SnapshotReader, StorageError> {
        SnapshotReader::open_prefix(path, None, len)
    }

    fn open_prefix(
        path: &Path,
        expected: Option<SnapshotMeta>,
        len: Option<u64>,
    ) -> Result<SnapshotReader, StorageError> {
        let file = File::open(path).map_err(|err| StorageError::io(path, err))?;
        let file_len = file
            .metadata()
            .map_err(|err| StorageError::io(path, err))?
            .len();
        let file_len = len.map_or(file_len, |len| len.min(file_len));
        let mut reader = SnapshotReader {
            meta: SnapshotMeta { index: 0, term: 0 },
            path: path.to_path_buf(),
            input: BufReader::with_capacity(IO_BUFFER_BYTES, file),
            file_len,
            offset: 0,
            file_crc: 0,
            record_count: 0,
            payload_bytes: 0,
            done: false,
            failed: false,
        };
        let frame = reader.read_frame()?;
        let (header, payload) = (&frame.header, &frame.payload);
        let corrupted = |reason: String| StorageError::corrupted(path, 0, reason);
        if header.kind != RecordKind::SnapshotFileHeader {
            return Err(corrupted(format!(
                "file starts with a {:?} record instead of a snapshot header",
                header.kind
            )));
        }
        if payload.len() != HEADER_PAYLOAD_BYTES {
            return Err(corrupted(format!(
                "snapshot header is {} bytes, expected {HEADER_PAYLOAD_BYTES}",
                payload.len()
            )));
        }
        let magic = le_u32(&payload[0..4]);
        if magic != SNAPSHOT_MAGIC {
            return Err(corrupted(format!(
                "snapshot magic {magic:#x} is not RaftKV's"
            )));
        }
        let version = le_u32(&payload[4..8]);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(corrupted(format!(
                "snapshot format version {version}, this build reads {SNAPSHOT_FORMAT_VERSION}"
            )));
        }
        reader.meta = SnapshotMeta {
            index: le_u64(&payload[8..16]),
            term: le_u64(&payload[16..24]),
        };
        if let Some(expected) = expected {
            if reader.meta != expected {
                return Err(corrupted(format!(
                    "header says index {} term {}, expected index {} term {}",
                    reader.meta.index, reader.meta.term, expected.index, expected.term
                )));
            }
        }
        reader.account(&frame);
        Ok(reader)
    }

    /// The index and term the file's header names.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// The next payload; `Ok(None)` at the end, once the trailer (record count, payload
    /// bytes, whole-file CRC) has been verified and nothing follows it.
    pub fn next_record(&mut self) -> Result<Option<Bytes>, StorageError> {
        if self.failed {
            return Err(StorageError::corrupted(
                &self.path,
                self.offset,
                "an earlier read of this snapshot failed",
            ));
        }
        if self.done {
            return Ok(None);
        }
        let result = self.next_record_inner();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn next_record_inner(&mut self) -> Result<Option<Bytes>, StorageError> {
        let record_offset = self.offset;
        let frame = self.read_frame()?;
        let corrupted = |reason: String| StorageError::corrupted(&self.path, record_offset, reason);
        match frame.header.kind {
            RecordKind::SnapshotData => {
                self.account(&frame);
                self.record_count += 1;
                self.payload_bytes += frame.payload.len() as u64;
                Ok(Some(Bytes::from(frame.payload)))
            }
            RecordKind::SnapshotTrailer => {
                let payload = &frame.payload;
                if payload.len() != TRAILER_PAYLOAD_BYTES {
                    return Err(corrupted(format!(
                        "trailer is {} bytes, expected {TRAILER_PAYLOAD_BYTES}",
                        payload.len()
                    )));
                }
                let record_count = le_u64(&payload[0..8]);
                let payload_bytes = le_u64(&payload[8..16]);
                let file_crc = le_u32(&payload[16..20]);
                if record_count != self.record_count || payload_bytes != self.payload_bytes {
                    return Err(corrupted(format!(
                        "trailer counts {record_count} records of {payload_bytes} bytes, \
                         the file holds {} records of {} bytes",
                        self.record_count, self.payload_bytes
                    )));
                }
                if file_crc != self.file_crc {
                    return Err(corrupted(format!(
                        "whole-file checksum mismatch (trailer {file_crc:#010x}, computed {:#010x})",
                        self.file_crc
                    )));
                }
                if self.offset != self.file_len {
                    return Err(StorageError::corrupted(
                        &self.path,
                        self.offset,
                        format!(
                            "{} bytes after the snapshot's end, which are not a whole backup \
                             tail (a saved backup cut short, or data appended to a snapshot)",
                            self.file_len - self.offset
                        ),
                    ));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(corrupted(format!(
                "unexpected {other:?} record inside a snapshot"
            ))),
        }
    }

    /// Adds a (non-trailer) record to the running whole-file checksum.
    fn account(&mut self, frame: &Frame) {
        self.file_crc = crc32c::crc32c_append(self.file_crc, &frame.header_bytes);
        self.file_crc = crc32c::crc32c_append(self.file_crc, &frame.payload);
    }

    /// Reads and checks the record at the current offset, advancing past it.
    fn read_frame(&mut self) -> Result<Frame, StorageError> {
        let offset = self.offset;
        let path = self.path.clone();
        let corrupted = |reason: String| StorageError::corrupted(&path, offset, reason);
        let remaining = self.file_len.saturating_sub(offset);
        if remaining < HEADER_LEN_BYTES as u64 {
            return Err(corrupted(format!(
                "file ends after {remaining} bytes of a record header (truncated; no trailer)"
            )));
        }
        let mut header_bytes = [0u8; HEADER_LEN_BYTES];
        self.read_exact(&mut header_bytes, offset)?;
        let header =
            decode_header(&header_bytes).map_err(|problem| corrupted(problem.to_string()))?;
        if header.record_len_bytes() > remaining {
            return Err(corrupted(format!(
                "record of {} bytes runs past end of file ({remaining} bytes left; truncated)",
                header.record_len_bytes()
            )));
        }
        let mut payload = vec![0u8; header.payload_len_bytes as usize];
        self.read_exact(&mut payload, offset)?;
        if !header.payload_matches(&payload) {
            return Err(corrupted("payload checksum mismatch".to_string()));
        }
        self.offset += header.record_len_bytes();
        Ok(Frame {
            header,
            header_bytes,
            payload,
        })
    }

    fn read_exact(&mut self, buf: &mut [u8], record_offset: u64) -> Result<(), StorageError> {
        self.input.read_exact(buf).map_err(|err| {
            if err.kind() == ErrorKind::UnexpectedEof {
                StorageError::corrupted(&self.path, record_offset, "file ends inside a record")
            } else {
                StorageError::io(&self.path, err)
            }
        })
    }
}

/// Up to `max_len` raw bytes of the snapshot file at `offset` (fewer at the end of the
/// file, none at its end), for streaming the file to a peer. The receiver verifies.
pub fn read_chunk_at(
    info: &SnapshotInfo,
    offset: u64,
    max_len: usize,
) -> Result<Bytes, StorageError> {
    let file = File::open(&info.path).map_err(|err| StorageError::io(&info.path, err))?;
    let file_len = file
        .metadata()
        .map_err(|err| StorageError::io(&info.path, err))?
        .len();
    if offset > file_len {
        return Err(StorageError::InvalidRequest {
            reason: format!(
                "offset {offset} is past the end of {} ({file_len} bytes)",
                info.path.display()
            ),
        });
    }
    let len = (file_len - offset).min(max_len as u64) as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|err| StorageError::io(&info.path, err))?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_term_then_index_and_parse_back() {
        let meta = SnapshotMeta {
            index: 0x1234,
            term: 7,
        };
        assert_eq!(meta.file_name(), "0000000000000007-0000000000001234.snap");
        assert_eq!(parse_snapshot_file_name(&meta.file_name()), Some(meta));
        assert_eq!(
            parse_snapshot_file_name("0000000000000007-0000000000001234.snap.tmp"),
            None
        );
        assert_eq!(parse_snapshot_file_name("7-1234.snap"), None);
    }
}
