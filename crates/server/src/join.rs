//! `raftkv server --join ADDR`: an empty node asks the cluster to add it as
//! a learner (retrying until it is a member; the leader serializes
//! concurrent joins), records the cluster's identity, and once serving asks
//! to be promoted until it is a voter (unless `--learner`). The leader sends
//! it a snapshot and the log; promotion waits until it is within
//! `PROMOTE_MAX_LAG_ENTRIES` of the leader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use raftkv_client::{Client, ClientOptions};
use raftkv_proto::v1::JoinSettings;
use raftkv_replica::{FileStorage, MembershipRecord, NodeIdentity, Replica, Role, SessionLimits};

use crate::config::ServerConfig;
use crate::units::{format_millis, format_size};

/// Pause between attempts to reach the cluster.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Deadline of one attempt (the leader waits within it for catch-up).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

fn client_for(join: &[String], tls: &crate::OutgoingTls) -> anyhow::Result<Client> {
    Client::with_options(
        join,
        ClientOptions {
            timeout: ATTEMPT_TIMEOUT,
            tls: tls.clone(),
            credentials: crate::auth::node_credentials(),
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("invalid --join address: {e}"))
}

/// What this node's flags and build are, as far as a cluster it joins must
/// have them too (see `check_join_settings`).
pub fn join_settings(
    config: &ServerConfig,
    log_version: u32,
    sessions: &SessionLimits,
) -> JoinSettings {
    JoinSettings {
        log_version,
        election_timeout_ms: config.election_timeout.as_millis() as u64,
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        max_value_bytes: config.max_value_bytes,
        session_limits: format!(
            "ttl_ms={} max_sessions={} max_in_flight={} min_idle_ms={}",
            sessions.ttl_ms,
            sessions.max_sessions,
            sessions.max_in_flight_per_session,
            sessions.min_idle_before_eviction_ms
        ),
    }
}

/// How `theirs` differs from `ours` in what every member must share: one
/// "FLAG is X on THEIRS_NAME and Y on OURS_NAME" per setting.
pub fn settings_differences(
    ours: &JoinSettings,
    theirs: &JoinSettings,
    ours_name: &str,
    theirs_name: &str,
) -> Vec<String> {
    let mut differ = Vec::new();
    let mut compare = |flag: &str, mine: String, other: String| {
        if mine != other {
            differ.push(format!(
                "{flag} is {other} on {theirs_name} and {mine} on {ours_name}"
            ));
        }
    };
    compare(
        "--election-timeout",
        format_millis(ours.election_timeout_ms),
        format_millis(theirs.election_timeout_ms),
    );
    compare(
        "--heartbeat-interval",
        format_millis(ours.heartbeat_interval_ms),
        format_millis(theirs.heartbeat_interval_ms),
    );
    compare(
        "--max-value-size",
        format_size(ours.max_value_bytes),
        format_size(theirs.max_value_bytes),
    );
    compare(
        "the client-session limits (test hook)",
        ours.session_limits.clone(),
        theirs.session_limits.clone(),
    );
    differ
}

/// What every member must share, and why (for messages).
pub const MUST_MATCH: &str = "every member must run with the same --election-timeout and \
     --heartbeat-interval (a leader lease counts on every member waiting as long before an \
     election) and the same --max-value-size (the leader's limit is the cluster's, and a \
     member refuses raft messages more than 16MiB over its own)";

/// Err (why, for the joining node's operator) when a node with `theirs`
/// cannot be a member of this cluster, whose member `node` has `ours` and
/// whose log version is `cluster_log_version`: settings every member must
/// share differ, or its build cannot apply the cluster's log.
pub fn check_join_settings(
    node: u64,
    ours: &JoinSettings,
    theirs: &JoinSettings,
    cluster_log_version: u32,
) -> Result<(), String> {
    let differ = settings_differences(ours, theirs, &format!("member {node}"), "this node");
    if !differ.is_empty() {
        return Err(format!(
            "this node's settings differ from the cluster's: {}; {MUST_MATCH}: start this node \
             with the cluster's values",
            differ.join("; ")
        ));
    }
    if theirs.log_version < cluster_log_version {
        return Err(format!(
            "this node's build applies log entries up to version {}, and the cluster's log is \
             at version {cluster_log_version}: it could not apply the log it would be sent; \
             run the cluster's RaftKV build (or a newer one) on this node",
            theirs.log_version
        ));
    }
    Ok(())
}

/// Becomes a member (as a learner): returns the addresses of the members
/// (the configuration is not known yet), for the transport to answer the
/// leader before the first snapshot brings the whole configuration.
/// Records the node's identity in `storage`. Sends `settings`, which the
/// leader checks against the cluster's.
pub async fn join_as_learner(
    storage: &mut FileStorage,
    config: &ServerConfig,
    settings: JoinSettings,
    tls: &crate::OutgoingTls,
) -> anyhow::Result<MembershipRecord> {
    let data_dir = &config.data_dir;
    let join = &config.join;
    let requested_id = config.id;
    let address = config.advertise_address();
    let peer_address = config.advertise_peer_address();
    let client = client_for(join, tls)?;
    let id = storage
        .identity()
        .map(|identity| identity.node_id)
        .or(requested_id)
        .unwrap_or(0);
    let mut attempts = 0u32;
    let reply = loop {
        attempts += 1;
        match client
            .join(id, address, peer_address, Some(settings.clone()))
            .await
        {
            Ok(reply) => break reply,
            Err(e) if e.is_retryable() => {
                if attempts == 1 || attempts.is_multiple_of(10) {
                    tracing::warn!("joining through {}: {e}; retrying", join.join(","));
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => {
                let text = e.to_string();
                let hint = if text.contains("TLS") || text.contains("certificate") {
                    " (a joining node talks to the cluster as a member: with --peer-cert-file, \
                     --peer-key-file and --peer-trusted-ca-file when the cluster has peer TLS, \
                     else with --cert-file, --key-file and --trusted-ca-file when it has client \
                     TLS)"
                } else {
                    ""
                };
                bail!("the cluster refused to add this node: {text}{hint}")
            }
        }
    };
    let Some(me) = reply.members.iter().find(|m| m.address == address) else {
        bail!("the cluster added this node but does not list it at {address}");
    };
    if reply.cluster_id == 0 {
        bail!("the cluster answered without its cluster id (is it an older raftkv?)");
    }
    let identity = NodeIdentity {
        node_id: me.id,
        cluster_id: reply.cluster_id,
        bootstrap_id: reply.bootstrap_id,
    };
    storage
        .set_identity(identity)
        .context("cannot record this node's identity")?;
    tracing::info!(
        "joined cluster {:016x} as learner node {}; waiting for a snapshot from the leader",
        identity.cluster_id,
        identity.node_id
    );
    let peers = MembershipRecord {
        addresses: reply
            .members
            .iter()
            .map(|m| (m.id, m.address.clone()))
            .collect(),
        peer_addresses: reply
            .members
            .iter()
            .filter(|m| !m.peer_address.is_empty())
            .map(|m| (m.id, m.peer_address.clone()))
            .collect(),
        ..Default::default()
    };
    save_seed_peers(data_dir, &peers).context("cannot record the cluster's members")?;
    Ok(peers)
}

/// Where a joined node keeps the members it learned when it joined, until
/// its first snapshot brings the configuration: a restart before then still
/// knows whom to answer.
fn seed_peers_path(data_dir: &Path) -> PathBuf {
    data_dir.join("join-peers")
}

/// One line per member: `ID ADDRESS [PEER_ADDRESS]`.
fn save_seed_peers(data_dir: &Path, peers: &MembershipRecord) -> std::io::Result<()> {
    let text: String = peers
        .addresses
        .iter()
        .map(|(id, address)| match peers.peer_addresses.get(id) {
            Some(peer_address) => format!("{id} {address} {peer_address}\n"),
            None => format!("{id} {address}\n"),
        })
        .collect();
    let path = seed_peers_path(data_dir);
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The members recorded by [`join_as_learner`], if any.
pub fn load_seed_peers(data_dir: &Path) -> Option<MembershipRecord> {
    let text = std::fs::read_to_string(seed_peers_path(data_dir)).ok()?;
    let mut peers = MembershipRecord::default();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(id), Some(address)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(id) = id.parse::<u64>() else { continue };
        peers.addresses.insert(id, address.to_string());
        if let Some(peer_address) = fields.next() {
            peers.peer_addresses.insert(id, peer_address.to_string());
        }
    }
    (!peers.addresses.is_empty()).then_some(peers)
}

/// Asks for promotion until this node is a voter (the leader answers once
/// it has caught up), or it was removed.
pub async fn promote_when_caught_up(replica: Replica, join: Vec<String>, tls: crate::OutgoingTls) {
    let client = match client_for(&join, &tls) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let id = replica.node_id();
    loop {
        match replica.status().role {
            Role::Removed => return,
            Role::Learner => {}
            // A voter (leader, follower, candidate) once the membership
            // says so; before the first snapshot the role is not known yet.
            _ if replica.membership().conf_state.voters.contains(&id) => {
                tracing::info!("node {id} is a voter");
                return;
            }
            _ => {}
        }
        match client.promote_node(id).await {
            Ok(_) => {
                tracing::info!("node {id} was promoted to voter");
                return;
            }
            Err(e) if e.is_retryable() => {
                tracing::info!("promotion of node {id} not done yet: {e}");
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => {
                tracing::warn!("promotion of node {id} refused: {e}");
                tokio::time::sleep(10 * RETRY_EVERY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> JoinSettings {
        join_settings(&ServerConfig::default(), 2, &SessionLimits::default())
    }

    #[test]
    fn the_same_settings_join_and_each_difference_is_named_with_both_values() {
        assert_eq!(check_join_settings(1, &settings(), &settings(), 2), Ok(()));
        let theirs = JoinSettings {
            election_timeout_ms: 2_000,
            max_value_bytes: 1 << 20,
            ..settings()
        };
        let err = check_join_settings(1, &settings(), &theirs, 2).unwrap_err();
        assert!(
            err.contains("--election-timeout is 2s on this node and 1s on member 1"),
            "{err}"
        );
        assert!(
            err.contains("--max-value-size is 1MiB on this node and 128MiB on member 1"),
            "{err}"
        );
    }

    #[test]
    fn a_build_older_than_the_log_is_refused() {
        let theirs = JoinSettings {
            log_version: 2,
            ..settings()
        };
        let err = check_join_settings(1, &settings(), &theirs, 3).unwrap_err();
        assert!(
            err.contains(
                "applies log entries up to version 2, and the cluster's log is at \
                          version 3"
            ),
            "{err}"
        );
    }
}
