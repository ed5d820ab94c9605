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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseState {
    /// On the boot clock.
    pub(crate) until: Option<Duration>,
    /// Applied index a lease read needs (entries of earlier terms).
    pub(crate) floor: u64,
}

/// Prefix of the ctx of lease-renewal ReadIndex rounds (the read batcher's
/// ctxs are 8 bytes, these 9).
const RENEW_CTX: u8 = b'L';

/// Where the node stands, as far as the lease is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leadership {
    pub(crate) leading: bool,
    pub(crate) term: u64,
    /// A leadership transfer is in progress.
    pub(crate) transferring: bool,
}

/// The leader lease: a plain value handed the time and the node's
/// leadership; it never reads a clock or raft itself.
#[derive(Debug)]
pub(crate) struct Lease {
    /// How long past a quorum-confirmed round's send time the lease runs.
    duration: Duration,
    /// Lease reads are on (`--lease-read`).
    enabled: bool,
    until: Option<Duration>,
    floor: u64,
    next_ctx: u64,
    /// The renewal round in flight: (ctx, sent at, sent at on the boot clock).
    renewal: Option<(u64, Instant, Duration)>,
    /// A leadership transfer started in this term: no lease in it any more.
    transfer_term: Option<u64>,
}

impl Lease {
    pub(crate) fn new(duration: Duration, enabled: bool) -> Lease {
        Lease {
            duration,
            enabled,
            until: None,
            floor: 0,
            next_ctx: 0,
            renewal: None,
            transfer_term: None,
        }
    }

    pub(crate) fn state(&self) -> LeaseState {
        LeaseState {
            until: self.until,
            floor: self.floor,
        }
    }

    /// Leadership began (`Some(last index)`) or ended (`None`).
    pub(crate) fn reset(&mut self, floor: Option<u64>) {
        self.until = None;
        self.renewal = None;
        if let Some(floor) = floor {
            self.floor = floor;
        }
    }

    /// A leadership transfer is starting in `term`: no lease for the rest
    /// of it.
    pub(crate) fn drop_for_term(&mut self, term: u64) {
        self.transfer_term = Some(term);
        self.until = None;
    }

    /// A ReadIndex round sent at `sent` (boot clock) was answered by a
    /// quorum.
    pub(crate) fn extend(&mut self, sent: Duration, now: Leadership) {
        if !self.enabled || !now.leading || now.transferring || self.transfer_term == Some(now.term)
        {
            return;
        }
        let until = sent + self.duration;
        if self.until.is_none_or(|current| until > current) {
            self.until = Some(until);
        }
    }

    /// The ctx of a renewal round to start now, when less than half the
    /// lease is left and no renewal is in flight (the caller leads).
    pub(crate) fn renewal_round(
        &mut self,
        now: Instant,
        boot_now: Duration,
        transferring: bool,
    ) -> Option<Vec<u8>> {
        if !self.enabled || transferring {
            return None;
        }
        let half = self.duration / 2;
        let needed = self
            .until
            .is_none_or(|until| until.saturating_sub(boot_now) < half);
        let in_flight = self
            .renewal
            .is_some_and(|(_, sent, _)| now.duration_since(sent) < half);
        if !needed || in_flight {
            return None;
        }
        self.next_ctx = self.next_ctx.wrapping_add(1);
        let mut ctx = vec![RENEW_CTX];
        ctx.extend_from_slice(&self.next_ctx.to_be_bytes());
        self.renewal = Some((self.next_ctx, now, boot_now));
        Some(ctx)
    }

    /// Handles the answer to a ReadIndex round; false if `ctx` is not a
    /// renewal's (then it is a read batch's).
    pub(crate) fn on_read_state(&mut self, ctx: &[u8], now: Leadership) -> bool {
        if ctx.len() != 9 || ctx[0] != RENEW_CTX {
            return false;
        }
        let id = u64::from_be_bytes(ctx[1..].try_into().expect("8 bytes"));
        if let Some((pending, _, sent)) = self.renewal {
            if pending == id {
                self.renewal = None;
                self.extend(sent, now);
            }
        }
        true
    }
}

impl<S: LogStore> Node<S> {
    fn leadership(&self) -> Leadership {
        let raft = &self.raw.raft;
        Leadership {
            leading: raft.state == StateRole::Leader,
            term: raft.term,
            transferring: raft.lead_transferee.is_some(),
        }
    }

    /// Publishes the lease to readers outside the node thread if it changed.
    fn publish_lease(&self) {
        let state = self.lease.state();
        let mut shared = self.shared.lease.lock().expect("lease lock poisoned");
        if *shared != state {
            *shared = state;
        }
    }

    /// Leadership began (`Some(last index)`) or ended (`None`).
    pub(super) fn reset_lease(&mut self, floor: Option<u64>) {
        self.lease.reset(floor);
        self.publish_lease();
    }

    /// Drops the lease for the rest of the term: a leadership transfer is
    /// starting.
    pub(super) fn drop_lease(&mut self) {
        self.lease.drop_for_term(self.raw.raft.term);
        self.publish_lease();
    }

    /// A ReadIndex round sent at `sent` (boot clock) was answered by a
    /// quorum.
    pub(super) fn extend_lease(&mut self, sent: Duration) {
        let leadership = self.leadership();
        self.lease.extend(sent, leadership);
        self.publish_lease();
    }

    /// Starts a renewal round when less than half the lease is left.
    pub(super) fn maybe_renew_lease(&mut self, now: Instant) {
        let transferring = self.raw.raft.lead_transferee.is_some();
        let boot_now = self.clock.boot();
        if let Some(ctx) = self.lease.renewal_round(now, boot_now, transferring) {
            self.raw.read_index(ctx);
        }
    }

    /// Handles the answer to a renewal round; false if `ctx` is not one.
    pub(super) fn on_lease_read_state(&mut self, ctx: &[u8]) -> bool {
        let leadership = self.leadership();
        let renewal = self.lease.on_read_state(ctx, leadership);
        if renewal {
            self.publish_lease();
        }
        renewal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(810);

    fn leading(term: u64) -> Leadership {
        Leadership {
            leading: true,
            term,
            transferring: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_confirmed_round_extends_the_lease_from_its_send_time_only_for_a_leader() {
        let mut lease = Lease::new(LEASE, true);
        lease.extend(ms(1_000), leading(3));
        assert_eq!(lease.state().until, Some(ms(1_810)), "send time + duration");
        // An older round never shortens it.
        lease.extend(ms(900), leading(3));
        assert_eq!(lease.state().until, Some(ms(1_810)));
        let mut follower = Lease::new(LEASE, true);
        follower.extend(
            ms(1_000),
            Leadership {
                leading: false,
                ..leading(3)
            },
        );
        assert_eq!(follower.state().until, None, "no lease without leading");
        let mut off = Lease::new(LEASE, false);
        off.extend(ms(1_000), leading(3));
        assert_eq!(off.state().until, None, "--lease-read false");
    }

    #[test]
    fn a_transfer_ends_the_lease_for_the_rest_of_its_term() {
        let mut lease = Lease::new(LEASE, true);
        lease.extend(ms(1_000), leading(3));
        lease.drop_for_term(3);
        assert_eq!(lease.state().until, None);
        lease.extend(ms(2_000), leading(3));
        assert_eq!(lease.state().until, None, "not again in term 3");
        let transferring = Leadership {
            transferring: true,
            ..leading(4)
        };
        lease.extend(ms(2_000), transferring);
        assert_eq!(lease.state().until, None, "not while transferring");
        lease.extend(ms(3_000), leading(4));
        assert_eq!(lease.state().until, Some(ms(3_810)), "a new term may");
    }

    #[test]
    fn a_renewal_starts_when_half_the_lease_is_left_and_counts_from_its_send_time() {
        let t0 = Instant::now();
        let mut lease = Lease::new(LEASE, true);
        let ctx = lease
            .renewal_round(t0, ms(1_000), false)
            .expect("no lease yet: renew");
        assert!(
            lease.renewal_round(t0 + ms(10), ms(1_010), false).is_none(),
            "one renewal in flight"
        );
        // The round is answered later; the lease counts from when it was sent.
        assert!(lease.on_read_state(&ctx, leading(2)));
        assert_eq!(lease.state().until, Some(ms(1_810)));
        assert!(
            lease
                .renewal_round(t0 + ms(300), ms(1_300), false)
                .is_none(),
            "more than half left"
        );
        assert!(lease
            .renewal_round(t0 + ms(500), ms(1_500), false)
            .is_some());
        assert!(
            !lease.on_read_state(&7u64.to_be_bytes(), leading(2)),
            "a read batch's ctx is not a renewal"
        );
    }

    #[test]
    fn losing_leadership_resets_the_lease_and_a_new_term_sets_its_floor() {
        let mut lease = Lease::new(LEASE, true);
        lease.reset(Some(41));
        lease.extend(ms(1_000), leading(5));
        lease.reset(None);
        assert_eq!(
            lease.state(),
            LeaseState {
                until: None,
                floor: 41
            }
        );
    }
}
