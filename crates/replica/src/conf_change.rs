//! Membership change requests as the server hands them to the replica, and
//! their translation into raft's `ConfChangeV2`.

use std::collections::BTreeMap;

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
};

use crate::error::ReplicaError;
use crate::membership::member_ids;

/// A learner is promoted only when its log is at most this many entries
/// behind the leader's (docs/REFERENCE.md §1), so a slow newcomer never becomes a
/// voter the quorum would have to wait for.
pub const PROMOTE_MAX_LAG_ENTRIES: u64 = 1000;

/// One change to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a node as a learner (it receives the log but does not vote).
    AddLearner(u64),
    /// Make a caught-up learner a voter.
    Promote(u64),
    /// Remove a voter or learner.
    Remove(u64),
}

impl MemberChange {
    pub fn node_id(self) -> u64 {
        match self {
            MemberChange::AddLearner(id) | MemberChange::Promote(id) | MemberChange::Remove(id) => {
                id
            }
        }
    }
}

/// A membership change: one step, atomic. Several changes go through joint
/// consensus (entered and, unless `explicit`, left automatically).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfChangeRequest {
    pub changes: Vec<MemberChange>,
    /// Addresses of nodes being added.
    pub addresses: BTreeMap<u64, String>,
    /// Peer listeners of the nodes being added that have one.
    pub peer_addresses: BTreeMap<u64, String>,
    /// Allow a removal that leaves fewer live voters than a quorum.
    pub force: bool,
    /// Enter a joint configuration that stays until `leave_joint` (debug).
    pub explicit: bool,
    /// Leave a joint configuration entered with `explicit` (no changes).
    pub leave_joint: bool,
    /// Only validate: answer whether the change could be made now.
    pub dry_run: bool,
}

/// What a membership request asks for, as the leader carries it out (see
/// `node/change_job.rs`): the nodes to end up as voters (added as learners
/// first if needed) and as learners, learners to promote, nodes to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangePlan {
    pub voters: BTreeMap<u64, String>,
    pub learners: BTreeMap<u64, String>,
    /// Peer listeners (`--listen-peer`) of the nodes to add that have one,
    /// by the same ids as `voters`/`learners` (0 included).
    pub peer_addresses: BTreeMap<u64, String>,
    pub promote: Vec<u64>,
    pub remove: Vec<u64>,
    /// Allow a removal that leaves fewer live voters than a quorum.
    pub force: bool,
    /// Stay in the joint configuration until asked to leave it (debug).
    pub explicit: bool,
    /// The nodes to add say they start with an empty data dir (joining).
    pub empty: bool,
}

/// The raft form of `changes` (already validated and reduced).
pub(crate) fn to_conf_change_v2(changes: &[MemberChange], explicit: bool) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    let singles: Vec<ConfChangeSingle> = changes
        .iter()
        .map(|change| {
            let mut single = ConfChangeSingle {
                node_id: change.node_id(),
                ..Default::default()
            };
            single.set_change_type(match change {
                MemberChange::AddLearner(_) => ConfChangeType::AddLearnerNode,
                MemberChange::Promote(_) => ConfChangeType::AddNode,
                MemberChange::Remove(_) => ConfChangeType::RemoveNode,
            });
            single
        })
        .collect();
    cc.set_changes(singles.into());
    cc.set_transition(if explicit {
        ConfChangeTransition::Explicit
    } else {
        ConfChangeTransition::Auto
    });
    cc
}

/// What validating a change needs of the leader: its configuration and
/// members' addresses, whether a change is still pending, and its view of
/// each node (caught up enough to be promoted — else why not, as words that
/// follow "node N" —, live for the quorum check).
pub(crate) struct ConfView<'a> {
    pub(crate) conf: &'a ConfState,
    pub(crate) addresses: &'a BTreeMap<u64, String>,
    /// The separate peer listeners of the members that have one.
    pub(crate) peer_addresses: &'a BTreeMap<u64, String>,
    pub(crate) change_pending: bool,
    pub(crate) caught_up: &'a dyn Fn(u64) -> Result<(), String>,
    pub(crate) is_live: &'a dyn Fn(u64) -> bool,
}

/// The changes of `request` still to make against `view`, or why the request
/// cannot be made now (`Unavailable`: retry later; `Rejected`: never as asked).
/// A pure function: the leader runs it before proposing, and for `dry_run`.
pub(crate) fn validate_conf_change(
    request: &ConfChangeRequest,
    view: &ConfView<'_>,
) -> Result<Vec<MemberChange>, ReplicaError> {
    let conf = view.conf;
    let joint = !conf.voters_outgoing.is_empty();
    if view.change_pending {
        return Err(ReplicaError::Unavailable(
            "another membership change is in progress; retry once it is done".into(),
        ));
    }
    if request.leave_joint {
        if !joint {
            return Err(ReplicaError::Rejected(
                "the configuration is not joint; there is nothing to leave".into(),
            ));
        }
        return Ok(Vec::new());
    }
    if joint {
        return Err(ReplicaError::Unavailable(
            "a membership change is in progress (the configuration is joint); retry once \
             it is done"
                .into(),
        ));
    }
    let is_voter = |id: u64| conf.voters.contains(&id);
    let is_learner = |id: u64| conf.learners.contains(&id);
    let mut changes = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for change in &request.changes {
        let id = change.node_id();
        if id == 0 {
            return Err(ReplicaError::Rejected("node id 0 is not valid".into()));
        }
        if !seen.insert(id) {
            return Err(ReplicaError::Rejected(format!(
                "node {id} appears more than once in one change"
            )));
        }
        match *change {
            MemberChange::AddLearner(_) => {
                let address = request.addresses.get(&id).ok_or_else(|| {
                    ReplicaError::Rejected(format!("no address given for node {id}"))
                })?;
                crate::membership::check_own_addresses(
                    id,
                    address,
                    request.peer_addresses.get(&id).map(String::as_str),
                    view.addresses,
                    view.peer_addresses,
                )?;
                if is_voter(id) {
                    return Err(ReplicaError::Rejected(format!(
                        "node {id} is already a voter"
                    )));
                }
                if is_learner(id) {
                    let current = view.addresses.get(&id).map(String::as_str).unwrap_or("");
                    if current != address {
                        return Err(ReplicaError::Rejected(format!(
                            "node {id} is already a learner at {current}, not {address}"
                        )));
                    }
                    continue; // already holds
                }
                changes.push(*change);
            }
            MemberChange::Promote(_) => {
                if is_voter(id) {
                    return Err(ReplicaError::Rejected(format!(
                        "node {id} is already a voter"
                    )));
                }
                if !is_learner(id) {
                    return Err(ReplicaError::Rejected(format!(
                        "node {id} is not a member; add it first"
                    )));
                }
                if let Err(why) = (view.caught_up)(id) {
                    return Err(ReplicaError::Unavailable(format!(
                        "node {id} {why}; it is promoted only once it has caught up: retry"
                    )));
                }
                changes.push(*change);
            }
            MemberChange::Remove(_) => {
                if !member_ids(conf).contains(&id) {
                    return Err(ReplicaError::Rejected(format!("node {id} is not a member")));
                }
                changes.push(*change);
            }
        }
    }
    let mut voters: Vec<u64> = conf.voters.clone();
    for change in &changes {
        match *change {
            MemberChange::Promote(id) => voters.push(id),
            MemberChange::Remove(id) => voters.retain(|v| *v != id),
            MemberChange::AddLearner(_) => {}
        }
    }
    if voters.is_empty() {
        return Err(ReplicaError::Rejected(
            "the change would leave no voters".into(),
        ));
    }
    let changes_voters = changes.iter().any(|c| match c {
        MemberChange::Remove(id) => is_voter(*id),
        MemberChange::Promote(_) => true,
        MemberChange::AddLearner(_) => false,
    });
    if changes_voters && !request.force {
        let live = voters.iter().filter(|id| (view.is_live)(**id)).count();
        let quorum = voters.len() / 2 + 1;
        if live < quorum {
            return Err(ReplicaError::Rejected(format!(
                "the change would leave {live} live voter(s) of {} (a quorum needs {quorum}){}",
                voters.len(),
                if changes.iter().any(|c| matches!(c, MemberChange::Remove(_))) {
                    "; --force makes the change anyway, and the cluster may stop \
                     taking writes until the dead voters come back"
                } else {
                    "; wait until the members that are down are back"
                }
            )));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_changes_enter_joint_consensus_and_leave_it_automatically() {
        let cc = to_conf_change_v2(&[MemberChange::Promote(4), MemberChange::Remove(2)], false);
        assert_eq!(cc.enter_joint(), Some(true));
        assert_eq!(cc.changes.len(), 2);
        assert_eq!(cc.changes[1].get_change_type(), ConfChangeType::RemoveNode);
    }

    #[test]
    fn one_change_is_simple_unless_explicit() {
        let single = [MemberChange::AddLearner(4)];
        assert_eq!(to_conf_change_v2(&single, false).enter_joint(), None);
        assert_eq!(to_conf_change_v2(&single, true).enter_joint(), Some(false));
        assert!(!to_conf_change_v2(&single, false).leave_joint());
        assert!(to_conf_change_v2(&[], false).leave_joint());
    }

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..Default::default()
        }
    }

    fn addresses(ids: &[u64]) -> BTreeMap<u64, String> {
        ids.iter().map(|id| (*id, format!("h:{id}"))).collect()
    }

    /// Validates `request` against voters 1..=3 and learner 4 (all live and
    /// caught up unless `dead` / `behind` say otherwise).
    fn validate(
        request: &ConfChangeRequest,
        dead: &[u64],
        behind: &[u64],
        pending: bool,
    ) -> Result<Vec<MemberChange>, ReplicaError> {
        let conf = conf(&[1, 2, 3], &[4]);
        let addresses = addresses(&[1, 2, 3, 4]);
        let caught_up = |id: u64| {
            if behind.contains(&id) {
                Err("is 5000 entries behind".to_string())
            } else {
                Ok(())
            }
        };
        let is_live = |id: u64| !dead.contains(&id);
        validate_conf_change(
            request,
            &ConfView {
                conf: &conf,
                addresses: &addresses,
                peer_addresses: &[(3, "p:3".to_string())].into(),
                change_pending: pending,
                caught_up: &caught_up,
                is_live: &is_live,
            },
        )
    }

    fn request(changes: &[MemberChange], new: &[(u64, &str)]) -> ConfChangeRequest {
        ConfChangeRequest {
            changes: changes.to_vec(),
            addresses: new.iter().map(|(id, a)| (*id, a.to_string())).collect(),
            ..Default::default()
        }
    }

    fn rejected(result: Result<Vec<MemberChange>, ReplicaError>) -> String {
        match result {
            Err(ReplicaError::Rejected(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn additions_need_a_fresh_address_and_a_node_not_yet_a_voter() {
        let add5 = request(&[MemberChange::AddLearner(5)], &[(5, "h:5")]);
        assert_eq!(validate(&add5, &[], &[], false).unwrap(), add5.changes);
        let taken = request(&[MemberChange::AddLearner(5)], &[(5, "h:2")]);
        assert!(rejected(validate(&taken, &[], &[], false)).contains("belongs to node 2"));
        // A peer listener at another member's address or peer listener, or
        // at its own client address.
        for (peer, owner) in [
            ("h:1", "node 1"),
            ("p:3", "node 3"),
            ("h:5", "client address"),
        ] {
            let mut taken = add5.clone();
            taken.peer_addresses.insert(5, peer.to_string());
            assert!(
                rejected(validate(&taken, &[], &[], false)).contains(owner),
                "{peer}"
            );
        }
        let mut own = add5.clone();
        own.peer_addresses.insert(5, "p:5".to_string());
        assert_eq!(validate(&own, &[], &[], false).unwrap(), add5.changes);
        let at_peer = request(&[MemberChange::AddLearner(5)], &[(5, "p:3")]);
        assert!(rejected(validate(&at_peer, &[], &[], false)).contains("belongs to node 3"));
        let no_address = request(&[MemberChange::AddLearner(5)], &[]);
        assert!(rejected(validate(&no_address, &[], &[], false)).contains("no address"));
        let voter = request(&[MemberChange::AddLearner(2)], &[(2, "h:2")]);
        assert!(rejected(validate(&voter, &[], &[], false)).contains("already a voter"));
        // A learner already there under the same address: nothing to do.
        let again = request(&[MemberChange::AddLearner(4)], &[(4, "h:4")]);
        assert_eq!(validate(&again, &[], &[], false).unwrap(), vec![]);
        let moved = request(&[MemberChange::AddLearner(4)], &[(4, "h:9")]);
        assert!(rejected(validate(&moved, &[], &[], false)).contains("already a learner"));
        let zero = request(&[MemberChange::AddLearner(0)], &[(0, "h:0")]);
        assert!(rejected(validate(&zero, &[], &[], false)).contains("id 0"));
        let twice = request(&[MemberChange::Remove(2), MemberChange::Promote(2)], &[]);
        assert!(rejected(validate(&twice, &[], &[], false)).contains("more than once"));
    }

    #[test]
    fn a_learner_is_promoted_only_once_caught_up() {
        let promote = request(&[MemberChange::Promote(4)], &[]);
        assert_eq!(
            validate(&promote, &[], &[], false).unwrap(),
            promote.changes
        );
        match validate(&promote, &[], &[4], false) {
            Err(ReplicaError::Unavailable(why)) => assert!(why.contains("5000 entries behind")),
            other => panic!("expected a retry, got {other:?}"),
        }
        let stranger = request(&[MemberChange::Promote(9)], &[]);
        assert!(rejected(validate(&stranger, &[], &[], false)).contains("not a member"));
    }

    #[test]
    fn a_change_may_not_leave_fewer_live_voters_than_a_quorum_unless_forced() {
        // Removing voter 3 with voter 2 dead leaves one live voter of two.
        let remove = request(&[MemberChange::Remove(3)], &[]);
        assert!(rejected(validate(&remove, &[2], &[], false)).contains("--force"));
        let forced = ConfChangeRequest {
            force: true,
            ..remove.clone()
        };
        assert_eq!(validate(&forced, &[2], &[], false).unwrap(), remove.changes);
        // Removing a learner never touches the quorum.
        let learner = request(&[MemberChange::Remove(4)], &[]);
        assert!(validate(&learner, &[2, 3], &[], false).is_ok());
        let all = request(
            &[
                MemberChange::Remove(1),
                MemberChange::Remove(2),
                MemberChange::Remove(3),
            ],
            &[],
        );
        assert!(rejected(validate(&all, &[], &[], false)).contains("no voters"));
    }

    #[test]
    fn one_change_at_a_time() {
        let remove = request(&[MemberChange::Remove(3)], &[]);
        assert!(matches!(
            validate(&remove, &[], &[], true),
            Err(ReplicaError::Unavailable(_))
        ));
        let leave = ConfChangeRequest {
            leave_joint: true,
            ..Default::default()
        };
        assert!(rejected(validate(&leave, &[], &[], false)).contains("not joint"));
    }
}
