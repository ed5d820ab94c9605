//! RaftKV's protocol definitions, generated from `proto/*.proto` at build time.
//!
//! `v1` is the public gRPC API (services KV, Cluster, Debug) and the peer
//! service nodes use among themselves; `internal` holds what RaftKV writes into
//! raft log entries and persists. All `bytes` fields are `bytes::Bytes`, so
//! decoding from a `Bytes` buffer slices instead of copying.

pub mod codec;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftkv.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod internal {
    tonic::include_proto!("raftkv.internal.v1");
}
