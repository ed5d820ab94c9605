//! `raftkv-storage`: the durable state of one RaftKV node, and its `raft::Storage`.
//!
//! # Layout of a data directory
//! ```text
//! <data-dir>/raftkv.id                 node id + cluster id (text, with a CRC32C line)
//! <data-dir>/wal/<seq:016x>.wal        WAL segments, seq = 1, 2, 3, ... (consecutive)
//! ```
//!
//! # WAL format
//! A segment is a sequence of records. Each record is a 16-byte header — payload length
//! (u32 LE), kind (u8), 3 zero bytes, CRC32C of the payload, CRC32C of the first 12
//! header bytes — followed by the payload (`frame.rs`). Kinds (`record.rs`):
//! *segment header* (always and only the first record of a segment: magic, format
//! version, the segment's seq, the snapshot marker, hard state and membership durable
//! when the segment was created), *entry* (protobuf `eraftpb::Entry`), *hard state*
//! (protobuf), *membership* (prost `internal::Membership`), *snapshot marker*
//! (index, term).
//!
//! Because every segment header repeats all metadata, any prefix of segments whose
//! entries a snapshot covers can be deleted without losing the hard state or the
//! membership. (When compaction arrives, replay must also accept that the first
//! remaining segment's entries start after its header's marker, as long as a later
//! snapshot marker covers the gap; today such a gap is reported as corruption.)
//!
//! # Replay
//! Records are applied in order: an entry whose index is at or below the current last
//! index truncates the log there first (raft overwrote a conflicting suffix); a hard
//! state / membership record replaces the previous one; a snapshot marker drops entries
//! it covers. The *last* segment may end in a torn record — partial header, a length
//! running past end of file, a final record whose payload checksum fails and which ends
//! exactly at end of file, or trailing zeros — which is cut off and fsynced. Any other
//! failed check is `StorageError::Corrupted` naming the file and the record's offset;
//! a bad record is never skipped.
//!
//! # Writes
//! `append`, `set_hard_state` and `set_membership` buffer; `sync` writes the buffer as
//! records (entries, then hard state, then membership) and fdatasyncs once. When the
//! active segment has reached `wal_segment_size_bytes`, `sync` starts the next segment
//! (header + batch, fdatasync, fsync of `wal/`). A failed fsync is never retried: the
//! storage refuses further writes (`FailStopped`) and the node must stop. A failed
//! write is undone by truncation, so after ENOSPC the caller may retry later.
//!
//! Known limit: records written by one `sync` reach the disk in no guaranteed order
//! before its fsync, so a crash could in principle leave a later record of the batch
//! intact behind a damaged earlier one; that is reported as corruption, not repaired.

mod entry_log;
mod error;
mod file_storage;
mod frame;
mod identity;
mod membership;
mod record;
mod segment;
mod wal;

pub use error::StorageError;
pub use file_storage::{FileStorage, StorageOptions, StorageStats};
pub use identity::{NodeIdentity, IDENTITY_FILE_NAME};
pub use membership::MembershipRecord;
pub use wal::WAL_DIR_NAME;
