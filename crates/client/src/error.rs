//! The client's typed errors, decoded from the server's `ErrorDetail`.

use std::time::Duration;

use prost::Message as _;
use raftkv_proto::v1::{ErrorDetail, ErrorKind};
use tonic::{Code, Status};

/// What went wrong. `Display` gives the one-line message the CLI prints
/// after `error: `.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("key not found")]
    KeyNotFound,
    #[error("not leader; {}", leader_hint(*leader_id, leader_address))]
    NotLeader {
        leader_id: u64,
        leader_address: String,
    },
    #[error("timed out after {}", humanize(*.0))]
    Timeout(Duration),
    /// The last node that answered before the deadline knew no leader;
    /// `detail` is what it saw (e.g. which voters it cannot reach).
    #[error("no leader after {}: {detail}", humanize(*waited))]
    NoLeader { waited: Duration, detail: String },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("corrupted: {0}")]
    Corrupted(String),
    /// The write may or may not have been applied (the client gave up
    /// retrying it).
    #[error("outcome unknown: {0}")]
    UnknownOutcome(String),
    #[error("rejected: {0}")]
    Rejected(String),
    /// The cluster no longer knows the client's write session (idle too
    /// long), and the write might repeat one applied before: refused without
    /// effect. Not retryable under the same session; the client starts a new
    /// one for later writes.
    #[error("session expired: {0}")]
    SessionExpired(String),
    /// Auth is on and this caller may not do this (the message names the
    /// user and the key), or the request named no user.
    #[error("{0}")]
    PermissionDenied(String),
    /// The credentials were not accepted (wrong name or password, a token
    /// that expired).
    #[error("{0}")]
    Unauthenticated(String),
}

fn leader_hint(leader_id: u64, address: &str) -> String {
    if leader_id == 0 {
        "no leader is known".to_string()
    } else {
        format!("leader is {leader_id} at {address}")
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Error {
    /// A short machine-readable name of the kind (as `--json` reports it).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::KeyNotFound => "key_not_found",
            Error::NotLeader { .. } => "not_leader",
            Error::Timeout(_) => "timeout",
            Error::NoLeader { .. } => "no_leader",
            Error::Unavailable(_) => "unavailable",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NoSpace(_) => "no_space",
            Error::Corrupted(_) => "corrupted",
            Error::UnknownOutcome(_) => "unknown_outcome",
            Error::Rejected(_) => "rejected",
            Error::SessionExpired(_) => "session_expired",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Unauthenticated(_) => "unauthenticated",
        }
    }

    /// Whether retrying (maybe elsewhere) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::Unavailable(_)
                | Error::UnknownOutcome(_)
                | Error::Timeout(_)
                | Error::NoLeader { .. }
        )
    }

    /// The server answered without applying anything (a redirect, bad
    /// input, a refusal before proposing): a resend cannot apply it twice.
    pub(crate) fn not_applied(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::InvalidArgument(_)
                | Error::NoSpace(_)
                | Error::SessionExpired(_)
                | Error::KeyNotFound
                | Error::PermissionDenied(_)
                | Error::Unauthenticated(_)
        )
    }

    /// A refusal by this node only ("this node was removed"): another
    /// endpoint may serve the request.
    pub(crate) fn refused_here_only(status: &Status) -> bool {
        ErrorDetail::decode(status.details())
            .is_ok_and(|detail| detail.kind == ErrorKind::Rejected as i32 && detail.retryable)
    }

    /// Decodes the status of a call to `address`, naming the address when it
    /// could not be reached.
    pub(crate) fn from_status_at(address: &str, status: &Status) -> Error {
        match Unreachable::of(status) {
            Some(unreachable) => Error::Unavailable(unreachable.describe(address)),
            None => Error::from_status(status),
        }
    }

    /// Decodes a gRPC status from a RaftKV server (or the transport).
    pub(crate) fn from_status(status: &Status) -> Error {
        // A TLS failure (an untrusted certificate either way, TLS spoken
        // to a plaintext port) is this endpoint's: another may serve (the
        // callers give up once every endpoint fails so, see `Unreachable`).
        if let Some(why) = raftkv_net::tls::describe_failure(status) {
            return Error::Unavailable(why);
        }
        if !status.details().is_empty() {
            if let Ok(detail) = ErrorDetail::decode(status.details()) {
                let message = detail.message.clone();
                return match ErrorKind::try_from(detail.kind).unwrap_or(ErrorKind::Unspecified) {
                    ErrorKind::KeyNotFound => Error::KeyNotFound,
                    ErrorKind::NotLeader => Error::NotLeader {
                        leader_id: detail.leader_id,
                        leader_address: detail.leader_address,
                    },
                    ErrorKind::Timeout => Error::Unavailable(message),
                    ErrorKind::Unavailable => Error::Unavailable(message),
                    ErrorKind::InvalidArgument => Error::InvalidArgument(message),
                    ErrorKind::NoSpace => Error::NoSpace(message),
                    ErrorKind::Corrupted => Error::Corrupted(message),
                    ErrorKind::UnknownOutcome => Error::UnknownOutcome(message),
                    ErrorKind::SessionExpired => Error::SessionExpired(message),
                    ErrorKind::PermissionDenied => Error::PermissionDenied(message),
                    ErrorKind::Unauthenticated => Error::Unauthenticated(message),
                    ErrorKind::Rejected | ErrorKind::Unspecified => Error::Rejected(message),
                };
            }
        }
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => Error::KeyNotFound,
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::ResourceExhausted => Error::NoSpace(message),
            Code::DataLoss => Error::Corrupted(message),
            // Connection refused/reset, node restarting, server timeouts.
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                Error::Unavailable(if message.is_empty() {
                    format!("{:?}", status.code())
                } else {
                    message
                })
            }
            // A server without the service (another program, or a RaftKV
            // peer listener of an older version) says nothing more.
            Code::Unimplemented if message.is_empty() => Error::Rejected(
                "the server at this endpoint does not serve this call (is it a RaftKV \
                 node's client address?)"
                    .into(),
            ),
            _ => Error::Rejected(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn not_leader_detail_carries_the_hint() {
        let detail = ErrorDetail {
            kind: ErrorKind::NotLeader as i32,
            leader_id: 2,
            leader_address: "127.0.0.1:7380".into(),
            ..Default::default()
        };
        let status = Status::with_details(
            Code::FailedPrecondition,
            "not leader",
            Bytes::from(detail.encode_to_vec()),
        );
        let error = Error::from_status(&status);
        assert_eq!(
            error.to_string(),
            "not leader; leader is 2 at 127.0.0.1:7380"
        );
        assert!(error.is_retryable());
    }

    #[test]
    fn transport_failures_are_retryable_unavailability() {
        let error = Error::from_status(&Status::unavailable("connection refused"));
        assert!(matches!(error, Error::Unavailable(_)));
        assert!(error.is_retryable());
        assert!(!Error::InvalidArgument("x".into()).is_retryable());
    }

    #[test]
    fn timeout_message_names_the_duration() {
        assert_eq!(
            Error::Timeout(Duration::from_secs(5)).to_string(),
            "timed out after 5s"
        );
        assert_eq!(
            Error::Timeout(Duration::from_millis(1500)).to_string(),
            "timed out after 1500ms"
        );
    }
}

/// Why a connection to an endpoint could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// The host name did not resolve; the text names it and says why.
    Unresolved(String),
    /// Connecting failed: refused, no route, no such local address, or the
    /// connect timed out.
    Connect(std::io::ErrorKind),
    /// TLS with the endpoint failed (a certificate either side refused);
    /// the text says which and why.
    Tls(String),
}

impl Unreachable {
    /// Why a call could not connect, from its status's chain of sources, or
    /// `None` if it connected or the cause is unknown.
    pub(crate) fn of(status: &Status) -> Option<Unreachable> {
        use std::io::ErrorKind::*;
        if let Some(why) = raftkv_net::tls::describe_failure(status) {
            return Some(Unreachable::Tls(why));
        }
        let mut source = std::error::Error::source(status);
        while let Some(error) = source {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if let Some(unresolved) = io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<raftkv_net::Unresolved>())
                {
                    return Some(Unreachable::Unresolved(unresolved.0.clone()));
                }
                if matches!(
                    io.kind(),
                    ConnectionRefused
                        | HostUnreachable
                        | NetworkUnreachable
                        | AddrNotAvailable
                        | TimedOut
                ) {
                    return Some(Unreachable::Connect(io.kind()));
                }
            }
            source = error.source();
        }
        None
    }

    /// Nothing of the call reached a server (the connection was refused, the
    /// name did not resolve), so nothing of it can have been applied. A
    /// timeout or an unreachable host can also end an established
    /// connection, so they do not count.
    pub(crate) fn never_sent(&self) -> bool {
        matches!(
            self,
            Unreachable::Unresolved(_)
                | Unreachable::Tls(_)
                | Unreachable::Connect(
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
                )
        )
    }

    /// `ADDRESS: CAUSE` (or the resolver's account, which names the host).
    pub(crate) fn at(&self, address: &str) -> String {
        let cause = match self {
            Unreachable::Unresolved(text) => return text.clone(),
            Unreachable::Tls(text) => return format!("{address}: {text}"),
            Unreachable::Connect(std::io::ErrorKind::ConnectionRefused) => "connection refused",
            Unreachable::Connect(std::io::ErrorKind::HostUnreachable) => "host unreachable",
            Unreachable::Connect(std::io::ErrorKind::NetworkUnreachable) => "network unreachable",
            Unreachable::Connect(std::io::ErrorKind::AddrNotAvailable) => "address not available",
            Unreachable::Connect(_) => "connect timed out",
        };
        format!("{address}: {cause}")
    }

    /// The whole message for one endpoint: `cannot reach ADDRESS: CAUSE`, or
    /// `cannot resolve HOST:PORT: ...`.
    pub(crate) fn describe(&self, address: &str) -> String {
        match self {
            Unreachable::Unresolved(text) => text.clone(),
            Unreachable::Tls(text) => format!("TLS with {address}: {text}"),
            Unreachable::Connect(_) => format!("cannot reach {}", self.at(address)),
        }
    }
}
