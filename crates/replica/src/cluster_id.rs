//! Telling clusters apart.
//!
//! Two clusters started with the same flags must never take each other's nodes in. A
//! cluster's id is therefore not derived from its flags: its first leader picks one at
//! random and proposes it in the log (`Command::cluster_id`); the first one committed is
//! the cluster's, and every member adopts it when it applies it (or a snapshot holding
//! it) and records it in its data dir for good. Until then a member knows only its
//! *bootstrap id*, a hash of the initial member list, which the members of one bootstrap
//! (and of any other bootstrap with the same flags) share.
//!
//! Every peer message carries the sender's ids, and `admit` decides by these rules:
//!
//! - a node that has adopted id C takes messages from nodes that adopted C, and from
//!   nodes that have not adopted an id yet but share its bootstrap id (a member that is
//!   still catching up); it refuses every other, with an error naming both ids;
//! - a node that has not adopted an id takes messages from nodes with its bootstrap id —
//!   but no vote request (`vote_allowed`) from one that has adopted an id: such a node
//!   may come from another cluster started with the same flags, and with its longer log
//!   it would win the election and take over. (A member that missed the whole first
//!   election, and is needed for a quorum before any leader reached it, votes again
//!   after ten election timeouts without a leader: `Replica::may_vote_without_cluster_id`.)
//!
//! A node that its peers refuse, and that hears from no member of its own cluster, serves
//! no client requests (`ClusterContact::check`): it would be serving another cluster's
//! data. Everything here is a pure function of its inputs (the caller hands in the
//! time); it must not do I/O.

use std::time::{Duration, Instant};

/// A node's cluster ids as it knows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterIds {
    /// The cluster's id; 0 until adopted from the log.
    pub cluster_id: u64,
    /// The initial member list's hash; 0 when not known (an older build, or a node
    /// that joined and has no snapshot yet).
    pub bootstrap_id: u64,
}

/// Why `admit` refused a sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRefusal(pub String);

impl std::fmt::Display for ClusterRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a node with ids `own` takes messages from a sender with ids `sender`.
pub fn admit(own: ClusterIds, sender: ClusterIds) -> Result<(), ClusterRefusal> {
    let same_bootstrap = own.bootstrap_id != 0 && sender.bootstrap_id == own.bootstrap_id;
    let admitted = if own.cluster_id != 0 {
        sender.cluster_id == own.cluster_id || (sender.cluster_id == 0 && same_bootstrap)
    } else {
        same_bootstrap
    };
    if admitted {
        return Ok(());
    }
    Err(ClusterRefusal(format!(
        "cluster id mismatch: this node belongs to {}, the sender to {}; a node whose data \
         dir belongs to another cluster is not taken in (give it an empty data dir and add \
         it with --join)",
        describe(own),
        describe(sender)
    )))
}

/// Whether a node with ids `own` may consider a vote request from `sender` (already
/// admitted): not while it has no cluster id and the candidate has one.
pub fn vote_allowed(own: ClusterIds, sender: ClusterIds, is_vote_request: bool) -> bool {
    !(is_vote_request && own.cluster_id == 0 && sender.cluster_id != 0)
}

/// "cluster 1f2e..." or "a cluster still choosing its id (bootstrap 9a8b...)".
pub fn describe(ids: ClusterIds) -> String {
    if ids.cluster_id != 0 {
        format!("cluster {:016x}", ids.cluster_id)
    } else {
        format!(
            "a cluster still choosing its id (bootstrap {:016x})",
            ids.bootstrap_id
        )
    }
}

/// What a node has heard from its peers lately: whether members of its own cluster
/// reach it, and whether peers of another cluster do.
#[derive(Clone, Debug, Default)]
pub struct ClusterContact {
    /// The last message from a node with this node's cluster id.
    last_member_contact: Option<Instant>,
    /// The last message admitted from a node with no cluster id yet (a member
    /// still catching up — or another bootstrap with the same flags): it
    /// proves nothing about this node's data dir.
    last_unconfirmed_contact: Option<Instant>,
    /// The latest peer that turned out to be of another cluster: its id, its cluster
    /// id, and when.
    foreign: Option<(u64, u64, Instant)>,
}

impl ClusterContact {
    /// True when `check` passes whatever the rest (the common case, checked on
    /// every request): no other cluster was ever heard, and for a `stale` read a
    /// member was, and no peer without a cluster id.
    pub fn is_plainly_fine(&self, stale: bool) -> bool {
        self.foreign.is_none()
            && (!stale
                || (self.last_unconfirmed_contact.is_none() && self.last_member_contact.is_some()))
    }

    /// A message from a node without a cluster id was admitted (see
    /// `last_unconfirmed_contact`).
    pub fn unconfirmed_contact(&mut self, now: Instant) {
        self.last_unconfirmed_contact = Some(now);
    }

    /// A message from a member of this node's cluster was admitted.
    pub fn member_contact(&mut self, now: Instant) {
        self.last_member_contact = Some(now);
    }

    /// Peer `peer` belongs to cluster `cluster_id` (it refused this node, or this
    /// node refused it).
    pub fn foreign_contact(&mut self, peer: u64, cluster_id: u64, now: Instant) {
        self.foreign = Some((peer, cluster_id, now));
    }

    /// Err with the reason when peers of another cluster were heard, and no member of
    /// this one within `window`: then this node serves nothing. A leader has a quorum
    /// of its own (it steps down without one), so it is never cut off here. A read of
    /// its own state (`stale`) needs more: a node with peers serves one only once it
    /// has heard from a member of its cluster since it started (until then nothing
    /// tells it its data dir is its cluster's: a node on another cluster's data dir
    /// started before that cluster's nodes must not serve it meanwhile), and not while
    /// it hears only peers without a cluster id. (Anything else needs a leader, which
    /// another cluster's node never has.)
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        own: ClusterIds,
        node_id: u64,
        has_peers: bool,
        is_leader: bool,
        stale: bool,
        window: Duration,
        now: Instant,
    ) -> Result<(), String> {
        let recent = |at: Instant| now.saturating_duration_since(at) < window;
        if is_leader {
            return Ok(());
        }
        let member_heard = self.last_member_contact.is_some_and(recent);
        // Once another cluster was heard, only a member heard lately lifts it:
        // another cluster's node that keeps refusing this one need not keep
        // telling it so.
        if let (Some((peer, their_cluster, _)), false) = (self.foreign, member_heard) {
            return Err(format!(
                "node {node_id} belongs to {}, but the peers it reaches belong to another \
                 cluster (node {peer} is in {}): it serves no requests. Its data dir is from \
                 another cluster: stop it, remove node {node_id} on the cluster (`raftkv \
                 cluster remove {node_id}`) if it is a member there, and start it with an \
                 empty data dir and --join",
                describe(own),
                describe(ClusterIds {
                    cluster_id: their_cluster,
                    bootstrap_id: 0,
                })
            ));
        }
        if stale && has_peers && self.last_member_contact.is_none() {
            return Err(format!(
                "node {node_id} has not heard from a member of its cluster since it started; \
                 it serves stale reads once it has (ask another member meanwhile)"
            ));
        }
        // Peers without a cluster id may be this cluster's members catching up,
        // or another cluster bootstrapped with the same flags: until a peer
        // with this node's id is heard, its own data is not served.
        if stale
            && own.cluster_id != 0
            && !member_heard
            && self.last_unconfirmed_contact.is_some_and(recent)
        {
            return Err(format!(
                "node {node_id} belongs to {}, but the peers it hears have no cluster id \
                 yet; it serves no stale reads until a member of its cluster is heard",
                describe(own)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(cluster_id: u64, bootstrap_id: u64) -> ClusterIds {
        ClusterIds {
            cluster_id,
            bootstrap_id,
        }
    }

    #[test]
    fn a_node_with_an_id_takes_its_cluster_and_its_members_still_catching_up() {
        let own = ids(7, 100);
        assert!(admit(own, ids(7, 100)).is_ok());
        assert!(admit(own, ids(7, 0)).is_ok(), "joined member");
        assert!(admit(own, ids(0, 100)).is_ok(), "member without the id yet");
        let refused = admit(own, ids(8, 100)).unwrap_err();
        assert!(refused.0.contains("0000000000000007") && refused.0.contains("0000000000000008"));
        assert!(admit(own, ids(0, 101)).is_err(), "another bootstrap");
        assert!(admit(own, ids(0, 0)).is_err());
    }

    #[test]
    fn a_node_without_an_id_takes_its_bootstrap_but_no_votes_from_nodes_with_an_id() {
        let own = ids(0, 100);
        assert!(admit(own, ids(0, 100)).is_ok());
        assert!(
            admit(own, ids(7, 100)).is_ok(),
            "the elected leader's appends"
        );
        assert!(admit(own, ids(7, 0)).is_err());
        assert!(admit(own, ids(0, 101)).is_err());
        assert!(
            admit(ids(0, 0), ids(0, 0)).is_err(),
            "nothing known, nothing shared"
        );
        assert!(!vote_allowed(own, ids(7, 100), true));
        assert!(!vote_allowed(own, ids(7, 100), true));
        assert!(vote_allowed(own, ids(0, 100), true));
        assert!(vote_allowed(own, ids(7, 100), false));
        assert!(vote_allowed(ids(7, 100), ids(7, 100), true));
    }

    #[test]
    fn a_node_only_foreign_peers_reach_is_cut_off() {
        let own = ids(7, 100);
        let start = Instant::now();
        let window = Duration::from_secs(2);
        let mut contact = ClusterContact::default();
        let settled = start + Duration::from_secs(1);
        // No member heard since the start: no stale reads (unless alone, or
        // leading), whatever else it serves.
        let why = contact
            .check(own, 3, true, false, true, window, settled)
            .unwrap_err();
        assert!(why.contains("since it started"), "{why}");
        assert!(contact
            .check(own, 3, true, false, false, window, settled)
            .is_ok());
        assert!(contact
            .check(own, 3, false, false, true, window, settled)
            .is_ok());
        assert!(contact
            .check(own, 3, true, true, true, window, settled)
            .is_ok());
        contact.member_contact(start);
        assert!(contact
            .check(own, 3, true, false, true, window, settled)
            .is_ok());
        // Members quiet; another cluster heard.
        let settled = start + Duration::from_secs(5);
        contact.foreign_contact(1, 9, settled);
        let why = contact
            .check(own, 3, true, false, true, window, settled)
            .unwrap_err();
        assert!(
            why.contains("node 1") && why.contains("0000000000000009"),
            "{why}"
        );
        assert!(
            contact
                .check(own, 3, true, true, true, window, settled)
                .is_ok(),
            "a leader"
        );
        contact.member_contact(settled + Duration::from_millis(10));
        let after = settled + Duration::from_millis(20);
        assert!(contact
            .check(own, 3, true, false, true, window, after)
            .is_ok());
        // Members gone quiet again: cut off again, however long ago the other
        // cluster was heard.
        let later = settled + Duration::from_secs(10);
        assert!(contact
            .check(own, 3, true, false, true, window, later)
            .is_err());
        // A stray message from another cluster to a node that hears its members.
        let mut healthy = ClusterContact::default();
        healthy.member_contact(settled);
        healthy.foreign_contact(9, 9, settled);
        assert!(healthy
            .check(own, 3, true, false, true, window, settled)
            .is_ok());
    }

    #[test]
    fn peers_without_a_cluster_id_do_not_vouch_for_stale_reads() {
        let own = ids(7, 100);
        let start = Instant::now();
        let window = Duration::from_secs(2);
        let mut contact = ClusterContact::default();
        contact.member_contact(start);
        let settled = start + Duration::from_secs(5);
        contact.unconfirmed_contact(settled);
        assert!(!contact.is_plainly_fine(true));
        let why = contact
            .check(own, 3, true, false, true, window, settled)
            .unwrap_err();
        assert!(why.contains("no cluster id yet"), "{why}");
        assert!(contact
            .check(own, 3, true, false, false, window, settled)
            .is_ok());
        contact.member_contact(settled);
        assert!(contact
            .check(own, 3, true, false, true, window, settled)
            .is_ok());
        // A node without an id itself has nothing to protect yet.
        let mut fresh = ClusterContact::default();
        fresh.unconfirmed_contact(settled);
        fresh.member_contact(settled);
        assert!(fresh
            .check(ids(0, 100), 3, true, false, true, window, settled)
            .is_ok());
    }
}
