//! How errors travel to clients: a gRPC status whose code fits the kind and
//! whose `details` carry an encoded `ErrorDetail` (kind, leader hint, header),
//! so the client library can tell a redirect from a timeout from bad input.

use bytes::Bytes;
use prost::Message as _;
use raftkv_proto::v1::{ErrorDetail, ErrorKind, ResponseHeader};
use raftkv_replica::ReplicaError;
use tonic::{Code, Status};

/// Builds a status of `kind` with `message`.
pub fn error_status(
    kind: ErrorKind,
    message: impl Into<String>,
    header: ResponseHeader,
    retryable: bool,
) -> Status {
    let message = message.into();
    let code = match kind {
        ErrorKind::KeyNotFound => Code::NotFound,
        ErrorKind::NotLeader => Code::FailedPrecondition,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Unavailable | ErrorKind::UnknownOutcome => Code::Unavailable,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NoSpace => Code::ResourceExhausted,
        ErrorKind::Corrupted => Code::DataLoss,
        ErrorKind::Rejected | ErrorKind::SessionExpired => Code::Aborted,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Unspecified => Code::Internal,
    };
    let detail = ErrorDetail {
        kind: kind as i32,
        message: message.clone(),
        header: Some(header),
        retryable,
        ..Default::default()
    };
    Status::with_details(code, message, Bytes::from(detail.encode_to_vec()))
}

pub fn invalid_argument(message: impl Into<String>, header: ResponseHeader) -> Status {
    error_status(ErrorKind::InvalidArgument, message, header, false)
}

/// The caller may not do this (its message names the user and the key).
pub fn permission_denied(message: impl Into<String>, header: ResponseHeader) -> Status {
    let message = message.into();
    let message = if message.starts_with("permission denied") {
        message
    } else {
        format!("permission denied: {message}")
    };
    error_status(ErrorKind::PermissionDenied, message, header, false)
}

pub fn key_not_found(header: ResponseHeader) -> Status {
    error_status(ErrorKind::KeyNotFound, "key not found", header, false)
}

pub fn timed_out(what: &str, header: ResponseHeader) -> Status {
    error_status(
        ErrorKind::Timeout,
        format!("{what} timed out on the server"),
        header,
        true,
    )
}

/// Maps a replica error to a status.
pub fn replica_status(error: ReplicaError, header: ResponseHeader) -> Status {
    match error {
        ReplicaError::NotLeader {
            leader_id,
            leader_address,
            why,
        } => {
            let leader_address = leader_address.unwrap_or_default();
            let message = if leader_id == 0 && !why.is_empty() {
                format!("not leader; no leader is known: {why}")
            } else if leader_id == 0 {
                "not leader; no leader is known yet".to_string()
            } else {
                format!("not leader; leader is {leader_id} at {leader_address}")
            };
            let detail = ErrorDetail {
                kind: ErrorKind::NotLeader as i32,
                message: message.clone(),
                leader_id,
                leader_address,
                header: Some(header),
                retryable: true,
            };
            Status::with_details(
                Code::FailedPrecondition,
                message,
                Bytes::from(detail.encode_to_vec()),
            )
        }
        ReplicaError::UnknownOutcome(m) => error_status(ErrorKind::UnknownOutcome, m, header, true),
        ReplicaError::Unavailable(m) => error_status(ErrorKind::Unavailable, m, header, true),
        ReplicaError::Rejected(m) => error_status(ErrorKind::Rejected, m, header, false),
        ReplicaError::PermissionDenied(m) => permission_denied(m, header),
        ReplicaError::SessionExpired(m) => {
            error_status(ErrorKind::SessionExpired, m, header, false)
        }
        ReplicaError::NoSpace(m) => error_status(ErrorKind::NoSpace, m, header, true),
        ReplicaError::Stopped(m) => error_status(ErrorKind::Unavailable, m, header, true),
        // Refused here for good, but another member may serve it.
        ReplicaError::Removed(m) | ReplicaError::WrongCluster(m) => {
            error_status(ErrorKind::Rejected, m, header, true)
        }
    }
}
