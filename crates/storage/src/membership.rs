//! `MembershipRecord`: the cluster configuration as this node last applied it — raft's
//! `ConfState`, every member's address, and the log index it took effect at.
//!
//! Its persistent form is `raftkv_proto::internal::Membership` (prost), with the
//! `ConfState` carried as protobuf-encoded bytes because raft-rs uses the rust-protobuf
//! codec. This file only converts; it must not decide when membership changes.

use std::collections::BTreeMap;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::ConfState;
use raftkv_proto::internal::{MemberAddress, Membership};

/// The membership of the cluster as known to this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MembershipRecord {
    /// Log index of the configuration change (or bootstrap) this reflects.
    pub index: u64,
    pub conf_state: ConfState,
    /// Node id -> address clients (and peers, unless it has a separate
    /// peer listener) use to reach it.
    pub addresses: BTreeMap<u64, String>,
    /// Node id -> address of its separate peer listener (`--listen-peer`),
    /// for the members that have one: where raft messages and snapshots go.
    pub peer_addresses: BTreeMap<u64, String>,
    /// The highest node id that was ever a member (ids are never reused).
    pub max_node_id: u64,
}

impl MembershipRecord {
    /// The persisted (prost) form.
    pub fn to_proto(&self) -> Membership {
        let conf_state = self
            .conf_state
            .write_to_bytes()
            .expect("encoding a ConfState into memory cannot fail");
        Membership {
            index: self.index,
            conf_state: conf_state.into(),
            addresses: self
                .addresses
                .iter()
                .map(|(id, address)| MemberAddress {
                    id: *id,
                    address: address.clone(),
                    peer_address: self.peer_addresses.get(id).cloned().unwrap_or_default(),
                })
                .collect(),
            max_node_id: self.max_node_id,
        }
    }

    /// Parses the persisted form; the error says which part was malformed.
    pub fn from_proto(proto: &Membership) -> Result<MembershipRecord, String> {
        let conf_state = ConfState::parse_from_bytes(&proto.conf_state)
            .map_err(|err| format!("membership conf_state does not decode: {err}"))?;
        let mut addresses = BTreeMap::new();
        let mut peer_addresses = BTreeMap::new();
        for member in &proto.addresses {
            if addresses
                .insert(member.id, member.address.clone())
                .is_some()
            {
                return Err(format!("membership lists node {} twice", member.id));
            }
            if !member.peer_address.is_empty() {
                peer_addresses.insert(member.id, member.peer_address.clone());
            }
        }
        let max_node_id = proto
            .max_node_id
            .max(addresses.keys().max().copied().unwrap_or(0));
        Ok(MembershipRecord {
            index: proto.index,
            conf_state,
            addresses,
            peer_addresses,
            max_node_id,
        })
    }

    /// Where peers send member `id` raft messages and snapshots: its peer
    /// listener if it has one, else its one address.
    pub fn peer_address(&self, id: u64) -> Option<&String> {
        self.peer_addresses
            .get(&id)
            .or_else(|| self.addresses.get(&id))
    }

    /// [`MembershipRecord::peer_address`] of every member.
    pub fn peer_dial_addresses(&self) -> BTreeMap<u64, String> {
        self.addresses
            .keys()
            .filter_map(|id| Some((*id, self.peer_address(*id)?.clone())))
            .collect()
    }

    /// Bytes as stored in a WAL record.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Inverse of [`MembershipRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<MembershipRecord, String> {
        let proto = Membership::decode(bytes)
            .map_err(|err| format!("membership does not decode: {err}"))?;
        MembershipRecord::from_proto(&proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_round_trips_through_its_encoding() {
        let conf_state = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        let record = MembershipRecord {
            index: 7,
            conf_state,
            addresses: BTreeMap::from([(1, "a:1".to_string()), (4, "d:4".to_string())]),
            peer_addresses: BTreeMap::from([(4, "d:5".to_string())]),
            max_node_id: 6,
        };
        assert_eq!(MembershipRecord::decode(&record.encode()).unwrap(), record);
        assert_eq!(record.peer_address(1).unwrap(), "a:1");
        assert_eq!(record.peer_address(4).unwrap(), "d:5");
    }

    #[test]
    fn the_empty_encoding_is_the_default_membership() {
        assert_eq!(
            MembershipRecord::decode(&[]).unwrap(),
            MembershipRecord::default()
        );
    }
}
