//! The etcd transactions simulated clients propose (`Write::EtcdTxn`): the
//! fault suite's (`raftkv_testkit::etcd_ops`).

pub(super) use raftkv_testkit::etcd_ops::{cas, put_with_lease, swap_of};
