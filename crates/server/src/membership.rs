//! Membership changes as the leader carries them out for the `Cluster`
//! service: one change at a time through this node, new nodes added as
//! learners and promoted only once caught up, leadership moved away before
//! the leader itself is removed, and every wait bounded by the caller's
//! deadline (`grpc-timeout`).
//!
//! The replica validates each step against the configuration raft holds
//! (and decides when a learner has caught up); this layer sequences the
//! steps, waits between them, and undoes the learners a change added when it
//! does not complete, so a request either takes effect or leaves the
//! membership as it was.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_replica::{ConfChangeRequest, MemberChange, MembersInfo, Replica, ReplicaError, Role};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// At most this much of a change's deadline is kept back (half of it used)
/// for undoing what a failed change added.
const ROLLBACK_TIME: Duration = Duration::from_secs(2);
/// How often progress is checked while waiting.
const POLL: Duration = Duration::from_millis(50);

/// What a membership call asks for, after parsing.
#[derive(Clone, Debug, Default)]
pub struct ChangePlan {
    /// Nodes to end up as voters (added as learners first if needed).
    pub voters: BTreeMap<u64, String>,
    /// Nodes to end up as learners.
    pub learners: BTreeMap<u64, String>,
    pub promote: Vec<u64>,
    pub remove: Vec<u64>,
    pub force: bool,
    pub explicit: bool,
    /// The nodes to add say they start with an empty data dir (joining).
    pub empty: bool,
}

pub struct Membership {
    replica: Replica,
    /// One membership change at a time through this node.
    lock: Mutex<()>,
    election_timeout: Duration,
}

fn in_progress() -> ReplicaError {
    ReplicaError::Unavailable(
        "another membership change is in progress; retry once it is done".into(),
    )
}

impl Membership {
    pub fn new(replica: Replica, election_timeout: Duration) -> Self {
        Membership {
            replica,
            lock: Mutex::new(()),
            election_timeout,
        }
    }

    fn check_leader(&self) -> Result<(), ReplicaError> {
        let status = self.replica.status();
        match status.role {
            Role::Leader => Ok(()),
            Role::Removed => Err(ReplicaError::Removed(format!(
                "node {} has been removed from the cluster; send requests to a member",
                status.id
            ))),
            _ => {
                let (leader_id, leader_address) = self.replica.leader_hint();
                Err(ReplicaError::NotLeader {
                    leader_id,
                    leader_address,
                    why: String::new(),
                })
            }
        }
    }

    /// The id for a node joining without one: the id a retried join was
    /// given already, else one above every id ever used (never reused).
    async fn assign_id(&self, address: &str) -> Result<u64, ReplicaError> {
        let members = self.replica.members().await?;
        if let Some(m) = members.members.iter().find(|m| m.address == address) {
            return Ok(m.id);
        }
        let highest = members.members.iter().map(|m| m.id).max().unwrap_or(0);
        Ok(self.replica.membership().max_node_id.max(highest) + 1)
    }

    /// Carries out `plan`: learners first, then (once they have caught up)
    /// one step with every promotion and removal. Returns once the new
    /// configuration is in force (not joint), or fails. A change that fails
    /// after adding learners (they never caught up before the deadline, or
    /// the last step was refused) removes them again before it answers, so a
    /// failed or refused request leaves the membership as it was. The change
    /// lock is held throughout: the deadline bounds it.
    pub async fn change(
        &self,
        mut plan: ChangePlan,
        deadline: Instant,
    ) -> Result<(), ReplicaError> {
        self.check_leader()?;
        let _guard = self.lock.try_lock().map_err(|_| in_progress())?;
        // Time kept back for undoing what was added.
        let steps_deadline = deadline - (deadline - Instant::now()).min(ROLLBACK_TIME) / 2;
        let mut added = Vec::new();
        let mut final_step_taken = false;
        let result = self
            .change_steps(&mut plan, &mut added, &mut final_step_taken, steps_deadline)
            .await;
        match result {
            // Undone only while nothing of the last step can have taken effect:
            // after it, the added nodes may be voters already.
            Err(error) if !added.is_empty() && !final_step_taken => {
                Err(self.roll_back(&added, error).await)
            }
            result => result,
        }
    }

    /// The steps of `change`: `added` gets each learner added, and
    /// `final_step_taken` is set once the last step took effect or may have
    /// (applied, or its outcome unknown).
    async fn change_steps(
        &self,
        plan: &mut ChangePlan,
        added: &mut Vec<u64>,
        final_step_taken: &mut bool,
        deadline: Instant,
    ) -> Result<(), ReplicaError> {
        let promote = self.add_learners(plan, added, deadline).await?;
        // Every node to promote must have caught up first: no voter is
        // removed, and no one promoted, on the strength of a node that is
        // not running.
        self.wait_caught_up(&promote, deadline).await?;
        let mut changes: Vec<MemberChange> = promote
            .iter()
            .map(|id| MemberChange::Promote(*id))
            .collect();
        changes.extend(plan.remove.iter().map(|id| MemberChange::Remove(*id)));
        if changes.is_empty() {
            return Ok(());
        }
        self.check_leader()?;
        // One step: promotions and removals together (validated again by the
        // node thread against the configuration of this moment).
        let last = self
            .replica
            .change_membership(ConfChangeRequest {
                changes,
                force: plan.force,
                explicit: plan.explicit,
                ..Default::default()
            })
            .await;
        *final_step_taken = matches!(last, Ok(()) | Err(ReplicaError::UnknownOutcome(_)));
        last?;
        if !plan.explicit {
            self.wait_not_joint(deadline).await?;
        }
        Ok(())
    }

    /// Removes the learners a failed change added; returns the error to
    /// answer with, saying what was undone (or what could not be).
    async fn roll_back(&self, added: &[u64], error: ReplicaError) -> ReplicaError {
        let mut left = Vec::new();
        for id in added {
            let removed = self
                .replica
                .change_membership(ConfChangeRequest {
                    changes: vec![MemberChange::Remove(*id)],
                    ..Default::default()
                })
                .await;
            if let Err(e) = removed {
                tracing::warn!("cannot roll back the addition of node {id}: {e}");
                left.push(*id);
            }
        }
        let undone = if left.is_empty() {
            format!(
                "the change was rolled back: node(s) {added:?} added as learners for it were \
                 removed again"
            )
        } else {
            format!(
                "learner(s) {left:?} added for it could not be removed again; remove them with \
                 `raftkv cluster remove`"
            )
        };
        tracing::info!("membership change failed ({error}); {undone}");
        match error {
            ReplicaError::Unavailable(why) => ReplicaError::Unavailable(format!("{why}; {undone}")),
            ReplicaError::UnknownOutcome(why) => {
                ReplicaError::UnknownOutcome(format!("{why}; {undone}"))
            }
            ReplicaError::Rejected(why) => ReplicaError::Rejected(format!("{why}; {undone}")),
            other => ReplicaError::Rejected(format!("{other}; {undone}")),
        }
    }

    /// Validates the whole plan, moves leadership away if the leader is to
    /// be removed, and adds new nodes as learners (recording each in
    /// `added`). Returns the ids to promote. Called with the change lock held.
    async fn add_learners(
        &self,
        plan: &mut ChangePlan,
        added: &mut Vec<u64>,
        deadline: Instant,
    ) -> Result<Vec<u64>, ReplicaError> {
        // A node joining without an id gets one here, under the lock, so
        // two concurrent joins cannot be given the same id.
        for map in [&mut plan.voters, &mut plan.learners] {
            if let Some(address) = map.remove(&0) {
                let id = self.assign_id(&address).await?;
                map.insert(id, address);
            }
        }
        let adds: BTreeMap<u64, String> = plan
            .voters
            .iter()
            .chain(plan.learners.iter())
            .map(|(id, address)| (*id, address.clone()))
            .collect();
        // Validate the whole request before changing anything.
        let mut check: Vec<MemberChange> = adds
            .keys()
            .map(|id| MemberChange::AddLearner(*id))
            .collect();
        check.extend(plan.remove.iter().map(|id| MemberChange::Remove(*id)));
        self.replica
            .change_membership(ConfChangeRequest {
                changes: check,
                addresses: adds.clone(),
                force: plan.force,
                dry_run: true,
                ..Default::default()
            })
            .await?;
        let members = self.replica.members().await?;
        let member = |id: u64| members.members.iter().find(|m| m.id == id);
        for id in &plan.promote {
            match member(*id) {
                Some(m) if m.voter => {
                    return Err(ReplicaError::Rejected(format!(
                        "node {id} is already a voter"
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(ReplicaError::Rejected(format!(
                        "node {id} is not a member; add it first"
                    )))
                }
            }
        }
        for id in adds.keys().filter(|_| plan.empty) {
            if let Some(m) = member(*id).filter(|m| m.match_index > 0) {
                return Err(ReplicaError::Rejected(format!(
                    "node {id} at {} already received data as a member, and this node \
                     starts empty: a node whose data dir was wiped must be removed \
                     (`raftkv cluster remove {id}`) and join again",
                    m.address
                )));
            }
        }
        let self_id = self.replica.node_id();
        if plan.remove.contains(&self_id) {
            return Err(self.step_down(plan, &members, deadline).await);
        }
        // New nodes join as learners, one simple change each.
        for (id, address) in &adds {
            if member(*id).is_none() {
                self.replica
                    .change_membership(ConfChangeRequest {
                        changes: vec![MemberChange::AddLearner(*id)],
                        addresses: [(*id, address.clone())].into(),
                        ..Default::default()
                    })
                    .await?;
                added.push(*id);
            }
        }
        let mut promote = plan.promote.clone();
        promote.extend(
            plan.voters
                .keys()
                .filter(|id| !member(**id).is_some_and(|m| m.voter)),
        );
        Ok(promote)
    }

    /// Records through the log that member `id` is now at `address` (it was
    /// restarted with a new `--advertise`/`--listen`).
    pub async fn set_address(
        &self,
        id: u64,
        address: String,
        deadline: Instant,
    ) -> Result<(), ReplicaError> {
        self.check_leader()?;
        let _guard = self.lock.try_lock().map_err(|_| in_progress())?;
        tokio::time::timeout_at(deadline, self.replica.set_member_address(id, address))
            .await
            .map_err(|_| {
                ReplicaError::UnknownOutcome(
                    "the address change was not applied before the deadline; check \
                     `raftkv cluster members`"
                        .into(),
                )
            })?
    }

    /// Leaves a joint configuration entered explicitly.
    pub async fn leave_joint(&self, deadline: Instant) -> Result<(), ReplicaError> {
        self.check_leader()?;
        let _guard = self.lock.try_lock().map_err(|_| in_progress())?;
        self.replica
            .change_membership(ConfChangeRequest {
                leave_joint: true,
                ..Default::default()
            })
            .await?;
        self.wait_not_joint(deadline).await
    }

    /// The leader is being removed: move leadership to the most caught-up
    /// live voter that stays, then answer `NotLeader` so the client sends
    /// the request to the new leader.
    async fn step_down(
        &self,
        plan: &ChangePlan,
        members: &MembersInfo,
        deadline: Instant,
    ) -> ReplicaError {
        let self_id = self.replica.node_id();
        let target = members
            .members
            .iter()
            .filter(|m| m.voter && m.reachable && m.id != self_id && !plan.remove.contains(&m.id))
            .max_by_key(|m| m.match_index)
            .map(|m| m.id);
        let Some(target) = target else {
            return ReplicaError::Rejected(
                "cannot remove the leader: no other live voter stays to take over".into(),
            );
        };
        if let Err(e) = self.move_leadership(target, deadline).await {
            return e;
        }
        let (leader_id, leader_address) = self.replica.leader_hint();
        ReplicaError::NotLeader {
            leader_id,
            leader_address,
            why: String::new(),
        }
    }

    /// Moves leadership to `to` and waits until this node no longer leads.
    /// Not while a membership change runs: moving leadership in the middle
    /// of one would leave it half done (an added learner the old leader can
    /// no longer roll back).
    pub async fn transfer(&self, to: u64, deadline: Instant) -> Result<(), ReplicaError> {
        let _guard = self.lock.try_lock().map_err(|_| in_progress())?;
        self.move_leadership(to, deadline).await
    }

    /// [`transfer`](Self::transfer) for a change that holds the lock.
    async fn move_leadership(&self, to: u64, deadline: Instant) -> Result<(), ReplicaError> {
        self.check_leader()?;
        if to == self.replica.node_id() {
            return Ok(());
        }
        let give_up = deadline.min(Instant::now() + 3 * self.election_timeout);
        loop {
            self.replica.transfer_leader(to).await?;
            let retry_at = Instant::now() + self.election_timeout;
            while Instant::now() < retry_at.min(give_up) {
                let status = self.replica.status();
                if status.role != Role::Leader {
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
            if Instant::now() >= give_up {
                return Err(ReplicaError::Unavailable(format!(
                    "leadership did not move to node {to} in time (is it up and caught up?); retry"
                )));
            }
        }
    }

    /// Waits until every node in `ids` could be promoted: reachable, has
    /// acknowledged an entry of this leader's term, and within
    /// `PROMOTE_MAX_LAG_ENTRIES` (the node thread checks it again when the
    /// promotion is proposed).
    async fn wait_caught_up(&self, ids: &[u64], deadline: Instant) -> Result<(), ReplicaError> {
        loop {
            let members = self.replica.members().await?;
            let behind: Vec<String> = members
                .members
                .iter()
                .filter(|m| ids.contains(&m.id))
                .filter_map(|m| {
                    m.not_caught_up
                        .as_ref()
                        .map(|why| format!("node {} {why}", m.id))
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() + POLL >= deadline {
                return Err(ReplicaError::Unavailable(format!(
                    "{} before the deadline; a node is promoted only once it has caught up \
                     (retry, or give a longer --timeout)",
                    behind.join(", ")
                )));
            }
            self.check_leader()?;
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_not_joint(&self, deadline: Instant) -> Result<(), ReplicaError> {
        loop {
            if !self.replica.members().await?.joint {
                return Ok(());
            }
            if Instant::now() + POLL >= deadline {
                return Err(ReplicaError::Unavailable(
                    "the joint configuration was entered but not yet left; it will be left \
                     automatically (check `raftkv cluster members`)"
                        .into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Watches for this node having been removed while it was away. A removed
/// voter learns it when a peer refuses its vote request (see
/// `peer_service`); a removed learner never asks for votes, so while no
/// leader is known this asks the other members for their configuration,
/// and a newer one without this node means it was removed.
///
/// A joined node that has no configuration yet (stopped before its first
/// snapshot) asks the members it learned when joining (`seeds`), and
/// believes only the leader's answer: the leader applied its addition.
pub async fn watch_for_removal(
    replica: Replica,
    election_timeout: Duration,
    seeds: BTreeMap<u64, String>,
) {
    let period = 2 * election_timeout;
    let mut leaderless_checks = 0u32;
    loop {
        tokio::time::sleep(period).await;
        let status = replica.status();
        if status.role == Role::Removed {
            return;
        }
        if status.leader_id != 0 {
            leaderless_checks = 0;
            continue;
        }
        leaderless_checks += 1;
        if leaderless_checks < 2 {
            continue;
        }
        let own = replica.membership();
        let configured = !raftkv_replica::member_ids(&own.conf_state).is_empty();
        let addresses = if configured { &own.addresses } else { &seeds };
        for (id, address) in addresses {
            if *id == status.id {
                continue;
            }
            let options = raftkv_client::ClientOptions {
                timeout: election_timeout,
                ..Default::default()
            };
            let Ok(client) =
                raftkv_client::Client::with_options(std::slice::from_ref(address), options)
            else {
                continue;
            };
            if let Ok(reply) = client.members().await {
                let listed = reply.members.iter().any(|m| m.id == status.id);
                let from_leader = reply.header.as_ref().is_some_and(|h| {
                    reply
                        .members
                        .iter()
                        .any(|m| m.id == h.node_id && m.role == "leader")
                });
                if (configured || from_leader)
                    && reply.cluster_id == status.cluster_id
                    && reply.config_index > own.index
                    && !listed
                {
                    replica.report_removed(*id, reply.config_index);
                    break;
                }
            }
        }
    }
}
