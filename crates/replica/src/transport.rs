//! How a replica reaches its peers. The server crate implements it over gRPC
//! streams; tests can implement it in memory.

use std::collections::BTreeMap;

use crate::PeerMessage;

/// Sends raft messages to peers. Implementations must never block the node
/// thread: queue and return, dropping messages when a peer's queue is full
/// (raft retransmits; a dropped message is a lost packet).
pub trait Transport: Send + Sync + 'static {
    /// Queues messages for their `to` peers.
    fn send(&self, messages: Vec<PeerMessage>);
    /// The membership's addresses changed (or were first known).
    fn update_peers(&self, addresses: &BTreeMap<u64, String>);
    /// Whether the last attempt to reach `id` succeeded.
    fn is_reachable(&self, id: u64) -> bool;
}
