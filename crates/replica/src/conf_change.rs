//! Membership change requests as the server hands them to the replica, and
//! their translation into raft's `ConfChangeV2`.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};

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
    /// Allow a removal that leaves fewer live voters than a quorum.
    pub force: bool,
    /// Enter a joint configuration that stays until `leave_joint` (debug).
    pub explicit: bool,
    /// Leave a joint configuration entered with `explicit` (no changes).
    pub leave_joint: bool,
    /// Only validate: answer whether the change could be made now.
    pub dry_run: bool,
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
}
