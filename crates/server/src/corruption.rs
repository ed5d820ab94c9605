//! The corruption check (`--corruption-check-interval`): every interval the
//! leader hashes its state at its current revision and asks every member
//! for the hash of theirs at that same revision (etcd's `HashKV`, which a
//! member answers once it has applied that far, from its history window).
//! A member whose hash differs from the majority's (the leader's, if there
//! is no majority) raises the CORRUPT alarm on the leader: logged naming
//! the member, `raftkv_corruption_alarm` 1, shown by `status` and etcd's
//! `Alarm` API. The alarm stays until the check finds every member equal
//! again (a replaced member, say). Members that do not answer are skipped
//! for that round.
//!
//! Also here: the test-only hook `RAFTKV_TEST_CORRUPT=FILE`, which changes
//! a key's value in this node's state alone (a line `corrupt KEY` in FILE),
//! so tests can see the check find it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::HashKvRequest;
use raftkv_replica::{Replica, Role};

/// How long a round waits for a member to apply up to the revision checked.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// The members the last round found corrupt: id -> why (empty: none).
#[derive(Default)]
pub struct CorruptionAlarm {
    corrupt: Mutex<BTreeMap<u64, String>>,
}

impl CorruptionAlarm {
    /// The alarm's lines, one per corrupt member (empty when none).
    pub fn alarms(&self) -> Vec<(u64, String)> {
        self.corrupt
            .lock()
            .expect("alarm lock")
            .iter()
            .map(|(id, why)| (*id, why.clone()))
            .collect()
    }

    fn set(&self, corrupt: BTreeMap<u64, String>) {
        *self.corrupt.lock().expect("alarm lock") = corrupt;
    }
}

/// etcd's 32-bit HashKV hash of a 64-bit state hash (as `etcd_cluster.rs`
/// answers it).
pub fn fold(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// Runs the check every `interval` while this node leads.
pub async fn run(
    replica: Replica,
    interval: Duration,
    alarm: Arc<CorruptionAlarm>,
    metrics: Arc<crate::metrics::Metrics>,
    tls: crate::OutgoingTls,
) {
    loop {
        tokio::time::sleep(interval).await;
        if replica.status().role != Role::Leader {
            continue;
        }
        let Some(corrupt) = check_round(&replica, &tls).await else {
            continue;
        };
        for (id, why) in &corrupt {
            tracing::error!("CORRUPT: member {id}: {why}");
        }
        if corrupt.is_empty() && !alarm.alarms().is_empty() {
            tracing::warn!("corruption check: every member agrees again; alarm cleared");
        }
        metrics.corruption_alarm.set(i64::from(!corrupt.is_empty()));
        alarm.set(corrupt);
    }
}

/// One round: the corrupt members (id -> why), or `None` if the round
/// could not be made (no longer leading, own hash unavailable).
async fn check_round(replica: &Replica, tls: &crate::OutgoingTls) -> Option<BTreeMap<u64, String>> {
    let own_id = replica.node_id();
    let (revision, own) = crate::kv_service::on_state_copy(replica, |kv| {
        let revision = kv.revision();
        (revision, kv.hash_at(revision))
    })
    .await
    .ok()?;
    let own = fold(own.ok()?);
    let membership = replica.membership();
    let mut hashes: BTreeMap<u64, u32> = [(own_id, own)].into();
    for (id, address) in membership.addresses.iter().filter(|(id, _)| **id != own_id) {
        if let Some(hash) = member_hash(address, revision, tls).await {
            hashes.insert(*id, hash);
        }
    }
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for hash in hashes.values() {
        *counts.entry(*hash).or_default() += 1;
    }
    let majority = counts
        .iter()
        .find(|(_, n)| **n * 2 > hashes.len())
        .map_or(own, |(hash, _)| *hash);
    Some(
        hashes
            .iter()
            .filter(|(_, hash)| **hash != majority)
            .map(|(id, hash)| {
                let address = membership.addresses.get(id).cloned().unwrap_or_default();
                (
                    *id,
                    format!(
                        "node {id} at {address} holds a different state at revision {revision} \
                         (hash {hash:08x}, the others' {majority:08x}); replace it: `raftkv \
                         cluster remove {id}`, then join it again with an empty data dir"
                    ),
                )
            })
            .collect(),
    )
}

/// Member `address`'s hash at `revision`, once it has applied that far
/// (`None`: it does not answer within [`CATCH_UP_WAIT`]).
async fn member_hash(address: &str, revision: u64, tls: &crate::OutgoingTls) -> Option<u32> {
    let options = raftkv_client::ClientOptions {
        timeout: Duration::from_secs(2),
        tls: tls.clone(),
        credentials: crate::auth::node_credentials(),
        ..Default::default()
    };
    let client = raftkv_client::Client::with_options(&[address.to_string()], options).ok()?;
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        let reply = client
            .call_first_endpoint(|channel| async move {
                MaintenanceClient::new(channel)
                    .hash_kv(HashKvRequest {
                        revision: revision as i64,
                    })
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await;
        match reply {
            Ok(reply) => return Some(reply.hash),
            // Not applied that far yet ("future revision"): wait for it.
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::info!("corruption check: no hash from {address}: {e}");
                return None;
            }
        }
    }
}

/// The test hook: while `RAFTKV_TEST_CORRUPT` names a file, each new line
/// `corrupt KEY` in it changes KEY's value in this node's state only.
pub async fn test_hook(replica: Replica) {
    let Some(path) = std::env::var_os("RAFTKV_TEST_CORRUPT") else {
        return;
    };
    tracing::warn!(
        "test-only corruption hook enabled ({})",
        std::path::Path::new(&path).display()
    );
    let mut done = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        for line in lines.iter().skip(done) {
            if let Some(key) = line.trim().strip_prefix("corrupt ") {
                let changed = replica.corrupt_for_test(key.as_bytes());
                tracing::warn!("test hook: corrupted key {key:?} here only: {changed}");
            }
        }
        done = done.max(lines.len());
    }
}
