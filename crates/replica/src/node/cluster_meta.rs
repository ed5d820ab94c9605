//! Cluster metadata the node thread carries through the log: the cluster's id (chosen
//! by the first leader, adopted by every member; see `cluster_id.rs`) and a member's
//! new address (a node restarted with another `--advertise`).

use raft::StateRole;
use raftkv_kv::{ClusterIdChoice, Command, MemberAddress};
use raftkv_storage::MembershipRecord;
use rand::Rng as _;

use super::{fatal, Node};
use crate::error::{FatalError, ReplicaError};
use crate::log_store::LogStore;
use crate::proposals::Reply;

impl<S: LogStore> Node<S> {
    /// Adopts the cluster id the state machine holds (applied from the log or
    /// restored from a snapshot) if this node has none yet: it is written to the
    /// data dir before anything else happens, and peers see it on the next
    /// message. A different id than the one the data dir holds is fatal: the
    /// node would be mixing two clusters' data.
    pub(super) fn adopt_cluster_id(&mut self) -> Result<(), FatalError> {
        let (cluster_id, bootstrap_id) = {
            let kv = self.shared.kv.read().expect("kv lock poisoned");
            (kv.cluster_id(), kv.bootstrap_id())
        };
        if cluster_id == 0 {
            return Ok(());
        }
        let own = *self.shared.cluster.lock().expect("cluster lock poisoned");
        let learns_bootstrap = own.bootstrap_id == 0 && bootstrap_id != 0;
        if own.cluster_id == cluster_id && !learns_bootstrap {
            return Ok(());
        }
        if own.cluster_id != 0 && own.cluster_id != cluster_id {
            return Err(FatalError(format!(
                "this node's data dir belongs to cluster {:016x}, but the log it applied \
                 chose cluster {cluster_id:016x}: it will not mix two clusters' data",
                own.cluster_id
            )));
        }
        self.raw
            .mut_store()
            .adopt_cluster_id(cluster_id, bootstrap_id)
            .map_err(fatal("recording the cluster id"))?;
        let mut ids = self.shared.cluster.lock().expect("cluster lock poisoned");
        if ids.cluster_id == 0 {
            tracing::info!("node {} adopted cluster id {cluster_id:016x}", self.id);
        }
        ids.cluster_id = cluster_id;
        if ids.bootstrap_id == 0 {
            ids.bootstrap_id = bootstrap_id;
        }
        drop(ids);
        self.publish_status();
        Ok(())
    }

    /// A leader of a cluster that has no id yet proposes one: the id its data
    /// dir already holds (a cluster from an older build, whose id was the
    /// bootstrap hash), or a random one. The first committed is the cluster's.
    pub(super) fn maybe_propose_cluster_id(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || !raft.commit_to_current_term()
            || self.cluster_id_proposed_in == Some(raft.term)
        {
            return;
        }
        if self
            .shared
            .kv
            .read()
            .expect("kv lock poisoned")
            .cluster_id()
            != 0
        {
            return;
        }
        let own = *self.shared.cluster.lock().expect("cluster lock poisoned");
        let cluster_id = if own.cluster_id != 0 {
            own.cluster_id
        } else {
            self.rng.gen::<u64>().max(1)
        };
        self.cluster_id_proposed_in = Some(raft.term);
        let command = Command {
            proposer: self.id,
            proposal_id: self.proposals.next_id(),
            timestamp_ms: self.log_clock_ms(),
            rules: self.cluster_log_version().version,
            cluster_id: Some(ClusterIdChoice {
                cluster_id,
                bootstrap_id: own.bootstrap_id,
            }),
            ..Default::default()
        };
        tracing::info!(
            "node {} proposing cluster id {cluster_id:016x} (bootstrap {:016x})",
            self.id,
            own.bootstrap_id
        );
        if let Err(e) = self
            .raw
            .propose(vec![], raftkv_kv::encode_command(&command))
        {
            tracing::warn!("cannot propose the cluster id: {e}; retrying next term");
        }
    }

    /// Proposes that a member is now reached at `member.address` and
    /// `member.peer_address` (leader only); answered once applied.
    pub(super) fn propose_member_address(&mut self, member: MemberAddress, reply: Reply) {
        let result = (|| {
            self.check_serving()?;
            if self.raw.raft.state != StateRole::Leader {
                return Err(self.not_leader());
            }
            let membership = self.raw.store().membership();
            let id = member.id;
            let Some(current) = membership.addresses.get(&id) else {
                return Err(ReplicaError::Rejected(format!("node {id} is not a member")));
            };
            let current_peer = membership
                .peer_addresses
                .get(&id)
                .map_or("", String::as_str);
            if *current == member.address && current_peer == member.peer_address {
                return Ok(false);
            }
            crate::membership::check_own_addresses(
                id,
                &member.address,
                Some(member.peer_address.as_str()).filter(|p| !p.is_empty()),
                &membership.addresses,
                &membership.peer_addresses,
            )?;
            Ok(true)
        })();
        match result {
            Ok(false) => {
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(true) => {
                let proposal_id = self.proposals.next_id();
                let command = Command {
                    proposer: self.id,
                    proposal_id,
                    timestamp_ms: self.log_clock_ms(),
                    rules: self.cluster_log_version().version,
                    member_address: Some(member),
                    ..Default::default()
                };
                match self
                    .raw
                    .propose(vec![], raftkv_kv::encode_command(&command))
                {
                    Ok(()) => self.proposals.insert(proposal_id, reply),
                    Err(e) => {
                        let _ = reply.send(Err(ReplicaError::Unavailable(format!(
                            "address change not accepted by raft ({e}); retry"
                        ))));
                    }
                }
            }
        }
    }

    /// Applies a member's new address at log `index`: the membership record
    /// (persisted, and in later snapshots) and the transport.
    pub(super) fn apply_member_address(&mut self, index: u64, member: &MemberAddress) {
        let current = self.raw.store().membership().clone();
        // Replayed after a restart: the persisted membership holds it already.
        if index <= current.index || !current.addresses.contains_key(&member.id) {
            return;
        }
        let mut addresses = current.addresses.clone();
        addresses.insert(member.id, member.address.clone());
        let mut peer_addresses = current.peer_addresses.clone();
        if member.peer_address.is_empty() {
            peer_addresses.remove(&member.id);
        } else {
            peer_addresses.insert(member.id, member.peer_address.clone());
        }
        let record = MembershipRecord {
            index,
            addresses,
            peer_addresses,
            ..current
        };
        tracing::info!(
            "node {} applied at index {index}: node {} is now at {}{}",
            self.id,
            member.id,
            member.address,
            if member.peer_address.is_empty() {
                String::new()
            } else {
                format!(" (peer listener {})", member.peer_address)
            }
        );
        self.set_membership(record);
    }
}
