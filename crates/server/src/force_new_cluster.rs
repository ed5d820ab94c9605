//! `raftkv server --force-new-cluster`: disaster recovery once a cluster has
//! lost its quorum for good (etcd's flag). The surviving member's data dir
//! becomes a one-member cluster holding everything its log holds, under a
//! new cluster id; the other members are added back with `--join`.
//!
//! How: every entry of the survivor's log is taken as committed (an entry
//! acknowledged to a client was in a quorum's logs, so in the survivor's if
//! it was part of that quorum; entries never acknowledged may be kept too:
//! their clients were told the outcome is unknown), the node applies them
//! (with no peers), takes a snapshot, and the data dir is made anew from
//! that snapshot as a restored backup is (`backup.rs`), with this node as
//! the only member. The old data dir is kept beside it, renamed.
//!
//! Refused when another member still answers as part of the same cluster
//! (the quorum is not lost, or a partition hides it: forcing would split
//! the cluster), and on a data dir a forced recovery made (a restart that
//! kept the flag would fork the new cluster); a no-op on a node that is the
//! only member of its cluster anyway.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use raftkv_replica::{
    FileStorage, PeerMessage, Replica, ReplicaConfig, SnapshotStore, StorageOptions, Transport,
};

use crate::backup::RestoreOptions;
use crate::config::ServerConfig;

/// Written into a data dir made by a forced recovery: the flag left on a
/// later start is refused (it would fork the cluster its new members
/// joined).
const DONE_MARKER: &str = "force-new-cluster.done";

/// How long applying the survivor's log may take.
const APPLY_WAIT: Duration = Duration::from_secs(600);

/// A transport to no one: the survivor applies its log alone.
struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _: Vec<PeerMessage>) {}
    fn update_peers(&self, _: &BTreeMap<u64, String>) {}
    fn is_reachable(&self, _: u64) -> bool {
        false
    }
}

/// Makes `config.data_dir` a one-member cluster (see the module's text).
pub async fn recover(config: &ServerConfig, tls: &crate::OutgoingTls) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    if let Ok(when) = std::fs::read_to_string(dir.join(DONE_MARKER)) {
        bail!(
            "data dir {} was made a new cluster by --force-new-cluster already ({}); start \
             it without the flag (forcing again would drop the members that joined since, \
             and they would go on as a cluster of their own)",
            dir.display(),
            when.trim()
        );
    }
    if !dir.join(raftkv_storage::IDENTITY_FILE_NAME).exists() {
        bail!(
            "--force-new-cluster needs the data dir of a surviving member; {} holds no \
             cluster state",
            dir.display()
        );
    }
    let options = StorageOptions {
        wal_segment_size_bytes: config.wal_segment_size_bytes,
        ..Default::default()
    };
    let mut storage = FileStorage::open(dir, options).with_context(|| {
        format!(
            "--force-new-cluster: cannot open data dir {}",
            dir.display()
        )
    })?;
    let Some(identity) = storage.identity().filter(|_| storage.is_initialized()) else {
        bail!(
            "--force-new-cluster needs the data dir of a surviving member; {} holds no \
             cluster state",
            dir.display()
        );
    };
    let id = identity.node_id;
    let membership = storage.membership().clone();
    let others: Vec<String> = membership
        .addresses
        .iter()
        .filter(|(member, _)| **member != id)
        .map(|(_, address)| address.clone())
        .collect();
    if others.is_empty() && membership.conf_state.voters == [id] {
        tracing::info!(
            "--force-new-cluster: node {id} is already the only member of its cluster; \
             nothing to do (leave the flag out from now on)"
        );
        return Ok(());
    }
    refuse_if_quorum_lives(&others, identity.cluster_id, tls).await?;
    let stats = storage.stats();
    let mut hard_state = storage.hard_state().clone();
    tracing::warn!(
        "--force-new-cluster: node {id} becomes the only member of a NEW cluster with the \
         data of its log up to index {} ({} entries past the last one it knew committed are \
         kept as committed); members {:?} are dropped and must join again with --join \
         (their old data dirs are refused)",
        stats.last_index,
        stats.last_index.saturating_sub(hard_state.commit),
        membership.addresses
    );
    hard_state.commit = hard_state.commit.max(stats.last_index);
    storage.set_hard_state(&hard_state);
    storage
        .sync()
        .context("--force-new-cluster: cannot record the commit index")?;
    let snapshots = SnapshotStore::open(dir)
        .with_context(|| format!("cannot open snapshots in {}", dir.display()))?;
    let mut replica_config = ReplicaConfig::new(id, identity.cluster_id);
    replica_config.bootstrap_id = identity.bootstrap_id;
    replica_config.snapshot_entries = config.snapshot_entries;
    let replica = Replica::start(storage, snapshots, replica_config, Arc::new(NoPeers))
        .map_err(|e| anyhow::anyhow!("--force-new-cluster: cannot start the node: {e}"))?;
    let outcome = snapshot_of_whole_log(&replica, stats.last_index).await;
    replica.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(30), replica.stopped()).await;
    let snapshot = outcome?;

    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "raftkv-data".into());
    let fresh = dir.with_file_name(format!("{name}.force-new-cluster"));
    let _ = std::fs::remove_dir_all(&fresh);
    let restore = RestoreOptions {
        data_dir: fresh.clone(),
        id,
        peers: Some(config.only_member(id)),
        address: config.advertise_address().to_string(),
    };
    let summary = crate::backup::restore(&snapshot, &restore).map_err(anyhow::Error::msg)?;
    std::fs::write(
        fresh.join(DONE_MARKER),
        format!(
            "node {id} became a one-member cluster at index {} (unix time {})\n",
            summary.index,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
    )
    .with_context(|| format!("cannot write {}", fresh.join(DONE_MARKER).display()))?;
    let kept = unused_name(dir, &name);
    std::fs::rename(dir, &kept).with_context(|| format!("cannot move {} aside", dir.display()))?;
    std::fs::rename(&fresh, dir)
        .with_context(|| format!("cannot move {} into place", fresh.display()))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(parent) = std::fs::File::open(parent) {
            let _ = parent.sync_all();
        }
    }
    tracing::warn!(
        "--force-new-cluster: node {id} is now a one-member cluster at index {} with {} keys; \
         the old data dir is kept as {} (delete it once the new cluster is good). Start the \
         others EMPTY with --join {}, and leave --force-new-cluster out from now on",
        summary.index,
        summary.keys,
        kept.display(),
        config.advertise_address()
    );
    Ok(())
}

/// Waits until the node applied its whole log, then takes a snapshot of it;
/// the snapshot file's path.
async fn snapshot_of_whole_log(replica: &Replica, last_index: u64) -> anyhow::Result<PathBuf> {
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    while replica.status().applied_index < last_index {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "--force-new-cluster: the node applied only up to index {} of {last_index} \
                 within {APPLY_WAIT:?}",
                replica.status().applied_index
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = replica
        .trigger_snapshot()
        .await
        .map_err(|e| anyhow::anyhow!("--force-new-cluster: cannot take a snapshot: {e}"))?;
    if info.meta.index < last_index {
        bail!(
            "--force-new-cluster: the snapshot is at index {}, short of the log's {last_index}",
            info.meta.index
        );
    }
    Ok(info.path)
}

/// Refuses when another member answers as part of `cluster_id`: its
/// cluster is not lost.
async fn refuse_if_quorum_lives(
    others: &[String],
    cluster_id: u64,
    tls: &crate::OutgoingTls,
) -> anyhow::Result<()> {
    for address in others {
        let options = raftkv_client::ClientOptions {
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            tls: tls.clone(),
            credentials: None,
        };
        let Ok(client) =
            raftkv_client::Client::with_options(std::slice::from_ref(address), options)
        else {
            continue;
        };
        if let Ok(status) = client.status().await {
            if status.cluster_id == cluster_id && status.leader_id != 0 {
                bail!(
                    "--force-new-cluster refused: member {} at {address} answers and follows \
                     leader {} of this cluster, so its quorum is not lost (forcing would split \
                     it in two). Leave the flag out; if the node is not wanted, remove it \
                     (`raftkv cluster remove`)",
                    status.id,
                    status.leader_id
                );
            }
        }
    }
    Ok(())
}

/// `<name>.before-force-new-cluster`, or with a number if that is taken.
fn unused_name(dir: &Path, name: &str) -> PathBuf {
    let base = format!("{name}.before-force-new-cluster");
    let mut candidate = dir.with_file_name(&base);
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = dir.with_file_name(format!("{base}.{n}"));
    }
    candidate
}
