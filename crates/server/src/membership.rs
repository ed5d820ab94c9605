//! Membership changes for the `Cluster` service. The leader's node carries
//! them out step by step (`raftkv_replica`'s change job: learners first,
//! promotion once caught up, leadership moved away before the leader itself
//! is removed, what a failed change added undone, one change at a time);
//! this layer turns the caller's deadline into the job's timeout, and
//! watches for this node having been removed while it was away.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_replica::{Replica, ReplicaError, Role};
use tokio::time::Instant;

pub use raftkv_replica::ChangePlan;

pub struct Membership {
    replica: Replica,
}

/// What is left of the caller's time.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl Membership {
    pub fn new(replica: Replica) -> Self {
        Membership { replica }
    }

    /// Carries out `plan` before `deadline` (see `ChangePlan`): the request
    /// either takes effect or leaves the membership as it was.
    pub async fn change(&self, plan: ChangePlan, deadline: Instant) -> Result<(), ReplicaError> {
        self.replica.change(plan, left(deadline)).await
    }

    /// Records through the log that member `id` is now at `address`, with
    /// its peer listener at `peer_address` if it has one (it was restarted
    /// with a new `--advertise`/`--listen`/`--advertise-peer`).
    pub async fn set_address(
        &self,
        id: u64,
        address: String,
        peer_address: Option<String>,
        deadline: Instant,
    ) -> Result<(), ReplicaError> {
        let change = self.replica.set_member_address(id, address, peer_address);
        tokio::time::timeout_at(deadline, change)
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
        self.replica.leave_joint(left(deadline)).await
    }

    /// Moves leadership to `to` and waits until this node no longer leads.
    pub async fn transfer(&self, to: u64, deadline: Instant) -> Result<(), ReplicaError> {
        self.replica.transfer(to, left(deadline)).await
    }
}

/// Before a clean shutdown: a leader hands leadership to its most caught-up
/// live voter and waits (up to `within`) until it no longer leads, so clients
/// wait for no election timeout (a rolling restart goes unnoticed). A node
/// that does not lead, or has no voter to hand over to, returns at once.
pub async fn hand_over_leadership(replica: &Replica, within: Duration) {
    let status = replica.status();
    if status.role != Role::Leader {
        return;
    }
    let Ok(members) = replica.members().await else {
        return;
    };
    let Some(to) = members.successor(status.id, &[]) else {
        return;
    };
    tracing::info!(
        "node {} leads: handing leadership to node {to} before shutting down",
        status.id
    );
    let moved = replica.transfer(to, within).await;
    if moved.is_ok() {
        // It stepped down as node `to` campaigned; wait (briefly) to hear
        // of the new leader.
        let deadline = tokio::time::Instant::now() + within;
        while replica.status().leader_id == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    match moved {
        Ok(()) if replica.status().leader_id == to => {
            tracing::info!("node {} handed leadership to node {to}", status.id)
        }
        // It stepped down without node `to` taking over (`to` was down: this
        // node lost its quorum).
        Ok(()) => tracing::warn!(
            "node {} could not hand leadership to node {to} (it no longer leads, and node \
             {to} did not take over); shutting down anyway",
            status.id
        ),
        Err(e) => tracing::warn!(
            "node {} could not hand leadership to node {to} ({e}); shutting down anyway \
             (the others elect a leader after the election timeout)",
            status.id
        ),
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
    tls: crate::OutgoingTls,
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
                tls: tls.clone(),
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
