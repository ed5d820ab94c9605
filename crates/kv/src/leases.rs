//! etcd's leases in the state machine: which leases exist, their granted
//! TTL, and the keys attached to each. Granting and revoking go through
//! the log, so every replica has the same leases and deletes the same keys
//! at the same revision when one is revoked. When a lease expires is not
//! here: the leader keeps the timers (in memory, started afresh when it
//! takes over) and proposes the revoke.

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};

use crate::etcd::LEASE_NOT_FOUND;
use crate::state::KvState;

pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";

/// One lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// Granted TTL, seconds.
    pub ttl: u64,
    pub keys: OrdSet<Bytes>,
}

pub(crate) type Leases = OrdMap<u64, Lease>;

impl KvState {
    pub(crate) fn grant_lease(&mut self, id: u64, ttl: u64) -> Result<(), String> {
        if id == 0 {
            return Err("etcdserver: lease id 0 is not valid".into());
        }
        if self.leases.contains_key(&id) {
            return Err(LEASE_EXISTS.into());
        }
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: OrdSet::new(),
            },
        );
        Ok(())
    }

    /// Revokes lease `id`, deleting its keys at one revision (none if it
    /// had no keys).
    pub(crate) fn revoke_lease(&mut self, id: u64) -> Result<(), String> {
        let Some(lease) = self.leases.remove(&id) else {
            return Err(LEASE_NOT_FOUND.into());
        };
        if lease.keys.is_empty() {
            return Ok(());
        }
        let revision = self.revision + 1;
        for key in lease.keys.iter() {
            // Keys in sorted order, as etcd deletes them.
            self.delete_record(key, revision);
        }
        self.revision = revision;
        Ok(())
    }

    /// Moves `key` from lease `from` to lease `to` (0: none).
    pub(crate) fn reattach(&mut self, key: &Bytes, from: u64, to: u64) {
        if from == to {
            return;
        }
        if let Some(lease) = self.leases.get_mut(&from) {
            lease.keys.remove(key);
        }
        if let Some(lease) = self.leases.get_mut(&to) {
            lease.keys.insert(key.clone());
        }
    }

    pub fn lease(&self, id: u64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease id with its granted TTL.
    pub fn leases(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.leases.iter().map(|(id, lease)| (*id, lease.ttl))
    }

    /// Rebuilds each lease's keys from the records that name it (after a
    /// snapshot is restored).
    pub(crate) fn rebuild_lease_keys(&mut self) {
        let attached: Vec<(u64, Bytes)> = self
            .map
            .iter()
            .filter(|(_, record)| record.lease != 0)
            .map(|(key, record)| (record.lease, key.clone()))
            .collect();
        for (id, key) in attached {
            if let Some(lease) = self.leases.get_mut(&id) {
                lease.keys.insert(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, LeaseGrant};
    use crate::etcd::single;
    use crate::{ApplyOutcome, SessionLimits};
    use raftkv_proto::etcdserverpb::{request_op, PutRequest};

    fn run(s: &mut KvState, cmd: Command) -> ApplyOutcome {
        let index = s.applied_index() + 1;
        s.apply(
            index,
            1,
            &Command {
                rules: crate::CURRENT_RULES,
                ..cmd
            },
        )
    }

    fn grant(s: &mut KvState, id: u64, ttl: u64) -> ApplyOutcome {
        run(
            s,
            Command {
                lease_grant: Some(LeaseGrant { id, ttl }),
                ..Default::default()
            },
        )
    }

    fn revoke(s: &mut KvState, id: u64) -> ApplyOutcome {
        run(
            s,
            Command {
                lease_revoke: id,
                ..Default::default()
            },
        )
    }

    fn put(s: &mut KvState, key: &str, lease: u64) -> ApplyOutcome {
        let request = PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            lease: lease as i64,
            ..Default::default()
        };
        run(
            s,
            Command {
                etcd_txn: Some(single(request_op::Request::RequestPut(request))),
                ..Default::default()
            },
        )
    }

    fn keys(s: &KvState, id: u64) -> Vec<String> {
        s.lease(id)
            .map(|l| {
                l.keys
                    .iter()
                    .map(|k| String::from_utf8(k.to_vec()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_revoked_lease_takes_its_keys_with_it_at_one_revision() {
        let mut s = KvState::new(SessionLimits::default());
        assert_eq!(grant(&mut s, 7, 5), ApplyOutcome::Applied);
        assert_eq!(s.revision(), 1, "a grant is no revision");
        assert_eq!(
            grant(&mut s, 7, 5),
            ApplyOutcome::Refused(LEASE_EXISTS.into())
        );
        assert!(
            matches!(put(&mut s, "a", 9), ApplyOutcome::Refused(_)),
            "lease 9 does not exist"
        );
        put(&mut s, "a", 7);
        put(&mut s, "b", 7);
        put(&mut s, "c", 7);
        put(&mut s, "c", 0); // a put without the lease detaches it
        assert_eq!(keys(&s, 7), vec!["a", "b"]);
        assert_eq!(s.get_record(b"a").unwrap().lease, 7);
        let before = s.revision();
        assert_eq!(revoke(&mut s, 7), ApplyOutcome::Applied);
        assert_eq!(
            s.revision(),
            before + 1,
            "both keys deleted at one revision"
        );
        assert!(s.get(b"a").is_none() && s.get(b"b").is_none());
        assert!(s.get(b"c").is_some());
        assert_eq!(
            revoke(&mut s, 7),
            ApplyOutcome::Refused(LEASE_NOT_FOUND.into())
        );
        grant(&mut s, 8, 5);
        assert_eq!(revoke(&mut s, 8), ApplyOutcome::Applied);
        assert_eq!(
            s.revision(),
            before + 1,
            "revoking a lease without keys is no revision"
        );
    }

    #[test]
    fn leases_and_their_keys_survive_a_snapshot() {
        let mut s = KvState::new(SessionLimits::default());
        grant(&mut s, 3, 10);
        grant(&mut s, 4, 20);
        put(&mut s, "x", 3);
        put(&mut s, "y", 4);
        let restored = crate::snapshot::round_trip(&s);
        assert_eq!(
            restored.leases().collect::<Vec<_>>(),
            vec![(3, 10), (4, 20)]
        );
        assert_eq!(keys(&restored, 3), vec!["x"]);
        assert_eq!(keys(&restored, 4), vec!["y"]);
        assert_eq!(restored.content_hash(), s.content_hash());
    }
}
