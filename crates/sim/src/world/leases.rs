//! etcd leases in the simulation, and their checks.
//!
//! A lease actor (a client of its own, through the same attempt, redirect
//! and timeout path as the map's clients) grants leases (`Write::LeaseGrant`
//! with ids from the seed, TTLs of 1–3 s; the replica's floor for a 300 ms
//! election timeout is 1 s) and puts keys attached to them (`l<id>/<n>`, an
//! etcd `Txn` put with the lease; none of the map's clients touch them). One
//! lease at a time is *kept*: a keep-alive loop sends `lease_keep_alive` to
//! the node it believes leads every TTL/3 of simulated time, following
//! redirects; the others are left to expire. Grants and puts go without a
//! write session, as the etcd API proposes them, so one whose outcome is
//! unknown is not retried.
//!
//! The replica's rules (`replica/src/node/lease_timers.rs`): only the leader
//! keeps timers, on its own clock; a node that becomes leader gives every
//! lease its full TTL from then; a keep-alive it answers restarts the
//! lease's TTL; an expired lease is revoked through the log. The checks:
//!
//! - **A kept-alive lease never expires early** (during the run, at every
//!   revoke seen committed): a revoke in the log was proposed by the leader
//!   of the entry's term (`Command::proposer`); that leader's timer for the
//!   lease cannot have run out less than a TTL, on its own clock, after it
//!   won the term, nor less than a TTL after a keep-alive of the lease it
//!   answered (successfully) in that term. The simulator knows each node's
//!   clock (`SimClock::local_at`), the true time each term was won (the turn
//!   the node was first seen leading it, the turn its timers restart in),
//!   the true time of each keep-alive answer (the answering turn: the loop
//!   is polled right after every round of turns), and an upper bound on the
//!   revoke's proposal time (when its entry was first seen committed). A
//!   revoke whose commit, on the proposer's clock, precedes won + TTL or
//!   answered keep-alive + TTL was proposed early: a violation. Sound with
//!   faults of any length: a keeper cut off from the leader for longer than
//!   the TTL lets its lease expire legitimately, and that is not flagged,
//!   since only keep-alives the revoking leader itself answered count.
//! - **A keep-alive is not answered "no such lease" for a lease whose grant
//!   was acknowledged**, by a leader that has not applied that grant yet
//!   (etcd's leader applies what it has committed before it looks a lease
//!   up for a renewal or a time-to-live, since etcd #6978; a client told
//!   TTL 0 takes its lease, and what it guards, for lost).
//! - **A lease not kept alive expires**: after the heal, the settling and
//!   the final reads (and up to `LEASE_SETTLE_US` more, while a member still
//!   holds one), no member holds a lease that is not kept alive, nor any key
//!   put with one.
//! - **A revoke deletes a lease's keys at one revision**, and nothing else
//!   deletes them: in the committed history (a converged member's), every
//!   deletion of a lease's keys shares one revision, no key of a lease that
//!   still exists was deleted, and no key of a lease was put after the
//!   lease's keys were deleted. (That every replica deletes them at the same
//!   revision is the state comparison at equal applied indexes: the state
//!   hash covers the store revision, every record with its lease, and the
//!   leases.)

use std::collections::{BTreeMap, BTreeSet};
use std::task::Poll;

use bytes::Bytes;
use raftkv_kv::KeyRange;
use raftkv_replica::ReplicaError;
use raftkv_testkit::history::Outcome;
use rand::Rng;

use super::{noop_poll, ClientOp, Pollable, World, ATTEMPT_TIMEOUT_US};

/// Leases granted per run at most.
const MAX_LEASES: usize = 16;
/// After the final reads: how much longer members get to revoke the leases
/// no one keeps alive.
const LEASE_SETTLE_US: u64 = 15_000_000;
/// Slack in the early-revoke check (on the revoking leader's clock).
const MARGIN_US: u64 = 1_000;

/// What the actor knows of a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Grant {
    Pending,
    Granted,
    /// Outcome unknown: the lease may exist.
    Maybe,
    /// Definitely not granted.
    Refused,
}

pub(super) struct SimLease {
    /// Seconds.
    ttl: u64,
    /// Granted for the keep-alive loop.
    kept: bool,
    grant: Grant,
    /// Keys put with the lease: (key, acknowledged; else outcome unknown).
    keys: Vec<(String, bool)>,
}

/// A keep-alive the loop had answered with the lease's TTL.
struct Renewal {
    lease: u64,
    node: u64,
    /// The term the node led when it answered.
    term: u64,
    at_us: u64,
}

type KeepAliveAnswer = Pollable<Result<u64, ReplicaError>>;

struct KeepAlive {
    node: u64,
    started_us: u64,
    answer: KeepAliveAnswer,
}

/// The keep-alive loop.
#[derive(Default)]
struct Keeper {
    /// The lease it keeps alive (acknowledged granted).
    lease: Option<u64>,
    ttl: u64,
    next_at: u64,
    /// The node it believes leads (0: none known).
    hint: u64,
    inflight: Option<KeepAlive>,
}

#[derive(Default)]
pub(super) struct Leases {
    all: BTreeMap<u64, SimLease>,
    keeper: Keeper,
    renewals: Vec<Renewal>,
    /// lease -> log index of its grant (first seen committed).
    grant_index: BTreeMap<u64, u64>,
    /// lease -> true time a revoke of it was first seen committed.
    revoked: BTreeMap<u64, u64>,
    keys_put: u64,
}

impl World {
    /// The lease actor's next operation (`None`: nothing to do now).
    pub(super) fn next_lease_op(&mut self) -> Option<ClientOp> {
        let room = self.leases.all.len() < MAX_LEASES;
        if self.leases.keeper.lease.is_none() && room {
            return Some(self.new_lease(true));
        }
        let live: Vec<u64> = self
            .leases
            .all
            .iter()
            .filter(|(id, lease)| {
                lease.grant == Grant::Granted && !self.leases.revoked.contains_key(*id)
            })
            .map(|(id, _)| *id)
            .collect();
        if room && (live.is_empty() || self.lease_rng.gen_ratio(1, 4)) {
            return Some(self.new_lease(false));
        }
        let kept = self.leases.keeper.lease;
        let lease = match kept {
            Some(kept) if self.lease_rng.gen_bool(0.5) => kept,
            _ if !live.is_empty() => live[self.lease_rng.gen_range(0..live.len())],
            _ => return None,
        };
        self.leases.keys_put += 1;
        let n = self.leases.keys_put;
        Some(ClientOp::LeasePut {
            lease,
            key: format!("l{lease:016x}/{n}"),
            value: format!("v{n}"),
        })
    }

    fn new_lease(&mut self, kept: bool) -> ClientOp {
        let id = loop {
            // Positive as an i64, as etcd's lease ids are.
            let id = self.lease_rng.gen_range(1..=i64::MAX as u64);
            if !self.leases.all.contains_key(&id) {
                break id;
            }
        };
        let ttl = if kept {
            self.lease_rng.gen_range(2..=3)
        } else {
            self.lease_rng.gen_range(1..=3)
        };
        self.leases.all.insert(
            id,
            SimLease {
                ttl,
                kept,
                grant: Grant::Pending,
                keys: Vec::new(),
            },
        );
        ClientOp::LeaseGrant { id, ttl, kept }
    }

    /// The lease actor's operation `op` ended with `outcome`.
    pub(super) fn complete_lease_op(&mut self, op: ClientOp, outcome: Outcome) {
        let now = self.now_us;
        let what = match op {
            ClientOp::LeaseGrant { id, ttl, kept } => {
                let lease = self
                    .leases
                    .all
                    .get_mut(&id)
                    .expect("a lease the actor granted");
                lease.grant = match outcome {
                    Outcome::Ok => Grant::Granted,
                    Outcome::Unknown => Grant::Maybe,
                    Outcome::Failed => Grant::Refused,
                };
                if kept {
                    if outcome == Outcome::Ok && self.leases.keeper.lease.is_none() {
                        self.leases.keeper.lease = Some(id);
                        self.leases.keeper.ttl = ttl;
                        self.leases.keeper.next_at = now + ttl * 1_000_000 / 3;
                    } else {
                        // Not known to exist: left to expire like the rest.
                        lease.kept = false;
                    }
                }
                let kept = if kept { ", to keep alive" } else { "" };
                format!("grant lease {id:x} (TTL {ttl}s{kept})")
            }
            ClientOp::LeasePut { lease, key, value } => {
                let attached = outcome != Outcome::Failed;
                if let Some(held) = self.leases.all.get_mut(&lease).filter(|_| attached) {
                    held.keys.push((key.clone(), outcome == Outcome::Ok));
                }
                format!("put({key}, {value}) with lease {lease:x}")
            }
            other => unreachable!("not a lease operation: {other:?}"),
        };
        self.trace
            .note(now, || format!("lease actor: {what} [{outcome:?}]"));
    }

    /// The keep-alive loop: one keep-alive in flight at most, every TTL/3
    /// when they succeed, to the node it believes leads.
    pub(super) fn poll_keeper(&mut self) {
        let now = self.now_us;
        let Some(lease) = self.leases.keeper.lease else {
            return;
        };
        if self.leases.keeper.inflight.is_none() {
            if now < self.leases.keeper.next_at {
                return;
            }
            let running = self.running_ids();
            let hint = self.leases.keeper.hint;
            let node = if hint != 0 && running.contains(&hint) {
                hint
            } else if running.is_empty() {
                self.leases.keeper.next_at = now + 50_000;
                return;
            } else {
                running[self.lease_rng.gen_range(0..running.len())]
            };
            let index = (node - 1) as usize;
            if self.nodes[index].paused_until.is_some() {
                // A stopped process answers nothing: its connection times
                // out and the loop tries another node.
                self.leases.keeper.hint = 0;
                self.leases.keeper.next_at = now + 100_000;
                return;
            }
            let replica = self.nodes[index]
                .running
                .as_ref()
                .expect("running")
                .replica
                .clone();
            self.leases.keeper.inflight = Some(KeepAlive {
                node,
                started_us: now,
                answer: Box::pin(async move { replica.lease_keep_alive(lease).await }),
            });
        }
        let Some(attempt) = self.leases.keeper.inflight.as_mut() else {
            return;
        };
        let result = match noop_poll(&mut attempt.answer) {
            Poll::Pending if now - attempt.started_us > ATTEMPT_TIMEOUT_US => None,
            Poll::Pending => return,
            Poll::Ready(result) => Some(result),
        };
        let node = attempt.node;
        self.leases.keeper.inflight = None;
        let (hint, retry_in) = match result {
            Some(Ok(ttl)) if ttl > 0 => return self.renewed(lease, node),
            Some(Ok(_)) => return self.kept_lease_gone(lease, node),
            Some(Err(ReplicaError::NotLeader { leader_id, .. })) => {
                (leader_id, if leader_id == 0 { 20_000 } else { 1_000 })
            }
            // A new leader that has not committed in its term yet.
            Some(Err(ReplicaError::Unavailable(_))) => (node, 20_000),
            None | Some(Err(_)) => (0, 20_000),
        };
        self.leases.keeper.hint = hint;
        self.leases.keeper.next_at = now + retry_in;
    }

    /// `node` answered a keep-alive of `lease` with its TTL, now.
    fn renewed(&mut self, lease: u64, node: u64) {
        let now = self.now_us;
        let index = (node - 1) as usize;
        let term = self.nodes[index]
            .running
            .as_ref()
            .map(|running| running.replica.status().term);
        // The answering turn was this step's, and a leader's term does not
        // change within a turn after it took its inputs: the term it led.
        if let Some(term) = term.filter(|term| self.leaders.get(term) == Some(&node)) {
            self.leases.renewals.push(Renewal {
                lease,
                node,
                term,
                at_us: now,
            });
        }
        self.leases.keeper.hint = node;
        self.leases.keeper.next_at = now + self.leases.keeper.ttl * 1_000_000 / 3;
        self.trace.note(now, || {
            format!("lease {lease:x} kept alive at node {node} (term {term:?})")
        });
    }

    /// `node`, leading, answered a keep-alive of the kept `lease` with "no
    /// such lease": the loop gives it up (it is left to expire, if it
    /// still exists).
    fn kept_lease_gone(&mut self, lease: u64, node: u64) {
        let now = self.now_us;
        self.leases.keeper.lease = None;
        self.trace.note(now, || {
            format!("node {node} answered a keep-alive of lease {lease:x}: no such lease")
        });
        let index = (node - 1) as usize;
        let applied = self.nodes[index]
            .running
            .as_ref()
            .map(|running| running.replica.kv().applied_index());
        let grant = self.leases.grant_index.get(&lease).copied();
        // Its grant was acknowledged before the loop's first keep-alive;
        // the node answered in this step's turn, from a state at most as
        // far applied as now.
        if let Some((applied, grant)) = applied.zip(grant).filter(|(a, g)| a < g) {
            self.violation(format!(
                "node {node}, leading, answered a keep-alive of lease {lease:x} with \"no such \
                 lease\" with its applied index at most {applied}, before the lease's grant \
                 (committed at index {grant} and acknowledged before the keep-alive was sent): \
                 a leader must apply what it has committed before it looks a lease up (etcd \
                 #6978)"
            ));
        }
    }

    /// A command first seen committed, at `index` in `term`: grants and
    /// revokes are noted, revokes checked.
    pub(super) fn note_committed_command(&mut self, index: u64, term: u64, data: &Bytes) {
        let Ok(command) = raftkv_kv::decode_command(data) else {
            return;
        };
        if let Some(grant) = &command.lease_grant {
            self.leases.grant_index.entry(grant.id).or_insert(index);
        }
        if command.lease_revoke != 0 {
            self.check_revoke(index, term, command.proposer, command.lease_revoke);
        }
    }

    /// A revoke of `lease` proposed by `proposer` (leader of `term`), first
    /// seen committed now: not before the proposer's timer can have run
    /// out (see the module's comment).
    fn check_revoke(&mut self, index: u64, term: u64, proposer: u64, lease: u64) {
        let now = self.now_us;
        self.leases.revoked.entry(lease).or_insert(now);
        self.trace.note(now, || {
            format!(
                "lease {lease:x} revoked at index {index} (term {term}, proposed by node \
                 {proposer})"
            )
        });
        let Some(ttl) = self.leases.all.get(&lease).map(|l| l.ttl) else {
            return;
        };
        if proposer == 0 || self.leaders.get(&term) != Some(&proposer) {
            return;
        }
        let Some(node) = self.nodes.get((proposer - 1) as usize) else {
            return;
        };
        let clock = node.clock.clone();
        let ttl_us = ttl * 1_000_000;
        let committed = clock.local_at(now);
        let won = self
            .won
            .iter()
            .find(|(t, id, _)| *t == term && *id == proposer)
            .map(|(_, _, at)| *at);
        if let Some(won) = won {
            let since = clock.local_at(won);
            if committed + MARGIN_US < since + ttl_us {
                self.violation(format!(
                    "node {proposer} revoked lease {lease:x} (TTL {ttl}s) in term {term} at \
                     most {:.3}s after it won the term, on its clock: a new leader gives every \
                     lease its full TTL",
                    committed.saturating_sub(since) as f64 / 1e6
                ));
            }
        }
        let renewed = self
            .leases
            .renewals
            .iter()
            .filter(|r| r.lease == lease && r.node == proposer && r.term == term)
            .map(|r| r.at_us)
            .max();
        if let Some(renewed) = renewed {
            let since = clock.local_at(renewed);
            if committed + MARGIN_US < since + ttl_us {
                self.violation(format!(
                    "kept-alive lease {lease:x} (TTL {ttl}s) expired: node {proposer}, leader \
                     of term {term}, revoked it at most {:.3}s (on its clock) after it had \
                     answered a keep-alive of it in that term",
                    committed.saturating_sub(since) as f64 / 1e6
                ));
            }
        }
    }

    /// Leases granted (or maybe granted) that the keep-alive loop does not
    /// keep alive now.
    fn dropped_leases(&self) -> Vec<u64> {
        let kept = self.leases.keeper.lease;
        self.leases
            .all
            .iter()
            .filter(|(id, lease)| {
                Some(**id) != kept && matches!(lease.grant, Grant::Granted | Grant::Maybe)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether a running member still holds a dropped lease or a key put
    /// with one: (node, lease, keys of it held) for each.
    fn dropped_leases_held(&self, members: &[usize]) -> Vec<(u64, u64, usize)> {
        let dropped = self.dropped_leases();
        let mut held = Vec::new();
        for &index in members {
            let node = &self.nodes[index];
            let Some(running) = &node.running else {
                continue;
            };
            let kv = running.replica.kv();
            for id in &dropped {
                let keys = self.leases.all[id]
                    .keys
                    .iter()
                    .filter(|(key, _)| kv.get(key.as_bytes()).is_some())
                    .count();
                if kv.lease(*id).is_some() || keys > 0 {
                    held.push((node.id, *id, keys));
                }
            }
        }
        held
    }

    /// After the final reads: steps while a member still holds a lease no
    /// one keeps alive (a leader gives each its full TTL from its election
    /// on), at most `LEASE_SETTLE_US`; then, briefly, while a revoke
    /// proposal is still unanswered (so the check that every caller was
    /// answered does not catch one proposed an instant before).
    pub(super) fn settle_leases(&mut self) {
        let deadline = self.now_us + LEASE_SETTLE_US;
        while self.now_us < deadline && !self.dropped_leases_held(&self.member_indexes()).is_empty()
        {
            self.step();
        }
        let deadline = self.now_us + 1_000_000;
        while self.now_us < deadline && self.proposals_waiting() {
            self.step();
        }
    }

    fn proposals_waiting(&self) -> bool {
        self.nodes.iter().any(|node| {
            node.running
                .as_ref()
                .is_some_and(|running| running.core.waiting().0 > 0)
        })
    }

    /// The lease checks at the end, on converged `members`.
    pub(super) fn check_leases_at_end(&mut self, members: &[usize]) {
        let held = self.dropped_leases_held(members);
        if !held.is_empty() {
            let list: Vec<String> = held
                .iter()
                .map(|(node, id, keys)| {
                    let lease = &self.leases.all[id];
                    let was = if lease.kept { ", kept alive once" } else { "" };
                    format!(
                        "lease {id:x} (TTL {}s{was}) and {keys} of its keys on node {node}",
                        lease.ttl
                    )
                })
                .collect();
            self.violation(format!(
                "leases no one kept alive did not expire once the cluster was healed and \
                 quiet: {}",
                list.join(", ")
            ));
        }
        self.check_revoke_deletions(members[0]);
        let renewals = self.leases.renewals.len();
        let revoked = self.leases.revoked.len();
        let granted = self.leases.all.len();
        self.trace.note(self.now_us, || {
            format!("leases: {granted} granted, {revoked} revoked, {renewals} keep-alives answered")
        });
    }

    /// In the committed history (a converged member's): a lease's keys are
    /// deleted at one revision, only once the lease is gone, and never put
    /// again after.
    fn check_revoke_deletions(&mut self, reference: usize) {
        let range = KeyRange::Between(Bytes::from_static(b"l"), Bytes::from_static(b"m"));
        let owner: BTreeMap<Vec<u8>, u64> = self
            .leases
            .all
            .iter()
            .flat_map(|(id, lease)| {
                lease
                    .keys
                    .iter()
                    .map(move |(key, _)| (key.clone().into_bytes(), *id))
            })
            .collect();
        let node = &self.nodes[reference];
        let running = node.running.as_ref().expect("a running member");
        let kv = running.replica.kv();
        let Ok(events) = kv.changes_since(&range, 1) else {
            // The history window no longer reaches back to the start.
            return;
        };
        // lease -> revisions its keys were deleted at, and were put at.
        let mut deleted: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        let mut put: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for event in &events {
            let Some(lease) = owner.get(&event.key[..]) else {
                continue;
            };
            let at = if event.record.is_none() {
                &mut deleted
            } else {
                &mut put
            };
            at.entry(*lease).or_default().insert(event.revision);
        }
        let mut problems = Vec::new();
        for (lease, revisions) in &deleted {
            if revisions.len() > 1 {
                problems.push(format!(
                    "keys of lease {lease:x} deleted at revisions {revisions:?}"
                ));
            }
            if kv.lease(*lease).is_some() {
                problems.push(format!(
                    "keys of lease {lease:x} deleted at revisions {revisions:?} while the lease \
                     still exists"
                ));
            }
            let first = revisions.first().copied().unwrap_or(u64::MAX);
            let after = first.saturating_add(1);
            if let Some(later) = put.get(lease).and_then(|p| p.range(after..).next()) {
                problems.push(format!(
                    "a key of lease {lease:x} put at revision {later}, after the lease's keys \
                     were deleted at revision {first}"
                ));
            }
        }
        drop(kv);
        if !problems.is_empty() {
            let id = self.nodes[reference].id;
            self.violation(format!(
                "the committed history of node {id}: {}",
                problems.join("; ")
            ));
        }
    }
}
