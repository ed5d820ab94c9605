//! Membership changes carried out by the leader's node, a step per turn:
//! one change at a time, new nodes added as learners and promoted only once
//! caught up, leadership moved away before the leader itself is removed,
//! every wait bounded by the caller's deadline, and the learners a change
//! added removed again when it does not complete — so a request either takes
//! effect or leaves the membership as it was.
//!
//! Each step is validated by `validate_conf_change` against the
//! configuration raft holds at that moment; this file only sequences them.
//! The job advances at the end of every turn (turns come at least once a
//! tick), on the node's clock, so a simulator drives it like the rest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Node;
use crate::conf_change::{ChangePlan, ConfChangeRequest, MemberChange};
use crate::error::ReplicaError;
use crate::log_store::LogStore;
use crate::membership::member_ids;
use crate::proposals::Reply;

/// At most this much of a change's deadline is kept back (half of it used)
/// for undoing what a failed change added.
const ROLLBACK_TIME: Duration = Duration::from_secs(2);

/// The answer to one of this node's own proposals (a step of a job).
type Pending = oneshot::Receiver<Result<(), ReplicaError>>;

pub(super) struct ChangeJob {
    reply: Reply,
    /// The caller's deadline, on the node's clock.
    deadline: Instant,
    /// The deadline of the steps before a rollback (part of the caller's
    /// time is kept for it).
    steps_deadline: Instant,
    force: bool,
    explicit: bool,
    /// Learners this change added (removed again if it fails).
    added: Vec<u64>,
    promote: Vec<u64>,
    remove: Vec<u64>,
    /// The last step took effect or may have: nothing is undone after it.
    final_step_taken: bool,
    step: Step,
}

enum Step {
    /// Waiting to validate `plan` until raft has applied the configuration
    /// change it holds as pending (a leader elected moments ago counts every
    /// entry it has not applied yet as one, and raft would drop a change
    /// proposed now; an automatic leave-joint is applied within a turn or
    /// two), and until a new leader has heard from its voters (see
    /// `settling`). A change the caller can see (a joint configuration,
    /// another job) is still refused at once.
    AwaitPlan {
        plan: ChangePlan,
    },
    /// Adding `queue` (id, address, peer listener) as learners one simple
    /// change at a time; `pending`: the one in flight.
    AddLearners {
        queue: Vec<(u64, String, Option<String>)>,
        pending: Option<(u64, Pending)>,
    },
    /// Waiting until every node to promote has caught up.
    WaitCaughtUp,
    /// Promotions and removals in one change.
    Final {
        pending: Option<Pending>,
    },
    /// Waiting until raft has left the joint configuration.
    WaitNotJoint,
    /// Moving leadership to `to`; `then_not_leader`: the leader is to be
    /// removed, and the caller repeats the request at the new leader.
    MoveLeadership {
        to: u64,
        give_up: Instant,
        retry_at: Instant,
        then_not_leader: bool,
    },
    LeaveJoint {
        pending: Option<Pending>,
    },
    /// Removing the learners a failed change added.
    RollBack {
        queue: Vec<u64>,
        error: ReplicaError,
        left: Vec<u64>,
        pending: Option<(u64, Pending)>,
    },
}

fn in_progress() -> ReplicaError {
    ReplicaError::Unavailable(
        "another membership change is in progress; retry once it is done".into(),
    )
}

/// The answer to a pending step, if it has come.
fn answer(pending: &mut Pending) -> Option<Result<(), ReplicaError>> {
    match pending.try_recv() {
        Ok(result) => Some(result),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => Some(Err(ReplicaError::UnknownOutcome(
            "the node dropped a step of the change".into(),
        ))),
    }
}

/// The error a rolled-back change answers with, saying what was undone.
fn rolled_back(added: &[u64], left: &[u64], error: ReplicaError) -> ReplicaError {
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

impl<S: LogStore> Node<S> {
    fn check_leading(&self) -> Result<(), ReplicaError> {
        self.check_serving()?;
        if self.raw.raft.state != raft::StateRole::Leader {
            return Err(self.not_leader());
        }
        Ok(())
    }

    fn new_job(&self, timeout: Duration, reply: Reply, step: Step) -> ChangeJob {
        let deadline = self.now + timeout;
        ChangeJob {
            reply,
            deadline,
            steps_deadline: deadline - timeout.min(ROLLBACK_TIME) / 2,
            force: false,
            explicit: false,
            added: Vec::new(),
            promote: Vec::new(),
            remove: Vec::new(),
            final_step_taken: false,
            step,
        }
    }

    /// Starts carrying out `plan` within `timeout`; `reply` is answered once
    /// the new configuration is in force (not joint), or the change failed.
    pub(super) fn start_change(&mut self, plan: ChangePlan, timeout: Duration, reply: Reply) {
        if self.job.is_some() {
            let _ = reply.send(Err(in_progress()));
            return;
        }
        if self.check_leading().is_ok() && (self.raw.raft.has_pending_conf() || self.settling()) {
            self.job = Some(self.new_job(timeout, reply, Step::AwaitPlan { plan }));
            return;
        }
        let mut job = self.new_job(timeout, reply, Step::WaitNotJoint);
        match self.begin_plan(&mut job, plan) {
            Ok(()) => self.job = Some(job),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }

    /// Validates `plan` and sets `job` on its first step.
    fn begin_plan(&self, job: &mut ChangeJob, plan: ChangePlan) -> Result<(), ReplicaError> {
        let timeout = job.deadline.saturating_duration_since(self.now);
        let (step, (force, explicit, promote, remove)) = self.plan_change(plan, timeout)?;
        job.step = step;
        job.force = force;
        job.explicit = explicit;
        job.promote = promote;
        job.remove = remove;
        Ok(())
    }

    /// The id for a node joining without one: the id a retried join was
    /// given already, else one above every id ever used (never reused).
    fn assign_id(&self, address: &str) -> u64 {
        let membership = self.raw.store().membership();
        if let Some((id, _)) = membership.addresses.iter().find(|(_, a)| *a == address) {
            return *id;
        }
        let highest = membership.addresses.keys().max().copied().unwrap_or(0);
        membership.max_node_id.max(highest) + 1
    }

    /// Validates the whole plan before anything changes and decides the
    /// first step.
    #[allow(clippy::type_complexity)]
    fn plan_change(
        &self,
        mut plan: ChangePlan,
        timeout: Duration,
    ) -> Result<(Step, (bool, bool, Vec<u64>, Vec<u64>)), ReplicaError> {
        self.check_leading()?;
        // A node joining without an id gets one here: one change at a time,
        // so two joins cannot be given the same id.
        for map in [&mut plan.voters, &mut plan.learners] {
            if let Some(address) = map.remove(&0) {
                let id = self.assign_id(&address);
                map.insert(id, address);
                if let Some(peer_address) = plan.peer_addresses.remove(&0) {
                    plan.peer_addresses.insert(id, peer_address);
                }
            }
        }
        let adds: BTreeMap<u64, String> = plan
            .voters
            .iter()
            .chain(plan.learners.iter())
            .map(|(id, address)| (*id, address.clone()))
            .collect();
        let mut check: Vec<MemberChange> = adds
            .keys()
            .map(|id| MemberChange::AddLearner(*id))
            .collect();
        check.extend(plan.remove.iter().map(|id| MemberChange::Remove(*id)));
        self.check_conf_change(&ConfChangeRequest {
            changes: check,
            addresses: adds.clone(),
            peer_addresses: plan.peer_addresses.clone(),
            force: plan.force,
            dry_run: true,
            ..Default::default()
        })?;
        let members = self.members();
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
        let flags = |promote| (plan.force, plan.explicit, promote, plan.remove.clone());
        if plan.remove.contains(&self.id) {
            // The leader is to be removed: move leadership to the most
            // caught-up live voter that stays, then answer `NotLeader`.
            let Some(to) = members.successor(self.id, &plan.remove) else {
                return Err(ReplicaError::Rejected(
                    "cannot remove the leader: no other live voter stays to take over".into(),
                ));
            };
            let step = self.move_leadership_step(to, timeout, true);
            return Ok((step, flags(Vec::new())));
        }
        let queue: Vec<(u64, String, Option<String>)> = adds
            .into_iter()
            .filter(|(id, _)| member(*id).is_none())
            .map(|(id, address)| (id, address, plan.peer_addresses.get(&id).cloned()))
            .rev()
            .collect();
        let mut promote = plan.promote.clone();
        promote.extend(
            plan.voters
                .keys()
                .filter(|id| !member(**id).is_some_and(|m| m.voter)),
        );
        Ok((
            Step::AddLearners {
                queue,
                pending: None,
            },
            flags(promote),
        ))
    }

    fn move_leadership_step(&self, to: u64, timeout: Duration, then_not_leader: bool) -> Step {
        let give_up = self.now + timeout.min(3 * self.config.election_timeout);
        Step::MoveLeadership {
            to,
            give_up,
            retry_at: self.now,
            then_not_leader,
        }
    }

    /// Whether this node became leader less than an election timeout ago
    /// and has not heard from every voter since: which are live it cannot
    /// tell yet (a follower hears only from the leader), so the quorum check
    /// of a change waits for them, or for the timeout to pass.
    fn settling(&self) -> bool {
        let Some(since) = self.leading_since else {
            return false;
        };
        if self.now.saturating_duration_since(since) >= self.config.election_timeout {
            return false;
        }
        let voters = &self.raw.store().membership().conf_state.voters;
        voters
            .iter()
            .any(|id| *id != self.id && self.last_heard.get(id).is_none_or(|heard| *heard < since))
    }

    /// Whether a job may start now: none is running and this node leads.
    fn job_may_start(&self) -> Result<(), ReplicaError> {
        self.change_in_progress()?;
        self.check_leading()
    }

    /// Moves leadership to `to` and answers once this node no longer leads.
    pub(super) fn start_transfer(&mut self, to: u64, timeout: Duration, reply: Reply) {
        if let Err(e) = self.job_may_start() {
            let _ = reply.send(Err(e));
            return;
        }
        if to == self.id {
            let _ = reply.send(Ok(()));
            return;
        }
        let step = self.move_leadership_step(to, timeout, false);
        self.job = Some(self.new_job(timeout, reply, step));
    }

    /// Leaves a joint configuration entered explicitly.
    pub(super) fn start_leave_joint(&mut self, timeout: Duration, reply: Reply) {
        if let Err(e) = self.job_may_start() {
            let _ = reply.send(Err(e));
            return;
        }
        self.job = Some(self.new_job(timeout, reply, Step::LeaveJoint { pending: None }));
    }

    /// Whether a membership job is running (other membership requests wait).
    pub(super) fn change_in_progress(&self) -> Result<(), ReplicaError> {
        if self.job.is_some() {
            return Err(in_progress());
        }
        Ok(())
    }

    /// Proposes one step of a job as this node's own request.
    fn propose_step(&mut self, request: ConfChangeRequest) -> Pending {
        let (tx, rx) = oneshot::channel();
        self.propose_conf_change(request, tx);
        rx
    }

    /// Advances the running job as far as it can go this turn.
    pub(super) fn advance_job(&mut self) {
        let Some(mut job) = self.job.take() else {
            return;
        };
        match self.advance(&mut job) {
            None => self.job = Some(job),
            Some(result) => {
                let _ = job.reply.send(result);
            }
        }
    }

    /// A step failed: undo what the change added unless its last step may
    /// have taken effect.
    fn fail(&self, job: &mut ChangeJob, error: ReplicaError) -> Option<Result<(), ReplicaError>> {
        if job.added.is_empty() || job.final_step_taken {
            return Some(Err(error));
        }
        job.step = Step::RollBack {
            queue: job.added.iter().rev().copied().collect(),
            error,
            left: Vec::new(),
            pending: None,
        };
        None
    }

    /// Runs the job's steps until one must wait; `Some`: the job's answer.
    fn advance(&mut self, job: &mut ChangeJob) -> Option<Result<(), ReplicaError>> {
        loop {
            let now = self.now;
            match &mut job.step {
                Step::AwaitPlan { plan } => {
                    if let Err(e) = self.check_leading() {
                        return Some(Err(e));
                    }
                    if self.raw.raft.has_pending_conf() {
                        if now >= job.steps_deadline {
                            return Some(Err(in_progress()));
                        }
                        return None;
                    }
                    if self.settling() && now < job.steps_deadline {
                        return None;
                    }
                    let plan = std::mem::take(plan);
                    if let Err(e) = self.begin_plan(job, plan) {
                        return Some(Err(e));
                    }
                }
                Step::AddLearners { queue, pending } => {
                    if let Some((id, p)) = pending {
                        let id = *id;
                        match answer(p)? {
                            Ok(()) => job.added.push(id),
                            Err(e) => {
                                if matches!(e, ReplicaError::UnknownOutcome(_)) {
                                    job.added.push(id);
                                }
                                if let Some(done) = self.fail(job, e) {
                                    return Some(done);
                                }
                                continue;
                            }
                        }
                        *pending = None;
                    }
                    if now >= job.steps_deadline {
                        let e = ReplicaError::Unavailable(
                            "the learners were not added before the deadline; retry".into(),
                        );
                        if let Some(done) = self.fail(job, e) {
                            return Some(done);
                        }
                        continue;
                    }
                    let Some((id, address, peer_address)) = queue.pop() else {
                        job.step = Step::WaitCaughtUp;
                        continue;
                    };
                    let rx = self.propose_step(ConfChangeRequest {
                        changes: vec![MemberChange::AddLearner(id)],
                        addresses: [(id, address)].into(),
                        peer_addresses: peer_address.map(|a| (id, a)).into_iter().collect(),
                        ..Default::default()
                    });
                    *pending = Some((id, rx));
                }
                Step::WaitCaughtUp => {
                    if let Err(e) = self.check_leading() {
                        if let Some(done) = self.fail(job, e) {
                            return Some(done);
                        }
                        continue;
                    }
                    let members = self.members();
                    let behind: Vec<String> = members
                        .members
                        .iter()
                        .filter(|m| job.promote.contains(&m.id))
                        .filter_map(|m| {
                            m.not_caught_up
                                .as_ref()
                                .map(|why| format!("node {} {why}", m.id))
                        })
                        .collect();
                    if behind.is_empty() {
                        job.step = Step::Final { pending: None };
                        continue;
                    }
                    if now >= job.steps_deadline {
                        let e = ReplicaError::Unavailable(format!(
                            "{} before the deadline; a node is promoted only once it has \
                             caught up (retry, or give a longer --timeout)",
                            behind.join(", ")
                        ));
                        if let Some(done) = self.fail(job, e) {
                            return Some(done);
                        }
                        continue;
                    }
                    return None;
                }
                Step::Final { pending: None } => {
                    let mut changes: Vec<MemberChange> = job
                        .promote
                        .iter()
                        .map(|id| MemberChange::Promote(*id))
                        .collect();
                    changes.extend(job.remove.iter().map(|id| MemberChange::Remove(*id)));
                    if changes.is_empty() {
                        return Some(Ok(()));
                    }
                    if let Err(e) = self.check_leading() {
                        if let Some(done) = self.fail(job, e) {
                            return Some(done);
                        }
                        continue;
                    }
                    // One step: promotions and removals together (validated
                    // again against the configuration of this moment).
                    let rx = self.propose_step(ConfChangeRequest {
                        changes,
                        force: job.force,
                        explicit: job.explicit,
                        ..Default::default()
                    });
                    job.step = Step::Final { pending: Some(rx) };
                }
                Step::Final { pending: Some(p) } => {
                    let Some(result) = answer(p) else {
                        if now >= job.deadline {
                            job.final_step_taken = true;
                            return Some(Err(ReplicaError::UnknownOutcome(
                                "the change was proposed but not applied before the \
                                 deadline; check `raftkv cluster members`"
                                    .into(),
                            )));
                        }
                        return None;
                    };
                    job.final_step_taken =
                        matches!(result, Ok(()) | Err(ReplicaError::UnknownOutcome(_)));
                    match result {
                        Ok(()) if job.explicit => return Some(Ok(())),
                        Ok(()) => job.step = Step::WaitNotJoint,
                        Err(e) => {
                            if let Some(done) = self.fail(job, e) {
                                return Some(done);
                            }
                        }
                    }
                }
                Step::WaitNotJoint => {
                    if self
                        .raw
                        .store()
                        .membership()
                        .conf_state
                        .voters_outgoing
                        .is_empty()
                    {
                        return Some(Ok(()));
                    }
                    if now >= job.deadline {
                        return Some(Err(ReplicaError::Unavailable(
                            "the joint configuration was entered but not yet left; it will \
                             be left automatically (check `raftkv cluster members`)"
                                .into(),
                        )));
                    }
                    return None;
                }
                Step::MoveLeadership {
                    to,
                    give_up,
                    retry_at,
                    then_not_leader,
                } => {
                    let to = *to;
                    if self.raw.raft.state != raft::StateRole::Leader {
                        if *then_not_leader {
                            let (leader_id, leader_address) = self.leader_hint();
                            if leader_id == 0 && now < *give_up {
                                // Stepped down, the new leader not heard
                                // from yet: the caller is to be told where
                                // to repeat the request.
                                return None;
                            }
                            return Some(Err(ReplicaError::NotLeader {
                                leader_id,
                                leader_address,
                                why: String::new(),
                            }));
                        }
                        return Some(Ok(()));
                    }
                    if now >= *give_up {
                        return Some(Err(ReplicaError::Unavailable(format!(
                            "leadership did not move to node {to} in time (is it up and caught \
                             up?); retry"
                        ))));
                    }
                    if now < *retry_at {
                        return None;
                    }
                    *retry_at = now + self.config.election_timeout;
                    let (tx, mut rx) = oneshot::channel();
                    self.transfer_leader(to, tx);
                    if let Some(Err(e)) = answer(&mut rx) {
                        return Some(Err(e));
                    }
                    return None;
                }
                Step::LeaveJoint { pending: None } => {
                    let rx = self.propose_step(ConfChangeRequest {
                        leave_joint: true,
                        ..Default::default()
                    });
                    job.step = Step::LeaveJoint { pending: Some(rx) };
                }
                Step::LeaveJoint { pending: Some(p) } => match answer(p)? {
                    Ok(()) => job.step = Step::WaitNotJoint,
                    Err(e) => return Some(Err(e)),
                },
                Step::RollBack {
                    queue,
                    error,
                    left,
                    pending,
                } => {
                    if let Some((id, p)) = pending {
                        let id = *id;
                        match answer(p) {
                            None if now < job.deadline => return None,
                            None => left.push(id),
                            Some(Ok(())) => {}
                            Some(Err(e)) => {
                                tracing::warn!("cannot roll back the addition of node {id}: {e}");
                                left.push(id);
                            }
                        }
                        *pending = None;
                    }
                    let conf = &self.raw.store().membership().conf_state;
                    let members = member_ids(conf);
                    let next = loop {
                        match queue.pop() {
                            // Not a member (its addition never took effect).
                            Some(id) if !members.contains(&id) => continue,
                            other => break other,
                        }
                    };
                    let Some(id) = next else {
                        let error = std::mem::replace(error, ReplicaError::Stopped(String::new()));
                        return Some(Err(rolled_back(&job.added, left, error)));
                    };
                    if now >= job.deadline || self.check_leading().is_err() {
                        left.push(id);
                        continue;
                    }
                    let rx = self.propose_step(ConfChangeRequest {
                        changes: vec![MemberChange::Remove(id)],
                        ..Default::default()
                    });
                    *pending = Some((id, rx));
                }
            }
        }
    }

    /// The leader's id and address as this node knows them.
    pub(super) fn leader_hint(&self) -> (u64, Option<String>) {
        let leader_id = self.raw.raft.leader_id;
        let address = self
            .raw
            .store()
            .membership()
            .addresses
            .get(&leader_id)
            .cloned();
        (leader_id, address)
    }
}
