//! `raftkv-storage`: the durable state of one RaftKV node, and its `raft::Storage`.
//!
//! # Layout of a data directory
//! ```text
//! <data-dir>/LOCK                             flock held by the process using the directory
//!                                               (its PID inside)
//! <data-dir>/raftkv.id                          data dir format, node id, cluster id, bootstrap
//!                                               id (text, with a CRC32C line)
//! <data-dir>/wal/<seq:016x>.wal                 WAL segments, consecutive seq; the oldest
//!                                               ones disappear with compaction
//! <data-dir>/snap/<term:016x>-<index:016x>.snap complete snapshot files
//! <data-dir>/snap/*.snap.tmp, *.snap.partial    being written / received (deleted at open)
//! ```
//!
//! # WAL format
//! A segment is a sequence of records. Each record is a 16-byte header — payload length
//! (u32 LE), kind (u8), 3 zero bytes, CRC32C of the payload, CRC32C of the first 12
//! header bytes — followed by the payload (`frame.rs`). Kinds (`record.rs`):
//! *segment header* (always and only the first record of a segment: magic, format
//! version, the segment's seq, the log start, hard state, membership and — since format
//! version 2; version 1 headers are still read — the latest snapshot with its membership,
//! all as durable when the segment was created, and since version 4 whether it replaces
//! every older segment), *entry* (protobuf `eraftpb::Entry`),
//! *hard state* (protobuf), *membership* (prost `internal::Membership`), *log start*
//! (index, term: entries up to index are compacted; written at bootstrap and by a
//! compaction that deletes nothing; kind 5, formerly "snapshot marker"), *snapshot
//! recorded* (index, term, membership: `record_snapshot`) and *snapshot installed*
//! (index, term, membership: `apply_snapshot`).
//!
//! Since format version 3 every write after the header is one *batch* record (kind 8):
//! its payload is the batch's own offset and the segment's seq (u64 LE each), then the
//! records of that write, each framed as above (`segment.rs`). The segment being
//! written is preallocated to `wal_segment_size_bytes` with `fallocate`, so writes land
//! inside the file and their fdatasync commits no size change (about 28% shorter on the
//! reference VM, BENCHMARKS.md); at rollover it is cut back to its data and fsynced.
//! The start-up scan reads only what `lseek(SEEK_DATA)` reports as data, so the
//! unwritten tail costs nothing to open.
//! Version 1 and 2 segments (records without batches) are still read.
//!
//! Because every segment header repeats all metadata, any prefix of segments can be
//! deleted without losing the hard state, the membership or the latest snapshot, as long
//! as a newer segment exists. Compaction therefore starts a new segment whose header
//! carries the new log start, fsyncs it, and only then deletes the oldest segments whose
//! entries are all at or below it (oldest first, stopping at the first that holds a
//! newer entry), then fsyncs `wal/`. `apply_snapshot` starts a new segment whose header
//! already carries the installed state (log start, commit, membership, snapshot) and is
//! marked *replaces older segments* (format version 4), and whose first record after the
//! header is *snapshot installed*; it fsyncs it, then deletes every older segment. A
//! crash or an unlink error can stop those deletions anywhere: replay skips (and
//! deletes) every segment older than the newest header so marked, so any subset of
//! leftovers starts; while one of them cannot be deleted, no segment is (the marked one
//! must outlive it).
//!
//! # Replay
//! Pass 1 reads only the segment headers: segments older than the newest one marked
//! *replaces older segments* are obsolete (left out and deleted), and the highest log
//! start among the rest is taken (a damaged header is skipped here and reported by
//! pass 2). Pass 2 applies every
//! record in order, starting from that log start:
//! - an entry at or below the log start is ignored (it is compacted — this is how the
//!   oldest remaining segment's prefix is skipped); otherwise it must be at most one past
//!   the last index — one at or below it truncates the log there first (raft overwrote a
//!   conflicting suffix), one further on is a gap no log start covers: corruption;
//! - a header's or log-start record's log start below the current one is superseded and
//!   ignored, an equal one must agree on the term, a higher one drops the entries it
//!   covers (keeping those above if the log agrees at that index, all otherwise);
//! - a header replaces the hard state, membership and latest snapshot with its own; a
//!   hard state / membership record replaces the previous one;
//! - *snapshot recorded* sets the latest snapshot and raises the commit index to it;
//!   *snapshot installed* drops every entry, moves the log start to its index (unless a
//!   newer header already moved it further), replaces membership and latest snapshot and
//!   raises the commit index.
//!
//! A crash after compaction's new segment is durable but before (all of) the deletions
//! leaves old segments behind: their entries are at or below the log start and ignored,
//! and the next compaction deletes them. In the *last* segment, zeros after the last
//! intact record are free (preallocated) space, and the segment may end in a torn write:
//! past the header of a version 3 segment, a record that fails a check with no intact
//! batch anywhere after it (a crash may persist the last write's pages in any order, but
//! a write starts only after the previous one was fsynced); in what was appended (a
//! header, and older segments' records), a partial header, a record running past the
//! end of the file, or a final record whose payload checksum fails and which ends
//! exactly there. It is cut off and fsynced. An older segment ends exactly at its data
//! (it is cut back to it, durably, before the next segment is created). Any other failed
//! check is `StorageError::Corrupted` naming the file
//! and the record's offset; a bad record is never skipped.
//!
//! # Writes
//! `append`, `set_hard_state` and `set_membership` buffer; `sync` writes the buffer as
//! records (entries, then hard state, then membership) as one batch frame and fdatasyncs
//! once. When the active segment has reached `wal_segment_size_bytes`, `sync` cuts it
//! back to its data (fsynced) and starts the next segment (header + batch appended,
//! fdatasync, fsync of `wal/`, then `fallocate`). `record_snapshot`, `compact` and
//! `apply_snapshot` sync what is buffered and then write and sync their own record. The
//! commit index kept is never below the latest snapshot's index. A failed fsync is never
//! retried: the storage refuses further writes (`FailStopped`) and the node must stop. A
//! failed write is undone by truncation, so after ENOSPC the caller may retry later.
//!
//! # Snapshot files
//! `SnapshotStore` keeps them in `snap/` (`snapshot_file.rs` has the format): a header
//! record (magic "RKVS", version, index, term), one record per caller payload, and a
//! trailer record (record count, payload bytes, CRC32C of the whole file before the
//! trailer), all with the WAL's record framing. Files are written as `.snap.tmp` (or
//! received from a peer as `.snap.partial` and fully verified), fsynced, renamed into
//! place, and `snap/` fsynced. Reading verifies every record and, at the end, the
//! trailer; any failure is `Corrupted` naming the file and offset. `FileStorage` only
//! records which snapshot is durable (`record_snapshot`); keeping the file and the record
//! in step is the caller's job: write the file first, then record it, then compact.
//!
//! Known limit: records written by one `sync` reach the disk in no guaranteed order
//! before its fsync, so a crash could in principle leave a later record of the batch
//! intact behind a damaged earlier one; that is reported as corruption, not repaired.

pub mod disk;
mod entry_log;
mod error;
mod file_storage;
mod frame;
mod identity;
mod lock;
mod membership;
mod record;
mod segment;
mod snapshot_file;
mod snapshot_store;
mod wal;

pub use error::StorageError;
pub use file_storage::{raft_snapshot, FileStorage, StorageOptions, StorageStats, SyncReport};
pub use identity::{NodeIdentity, DATA_DIR_FORMAT, IDENTITY_FILE_NAME, OLDEST_DATA_DIR_FORMAT};
pub use lock::{DataDirLock, LOCK_FILE_NAME};
pub use membership::MembershipRecord;
pub use snapshot_file::{
    read_chunk_at, SnapshotInfo, SnapshotMeta, SnapshotReader, SnapshotWriter,
};
pub use snapshot_store::{SnapshotReceiver, SnapshotStore, SNAPSHOT_DIR_NAME};
pub use wal::WAL_DIR_NAME;
