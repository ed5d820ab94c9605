//! Outbound peer traffic: raft messages to every other member over long-lived
//! gRPC streams (`Peer.Raft`).
//!
//! Each peer has two lanes, each its own TCP connection and stream:
//! the control lane carries votes, heartbeats and responses; the data lane
//! carries appends and snapshots, in order (appends split across lanes could
//! overtake each other, and a follower would reject the early one). A 100 MB
//! append in flight therefore never delays a heartbeat, which would cost a
//! spurious election. Both lanes are bounded queues; when one is full the
//! message is dropped (raft retransmits, as it would after a lost packet) and
//! the node thread never blocks on the network. HTTP/2 keepalive pings find a
//! dead connection within seconds, so a vanished peer is reported unreachable
//! instead of holding a lane forever.
//!
//! Messages are encoded on the lane's task, not on the node thread, and split
//! into chunks of at most `CHUNK_BYTES` so that no gRPC message limit decides
//! how large an entry may be.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use raftkv_proto::v1::peer_client::PeerClient;
use raftkv_proto::v1::{JoinSettings, RaftEnvelope, SnapshotFileChunk};
use raftkv_replica::{
    ClusterIds, Lane as Route, PeerMessage, Replica, SnapshotMeta, SnapshotStore, Transport,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::net_faults::{Fate, NetFaults};

/// Largest piece of a raft message in one envelope.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Messages queued per control lane.
const CONTROL_QUEUE_MESSAGES: usize = 4096;
/// Messages queued per data lane, and their total entry bytes.
const DATA_QUEUE_MESSAGES: usize = 1024;
/// 64 MiB: what a catching-up follower can have queued on the leader. (256
/// appends in flight of up to 1 MiB each would otherwise hold 256 MiB per
/// follower; the soak showed such transient peaks.)
const DATA_QUEUE_BYTES: u64 = 64 * 1024 * 1024;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Envelopes buffered between a lane and its gRPC stream.
const STREAM_BUFFER_ENVELOPES: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// Retry of a lane a peer of another cluster refused (it refuses again until
/// an operator steps in; often enough to keep both sides' view current).
const REFUSED_RETRY: Duration = Duration::from_secs(2);

/// A queued message and the earliest time to send it (test delay faults).
type Queued = (PeerMessage, Option<std::time::Instant>);

struct Lane {
    queue: mpsc::Sender<Queued>,
    queued_bytes: Arc<AtomicU64>,
}

struct PeerLink {
    address: String,
    control: Lane,
    data: Lane,
    reachable: Arc<AtomicBool>,
}

/// Everything a lane task needs; shared by the lanes of one node.
struct LaneContext {
    from: u64,
    to: u64,
    /// The ids the node started with; once the replica is set, its current ones.
    initial_ids: ClusterIds,
    address: String,
    reachable: Arc<AtomicBool>,
    queued_bytes: Arc<AtomicU64>,
    replica: Arc<OnceLock<Replica>>,
    name: &'static str,
    tls: crate::OutgoingTls,
    /// Sent on the first envelope of each stream (see `RaftEnvelope`).
    settings: Arc<JoinSettings>,
}

/// The gRPC implementation of the replica's `Transport`.
pub struct GrpcTransport {
    node_id: u64,
    initial_ids: ClusterIds,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, PeerLink>>,
    replica: Arc<OnceLock<Replica>>,
    snapshots: SnapshotStore,
    /// What connections to peers present and trust.
    tls: crate::OutgoingTls,
    /// Test-only network faults (`RAFTKV_NET_FAULTS`).
    faults: Option<NetFaults>,
    settings: Arc<JoinSettings>,
}

impl GrpcTransport {
    pub fn new(
        node_id: u64,
        initial_ids: ClusterIds,
        runtime: tokio::runtime::Handle,
        snapshots: SnapshotStore,
        tls: crate::OutgoingTls,
        settings: JoinSettings,
    ) -> Self {
        let runtime_for_faults = runtime.clone();
        GrpcTransport {
            node_id,
            initial_ids,
            runtime,
            peers: Mutex::new(HashMap::new()),
            replica: Arc::new(OnceLock::new()),
            snapshots,
            tls,
            faults: NetFaults::from_env(&runtime_for_faults),
            settings: Arc::new(settings),
        }
    }

    fn snapshot_sender(&self, to: u64, address: Option<String>) -> SnapshotSender {
        SnapshotSender {
            from: self.node_id,
            to,
            initial_ids: self.initial_ids,
            address,
            replica: self.replica.clone(),
            snapshots: self.snapshots.clone(),
            tls: self.tls.clone(),
        }
    }

    /// A snapshot the fault layer dropped: raft must hear it failed.
    fn report_snapshot_failure(&self, to: u64) {
        if let Some(replica) = self.replica.get().cloned() {
            self.runtime
                .spawn_blocking(move || replica.report_snapshot(to, false));
        }
    }

    /// Connects the transport to its replica (for unreachable reports).
    pub fn set_replica(&self, replica: Replica) {
        let _ = self.replica.set(replica);
    }

    fn spawn_lane(
        &self,
        to: u64,
        address: &str,
        reachable: &Arc<AtomicBool>,
        name: &'static str,
        capacity: usize,
    ) -> Lane {
        let (queue, receiver) = mpsc::channel(capacity);
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let context = LaneContext {
            from: self.node_id,
            to,
            initial_ids: self.initial_ids,
            address: address.to_string(),
            reachable: reachable.clone(),
            queued_bytes: queued_bytes.clone(),
            replica: self.replica.clone(),
            name,
            tls: self.tls.clone(),
            settings: self.settings.clone(),
        };
        self.runtime.spawn(run_lane(context, receiver));
        Lane {
            queue,
            queued_bytes,
        }
    }

    fn link(&self, to: u64, address: &str) -> PeerLink {
        let reachable = Arc::new(AtomicBool::new(true));
        PeerLink {
            address: address.to_string(),
            control: self.spawn_lane(to, address, &reachable, "control", CONTROL_QUEUE_MESSAGES),
            data: self.spawn_lane(to, address, &reachable, "data", DATA_QUEUE_MESSAGES),
            reachable,
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, messages: Vec<PeerMessage>) {
        let peers = self.peers.lock().expect("peers lock poisoned");
        for message in messages {
            let to = message.to();
            let route = message.lane();
            let send_at = match self.faults.as_ref().map(|f| f.fate(to)) {
                Some(Fate::Drop) => {
                    if route == Route::Snapshot {
                        self.report_snapshot_failure(to);
                    }
                    continue;
                }
                Some(Fate::Send(at)) => at,
                None => None,
            };
            if route == Route::Snapshot {
                // Never queued where it could be dropped unreported: raft
                // keeps the follower paused until `send_snapshot` reports.
                let address = peers.get(&to).map(|link| link.address.clone());
                self.runtime
                    .spawn(send_snapshot(self.snapshot_sender(to, address), message));
                continue;
            }
            let Some(link) = peers.get(&to) else {
                tracing::debug!("no address for node {to}; message dropped");
                continue;
            };
            let size = message.payload_bytes();
            let data = route == Route::Data;
            let lane = if data { &link.data } else { &link.control };
            if data {
                let queued = lane.queued_bytes.load(Ordering::Relaxed);
                if queued > 0 && queued + size as u64 > DATA_QUEUE_BYTES {
                    continue; // raft will resend once the lane drains
                }
            }
            lane.queued_bytes.fetch_add(size as u64, Ordering::Relaxed);
            if lane.queue.try_send((message, send_at)).is_err() {
                lane.queued_bytes.fetch_sub(size as u64, Ordering::Relaxed);
            }
        }
    }

    fn update_peers(&self, addresses: &BTreeMap<u64, String>) {
        let mut peers = self.peers.lock().expect("peers lock poisoned");
        // Dropping a link closes its queues, which ends its lane tasks.
        peers.retain(|id, link| addresses.get(id) == Some(&link.address));
        for (id, address) in addresses {
            if *id != self.node_id && !peers.contains_key(id) {
                peers.insert(*id, self.link(*id, address));
            }
        }
    }

    fn is_reachable(&self, id: u64) -> bool {
        let peers = self.peers.lock().expect("peers lock poisoned");
        peers
            .get(&id)
            .is_some_and(|link| link.reachable.load(Ordering::Relaxed))
    }
}

/// Splits an encoded message into envelopes of at most `CHUNK_BYTES`.
pub fn envelopes(
    ids: ClusterIds,
    from: u64,
    to: u64,
    encoded: Bytes,
    sender_out_of_space: bool,
    sender_log_version: u32,
) -> Vec<RaftEnvelope> {
    let mut out = Vec::with_capacity(encoded.len() / CHUNK_BYTES + 1);
    let mut offset = 0;
    loop {
        let end = (offset + CHUNK_BYTES).min(encoded.len());
        out.push(RaftEnvelope {
            cluster_id: ids.cluster_id,
            bootstrap_id: ids.bootstrap_id,
            from,
            to,
            chunk: encoded.slice(offset..end),
            last: end == encoded.len(),
            sender_out_of_space,
            sender_log_version,
            sender_settings: None,
            sender_takes_proposals: true,
        });
        if end == encoded.len() {
            return out;
        }
        offset = end;
    }
}

/// What sending one snapshot needs.
struct SnapshotSender {
    from: u64,
    to: u64,
    initial_ids: ClusterIds,
    /// `None` when the membership has no address for `to`.
    address: Option<String>,
    replica: Arc<OnceLock<Replica>>,
    snapshots: SnapshotStore,
    tls: crate::OutgoingTls,
}

/// The node's cluster ids as of now (they change once, when the node adopts
/// its cluster's id).
fn current_ids(replica: &OnceLock<Replica>, initial: ClusterIds) -> ClusterIds {
    replica.get().map_or(initial, Replica::cluster_ids)
}

/// Reads who refused a stream for belonging to another cluster (the
/// `CLUSTER_MISMATCH` metadata) and tells the replica: it then serves no
/// clients while only that other cluster reaches it.
/// True if it was such a refusal.
fn note_refusal(status: &tonic::Status, peer: u64, replica: &OnceLock<Replica>) -> bool {
    let their_cluster = status
        .metadata()
        .get(crate::peer_service::CLUSTER_MISMATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u64::from_str_radix(v, 16).ok());
    if let (Some(cluster_id), Some(replica)) = (their_cluster, replica.get()) {
        replica.note_foreign_peer(peer, cluster_id);
    }
    their_cluster.is_some()
}

impl LaneContext {
    /// Whether `error` is a TLS failure; if so it is logged, once for as
    /// long as it lasts (`said` holds the last one logged).
    fn said_tls_failure(
        &self,
        error: &(dyn std::error::Error + 'static),
        said: &mut Option<String>,
    ) -> bool {
        let Some(why) = raftkv_net::tls::describe_failure(error) else {
            return false;
        };
        if said.as_deref() != Some(why.as_str()) {
            tracing::warn!(
                "{} lane to node {} at {}: {why}",
                self.name,
                self.to,
                self.address
            );
            *said = Some(why);
        }
        true
    }

    fn report_unreachable(&self) {
        self.reachable.store(false, Ordering::Relaxed);
        if let Some(replica) = self.replica.get() {
            replica.report_unreachable(self.to);
        }
    }

    fn dequeued(&self, message: &PeerMessage) {
        self.queued_bytes
            .fetch_sub(message.payload_bytes() as u64, Ordering::Relaxed);
    }

    /// Drops everything queued (the peer is unreachable; raft will resend).
    fn discard_queued(&self, receiver: &mut mpsc::Receiver<Queued>) {
        while let Ok((message, _)) = receiver.try_recv() {
            self.dequeued(&message);
        }
    }
}

/// One lane to one peer: connect, open the stream, forward messages; on any
/// failure, drop what is queued, report the peer unreachable, back off and
/// reconnect. Ends when the link is dropped (peer removed).
async fn run_lane(lane: LaneContext, mut receiver: mpsc::Receiver<Queued>) {
    let mut backoff = Duration::from_millis(50);
    let mut refused_before = false;
    // The last TLS failure logged, so a lasting one is said once.
    let mut tls_said: Option<String> = None;
    let uri = format!("http://{}", lane.address);
    loop {
        let Some(first) = receiver.recv().await else {
            return;
        };
        lane.dequeued(&first.0);
        let connected = match Endpoint::from_shared(uri.clone()) {
            Ok(endpoint) => {
                // Messages queued together go out in one syscall
                // (raftkv-net coalesces writes; TCP_NODELAY set there).
                endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .connect_with_connector(raftkv_net::connector(lane.tls.clone()))
                    .await
            }
            Err(e) => {
                tracing::error!(
                    "invalid address {:?} for node {}: {e}",
                    lane.address,
                    lane.to
                );
                return;
            }
        };
        let channel = match connected {
            Ok(channel) => channel,
            Err(e) => {
                if !lane.said_tls_failure(&e, &mut tls_said) {
                    tracing::debug!(
                        "{} lane to node {} at {}: cannot connect: {e}",
                        lane.name,
                        lane.to,
                        lane.address
                    );
                }
                lane.report_unreachable();
                lane.discard_queued(&mut receiver);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                continue;
            }
        };
        let (stream_tx, stream_rx) = mpsc::channel(STREAM_BUFFER_ENVELOPES);
        let mut client = PeerClient::new(channel)
            .max_encoding_message_size(2 * CHUNK_BYTES)
            .max_decoding_message_size(2 * CHUNK_BYTES);
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(stream_rx)).await });
        let mut next = Some(first);
        let mut first_of_stream = true;
        'stream: loop {
            let (message, send_at) = match next.take() {
                Some(queued) => queued,
                None => match receiver.recv().await {
                    Some(queued) => {
                        lane.dequeued(&queued.0);
                        queued
                    }
                    None => return,
                },
            };
            if let Some(at) = send_at {
                tokio::time::sleep_until(at.into()).await;
            }
            let encoded = match message.encode() {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => {
                    tracing::error!("cannot encode a raft message: {e}");
                    continue;
                }
            };
            crate::metrics::PEER_BYTES
                .sent
                .fetch_add(encoded.len() as u64, Ordering::Relaxed);
            let out_of_space = lane.replica.get().is_some_and(Replica::is_out_of_space);
            let log_version = lane.replica.get().map_or(0, Replica::log_version);
            let ids = current_ids(&lane.replica, lane.initial_ids);
            let mut envelopes =
                envelopes(ids, lane.from, lane.to, encoded, out_of_space, log_version);
            if first_of_stream {
                envelopes[0].sender_settings = Some((*lane.settings).clone());
                first_of_stream = false;
            }
            for envelope in envelopes {
                if stream_tx.send(envelope).await.is_err() {
                    break 'stream;
                }
            }
            lane.reachable.store(true, Ordering::Relaxed);
            backoff = Duration::from_millis(50);
            tls_said = None;
        }
        drop(stream_tx);
        match call.await {
            Ok(Err(status)) => {
                if note_refusal(&status, lane.to, &lane.replica) {
                    // It will refuse again: ask seldom, and say so once.
                    if refused_before {
                        tracing::debug!(
                            "{} lane to node {}: {}",
                            lane.name,
                            lane.to,
                            status.message()
                        );
                    } else {
                        tracing::warn!(
                            "{} lane to node {} at {} refused: {}",
                            lane.name,
                            lane.to,
                            lane.address,
                            status.message()
                        );
                    }
                    refused_before = true;
                    backoff = REFUSED_RETRY;
                } else if !lane.said_tls_failure(&status, &mut tls_said) {
                    tracing::warn!(
                        "{} lane to node {} at {} closed: {}",
                        lane.name,
                        lane.to,
                        lane.address,
                        status.message()
                    );
                }
                let removed_at = status
                    .metadata()
                    .get(crate::peer_service::REMOVED_AT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let (Some(index), Some(replica)) = (removed_at, lane.replica.get()) {
                    replica.report_removed(lane.to, index);
                }
            }
            Ok(Ok(_)) => {}
            Err(e) => tracing::warn!("peer stream task failed: {e}"),
        }
        lane.report_unreachable();
        lane.discard_queued(&mut receiver);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF.max(backoff));
    }
}

/// Streams the snapshot file named by `message` to its follower, then tells
/// raft whether it arrived (raft keeps the follower paused until then).
async fn send_snapshot(sender: SnapshotSender, message: PeerMessage) {
    let meta = message.snapshot_meta().expect("a snapshot message");
    let started = std::time::Instant::now();
    let result = stream_snapshot(&sender, meta, message).await;
    match &result {
        Ok(bytes) => tracing::info!(
            "sent snapshot at index {} ({bytes} bytes) to node {} in {:?}",
            meta.index,
            sender.to,
            started.elapsed()
        ),
        Err(e) => tracing::warn!(
            "sending snapshot at index {} to node {} failed: {e}",
            meta.index,
            sender.to
        ),
    }
    if let Some(replica) = sender.replica.get().cloned() {
        let (to, delivered) = (sender.to, result.is_ok());
        // Blocks while the node's queue is full; never lost.
        let _ = tokio::task::spawn_blocking(move || replica.report_snapshot(to, delivered)).await;
    }
}

async fn stream_snapshot(
    sender: &SnapshotSender,
    meta: SnapshotMeta,
    message: PeerMessage,
) -> Result<u64, String> {
    let address = sender
        .address
        .as_deref()
        .ok_or_else(|| format!("no address known for node {}", sender.to))?;
    let info = sender
        .snapshots
        .find(meta)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("snapshot at index {} is no longer on disk", meta.index))?;
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .connect_with_connector(raftkv_net::connector(sender.tls.clone()))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let encoded = message.encode()?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER_ENVELOPES);
    let mut client = PeerClient::new(channel)
        .max_encoding_message_size(2 * CHUNK_BYTES)
        .max_decoding_message_size(2 * CHUNK_BYTES);
    let call = tokio::spawn(async move { client.install_snapshot(ReceiverStream::new(rx)).await });
    let ids = current_ids(&sender.replica, sender.initial_ids);
    let mut first = Some(SnapshotFileChunk {
        cluster_id: ids.cluster_id,
        bootstrap_id: ids.bootstrap_id,
        from: sender.from,
        to: sender.to,
        message: Bytes::from(encoded),
        total_bytes: info.size_bytes,
        data: Bytes::new(),
    });
    let mut offset = 0;
    while offset < info.size_bytes || first.is_some() {
        let read_info = info.clone();
        let data = tokio::task::spawn_blocking(move || {
            raftkv_replica::read_snapshot_chunk(&read_info, offset, CHUNK_BYTES)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        offset += data.len() as u64;
        crate::metrics::PEER_BYTES
            .sent
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let chunk = match first.take() {
            Some(mut first) => {
                first.data = data;
                first
            }
            None => SnapshotFileChunk {
                data,
                ..Default::default()
            },
        };
        // Waits while the follower's flow-control window is full.
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    call.await.map_err(|e| e.to_string())?.map_err(|status| {
        note_refusal(&status, sender.to, &sender.replica);
        status.message().to_string()
    })?;
    Ok(info.size_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_cover_the_message_exactly_once_in_order() {
        for len in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let parts = envelopes(
                ClusterIds::default(),
                1,
                2,
                Bytes::from(data.clone()),
                false,
                2,
            );
            assert!(parts.iter().all(|e| e.chunk.len() <= CHUNK_BYTES));
            assert_eq!(parts.iter().filter(|e| e.last).count(), 1);
            assert!(parts.last().unwrap().last);
            let joined: Vec<u8> = parts.iter().flat_map(|e| e.chunk.to_vec()).collect();
            assert_eq!(joined, data, "len {len}");
        }
    }
}
