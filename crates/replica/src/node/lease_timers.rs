//! When etcd leases expire: the leader's timers, on the node's clock.
//!
//! Which leases exist is replicated state (`raftkv_kv::leases`); when each
//! expires is not: only the leader keeps timers, in memory. A node that
//! becomes leader starts every lease's TTL afresh (so no lease expires
//! because of a failover — etcd's rule without checkpoints); a keep-alive
//! at the leader restarts one; an expired lease is revoked through the log
//! (a proposed revoke, retried until it applies), so every replica deletes
//! its keys at the same revision.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Node;
use crate::error::ReplicaError;
use crate::log_store::LogStore;

/// Revokes proposed per turn at most (etcd: 500 per pass).
const REVOKES_PER_TURN: usize = 500;

#[derive(Default)]
pub(super) struct LeaseTimers {
    /// While leader: when each lease expires.
    expiry: HashMap<u64, Instant>,
    /// Revokes proposed, and when to propose again if not applied by then.
    revoking: HashMap<u64, Instant>,
    /// Expiry is looked for once per tick, not on every turn (a turn per
    /// message would otherwise walk every lease).
    next_check: Option<Instant>,
}

impl LeaseTimers {
    fn clear(&mut self) {
        self.expiry.clear();
        self.revoking.clear();
    }

    /// The leases due now (not being revoked), at most `limit`.
    fn due(&self, now: Instant, limit: usize) -> Vec<u64> {
        let mut due: Vec<u64> = self
            .expiry
            .iter()
            .filter(|(id, at)| {
                **at <= now && self.revoking.get(id).is_none_or(|retry| *retry <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        due.truncate(limit);
        due
    }
}

/// What `LeaseTimeToLive` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Seconds left (rounded up), as the leader's timer says.
    pub remaining: u64,
    pub granted: u64,
    pub keys: Vec<bytes::Bytes>,
}

impl<S: LogStore> Node<S> {
    /// Leadership began or ended (called once per change).
    pub(super) fn restart_lease_timers(&mut self, leading: bool) {
        self.lease_timers.clear();
        if !leading {
            return;
        }
        let now = self.now;
        let kv = self.shared.kv.read().expect("kv lock poisoned");
        for (id, ttl) in kv.leases() {
            self.lease_timers
                .expiry
                .insert(id, now + Duration::from_secs(ttl));
        }
    }

    /// A grant or revoke applied: the leader starts or drops its timer.
    pub(super) fn on_lease_applied(&mut self, granted: Option<(u64, u64)>, revoked: u64) {
        if self.leader_term.is_none() && self.raw.raft.state != raft::StateRole::Leader {
            return;
        }
        if let Some((id, ttl)) = granted {
            self.lease_timers
                .expiry
                .insert(id, self.now + Duration::from_secs(ttl));
        }
        if revoked != 0 {
            self.lease_timers.expiry.remove(&revoked);
            self.lease_timers.revoking.remove(&revoked);
        }
    }

    /// Proposes the revoke of every expired lease (leader only).
    pub(super) fn revoke_expired_leases(&mut self) {
        if self.raw.raft.state != raft::StateRole::Leader || !self.raw.raft.commit_to_current_term()
        {
            return;
        }
        let now = self.now;
        if self.lease_timers.expiry.is_empty()
            || self.lease_timers.next_check.is_some_and(|at| now < at)
        {
            return;
        }
        self.lease_timers.next_check = Some(now + self.tick_interval);
        for id in self.lease_timers.due(now, REVOKES_PER_TURN) {
            let retry = now + 3 * self.config.election_timeout;
            self.lease_timers.revoking.insert(id, retry);
            let (reply, _) = oneshot::channel();
            tracing::debug!("node {}: lease {id:x} expired; revoking it", self.id);
            self.propose(super::ProposeInput {
                write: super::Write::LeaseRevoke(id),
                session: Default::default(),
                caller: super::Caller::Node,
                reply,
                queued: now,
                forward: false,
            });
        }
    }

    fn check_lease_leader(&self) -> Result<(), ReplicaError> {
        self.check_serving()?;
        if self.raw.raft.state != raft::StateRole::Leader {
            return Err(self.not_leader());
        }
        if !self.raw.raft.commit_to_current_term() || self.applied_index < self.term_start_index {
            // Until it has applied its term's first entry, a new leader may
            // not have applied a grant the previous one acknowledged, and
            // would answer "no such lease" to its holder (etcd's #6978).
            return Err(ReplicaError::Unavailable(
                "the new leader has not applied the entries before its term yet; retry".into(),
            ));
        }
        Ok(())
    }

    /// A keep-alive: restarts the lease's timer; its granted TTL, or 0 when
    /// no such lease exists.
    pub(super) fn keep_lease_alive(&mut self, id: u64) -> Result<u64, ReplicaError> {
        self.check_lease_leader()?;
        let ttl = self
            .shared
            .kv
            .read()
            .expect("kv lock poisoned")
            .lease(id)
            .map(|lease| lease.ttl);
        let Some(ttl) = ttl else {
            return Ok(0);
        };
        if self.lease_timers.revoking.contains_key(&id) {
            // Already expired and being revoked: too late.
            return Ok(0);
        }
        if !self.config.bugs.on(|b| b.ignore_keep_alive) {
            self.lease_timers
                .expiry
                .insert(id, self.now + Duration::from_secs(ttl));
        }
        Ok(ttl)
    }

    /// How long lease `id` has left, its TTL and keys (`None`: no such
    /// lease).
    pub(super) fn lease_time_to_live(&self, id: u64) -> Result<Option<LeaseInfo>, ReplicaError> {
        self.check_lease_leader()?;
        let kv = self.shared.kv.read().expect("kv lock poisoned");
        let Some(lease) = kv.lease(id) else {
            return Ok(None);
        };
        let remaining = self
            .lease_timers
            .expiry
            .get(&id)
            // Whole seconds left, rounded down as etcd's are.
            .map_or(lease.ttl, |at| {
                at.saturating_duration_since(self.now).as_secs()
            });
        Ok(Some(LeaseInfo {
            remaining,
            granted: lease.ttl,
            keys: lease.keys.iter().cloned().collect(),
        }))
    }
}
