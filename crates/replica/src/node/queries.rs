//! The node thread's answers to queries: raft state, members, storage.

use raft::{ProgressState, StateRole};

use super::{Node, Query};
use crate::log_store::LogStore;
use crate::membership::member_ids;
use crate::status::{MemberInfo, MembersInfo, PeerProgressInfo, RaftStateInfo, Role};

impl<S: LogStore> Node<S> {
    pub(super) fn answer(&mut self, query: Query) {
        match query {
            Query::RaftState(reply) => {
                let _ = reply.send(self.raft_state());
            }
            Query::Members(reply) => {
                let _ = reply.send(self.members());
            }
            Query::Storage(reply) => {
                let _ = reply.send(self.raw.store().stats());
            }
            Query::Snapshot(reply) => self.request_snapshot(reply),
            Query::Compact(reply) => {
                let _ = reply.send(self.compact_now());
            }
        }
    }

    fn progress(&self) -> Vec<PeerProgressInfo> {
        if self.raw.raft.state != StateRole::Leader {
            return Vec::new();
        }
        let mut progress: Vec<PeerProgressInfo> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| PeerProgressInfo {
                id: *id,
                match_index: pr.matched,
                next_index: pr.next_idx,
                state: match pr.state {
                    ProgressState::Probe => "probe",
                    ProgressState::Replicate => "replicate",
                    ProgressState::Snapshot => "snapshot",
                }
                .to_string(),
                paused: pr.is_paused(),
                recent_active: pr.recent_active,
                pending_snapshot: pr.pending_snapshot,
            })
            .collect();
        progress.sort_by_key(|p| p.id);
        progress
    }

    pub(super) fn raft_state(&self) -> RaftStateInfo {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let sorted = |mut ids: Vec<u64>| {
            ids.sort_unstable();
            ids
        };
        RaftStateInfo {
            status: self.node_status(),
            vote: self.raw.raft.vote,
            first_index: self.raw.store().first_index().unwrap_or(0),
            last_index: self.raw.raft.raft_log.last_index(),
            progress: self.progress(),
            voters: sorted(conf.voters.clone()),
            learners: sorted(conf.learners.clone()),
            voters_outgoing: sorted(conf.voters_outgoing.clone()),
        }
    }

    pub(super) fn members(&self) -> MembersInfo {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let membership = self.raw.store().membership();
        let addresses = &membership.addresses;
        let progress = self.progress();
        let last_index = self.raw.raft.raft_log.last_index();
        let is_leader = self.raw.raft.state == StateRole::Leader;
        let members = member_ids(&conf)
            .into_iter()
            .map(|id| {
                let learner = conf.learners.contains(&id) || conf.learners_next.contains(&id);
                let role = if id == self.raw.raft.leader_id {
                    Role::Leader
                } else if learner {
                    Role::Learner
                } else if id == self.id {
                    self.role()
                } else {
                    Role::Follower
                };
                let pr = progress.iter().find(|p| p.id == id);
                let match_index = pr.map_or(0, |p| p.match_index);
                // Only a leader hears from every member; another node can
                // tell only whether it holds a connection to it.
                let reachable = if self.raw.raft.state == StateRole::Leader {
                    // A new leader has not heard from every member yet:
                    // for its first election timeout, one it holds a
                    // connection to counts as reachable.
                    let new_leader = self.leading_since.is_some_and(|at| {
                        self.now.saturating_duration_since(at) < self.config.election_timeout
                    });
                    self.is_live(id) || (new_leader && self.transport.is_reachable(id))
                } else {
                    id == self.id || self.transport.is_reachable(id)
                };
                MemberInfo {
                    id,
                    address: addresses.get(&id).cloned().unwrap_or_default(),
                    peer_address: membership.peer_addresses.get(&id).cloned(),
                    role,
                    voter: !learner,
                    match_index,
                    lag: if is_leader {
                        last_index.saturating_sub(match_index)
                    } else {
                        0
                    },
                    reachable,
                    not_caught_up: if is_leader {
                        self.catch_up_state(id).err()
                    } else {
                        None
                    },
                }
            })
            .collect();
        MembersInfo {
            members,
            joint: !conf.voters_outgoing.is_empty(),
            config_index: self.raw.store().membership().index,
        }
    }
}
