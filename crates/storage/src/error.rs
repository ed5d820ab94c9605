//! The errors `FileStorage` returns.
//!
//! Every variant that comes from the disk names the file (and, for corruption, the
//! byte offset of the bad record), because the operator who reads the message has to
//! find the damage without a debugger. This file must not decide policy (what is
//! repairable, when to stop the node): it only describes what went wrong.

use std::path::PathBuf;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system I/O call on `path` failed. The OS error is part of
    /// the message and not a `source` too, so that a chain printed whole
    /// (`{:#}`) does not repeat it.
    #[error("I/O error on {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// A record of a WAL segment or snapshot file failed a check (checksum, framing,
    /// decoding, ordering, a snapshot's trailer) somewhere the torn-tail rule does not
    /// cover. The node must not start on (or install) this data.
    #[error("corrupted data in {path} at offset {offset}: {reason}")]
    Corrupted {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// The files are individually valid but disagree with each other (a segment is
    /// missing, the commit index points past the log, ...).
    #[error("inconsistent storage in {dir}: {reason}")]
    Inconsistent { dir: PathBuf, reason: String },

    /// Another process holds the data directory's lock (`lock.rs`): two servers on one
    /// directory would destroy each other's log.
    #[error(
        "data dir {dir} is in use by another process{}; stop it first, or give this server \
         its own --data-dir",
        holder_pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked {
        dir: PathBuf,
        holder_pid: Option<u32>,
    },

    /// The data directory was written by a newer build, in a format this one cannot read.
    #[error(
        "data dir {dir} was written by a newer raftkv (data dir format {format}; this build \
         reads formats {oldest} to {newest}); run a newer raftkv on it",
        oldest = crate::identity::OLDEST_DATA_DIR_FORMAT,
        newest = crate::identity::DATA_DIR_FORMAT
    )]
    NewerFormat { dir: PathBuf, format: u32 },

    /// `bootstrap` was called on a node that already has a configuration.
    #[error("storage is already initialized (it has a membership)")]
    AlreadyInitialized,

    /// The data directory belongs to another node or cluster.
    #[error(
        "data directory belongs to node {existing_node_id} of cluster {existing_cluster_id:#x}, \
         not node {requested_node_id} of cluster {requested_cluster_id:#x}"
    )]
    IdentityMismatch {
        existing_node_id: u64,
        existing_cluster_id: u64,
        requested_node_id: u64,
        requested_cluster_id: u64,
    },

    /// The caller broke an API contract (an `append` with a gap, a non-contiguous
    /// batch or an index at or below the snapshot; a bootstrap at index 0). This is a
    /// bug in the caller, not a disk problem.
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },

    /// A single record would exceed the framing limit.
    #[error("record of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    RecordTooLarge { size_bytes: u64, max_bytes: u64 },

    /// An earlier fsync (or a failed cleanup after a failed write) left the log in an
    /// unknown state. Retrying an fsync after a failure can report success for pages the
    /// kernel already dropped, so the storage refuses all further writes.
    #[error("storage stopped after an earlier unrecoverable failure: {reason}")]
    FailStopped { reason: String },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub(crate) fn corrupted(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StorageError::Corrupted {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True when the disk is full (ENOSPC / `ErrorKind::StorageFull`). The write was
    /// undone; the caller may retry once space is freed.
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Io { cause, .. } => {
                cause.kind() == std::io::ErrorKind::StorageFull
                    || cause.raw_os_error() == Some(ENOSPC)
            }
            _ => false,
        }
    }
}

/// `ENOSPC` on Linux and the BSDs; checked as well as the error kind so the answer does
/// not depend on how the standard library classifies the error.
const ENOSPC: i32 = 28;

/// Converts into the error type `raft::Storage` methods must return.
impl From<StorageError> for raft::Error {
    fn from(err: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(err)))
    }
}
