//! Settings of one replica: identity, timing in ticks, flow-control bounds.

use std::time::Duration;

use raftkv_kv::SessionLimits;

/// How a replica is run. Durations are wall-clock; raft counts ticks of
/// `heartbeat_interval`.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub node_id: u64,
    /// The cluster's id as the data dir records it (0: not adopted yet; see
    /// `cluster_id.rs`).
    pub cluster_id: u64,
    /// The bootstrap id the data dir records (0: not known).
    pub bootstrap_id: u64,
    /// Base election timeout; raft randomizes in [1x, 2x).
    pub election_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// raft's `max_size_per_msg`: bytes of entries in one append message.
    pub max_append_bytes: u64,
    /// raft's `max_inflight_msgs`: append messages in flight per follower.
    pub max_inflight_appends: usize,
    /// Bytes of committed entries handed to apply in one `Ready`.
    pub max_committed_bytes_per_ready: u64,
    /// Bytes of proposed-but-uncommitted entries; past it proposals are
    /// refused (retryable) instead of growing memory without bound.
    pub max_uncommitted_bytes: u64,
    /// Proposals awaiting their commit; past it new ones are refused.
    pub max_pending_proposals: usize,
    /// Client inputs (proposals, reads, queries) queued for the node thread.
    pub max_queued_inputs: usize,
    /// Peer messages queued for the node thread (a separate queue).
    pub max_queued_peer_messages: usize,
    pub sessions: SessionLimits,
    /// Take a snapshot every this many applied entries.
    pub snapshot_entries: u64,
    /// Entries kept in the log below a new snapshot, so a follower slightly
    /// behind catches up from the log instead of a whole snapshot.
    pub snapshot_catch_up_entries: u64,
    /// Below this much free space on the data dir's filesystem the node
    /// refuses new writes (`NoSpace`) and takes no new entries from the
    /// leader, so the log never runs into ENOSPC; reads go on.
    pub min_free_bytes: u64,
    /// etcd's `--quota-backend-bytes` (`--quota-bytes`): once the state and
    /// its history take more, writes that may add data are refused with the
    /// NOSPACE alarm until it is disarmed (0: no quota).
    pub quota_bytes: u64,
    /// Serve lease reads from a leader lease (`--lease-read`).
    pub lease_reads: bool,
    /// The newest log version this build applies (see `log_version.rs`):
    /// `raftkv_kv::CURRENT_RULES`, one more under the test hook that stands
    /// for the next release.
    pub log_version: u32,
    /// Draw every random choice (proposal ids, read contexts, election
    /// timeouts, the cluster id) from this seed instead of the OS: for
    /// deterministic simulation only.
    pub seed: Option<u64>,
    /// Write snapshots on the node's own thread, within its turn, instead of
    /// a background thread: for deterministic simulation only.
    pub write_snapshots_inline: bool,
    /// Deliberate bugs, for proving that the simulator catches them. They
    /// take effect only in builds with the `bug-switches` feature.
    pub bugs: Bugs,
}

/// Deliberate bugs (see `ReplicaConfig::bugs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Never fsync the log: writes are acknowledged before they are durable.
    pub ack_before_fsync: bool,
    /// A lease three election timeouts long.
    pub lease_longer_than_election_timeout: bool,
    /// The leader applies (and answers) entries as soon as it appends them.
    pub apply_before_commit: bool,
    /// A read is released once its read index is confirmed, before it is
    /// applied.
    pub read_before_applied: bool,
    /// The vote is never written to the log.
    pub forget_vote: bool,
    /// A keep-alive is answered but does not restart the lease's timer.
    pub ignore_keep_alive: bool,
}

impl Bugs {
    /// Whether the bug `pick` chooses is on (never, without the feature).
    pub(crate) fn on(&self, pick: impl Fn(&Bugs) -> bool) -> bool {
        cfg!(feature = "bug-switches") && pick(self)
    }
}

impl ReplicaConfig {
    pub fn new(node_id: u64, cluster_id: u64) -> Self {
        ReplicaConfig {
            node_id,
            cluster_id,
            bootstrap_id: 0,
            election_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_millis(100),
            max_append_bytes: 1024 * 1024,
            max_inflight_appends: 256,
            max_committed_bytes_per_ready: 16 * 1024 * 1024,
            max_uncommitted_bytes: 512 * 1024 * 1024,
            max_pending_proposals: 50_000,
            max_queued_inputs: 100_000,
            max_queued_peer_messages: 100_000,
            sessions: SessionLimits::default(),
            snapshot_entries: 10_000,
            snapshot_catch_up_entries: 5_000,
            min_free_bytes: 64 * 1024 * 1024,
            quota_bytes: 0,
            lease_reads: true,
            log_version: raftkv_kv::CURRENT_RULES,
            seed: None,
            write_snapshots_inline: false,
            bugs: Bugs::default(),
        }
    }

    /// How long a quorum-acknowledged heartbeat round keeps the leader's
    /// lease, from the round's send time: 90% of the shortest time before a
    /// follower that received it could vote for someone else (check-quorum
    /// makes it wait `election_tick` ticks, the first possibly at once).
    pub(crate) fn lease_duration(&self) -> Duration {
        let (_, election_tick) = self.ticks();
        self.heartbeat_interval * (election_tick.saturating_sub(1) as u32) * 9 / 10
    }

    /// raft's (heartbeat_tick, election_tick) with one tick per heartbeat.
    pub(crate) fn ticks(&self) -> (usize, usize) {
        let hb = self.heartbeat_interval.as_millis().max(1);
        let election = (self.election_timeout.as_millis() / hb).max(2) as usize;
        (1, election)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_shorter_than_the_election_timeout() {
        let config = ReplicaConfig::new(1, 1);
        // 1 s election timeout, 100 ms ticks: 9 safe ticks, 90% of them.
        assert_eq!(config.lease_duration(), Duration::from_millis(810));
        let mut slow = ReplicaConfig::new(1, 1);
        slow.election_timeout = Duration::from_secs(3);
        slow.heartbeat_interval = Duration::from_millis(500);
        assert_eq!(slow.lease_duration(), Duration::from_millis(2250));
        assert!(slow.lease_duration() < slow.election_timeout);
    }
}
