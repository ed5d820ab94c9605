//! Log versions: what lets members of different builds share one log
//! (a rolling upgrade).
//!
//! Every entry carries the version of the rules it was proposed under
//! (`Command::rules`; see `raftkv_kv::session`), and every build knows the
//! newest version it applies (`ReplicaConfig::log_version`). So:
//!
//! - a replica that meets an entry of a newer version than its build applies
//!   stops (a fatal error saying so) rather than apply it as something else —
//!   protobuf would silently drop the fields it does not know;
//! - every member tells its peers its version with each raft message
//!   (`RaftEnvelope::sender_log_version`), and the leader takes the
//!   *cluster's* log version as the lowest of its members' (as etcd's cluster
//!   version is the lowest of its members' versions). A member it has not
//!   heard from yet counts as `RULES_UNREPORTED`, the oldest build that can
//!   be a member;
//! - the leader stamps entries with the cluster's version, so each replica
//!   applies them alike whatever its build, and it refuses to propose an
//!   entry kind newer than that ("upgrade member N first");
//! - a node joining must apply at least the cluster's version (checked by the
//!   leader at join, with the settings that must match).
//!
//! Downgrading a member below a version the log already used stops it at the
//! first such entry, naming the build it needs.

use std::collections::HashMap;

use raftkv_kv::RULES_UNREPORTED;

use crate::error::{FatalError, ReplicaError};

/// The cluster's log version as the leader sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterLogVersion {
    /// The lowest log version among the members.
    pub version: u32,
    /// The member with that version, when it is lower than this node's own
    /// (the one to upgrade), and whether it was heard from at all.
    pub held_back_by: Option<(u64, bool)>,
}

/// The cluster's log version: the lowest of `members`' (this node, `own_id`,
/// applies up to `own`; the others as last `heard`).
pub fn cluster_log_version(
    own_id: u64,
    own: u32,
    members: &[u64],
    heard: &HashMap<u64, u32>,
) -> ClusterLogVersion {
    let mut lowest = ClusterLogVersion {
        version: own,
        held_back_by: None,
    };
    for &id in members {
        if id == own_id {
            continue;
        }
        let (version, was_heard) = match heard.get(&id) {
            // Builds from before members reported it send 0.
            Some(&v) => (v.max(RULES_UNREPORTED), true),
            None => (RULES_UNREPORTED, false),
        };
        if version < lowest.version {
            lowest = ClusterLogVersion {
                version,
                held_back_by: Some((id, was_heard)),
            };
        }
    }
    lowest
}

/// Whether an entry kind of log version `needs` may be proposed now.
pub(crate) fn check_proposable(needs: u32, cluster: ClusterLogVersion) -> Result<(), ReplicaError> {
    if needs <= cluster.version {
        return Ok(());
    }
    let who = match cluster.held_back_by {
        Some((id, true)) => format!(
            "member {id} runs a build that applies up to log version {}",
            cluster.version
        ),
        Some((id, false)) => {
            format!("member {id} has not been heard from since this node became leader")
        }
        None => format!(
            "this node's build applies up to log version {}",
            cluster.version
        ),
    };
    Err(ReplicaError::Rejected(format!(
        "this write is a log entry of version {needs}, which not every member can apply yet: \
         {who}; upgrade every member first (the cluster's log version is {})",
        cluster.version
    )))
}

/// Stops a replica before it applies an entry its build does not know.
pub(crate) fn check_applicable(index: u64, rules: u32, own: u32) -> Result<(), FatalError> {
    if rules <= own {
        return Ok(());
    }
    Err(FatalError(format!(
        "log entry {index} has log version {rules}, and this build applies only up to log \
         version {own}: the cluster was upgraded past this build; run this node with the \
         cluster's newer RaftKV build (nothing was applied from this entry on)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_goes_at_its_slowest_member() {
        let heard = HashMap::from([(2, 3), (3, 2)]);
        let v = cluster_log_version(1, 3, &[1, 2, 3], &heard);
        assert_eq!(v.version, 2);
        assert_eq!(v.held_back_by, Some((3, true)));
        let all_new = HashMap::from([(2, 3), (3, 3)]);
        let v = cluster_log_version(1, 3, &[1, 2, 3], &all_new);
        assert_eq!(
            v,
            ClusterLogVersion {
                version: 3,
                held_back_by: None
            }
        );
    }

    #[test]
    fn a_member_not_heard_from_counts_as_the_oldest_build() {
        let v = cluster_log_version(1, 3, &[1, 2], &HashMap::new());
        assert_eq!(v.version, RULES_UNREPORTED);
        assert_eq!(v.held_back_by, Some((2, false)));
        // A build from before log versions were reported sends 0.
        let v = cluster_log_version(1, 3, &[1, 2], &HashMap::from([(2, 0)]));
        assert_eq!(v.version, RULES_UNREPORTED);
        // A lone member goes at its own.
        assert_eq!(cluster_log_version(1, 3, &[1], &HashMap::new()).version, 3);
    }

    #[test]
    fn a_newer_kind_is_refused_naming_the_member_to_upgrade() {
        let cluster = ClusterLogVersion {
            version: 2,
            held_back_by: Some((3, true)),
        };
        assert!(check_proposable(2, cluster).is_ok());
        let err = check_proposable(3, cluster).unwrap_err().to_string();
        assert!(
            err.contains("member 3 runs a build that applies up to log version 2"),
            "{err}"
        );
        assert!(err.contains("upgrade every member first"), "{err}");
    }

    #[test]
    fn an_entry_newer_than_the_build_stops_the_replica() {
        assert!(check_applicable(7, 2, 2).is_ok());
        let err = check_applicable(7, 3, 2).unwrap_err().0;
        assert!(err.contains("log entry 7 has log version 3"), "{err}");
        assert!(err.contains("applies only up to log version 2"), "{err}");
    }
}
