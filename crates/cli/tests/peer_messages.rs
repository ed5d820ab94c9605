//! No input on any port may stop a node: raft messages that a correct peer
//! never sends — and that raft-rs asserts on, or takes from anyone — are sent
//! to the followers and to the leader of a running cluster through the peer
//! service, as any client could. Every node keeps running, the cluster keeps
//! serving reads and writes, and the refusals are counted in
//! `raftkv_peer_messages_rejected_total{reason}`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use raftkv_proto::v1::peer_client::PeerClient;
use raftkv_proto::v1::{RaftEnvelope, SnapshotFileChunk};
use raftkv_testkit::TestCluster;

use common::{bin, http_get, sample};

/// One crafted message: what it is, the envelope's sender, and the bytes.
struct Hostile {
    what: &'static str,
    envelope_from: u64,
    bytes: Bytes,
}

fn raft_message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

fn encoded(m: &Message) -> Bytes {
    Bytes::from(m.write_to_bytes().expect("encode"))
}

/// Messages `from` (a member) could forge to `to`, whose term is `term`;
/// `non_leader` is a member that does not lead.
fn hostile_messages(from: u64, non_leader: u64, to: u64, term: u64) -> Vec<Hostile> {
    let mut out = Vec::new();
    let mut add = |what, envelope_from, m: Message| {
        out.push(Hostile {
            what,
            envelope_from,
            bytes: encoded(&m),
        })
    };
    for t in [term, term + 1] {
        let mut heartbeat = raft_message(MessageType::MsgHeartbeat, from, to, t);
        heartbeat.commit = 1_000_000;
        add("heartbeat committing past the log", from, heartbeat);
    }
    let mut append = raft_message(MessageType::MsgAppend, from, to, term + 1);
    append.index = 1;
    append.log_term = 1;
    append.commit = 1_000_000;
    append.entries = vec![Entry {
        index: 1,
        term: term + 1,
        ..Default::default()
    }]
    .into();
    add("append rewriting committed entries", from, append);
    let mut ack = raft_message(MessageType::MsgAppendResponse, from, to, term);
    ack.index = 1_000_000;
    add("append response past the log", from, ack);
    let mut snapshot = raft_message(MessageType::MsgSnapshot, from, to, term);
    snapshot.mut_snapshot().mut_metadata().index = 1_000_000;
    snapshot.mut_snapshot().mut_metadata().term = term;
    add("snapshot on the raft stream", from, snapshot);
    add(
        "read index without its context",
        from,
        raft_message(MessageType::MsgReadIndex, from, to, term),
    );
    add(
        "read index response without its context",
        from,
        raft_message(MessageType::MsgReadIndexResp, from, to, term),
    );
    let mut propose = raft_message(MessageType::MsgPropose, from, to, term);
    propose.entries = vec![Entry {
        data: Bytes::from_static(b"\xff\xff\xff not a command"),
        ..Default::default()
    }]
    .into();
    add("proposal of garbage", from, propose);
    add(
        "leadership transfer",
        from,
        raft_message(MessageType::MsgTransferLeader, from, to, term),
    );
    add(
        "timeout-now from a non-leader",
        non_leader,
        raft_message(MessageType::MsgTimeoutNow, non_leader, to, term + 5),
    );
    add(
        "hup",
        from,
        raft_message(MessageType::MsgHup, from, to, term),
    );
    let mut stranger = raft_message(MessageType::MsgAppendResponse, 99, to, term);
    stranger.index = 1;
    add("append response from a non-member", 99, stranger);
    let mut unmatched = raft_message(MessageType::MsgAppend, from, to, term);
    unmatched.index = 1_000_000;
    unmatched.commit = 1_000_000;
    add(
        "append matching nothing (log term 0) past the log",
        from,
        unmatched,
    );
    add(
        "message whose sender is not the envelope's",
        from,
        raft_message(MessageType::MsgHeartbeat, 99, to, term),
    );
    out.push(Hostile {
        what: "bytes that are no raft message",
        envelope_from: from,
        bytes: Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
    });
    out
}

async fn send_on_raft_stream(address: &str, cluster_id: u64, to: u64, hostile: &Hostile) {
    let mut client = PeerClient::connect(format!("http://{address}"))
        .await
        .expect("connect to the peer service");
    let envelope = RaftEnvelope {
        cluster_id,
        from: hostile.envelope_from,
        to,
        chunk: hostile.bytes.clone(),
        last: true,
        sender_out_of_space: false,
        bootstrap_id: 0,
        sender_log_version: 2,
        sender_settings: None,
        sender_takes_proposals: false,
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        client.raft(futures::stream::iter(vec![envelope])),
    )
    .await
    .expect("the peer service answers");
    eprintln!(
        "sent {} to node {to}: {:?}",
        hostile.what,
        result.map(|_| ())
    );
}

async fn send_install_snapshot(address: &str, cluster_id: u64, from: u64, to: u64, m: &Message) {
    let mut client = PeerClient::connect(format!("http://{address}"))
        .await
        .expect("connect to the peer service");
    let chunk = SnapshotFileChunk {
        cluster_id,
        from,
        to,
        message: encoded(m),
        total_bytes: 64,
        data: Bytes::from(vec![7u8; 64]),
        bootstrap_id: 0,
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        client.install_snapshot(futures::stream::iter(vec![chunk])),
    )
    .await
    .expect("the peer service answers");
    eprintln!(
        "sent a {:?} through InstallSnapshot to node {to}: {:?}",
        m.get_msg_type(),
        result.map(|_| ())
    );
}

fn rejected(cluster: &TestCluster, id: u64, reason: &str) -> f64 {
    let (code, text) = http_get(&cluster.address(id), "/metrics");
    assert_eq!(code, 200);
    sample(
        &text,
        &format!("raftkv_peer_messages_rejected_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_peer_message_stops_a_node_and_refusals_are_counted() {
    let cluster = TestCluster::start(bin(), 3);
    cluster.cli(&["put", "before", "1"]).assert_ok();
    let leader = cluster.leader();
    let mut targets = cluster.followers();
    targets.push(leader);
    for &target in &targets {
        // Once the node has adopted the cluster's id (its first leader picks it).
        let (status, cluster_id) =
            raftkv_testkit::poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
                let status = cluster.status(target).ok()?;
                let id = status.json["cluster_id"].as_str()?;
                let id = u64::from_str_radix(id, 16).expect("hexadecimal cluster id");
                (id != 0).then_some((status, id))
            })
            .unwrap_or_else(|_| cluster.fail(&format!("node {target} adopted no cluster id")));
        // A member other than the target: the leader, or a follower when the
        // target is the leader.
        let others: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != target)
            .collect();
        let from = if target == leader { others[0] } else { leader };
        let non_leader = *others.iter().find(|id| **id != leader).expect("a follower");
        let address = cluster.address(target);
        for hostile in hostile_messages(from, non_leader, target, status.term) {
            send_on_raft_stream(&address, cluster_id, target, &hostile).await;
        }
        let mut append = raft_message(MessageType::MsgAppend, from, target, status.term);
        append.commit = 1_000_000;
        send_install_snapshot(&address, cluster_id, from, target, &append).await;
    }
    // Give the node threads time to take what was queued.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in cluster.ids() {
        cluster
            .status(id)
            .unwrap_or_else(|e| cluster.fail(&format!("node {id} stopped answering: {e}")));
    }
    cluster.wait_leader(Duration::from_secs(10));
    cluster.cli(&["put", "after", "2"]).assert_ok();
    for key in ["before", "after"] {
        cluster.cli(&["get", key]).assert_ok();
    }
    for &target in &targets {
        for reason in [
            "commit_beyond_log",
            "unexpected_type",
            "not_a_member",
            "sender_mismatch",
            "undecodable",
        ] {
            assert!(
                rejected(&cluster, target, reason) >= 1.0,
                "node {target} counted a refusal for {reason}"
            );
        }
    }
    assert!(rejected(&cluster, leader, "ack_beyond_log") >= 1.0);
    for follower in cluster.followers() {
        assert!(rejected(&cluster, follower, "malformed") >= 1.0);
        assert!(rejected(&cluster, follower, "not_from_leader") >= 1.0);
    }
}
