//! Membership changes on the node thread: validating a request against the
//! configuration raft holds right now, proposing it as a `ConfChangeV2`,
//! leadership transfer, and what a node does once it learns it was removed.

use raft::StateRole;
use tokio::sync::oneshot;

use super::Node;
use crate::conf_change::{
    to_conf_change_v2, validate_conf_change, ConfChangeRequest, ConfView, MemberChange,
    PROMOTE_MAX_LAG_ENTRIES,
};
use crate::error::ReplicaError;
use crate::log_store::LogStore;
use crate::membership::{encode_conf_change_context, member_ids};
use crate::proposals::Reply;

impl<S: LogStore> Node<S> {
    /// Proposes a membership change; `reply` is answered once it is applied
    /// (for a joint change: once the joint configuration is applied).
    pub(super) fn propose_conf_change(&mut self, request: ConfChangeRequest, reply: Reply) {
        let changes = match self.check_conf_change(&request) {
            Ok(changes) => changes,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if request.dry_run || (changes.is_empty() && !request.leave_joint) {
            // Everything asked for holds already (a retried request).
            let _ = reply.send(Ok(()));
            return;
        }
        let proposal_id = self.proposals.next_id();
        let added: std::collections::BTreeMap<u64, String> = request
            .addresses
            .iter()
            .filter(|(id, _)| changes.contains(&MemberChange::AddLearner(**id)))
            .map(|(id, address)| (*id, address.clone()))
            .collect();
        let peer_addresses: std::collections::BTreeMap<u64, String> = request
            .peer_addresses
            .iter()
            .filter(|(id, _)| added.contains_key(id))
            .map(|(id, address)| (*id, address.clone()))
            .collect();
        let context = encode_conf_change_context(self.id, proposal_id, &added, &peer_addresses);
        let cc = to_conf_change_v2(&changes, request.explicit);
        tracing::info!(
            "node {} proposing membership change {:?}{}",
            self.id,
            changes,
            if request.leave_joint {
                " (leave joint)"
            } else {
                ""
            }
        );
        match self.raw.propose_conf_change(context, cc) {
            Ok(()) => self.proposals.insert(proposal_id, reply),
            Err(e) => {
                let _ = reply.send(Err(ReplicaError::Unavailable(format!(
                    "membership change not accepted by raft ({e}); retry"
                ))));
            }
        }
    }

    /// The changes still to make, or why the request cannot be made now.
    pub(super) fn check_conf_change(
        &self,
        request: &ConfChangeRequest,
    ) -> Result<Vec<MemberChange>, ReplicaError> {
        self.check_serving()?;
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let view = ConfView {
            conf: &conf,
            addresses: &self.raw.store().membership().addresses,
            peer_addresses: &self.raw.store().membership().peer_addresses,
            change_pending: self.raw.raft.has_pending_conf(),
            caught_up: &|id| self.catch_up_state(id),
            is_live: &|id| self.is_live(id),
        };
        validate_conf_change(request, &view)
    }

    /// Whether `id` has caught up enough to become a voter (leader only): it
    /// is reachable, it has acknowledged an entry of this leader's term (so it
    /// is running and takes this leader's log, whatever its lag was counted
    /// from), and it is at most `PROMOTE_MAX_LAG_ENTRIES` behind. Otherwise
    /// why not, as words that follow "node N".
    pub(super) fn catch_up_state(&self, id: u64) -> Result<(), String> {
        if id == self.id {
            return Ok(());
        }
        let matched = self.raw.raft.prs().get(id).map_or(0, |pr| pr.matched);
        if matched < self.term_start_index {
            return Err(format!(
                "has not acknowledged any entry from this leader (is it running and \
                 reachable at {}?)",
                self.raw
                    .store()
                    .membership()
                    .peer_address(id)
                    .map_or("its address", String::as_str)
            ));
        }
        if !self.is_live(id) {
            return Err("is unreachable".to_string());
        }
        let lag = self.lag_of(id);
        if lag > PROMOTE_MAX_LAG_ENTRIES {
            return Err(format!(
                "is {lag} entries behind the leader (promotion needs at most \
                 {PROMOTE_MAX_LAG_ENTRIES})"
            ));
        }
        Ok(())
    }

    /// Entries `id` is behind the leader's last index (leader only).
    pub(super) fn lag_of(&self, id: u64) -> u64 {
        let last = self.raw.raft.raft_log.last_index();
        match self.raw.raft.prs().get(id) {
            Some(pr) => last.saturating_sub(pr.matched),
            None => last,
        }
    }

    /// Whether `id` can be reached. (Not raft's `recent_active`: check-quorum
    /// clears it for every peer once per election timeout, so right after
    /// that every peer would look dead.)
    /// Whether peer `id` counts as live for the quorum checks of a change:
    /// reachable, and heard from within an election timeout (a stopped
    /// process keeps its connection open but answers nothing).
    pub(super) fn is_live(&self, id: u64) -> bool {
        let heard_lately = self.last_heard.get(&id).is_some_and(|at| {
            self.now.saturating_duration_since(*at) < self.config.election_timeout
        });
        id == self.id || (self.transport.is_reachable(id) && heard_lately)
    }

    /// Starts moving leadership to `to`; the caller watches the status.
    pub(super) fn transfer_leader(
        &mut self,
        to: u64,
        reply: oneshot::Sender<Result<(), ReplicaError>>,
    ) {
        let result = (|| {
            self.check_serving()?;
            if self.raw.raft.state != StateRole::Leader {
                return Err(self.not_leader());
            }
            if to == self.id {
                return Ok(());
            }
            let conf = self.raw.raft.prs().conf().to_conf_state();
            if !conf.voters.contains(&to) {
                return Err(ReplicaError::Rejected(format!(
                    "node {to} is not a voter; leadership can only move to a voter"
                )));
            }
            tracing::info!("node {} transferring leadership to node {to}", self.id);
            self.drop_lease();
            self.raw.transfer_leader(to);
            Ok(())
        })();
        let _ = reply.send(result);
    }

    /// Refuses work on a node that was removed from the cluster.
    pub(super) fn check_serving(&self) -> Result<(), ReplicaError> {
        if self.removed {
            return Err(ReplicaError::Removed(format!(
                "node {} has been removed from the cluster; send requests to a member",
                self.id
            )));
        }
        Ok(())
    }

    /// Whether this node is initialized and absent from its configuration.
    pub(super) fn is_outside_configuration(&self) -> bool {
        let conf = &self.raw.store().membership().conf_state;
        let ids = member_ids(conf);
        !ids.is_empty() && !ids.contains(&self.id)
    }

    /// A peer whose configuration (as of `index`) does not hold this node
    /// refused its vote request: this node was removed while it was away.
    pub(super) fn on_removed_notice(&mut self, from: u64, index: u64) {
        let own = self.raw.store().membership();
        if own.index >= index {
            return; // it knows better
        }
        if self.removal_notice.is_none_or(|known| known < index) {
            tracing::warn!(
                "node {}: node {from} says this node is not in the configuration as of index \
                 {index} (this node knows index {})",
                self.id,
                own.index
            );
            self.removal_notice = Some(index);
        }
        self.update_removed();
    }

    /// Recomputes whether this node is removed: it is outside the
    /// configuration it applied, or a peer's newer configuration lacks it.
    /// A node added again (a newer configuration that holds it) is a member
    /// again.
    pub(super) fn update_removed(&mut self) {
        let own_index = self.raw.store().membership().index;
        // (Not configured yet: index 0, so any notice counts; only the
        // leader's word reaches a node in that state, see the server's
        // removal watchdog.)
        let removed = self.is_outside_configuration()
            || self.removal_notice.is_some_and(|index| index > own_index);
        if removed == self.removed {
            return;
        }
        self.removed = removed;
        if removed {
            tracing::warn!(
                "node {} is no longer a member of the cluster: it will not vote, campaign \
                 or serve reads and writes",
                self.id
            );
            // They may have been committed before the removal took effect.
            self.proposals
                .fail_all(ReplicaError::UnknownOutcome(format!(
                    "node {} was removed from the cluster while the write was in flight",
                    self.id
                )));
        } else {
            tracing::info!("node {} is a member of the cluster again", self.id);
        }
    }

    /// A leader in a joint configuration that raft did not leave (a leader
    /// change between entering and applying it) leaves it here.
    pub(super) fn maybe_leave_joint(&mut self) {
        let raft = &self.raw.raft;
        let conf = &self.raw.store().membership().conf_state;
        if raft.state != StateRole::Leader
            || conf.voters_outgoing.is_empty()
            || !conf.auto_leave
            || raft.has_pending_conf()
            || !raft.commit_to_current_term()
            || raft.raft_log.applied < raft.raft_log.committed
        {
            return;
        }
        if !conf.voters.contains(&self.id) {
            // Leaving would leave this node leading a configuration it is
            // not part of: hand leadership to an incoming voter first.
            let best = conf
                .voters
                .iter()
                .filter_map(|id| self.raw.raft.prs().get(*id).map(|pr| (pr.matched, *id)))
                .max();
            if let (Some((_, to)), None) = (best, self.raw.raft.lead_transferee) {
                tracing::info!(
                    "node {} leads a joint configuration it leaves; transferring leadership \
                     to node {to} first",
                    self.id
                );
                self.drop_lease();
                self.raw.transfer_leader(to);
            }
            return;
        }
        tracing::info!("node {} leaving the joint configuration", self.id);
        if let Err(e) = self
            .raw
            .propose_conf_change(Vec::new(), to_conf_change_v2(&[], false))
        {
            tracing::warn!("cannot propose leaving the joint configuration: {e}");
        }
    }
}
