//! RaftKV's protocol definitions, generated from `proto/*.proto` at build time.
//!
//! `v1` is the public gRPC API (services KV, Cluster, Debug) and the peer
//! service nodes use among themselves; `internal` holds what RaftKV writes into
//! raft log entries and persists. All `bytes` fields are `bytes::Bytes`, so
//! decoding from a `Bytes` buffer slices instead of copying.

pub mod codec;

/// The generated modules mirror the proto packages (a type of one package
/// names another's by its relative path); the short names below are what
/// the rest of the project uses.
#[allow(clippy::all, missing_docs)]
pub mod raftkv {
    pub mod v1 {
        tonic::include_proto!("raftkv.v1");
    }
    pub mod internal {
        pub mod v1 {
            tonic::include_proto!("raftkv.internal.v1");
        }
    }
}

pub use raftkv::internal::v1 as internal;
pub use raftkv::v1;

/// etcd's v3 API (`etcdserverpb` and the packages it uses): its wire
/// contract, from the project's own `proto/etcd/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

#[allow(clippy::all, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

#[allow(clippy::all, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

#[allow(clippy::all, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
