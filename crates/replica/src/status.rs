//! What a replica reports about itself: a cheap, always-current status for
//! reply headers, and detailed views answered by the node thread on request.

use std::fmt;

/// A node's role as users see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    Leader,
    #[default]
    Follower,
    Candidate,
    Learner,
    /// No longer in the configuration.
    Removed,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Removed => "removed",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Updated by the node thread after every turn; read without a round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub cluster_id: u64,
    pub role: Role,
    pub term: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// How far the cluster got, as far as this node heard: the highest
    /// commit index a leader told it of (its own while it leads). A
    /// follower's `commit_index` stops at the log it holds, so only this
    /// shows it is behind.
    pub leader_commit: u64,
}

/// Replication progress of one peer, as the leader sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerProgressInfo {
    pub id: u64,
    pub match_index: u64,
    pub next_index: u64,
    /// probe, replicate or snapshot
    pub state: String,
    pub paused: bool,
    pub recent_active: bool,
    pub pending_snapshot: u64,
}

/// `raftkv debug raft`.
#[derive(Clone, Debug, Default)]
pub struct RaftStateInfo {
    pub status: NodeStatus,
    pub vote: u64,
    pub first_index: u64,
    pub last_index: u64,
    /// Empty unless this node is the leader.
    pub progress: Vec<PeerProgressInfo>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
}

/// One member in `raftkv cluster members`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub address: String,
    /// Its separate peer listener, if it has one (`--listen-peer`).
    pub peer_address: Option<String>,
    pub role: Role,
    pub voter: bool,
    pub match_index: u64,
    pub lag: u64,
    pub reachable: bool,
    /// Leader only: why it could not be promoted now, as words that follow
    /// "node N" (see `Node::catch_up_state`); `None` once it has caught up,
    /// and always on other nodes.
    pub not_caught_up: Option<String>,
}

/// `raftkv cluster members`.
#[derive(Clone, Debug, Default)]
pub struct MembersInfo {
    pub members: Vec<MemberInfo>,
    pub joint: bool,
    /// Log index of the configuration these members are from.
    pub config_index: u64,
}

impl MembersInfo {
    /// Who should lead after `leader` (as the leader sees its members): the
    /// live voter, other than `leader` and those in `leaving`, with the
    /// most of the log.
    pub fn successor(&self, leader: u64, leaving: &[u64]) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| m.voter && m.reachable && m.id != leader && !leaving.contains(&m.id))
            .max_by_key(|m| m.match_index)
            .map(|m| m.id)
    }
}
