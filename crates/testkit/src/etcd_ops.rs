//! The etcd transactions of the register workloads — the fault suite's
//! clients (`jepsen.rs`) and the simulator's — and what their replies say.

use crate::history::Swap;
use bytes::Bytes;
use raftkv_client::etcdserverpb::{
    compare, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, ResponseOp,
    TxnRequest, TxnResponse,
};

fn bytes_of(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A put of `key` (attached to `lease`, 0: none).
pub fn put(key: &str, value: &str, lease: u64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: bytes_of(key),
            value: bytes_of(value),
            lease: lease as i64,
            ..Default::default()
        })),
    }
}

/// A read of `key`.
pub fn range(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: bytes_of(key),
            ..Default::default()
        })),
    }
}

/// `key` holds `expected` (`None`: `key` does not exist, version 0).
pub fn value_is(key: &str, expected: Option<&str>) -> Compare {
    let (target, union) = match expected {
        Some(v) => (
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(bytes_of(v)),
        ),
        None => (
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(0),
        ),
    };
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: target as i32,
        key: bytes_of(key),
        target_union: Some(union),
        range_end: Bytes::new(),
    }
}

/// A transaction of these branches.
pub fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// Compare-and-swap: if `key` holds `expected` put `value`, else read `key`.
pub fn cas(key: &str, expected: Option<&str>, value: &str) -> TxnRequest {
    TxnRequest {
        compare: vec![value_is(key, expected)],
        success: vec![put(key, value, 0)],
        failure: vec![range(key)],
    }
}

/// A put of `key` attached to `lease` (how the etcd API proposes a Put).
pub fn put_with_lease(key: &str, value: &str, lease: u64) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success: vec![put(key, value, lease)],
        failure: Vec::new(),
    }
}

/// What the reply to a [`cas`] says: swapped, or refused with the value the
/// failure branch read. `Unknown` when there is no transaction response
/// (which an applied transaction always has).
pub fn swap_of(txn: Option<&TxnResponse>) -> Swap {
    match txn {
        Some(txn) if txn.succeeded => Swap::Swapped,
        Some(txn) => Swap::Refused(read_value(&txn.responses)),
        None => Swap::Unknown,
    }
}

/// The value the first response of a transaction read (`None`: absent).
pub fn read_value(responses: &[ResponseOp]) -> Option<String> {
    match responses.first().and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => range
            .kvs
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        _ => None,
    }
}
