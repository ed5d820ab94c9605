//! The leader lease (docs/REFERENCE.md §2), kept by the host, not by raft-rs's
//! `LeaseBased` option (raft runs with `ReadOnlyOption::Safe`).
//!
//! Every ReadIndex round a quorum answers proves that at the moment its
//! heartbeats were *sent* this node was the leader, and that a quorum reset
//! their election timers on receiving them, later. With check-quorum, a
//! follower ignores vote requests until `election_tick` of its own ticks
//! have passed since it last heard from the leader, so no other leader can
//! be elected before `sent + (election_tick - 1) * tick` (a tick may fire
//! right after the reset). The lease runs to `sent` plus 90% of that, on
//! the boot clock (`crate::clock`): a wall-clock jump changes nothing, and
//! a leader paused, or on a host suspended, past its lease finds it expired
//! when it resumes. (Every voter must run with the same
//! `--election-timeout` and `--heartbeat-interval`.)
//!
//! Two more ways another leader could appear early are closed: a node that
//! just started knows no leader, so raft-rs would grant votes at once — the
//! node ignores vote requests for an election timeout after it starts; and
//! a leadership transfer lets the transferee campaign without waiting — once
//! a transfer starts in a term, the lease is not taken again in that term
//! (a transfer that times out can still be acted on late).
//!
//! The lease is dropped when leadership is lost or a leadership transfer
//! starts (the transferee campaigns without waiting for timers), and a lease
//! read also needs the state machine to have applied every entry of earlier
//! terms (`floor`: the last index when this node became leader). While lease
//! reads are on, the leader renews the lease with its own ReadIndex round
//! once less than half of it is left.

use std::time::{Duration, Instant};

use raft::StateRole;

use super::Node;
use crate::log_store::LogStore;

/// What readers outside the node thread check.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LeaseState {
    /// On the boot clock.
    pub(crate) until: Option<Duration>,
    /// Applied index a lease read needs (entries of earlier terms).
    pub(crate) floor: u64,
}

/// Prefix of the ctx of lease-renewal ReadIndex rounds (the read batcher's
/// ctxs are 8 bytes, these 9).
const RENEW_CTX: u8 = b'L';

#[derive(Debug, Default)]
pub(crate) struct Lease {
    until: Option<Duration>,
    floor: u64,
    next_ctx: u64,
    /// The renewal round in flight: (ctx, sent at, sent at on the boot clock).
    renewal: Option<(u64, Instant, Duration)>,
    /// A leadership transfer started in this term: no lease in it any more.
    transfer_term: Option<u64>,
}

impl<S: LogStore> Node<S> {
    fn lease_duration(&self) -> Duration {
        if self
            .config
            .bugs
            .on(|b| b.lease_longer_than_election_timeout)
        {
            return self.config.election_timeout * 3;
        }
        self.config.lease_duration()
    }

    fn publish_lease(&self) {
        *self.shared.lease.lock().expect("lease lock poisoned") = LeaseState {
            until: self.lease.until,
            floor: self.lease.floor,
        };
    }

    /// Leadership began (`Some(last index)`) or ended (`None`).
    pub(super) fn reset_lease(&mut self, floor: Option<u64>) {
        self.lease.until = None;
        self.lease.renewal = None;
        if let Some(floor) = floor {
            self.lease.floor = floor;
        }
        self.publish_lease();
    }

    /// Drops the lease for the rest of the term: a leadership transfer is
    /// starting.
    pub(super) fn drop_lease(&mut self) {
        self.lease.transfer_term = Some(self.raw.raft.term);
        if self.lease.until.is_some() {
            self.lease.until = None;
            self.publish_lease();
        }
    }

    /// A ReadIndex round sent at `sent` (boot clock) was answered by a
    /// quorum.
    pub(super) fn extend_lease(&mut self, sent: Duration) {
        if !self.config.lease_reads
            || self.raw.raft.state != StateRole::Leader
            || self.raw.raft.lead_transferee.is_some()
            || self.lease.transfer_term == Some(self.raw.raft.term)
        {
            return;
        }
        let until = sent + self.lease_duration();
        if self.lease.until.is_none_or(|current| until > current) {
            self.lease.until = Some(until);
            self.publish_lease();
        }
    }

    /// Starts a renewal round when less than half the lease is left.
    pub(super) fn maybe_renew_lease(&mut self, now: Instant) {
        if !self.config.lease_reads || self.raw.raft.lead_transferee.is_some() {
            return;
        }
        let half = self.lease_duration() / 2;
        let boot_now = self.clock.boot();
        let needed = self
            .lease
            .until
            .is_none_or(|until| until.saturating_sub(boot_now) < half);
        let in_flight = self
            .lease
            .renewal
            .is_some_and(|(_, sent, _)| now.duration_since(sent) < half);
        if needed && !in_flight {
            self.lease.next_ctx = self.lease.next_ctx.wrapping_add(1);
            let mut ctx = vec![RENEW_CTX];
            ctx.extend_from_slice(&self.lease.next_ctx.to_be_bytes());
            self.raw.read_index(ctx);
            self.lease.renewal = Some((self.lease.next_ctx, now, boot_now));
        }
    }

    /// Handles the answer to a renewal round; false if `ctx` is not one.
    pub(super) fn on_lease_read_state(&mut self, ctx: &[u8]) -> bool {
        if ctx.len() != 9 || ctx[0] != RENEW_CTX {
            return false;
        }
        let id = u64::from_be_bytes(ctx[1..].try_into().expect("8 bytes"));
        if let Some((pending, _, sent)) = self.lease.renewal {
            if pending == id {
                self.lease.renewal = None;
                self.extend_lease(sent);
            }
        }
        true
    }
}
