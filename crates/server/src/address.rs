//! Addresses of members. A member restarted at another address (`--advertise`, or `--listen`
//! without it) records the new one through the log, so that peers and
//! clients' redirects find it. The membership the data dir holds wins at
//! start (see `open_storage`); this task then asks the leader — through the
//! members' addresses it knows, and its own — to replace its entry, until the
//! membership it applied says the new address.

use std::time::Duration;

use raftkv_client::{Client, ClientOptions};
use raftkv_replica::Replica;

/// Pause between attempts while no leader takes the change.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn record_own_address(
    replica: Replica,
    address: String,
    peer_address: Option<String>,
    tls: crate::OutgoingTls,
) {
    let id = replica.node_id();
    let recorded = |replica: &Replica| {
        let membership = replica.membership();
        let address = membership.addresses.get(&id).cloned()?;
        Some((address, membership.peer_addresses.get(&id).cloned()))
    };
    let Some(old) = recorded(&replica) else {
        return; // not a member (yet): nothing to correct
    };
    let new = (address.clone(), peer_address.clone());
    if old == new {
        return;
    }
    let shown = |(address, peer): &(String, Option<String>)| match peer {
        Some(peer) => format!("{address} (peer listener {peer})"),
        None => address.clone(),
    };
    tracing::warn!(
        "node {id} is now at {}, but the membership has {}; recording the new \
         address through the leader (peers reach this node once it is committed)",
        shown(&new),
        shown(&old)
    );
    let old = shown(&old);
    let mut endpoints: Vec<String> = replica
        .membership()
        .addresses
        .iter()
        .filter(|(member, _)| **member != id)
        .map(|(_, a)| a.clone())
        .collect();
    endpoints.push(address.clone());
    let options = ClientOptions {
        timeout: ATTEMPT_TIMEOUT,
        tls: tls.clone(),
        credentials: crate::auth::node_credentials(),
        ..Default::default()
    };
    let client = match Client::with_options(&endpoints, options) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("cannot record this node's new address: {e}");
            return;
        }
    };
    let mut attempts = 0u32;
    while recorded(&replica).as_ref() != Some(&new) {
        match client
            .set_member_address(id, &address, peer_address.as_deref(), {
                let ids = replica.cluster_ids();
                (ids.cluster_id, ids.bootstrap_id)
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_retryable() => {
                attempts += 1;
                if attempts == 1 || attempts.is_multiple_of(20) {
                    tracing::info!("recording node {id}'s new address: {e}; retrying");
                }
            }
            Err(e) => {
                tracing::error!(
                    "the cluster refused node {id}'s new address {address}: {e}; restart it \
                     at {old}, or remove it (`raftkv cluster remove {id}`) and add it again"
                );
                return;
            }
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
    tracing::info!(
        "node {id}'s address {} is recorded in the membership",
        shown(&new)
    );
}

/// A node that was away while a new member joined and took over as leader
/// hears from that leader but has no address for it (its membership predates
/// the change), so its answers go nowhere and the leader never brings it up to
/// date. While that lasts, this asks the members it knows for their view and
/// gives the transport the leader's address; applying the change then makes
/// it part of the membership as usual. Only answers from its own cluster count.
pub async fn reach_unknown_leader(
    replica: Replica,
    transport: std::sync::Arc<crate::transport::GrpcTransport>,
    election_timeout: Duration,
    tls: crate::OutgoingTls,
) {
    loop {
        tokio::time::sleep(election_timeout).await;
        let status = replica.status();
        let membership = replica.membership();
        let own = &membership.addresses;
        if status.leader_id == 0 || own.contains_key(&status.leader_id) {
            continue;
        }
        for (id, address) in own {
            if *id == status.id {
                continue;
            }
            let options = ClientOptions {
                timeout: election_timeout,
                tls: tls.clone(),
                ..Default::default()
            };
            let Ok(client) = Client::with_options(std::slice::from_ref(address), options) else {
                continue;
            };
            let Ok(reply) = client.members().await else {
                continue;
            };
            if reply.cluster_id != replica.cluster_id() || reply.cluster_id == 0 {
                continue;
            }
            if let Some(leader) = reply.members.iter().find(|m| m.id == status.leader_id) {
                tracing::info!(
                    "node {} follows node {}, which its membership does not hold yet; \
                     reaching it at {} until the change is applied here",
                    status.id,
                    leader.id,
                    leader.address
                );
                let mut peers = membership.peer_dial_addresses();
                let leader_peer_address = if leader.peer_address.is_empty() {
                    &leader.address
                } else {
                    &leader.peer_address
                };
                peers.insert(leader.id, leader_peer_address.clone());
                raftkv_replica::Transport::update_peers(&*transport, &peers);
                break;
            }
        }
    }
}
