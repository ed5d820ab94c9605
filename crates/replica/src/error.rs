//! Errors a replica returns to its callers, and the fatal error that stops it.

/// Why a proposal or read did not succeed. Every variant but `Rejected` and
/// `Stopped` may succeed if retried (possibly on another node).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// This node is not the leader; the hint names the leader when known.
    /// With no leader known, `why` says what this node sees (which voters it
    /// cannot reach), so a caller that gives up can say why.
    #[error("not leader")]
    NotLeader {
        leader_id: u64,
        leader_address: Option<String>,
        why: String,
    },
    /// Leadership changed while the request was in flight: it may or may not
    /// have been applied. Retrying with the same session is safe.
    #[error("outcome unknown: {0}")]
    UnknownOutcome(String),
    /// Cannot serve now (overloaded, no quorum yet, proposal dropped).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The state machine refused the command.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The caller may not do this under the users and roles of the moment
    /// it was applied.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The state machine refused the write: its client session is gone and
    /// the write may repeat one applied before (see `raftkv_kv`'s sessions).
    #[error("session expired: {0}")]
    SessionExpired(String),
    /// The disk is full: writes fail, reads go on.
    #[error("no space left on device: {0}")]
    NoSpace(String),
    /// This node was removed from the cluster: it serves nothing, but the
    /// cluster's other members may.
    #[error("{0}")]
    Removed(String),
    /// This node's data dir belongs to another cluster than the peers that
    /// reach it: it serves nothing, but the cluster's members may.
    #[error("{0}")]
    WrongCluster(String),
    /// The node stopped (shut down or a fatal storage error).
    #[error("node stopped: {0}")]
    Stopped(String),
}

/// An error the node cannot continue after (fail-stop): a failed fsync,
/// an I/O error on the log, a corrupt record.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct FatalError(pub String);
