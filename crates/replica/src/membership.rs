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
pub fn bootstrap_membership(peers: &BTreeMap<u64, String>) -> MembershipRecord {
    let conf_state = ConfState {
        voters: peers.keys().copied().collect(),
        ..Default::default()
    };
    MembershipRecord {
        index: 1,
        conf_state,
        addresses: peers.clone(),
        max_node_id: peers.keys().max().copied().unwrap_or(0),
    }
}

/// Encodes the context of a conf change that adds the given nodes.
pub fn encode_conf_change_context(
    proposer: u64,
    proposal_id: u64,
    addresses: &BTreeMap<u64, String>,
) -> Vec<u8> {
    ConfChangeContext {
        proposer,
        proposal_id,
        addresses: addresses
            .iter()
            .map(|(id, address)| MemberAddress {
                id: *id,
                address: address.clone(),
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

/// Addresses after a change: new addresses from the context are added, and
/// nodes no longer in the configuration are dropped.
pub(crate) fn next_addresses(
    current: &BTreeMap<u64, String>,
    context: &ConfChangeContext,
    cs: &ConfState,
) -> BTreeMap<u64, String> {
    let mut next = current.clone();
    for member in &context.addresses {
        next.insert(member.id, member.address.clone());
    }
    let ids = member_ids(cs);
    next.retain(|id, _| ids.binary_search(id).is_ok());
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_makes_every_peer_a_voter_at_index_one() {
        let peers: BTreeMap<u64, String> = [(1, "a:1".to_string()), (2, "b:2".to_string())].into();
        let m = bootstrap_membership(&peers);
        assert_eq!(m.index, 1);
        assert_eq!(m.conf_state.voters, vec![1, 2]);
        assert_eq!(m.addresses, peers);
    }

    #[test]
    fn addresses_follow_the_configuration() {
        let current: BTreeMap<u64, String> =
            [(1, "a:1".to_string()), (2, "b:2".to_string())].into();
        let ctx = decode_conf_change_context(&encode_conf_change_context(
            1,
            7,
            &[(3, "c:3".to_string())].into(),
        ));
        assert_eq!(ctx.proposal_id, 7);
        let cs = ConfState {
            voters: vec![1, 3],
            ..Default::default()
        };
        let next = next_addresses(&current, &ctx, &cs);
        assert_eq!(
            next,
            [(1, "a:1".to_string()), (3, "c:3".to_string())].into()
        );
    }
}
