//! etcd's v3 requests on the state machine: `Range` (served from a replica's
//! state, at the current or a past revision) and `Txn` (applied from the
//! log: a `Put` or `DeleteRange` through the etcd API is a transaction
//! without compares).
//!
//! Semantics follow etcd's (`server/etcdserver/txn`): every compare of a
//! transaction — nested ones too — is evaluated against the state before
//! it, which fixes the branch each takes; the requests it needs (a key that
//! `ignore_value` reuses) are checked next, so a transaction that cannot
//! run changes nothing; then its requests run in order, a range seeing the
//! writes before it, and all its writes take one revision. A missing key
//! compares as a key with every revision 0, except on its value, which
//! never compares true.

use std::cmp::Ordering;

use bytes::Bytes;
use raftkv_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use raftkv_proto::mvccpb::KeyValue;

use crate::history::{Change, RevisionError};
use crate::state::{KeyRange, KvState, Record};

/// etcd's texts for what a transaction is refused with when applied.
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// The etcd form of a stored key.
pub fn key_value(key: &Bytes, record: &Record, keys_only: bool) -> KeyValue {
    KeyValue {
        key: key.clone(),
        create_revision: record.create_revision as i64,
        mod_revision: record.mod_revision as i64,
        version: record.version as i64,
        value: if keys_only {
            Bytes::new()
        } else {
            record.value.clone()
        },
        lease: record.lease as i64,
    }
}

fn header(revision: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: revision as i64,
        ..Default::default()
    })
}

fn range_of(key: &Bytes, range_end: &Bytes) -> KeyRange {
    KeyRange::from_etcd(key.clone(), range_end.clone())
}

/// The branch every transaction in a tree takes, decided before anything
/// runs (etcd's "txn path"): this one's, then its nested ones' in order.
fn choose_path(state: &KvState, txn: &TxnRequest, path: &mut Vec<bool>) {
    let succeeded = txn.compare.iter().all(|c| compare_holds(state, c));
    path.push(succeeded);
    let branch = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    for op in branch {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            choose_path(state, nested, path);
        }
    }
}

fn compare_holds(state: &KvState, c: &Compare) -> bool {
    let range = range_of(&c.key, &c.range_end);
    let Ok((pairs, _)) = state.range_at(&range, 0, 0) else {
        return false;
    };
    let target =
        compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version);
    if pairs.is_empty() {
        if target == compare::CompareTarget::Value {
            // No value to compare: never true.
            return false;
        }
        let zero = Record::unrevisioned(Bytes::new());
        let zero = Record {
            create_revision: 0,
            mod_revision: 0,
            version: 0,
            ..zero
        };
        return compare_record(c, target, &zero);
    }
    pairs
        .iter()
        .all(|(_, record)| compare_record(c, target, record))
}

fn compare_record(c: &Compare, target: compare::CompareTarget, record: &Record) -> bool {
    use compare::TargetUnion;
    let ordering = match (target, &c.target_union) {
        (compare::CompareTarget::Value, Some(TargetUnion::Value(v))) => {
            record.value[..].cmp(&v[..])
        }
        (compare::CompareTarget::Value, _) => record.value[..].cmp(&[][..]),
        (t, union) => {
            let wanted = match union {
                Some(TargetUnion::Version(n))
                | Some(TargetUnion::CreateRevision(n))
                | Some(TargetUnion::ModRevision(n))
                | Some(TargetUnion::Lease(n)) => *n,
                _ => 0,
            };
            let have = match t {
                compare::CompareTarget::Version => record.version,
                compare::CompareTarget::Create => record.create_revision,
                compare::CompareTarget::Mod => record.mod_revision,
                compare::CompareTarget::Lease => record.lease,
                compare::CompareTarget::Value => unreachable!("matched above"),
            } as i64;
            have.cmp(&wanted)
        }
    };
    match compare::CompareResult::try_from(c.result).unwrap_or(compare::CompareResult::Equal) {
        compare::CompareResult::Equal => ordering == Ordering::Equal,
        compare::CompareResult::Greater => ordering == Ordering::Greater,
        compare::CompareResult::Less => ordering == Ordering::Less,
        compare::CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}

/// What the chosen branches need of the state before they run.
fn check_requests(
    state: &KvState,
    txn: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<(), &'static str> {
    let succeeded = path[*at];
    *at += 1;
    let branch = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    for op in branch {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => {
                if (put.ignore_value || put.ignore_lease) && state.get_record(&put.key).is_none() {
                    return Err(KEY_NOT_FOUND);
                }
                if put.lease != 0 && !put.ignore_lease && state.lease(put.lease as u64).is_none() {
                    return Err(LEASE_NOT_FOUND);
                }
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                check_requests(state, nested, path, at)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a transaction (any branch, nested ones too) may put a key: what
/// the space quota refuses while its alarm is raised.
pub fn may_put(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(nested)) => may_put(nested),
            _ => false,
        })
}

/// Whether a transaction (any branch) only reads: it is then served like a
/// range, not through the log.
pub fn is_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(nested)) => is_read_only(nested),
            _ => false,
        })
}

impl KvState {
    /// etcd's `Range`, on this replica's state: at `request.revision`
    /// (<= 0: the current one), filtered by revisions, sorted, cut at
    /// `limit`; `count` is every key in the range.
    pub fn etcd_range(&self, request: &RangeRequest) -> Result<RangeResponse, RevisionError> {
        let range = range_of(&request.key, &request.range_end);
        let revision = request.revision.max(0) as u64;
        let plain = request.sort_order == range_request::SortOrder::None as i32
            && request.sort_target == range_request::SortTarget::Key as i32
            && request.min_mod_revision <= 0
            && request.max_mod_revision <= 0
            && request.min_create_revision <= 0
            && request.max_create_revision <= 0;
        if plain && (revision == 0 || revision == self.revision) && request.limit > 0 {
            // The common case: the first `limit` keys now, counted without
            // copying the rest.
            let limit = request.limit as usize;
            let (pairs, more) = self.range_at(&range, 0, limit)?;
            return Ok(RangeResponse {
                header: header(self.revision),
                kvs: kvs_of(&pairs, request),
                more,
                count: self.count_in(&range) as i64,
            });
        }
        let (pairs, _) = self.range_at(&range, revision, 0)?;
        let count = pairs.len() as i64;
        let within = |n: u64, min: i64, max: i64| {
            (min <= 0 || n as i64 >= min) && (max <= 0 || n as i64 <= max)
        };
        let mut pairs: Vec<(Bytes, Record)> = pairs
            .into_iter()
            .filter(|(_, r)| {
                within(
                    r.mod_revision,
                    request.min_mod_revision,
                    request.max_mod_revision,
                ) && within(
                    r.create_revision,
                    request.min_create_revision,
                    request.max_create_revision,
                )
            })
            .collect();
        sort_pairs(&mut pairs, request.sort_order, request.sort_target);
        let limit = request.limit.max(0) as usize;
        let more = limit > 0 && pairs.len() > limit;
        if more {
            pairs.truncate(limit);
        }
        Ok(RangeResponse {
            header: header(self.revision),
            kvs: kvs_of(&pairs, request),
            more,
            count,
        })
    }

    /// A transaction that only reads, evaluated on this state (nothing
    /// changes; served after a read barrier, not through the log).
    pub fn read_only_txn(&self, txn: &TxnRequest) -> Result<TxnResponse, String> {
        debug_assert!(is_read_only(txn));
        let mut scratch = self.clone();
        scratch.apply_etcd_txn(txn)
    }

    /// Applies an etcd transaction from the log. Refused (with etcd's text)
    /// before anything changes, or applied whole at one revision.
    pub(crate) fn apply_etcd_txn(&mut self, txn: &TxnRequest) -> Result<TxnResponse, String> {
        let mut path = Vec::new();
        choose_path(self, txn, &mut path);
        check_requests(self, txn, &path, &mut 0).map_err(str::to_string)?;
        let revision = self.revision + 1;
        let mut changed = false;
        let response = self.run_txn(txn, &path, &mut 0, revision, &mut changed)?;
        if changed {
            self.revision = revision;
        }
        Ok(TxnResponse {
            header: header(self.revision),
            ..response
        })
    }

    fn run_txn(
        &mut self,
        txn: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        revision: u64,
        changed: &mut bool,
    ) -> Result<TxnResponse, String> {
        let succeeded = path[*at];
        *at += 1;
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(range)) => {
                    let mut reply = self.etcd_range(range).map_err(|e| e.to_string())?;
                    reply.header = header(self.revision);
                    response_op::Response::ResponseRange(reply)
                }
                Some(request_op::Request::RequestPut(put)) => {
                    *changed = true;
                    response_op::Response::ResponsePut(self.etcd_put(put, revision))
                }
                Some(request_op::Request::RequestDeleteRange(delete)) => {
                    let reply = self.etcd_delete(delete, revision);
                    *changed |= reply.deleted > 0;
                    response_op::Response::ResponseDeleteRange(reply)
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    response_op::Response::ResponseTxn(
                        self.run_txn(nested, path, at, revision, changed)?,
                    )
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: header(revision),
            succeeded,
            responses,
        })
    }

    fn etcd_put(&mut self, put: &PutRequest, revision: u64) -> PutResponse {
        let prev = self.get_record(&put.key).cloned();
        let value = match (&prev, put.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => put.value.clone(),
        };
        let lease = match (&prev, put.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => put.lease.max(0) as u64,
        };
        let value = crate::state::owned_value(value);
        self.write_record(&put.key, revision, |old| {
            Record::written(value, old, revision, lease)
        });
        PutResponse {
            header: header(revision),
            prev_kv: prev
                .filter(|_| put.prev_kv)
                .map(|p| key_value(&put.key, &p, false)),
        }
    }

    fn etcd_delete(&mut self, delete: &DeleteRangeRequest, revision: u64) -> DeleteRangeResponse {
        let range = range_of(&delete.key, &delete.range_end);
        let (doomed, _) = self
            .range_at(&range, 0, 0)
            .expect("the current revision is always served");
        let mut prev_kvs = Vec::new();
        for (key, _) in &doomed {
            if let Some(prev) = self.delete_record(key, revision) {
                if delete.prev_kv {
                    prev_kvs.push(key_value(key, &prev, false));
                }
            }
        }
        DeleteRangeResponse {
            header: header(revision),
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    /// Puts the record `make` builds from the key's current one and
    /// records the change at `revision`.
    pub(crate) fn write_record(
        &mut self,
        key: &[u8],
        revision: u64,
        make: impl FnOnce(Option<&Record>) -> Record,
    ) {
        let prev = self.upsert(key, make);
        self.history.record(
            Change {
                revision,
                key: Bytes::copy_from_slice(key),
                deleted: false,
                prev,
            },
            revision,
        );
    }

    /// Deletes `key` (if it exists) and records the change at `revision`.
    pub(crate) fn delete_record(&mut self, key: &[u8], revision: u64) -> Option<Record> {
        let prev = self.remove(key)?;
        self.history.record(
            Change {
                revision,
                key: Bytes::copy_from_slice(key),
                deleted: true,
                prev: Some(prev.clone()),
            },
            revision,
        );
        Some(prev)
    }
}

/// A Range reply's pairs (none for `count_only`; no values for
/// `keys_only`).
fn kvs_of(pairs: &[(Bytes, Record)], request: &RangeRequest) -> Vec<KeyValue> {
    if request.count_only {
        return Vec::new();
    }
    pairs
        .iter()
        .map(|(k, r)| key_value(k, r, request.keys_only))
        .collect()
}

/// etcd's sort: order NONE with a target other than the key sorts
/// ascending; ties keep key order.
fn sort_pairs(pairs: &mut [(Bytes, Record)], order: i32, target: i32) {
    use range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    let order = match SortOrder::try_from(order).unwrap_or(SortOrder::None) {
        SortOrder::None if target != SortTarget::Key => SortOrder::Ascend,
        other => other,
    };
    if order == SortOrder::None {
        return;
    }
    pairs.sort_by(|(ka, a), (kb, b)| {
        let by = match target {
            SortTarget::Key => ka.cmp(kb),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            by.reverse()
        } else {
            by
        }
    });
}

/// A transaction of one request (how a single Put or DeleteRange through
/// the etcd API goes into the log).
pub fn single(request: request_op::Request) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success: vec![RequestOp {
            request: Some(request),
        }],
        failure: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::{ApplyOutcome, SessionLimits};
    use compare::{CompareResult, CompareTarget, TargetUnion};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b(key),
                value: b(value),
                prev_kv: true,
                ..Default::default()
            })),
        }
    }

    fn get(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b(key),
                ..Default::default()
            })),
        }
    }

    fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: b(key),
            target_union: Some(union),
            range_end: Bytes::new(),
        }
    }

    fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare,
            success,
            failure,
        }
    }

    /// Applies `t` from the log; the response, or the refusal's text.
    fn apply(s: &mut KvState, t: TxnRequest) -> Result<TxnResponse, String> {
        let index = s.applied_index() + 1;
        let cmd = Command {
            rules: crate::CURRENT_RULES,
            etcd_txn: Some(t),
            ..Default::default()
        };
        match s.apply(index, 1, &cmd) {
            ApplyOutcome::Txn(response) => Ok(*response),
            ApplyOutcome::Refused(why) => Err(why),
            other => panic!("{other:?}"),
        }
    }

    fn range_values(response: &ResponseOp) -> Vec<(String, i64)> {
        match &response.response {
            Some(response_op::Response::ResponseRange(r)) => r
                .kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8(kv.value.to_vec()).unwrap(),
                        kv.mod_revision,
                    )
                })
                .collect(),
            other => panic!("not a range: {other:?}"),
        }
    }

    #[test]
    fn compare_and_swap_on_the_mod_revision() {
        let mut s = KvState::new(SessionLimits::default());
        apply(&mut s, single(put("k", "1").request.unwrap())).unwrap();
        assert_eq!(s.revision(), 2);
        let cas = |expected: i64, value: &str| {
            txn(
                vec![cmp(
                    "k",
                    CompareTarget::Mod,
                    CompareResult::Equal,
                    TargetUnion::ModRevision(expected),
                )],
                vec![put("k", value)],
                vec![get("k")],
            )
        };
        let won = apply(&mut s, cas(2, "2")).unwrap();
        assert!(won.succeeded);
        assert_eq!(won.header.unwrap().revision, 3);
        match &won.responses[0].response {
            Some(response_op::Response::ResponsePut(p)) => {
                assert_eq!(p.prev_kv.as_ref().unwrap().value, "1", "prev_kv as asked")
            }
            other => panic!("{other:?}"),
        }
        // The same swap again loses: the failure branch reads what won.
        let lost = apply(&mut s, cas(2, "3")).unwrap();
        assert!(!lost.succeeded);
        assert_eq!(range_values(&lost.responses[0]), vec![("2".to_string(), 3)]);
        assert_eq!(
            s.revision(),
            3,
            "a transaction that wrote nothing takes no revision"
        );
        assert_eq!(s.get(b"k").unwrap(), "2");
    }

    #[test]
    fn a_missing_key_compares_as_zero_but_never_on_its_value() {
        let mut s = KvState::new(SessionLimits::default());
        let absent = apply(
            &mut s,
            txn(
                vec![cmp(
                    "m",
                    CompareTarget::Version,
                    CompareResult::Equal,
                    TargetUnion::Version(0),
                )],
                vec![put("m", "created")],
                vec![],
            ),
        )
        .unwrap();
        assert!(absent.succeeded, "version(m) = 0 holds for a missing key");
        let value = apply(
            &mut s,
            txn(
                vec![cmp(
                    "n",
                    CompareTarget::Value,
                    CompareResult::Equal,
                    TargetUnion::Value(Bytes::new()),
                )],
                vec![put("n", "x")],
                vec![],
            ),
        )
        .unwrap();
        assert!(!value.succeeded, "value(n) = \"\" fails for a missing key");
        assert!(s.get(b"n").is_none());
    }

    #[test]
    fn writes_of_a_transaction_share_one_revision_and_later_reads_see_them() {
        let mut s = KvState::new(SessionLimits::default());
        let delete_all = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: b("p/"),
                    range_end: b("p0"),
                    prev_kv: true,
                },
            )),
        };
        apply(
            &mut s,
            txn(vec![], vec![put("p/1", "a"), put("p/2", "b")], vec![]),
        )
        .unwrap();
        assert_eq!(s.revision(), 2);
        let response = apply(
            &mut s,
            txn(
                vec![],
                vec![delete_all, put("p/3", "c"), get("p/3")],
                vec![],
            ),
        )
        .unwrap();
        assert_eq!(s.revision(), 3);
        match &response.responses[0].response {
            Some(response_op::Response::ResponseDeleteRange(d)) => {
                assert_eq!(d.deleted, 2);
                assert_eq!(d.prev_kvs.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            range_values(&response.responses[2]),
            vec![("c".to_string(), 3)]
        );
        let events = s.changes_since(&KeyRange::From(b("p/")), 3).unwrap();
        assert_eq!(events.len(), 3, "two deletes and a put, all at revision 3");
        assert!(events.iter().all(|e| e.revision == 3));
    }

    #[test]
    fn a_transaction_that_cannot_run_changes_nothing() {
        let mut s = KvState::new(SessionLimits::default());
        let reuse = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b("missing"),
                ignore_value: true,
                ..Default::default()
            })),
        };
        let refused = apply(&mut s, txn(vec![], vec![put("a", "1"), reuse], vec![]));
        assert_eq!(refused, Err(KEY_NOT_FOUND.to_string()));
        assert!(s.get(b"a").is_none(), "the put before it did not apply");
        assert_eq!(s.revision(), 1);
        let leased = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b("l"),
                value: b("v"),
                lease: 7,
                ..Default::default()
            })),
        };
        assert_eq!(
            apply(&mut s, txn(vec![], vec![leased], vec![])),
            Err(LEASE_NOT_FOUND.to_string())
        );
    }

    #[test]
    fn nested_compares_see_the_state_before_the_transaction() {
        let mut s = KvState::new(SessionLimits::default());
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(txn(
                vec![cmp(
                    "k",
                    CompareTarget::Value,
                    CompareResult::Equal,
                    TargetUnion::Value(b("x")),
                )],
                vec![put("seen", "after")],
                vec![put("seen", "before")],
            ))),
        };
        apply(&mut s, txn(vec![], vec![put("k", "x"), nested], vec![])).unwrap();
        assert_eq!(s.get(b"seen").unwrap(), "before");
    }

    #[test]
    fn range_sorts_filters_limits_and_counts_as_etcd_does() {
        let mut s = KvState::new(SessionLimits::default());
        for (key, value) in [("r/a", "3"), ("r/b", "1"), ("r/c", "2")] {
            apply(&mut s, single(put(key, value).request.unwrap())).unwrap();
        }
        let range = |f: &dyn Fn(&mut RangeRequest)| {
            let mut request = RangeRequest {
                key: b("r/"),
                range_end: b("r0"),
                ..Default::default()
            };
            f(&mut request);
            let response = s.etcd_range(&request).unwrap();
            let keys: Vec<String> = response
                .kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
                .collect();
            (keys, response.more, response.count)
        };
        let all = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(range(&|_| {}), (all(&["r/a", "r/b", "r/c"]), false, 3));
        assert_eq!(range(&|r| r.limit = 2), (all(&["r/a", "r/b"]), true, 3));
        assert_eq!(
            range(&|r| r.sort_order = range_request::SortOrder::Descend as i32),
            (all(&["r/c", "r/b", "r/a"]), false, 3)
        );
        // A target without an order sorts ascending by it.
        assert_eq!(
            range(&|r| r.sort_target = range_request::SortTarget::Value as i32),
            (all(&["r/b", "r/c", "r/a"]), false, 3)
        );
        assert_eq!(
            range(&|r| r.min_mod_revision = 3),
            (all(&["r/b", "r/c"]), false, 3)
        );
        assert_eq!(range(&|r| r.count_only = true), (all(&[]), false, 3));
        assert_eq!(range(&|r| r.revision = 3), (all(&["r/a", "r/b"]), false, 2));
        let keys_only = s
            .etcd_range(&RangeRequest {
                key: b("r/a"),
                keys_only: true,
                ..Default::default()
            })
            .unwrap();
        assert!(keys_only.kvs[0].value.is_empty());
        assert_eq!(keys_only.header.unwrap().revision, 4);
    }
}
