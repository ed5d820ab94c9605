//! Membership: the raft `ConfState` plus every member's address, replicated
//! through conf-change entries (whose context carries the addresses) and
//! persisted by storage after each change is applied.

use std::collections::BTreeMap;

use prost::Message as _;
use raft::eraftpb::ConfState;
use raftkv_proto::internal::{ConfChangeContext, MemberAddress};
use raftkv_storage::MembershipRecord;

/// The initial membership of a static cluster: every listed node a voter,
/// as of the bootstrap snapshot at index 1.
/// `peer_addresses`: the separate peer listeners of the nodes that have one.
pub fn bootstrap_membership(
    peers: &BTreeMap<u64, String>,
    peer_addresses: &BTreeMap<u64, String>,
) -> MembershipRecord {
    let conf_state = ConfState {
        voters: peers.keys().copied().collect(),
        ..Default::default()
    };
    MembershipRecord {
        index: 1,
        conf_state,
        addresses: peers.clone(),
        peer_addresses: peer_addresses.clone(),
        max_node_id: peers.keys().max().copied().unwrap_or(0),
    }
}

/// Encodes the context of a conf change that adds the given nodes (with
/// the peer listeners of those that have one).
pub fn encode_conf_change_context(
    proposer: u64,
    proposal_id: u64,
    addresses: &BTreeMap<u64, String>,
    peer_addresses: &BTreeMap<u64, String>,
) -> Vec<u8> {
    ConfChangeContext {
        proposer,
        proposal_id,
        addresses: addresses
            .iter()
            .map(|(id, address)| MemberAddress {
                id: *id,
                address: address.clone(),
                peer_address: peer_addresses.get(id).cloned().unwrap_or_default(),
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Decodes a conf change context; a missing or undecodable context (raft's
/// own empty "leave joint" entry) is an empty one.
pub(crate) fn decode_conf_change_context(context: &[u8]) -> ConfChangeContext {
    ConfChangeContext::decode(context).unwrap_or_default()
}

/// Whether node `id` may be reached at `address` and, if it has one, its
/// peer listener at `peer_address`: each must be its own (not another
/// member's address or peer listener, which would get that member's raft
/// traffic), and a peer listener needs a port apart from the address.
pub(crate) fn check_own_addresses(
    id: u64,
    address: &str,
    peer_address: Option<&str>,
    addresses: &BTreeMap<u64, String>,
    peer_addresses: &BTreeMap<u64, String>,
) -> Result<(), crate::ReplicaError> {
    if peer_address == Some(address) {
        return Err(crate::ReplicaError::Rejected(format!(
            "node {id}'s peer listener {address} is its client address too: a separate peer \
             listener needs a port of its own"
        )));
    }
    for address in std::iter::once(address).chain(peer_address) {
        let taken = addresses
            .iter()
            .chain(peer_addresses.iter())
            .find(|(other, a)| *a == address && **other != id);
        if let Some((other, _)) = taken {
            return Err(crate::ReplicaError::Rejected(format!(
                "address {address} belongs to node {other} already"
            )));
        }
    }
    Ok(())
}

/// Ids that are members (voters, learners, outgoing voters) of `cs`.
pub fn member_ids(cs: &ConfState) -> Vec<u64> {
    let mut ids: Vec<u64> = cs
        .voters
        .iter()
        .chain(cs.learners.iter())
        .chain(cs.voters_outgoing.iter())
        .chain(cs.learners_next.iter())
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Addresses and peer listeners after a change: those of nodes added come
/// from the context, and nodes no longer in the configuration are dropped.
pub(crate) fn next_addresses(
    current: &MembershipRecord,
    context: &ConfChangeContext,
    cs: &ConfState,
) -> (BTreeMap<u64, String>, BTreeMap<u64, String>) {
    let mut addresses = current.addresses.clone();
    let mut peer_addresses = current.peer_addresses.clone();
    for member in &context.addresses {
        addresses.insert(member.id, member.address.clone());
        if member.peer_address.is_empty() {
            peer_addresses.remove(&member.id);
        } else {
            peer_addresses.insert(member.id, member.peer_address.clone());
        }
    }
    let ids = member_ids(cs);
    addresses.retain(|id, _| ids.binary_search(id).is_ok());
    peer_addresses.retain(|id, _| ids.binary_search(id).is_ok());
    (addresses, peer_addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_makes_every_peer_a_voter_at_index_one() {
        let peers: BTreeMap<u64, String> = [(1, "a:1".to_string()), (2, "b:2".to_string())].into();
        let m = bootstrap_membership(&peers, &BTreeMap::new());
        assert_eq!(m.index, 1);
        assert_eq!(m.conf_state.voters, vec![1, 2]);
        assert_eq!(m.addresses, peers);
    }

    #[test]
    fn addresses_follow_the_configuration() {
        let current = MembershipRecord {
            addresses: [(1, "a:1".to_string()), (2, "b:2".to_string())].into(),
            peer_addresses: [(2, "b:9".to_string())].into(),
            ..Default::default()
        };
        let ctx = decode_conf_change_context(&encode_conf_change_context(
            1,
            7,
            &[(3, "c:3".to_string()), (4, "d:4".to_string())].into(),
            &[(4, "d:5".to_string())].into(),
        ));
        assert_eq!(ctx.proposal_id, 7);
        let cs = ConfState {
            voters: vec![1, 3, 4],
            ..Default::default()
        };
        let (addresses, peer_addresses) = next_addresses(&current, &ctx, &cs);
        assert_eq!(
            addresses,
            [
                (1, "a:1".to_string()),
                (3, "c:3".to_string()),
                (4, "d:4".to_string())
            ]
            .into()
        );
        // Node 2's peer listener went with it; node 4 came with one.
        assert_eq!(peer_addresses, [(4, "d:5".to_string())].into());
    }
}
