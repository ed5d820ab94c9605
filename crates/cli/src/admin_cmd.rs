//! `status`, `cluster ...` and `debug ...`: each acts on the first endpoint
//! given (that node's own view), except `status --cluster`, which asks every
//! endpoint given, and `debug check`, which asks every member and endpoint.

use raftkv_client::proto as pb;
use raftkv_client::proto::debug_client::DebugClient;
use raftkv_client::Client;
use serde_json::{json, Value};

use crate::args::{ClusterCommand, DebugCommand, StatusArgs};
use crate::failure::Failure;
use crate::output::print_json;
use crate::ClientFlags;

/// One member; match index and lag are `null` unless the leader answered.
fn member_json(m: &pb::Member, progress_known: bool) -> Value {
    json!({
        "id": m.id,
        "address": m.address,
        "peer_address": (!m.peer_address.is_empty()).then_some(&m.peer_address),
        "role": m.role,
        "voter": m.voter,
        "match_index": progress_known.then_some(m.match_index),
        "lag": progress_known.then_some(m.lag),
        "reachable": m.reachable,
    })
}

fn status_json(s: &pb::StatusResponse) -> Value {
    let known = progress_known(s.id, &s.members);
    json!({
        "id": s.id,
        "role": s.role,
        "term": s.term,
        "leader_id": s.leader_id,
        "leader_address": s.leader_address,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "members": s.members.iter().map(|m| member_json(m, known)).collect::<Vec<_>>(),
        "progress_known": known,
        "joint": s.joint,
        "keys": s.keys,
        "data_bytes": s.data_bytes,
        "disk_bytes": s.disk_bytes,
        "cluster_id": format!("{:016x}", s.cluster_id),
        "address": s.address,
        "problem": (!s.problem.is_empty()).then_some(&s.problem),
        "alarms": s.alarms,
        "revision": s.header.as_ref().map(|h| h.revision),
        "log_version": s.log_version,
        // Only the leader hears from every member.
        "cluster_log_version": (s.role == "leader").then_some(s.cluster_log_version),
    })
}

fn print_status_text(s: &pb::StatusResponse) -> Result<(), Failure> {
    let leader = if s.leader_id == 0 {
        "none known".to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_address)
    };
    outln!("id:            {} ({})", s.id, s.address)?;
    outln!("role:          {}", s.role)?;
    outln!("term:          {}", s.term)?;
    outln!("leader:        {leader}")?;
    outln!("commit index:  {}", s.commit_index)?;
    outln!("applied index: {}", s.applied_index)?;
    if let Some(header) = &s.header {
        outln!("revision:      {}", header.revision)?;
    }
    outln!("keys:          {} ({} bytes)", s.keys, s.data_bytes)?;
    outln!("disk:          {} bytes", s.disk_bytes)?;
    if s.cluster_id == 0 {
        outln!("cluster id:    (not chosen yet)")?;
    } else {
        outln!("cluster id:    {:016x}", s.cluster_id)?;
    }
    if s.role == "leader" {
        outln!(
            "log version:   {} (this node's build); the cluster's: {} (the lowest of its \
             members')",
            s.log_version,
            s.cluster_log_version
        )?;
    } else {
        outln!("log version:   {} (this node's build)", s.log_version)?;
    }
    if !s.problem.is_empty() {
        outln!("PROBLEM:       {}", s.problem)?;
    }
    for alarm in &s.alarms {
        outln!("ALARM:         {alarm}")?;
    }
    outln!(
        "members:{}",
        if s.joint {
            " (joint configuration)"
        } else {
            ""
        }
    )?;
    print_members_text(&s.members, progress_known(s.id, &s.members))
}

/// Whether these members come from the leader, the only node that knows
/// each member's match index and lag.
fn progress_known(responder: u64, members: &[pb::Member]) -> bool {
    members
        .iter()
        .any(|m| m.id == responder && m.role == "leader")
}

/// The members table; match index and lag show as `-` when the node that
/// answered is not the leader (it does not know them).
fn print_members_text(members: &[pb::Member], progress_known: bool) -> Result<(), Failure> {
    // A separate peer listener as --peers writes it: ADDR/PEER_ADDR.
    let address_of = |m: &pb::Member| {
        if m.peer_address.is_empty() {
            m.address.clone()
        } else {
            format!("{}/{}", m.address, m.peer_address)
        }
    };
    let width = members
        .iter()
        .map(|m| address_of(m).len())
        .max()
        .unwrap_or(0)
        .max(22);
    outln!(
        "  {:>4}  {:<width$} {:<10} {:>12} {:>8}  reachable",
        "id",
        "address",
        "role",
        "match_index",
        "lag"
    )?;
    for m in members {
        let (match_index, lag) = if progress_known {
            (m.match_index.to_string(), m.lag.to_string())
        } else {
            ("-".to_string(), "-".to_string())
        };
        outln!(
            "  {:>4}  {:<width$} {:<10} {:>12} {:>8}  {}",
            m.id,
            address_of(m),
            m.role,
            match_index,
            lag,
            if m.reachable { "yes" } else { "no" }
        )?;
    }
    if !progress_known {
        outln!("  (match_index and lag are known only to the leader; this node is not it)")?;
    }
    Ok(())
}

fn client_for(flags: &ClientFlags, endpoint: &str) -> Result<Client, Failure> {
    flags.client_for(&[endpoint.to_string()])
}

pub async fn status(flags: &ClientFlags, args: StatusArgs) -> Result<(), Failure> {
    let endpoints: Vec<String> = if args.cluster {
        flags.endpoints.clone()
    } else {
        flags.endpoints.iter().take(1).cloned().collect()
    };
    let mut failed = None;
    for endpoint in &endpoints {
        match client_for(flags, endpoint)?.status().await {
            Ok(status) if flags.json => print_json(&status_json(&status))?,
            Ok(status) => {
                if args.cluster {
                    outln!("== {endpoint}")?;
                }
                print_status_text(&status)?;
            }
            Err(e) if args.cluster => {
                if flags.json {
                    print_json(&json!({"address": endpoint, "error": e.to_string()}))?;
                } else {
                    outln!("== {endpoint}\nerror: {e}")?;
                }
                failed = Some(Failure::Other(format!("{endpoint}: {e}")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    failed.map_or(Ok(()), Err)
}

fn responder(reply: &pb::MembersResponse) -> u64 {
    reply.header.as_ref().map_or(0, |h| h.node_id)
}

fn print_members(reply: &pb::MembersResponse, json: bool) -> Result<(), Failure> {
    let known = progress_known(responder(reply), &reply.members);
    if json {
        print_json(&json!({
            "members": reply.members.iter().map(|m| member_json(m, known)).collect::<Vec<_>>(),
            "joint": reply.joint,
            "progress_known": known,
        }))?;
    } else {
        if reply.joint {
            outln!("(joint configuration: a membership change is in progress)")?;
        }
        print_members_text(&reply.members, known)?;
    }
    Ok(())
}

/// After a leadership transfer, the members as the new leader sees them once
/// it has heard from every reachable member (a new leader knows no match
/// index until then); gives up waiting after a few seconds.
async fn members_after_transfer(client: &Client) -> Result<pb::MembersResponse, Failure> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let reply = client.leader_members().await?;
        let settled = progress_known(responder(&reply), &reply.members)
            && reply
                .members
                .iter()
                .all(|m| !m.reachable || m.match_index > 0);
        if settled || std::time::Instant::now() >= give_up {
            return Ok(reply);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub async fn cluster(flags: &ClientFlags, command: ClusterCommand) -> Result<(), Failure> {
    let json = flags.json;
    let client = &flags.client()?;
    let reply = match command {
        ClusterCommand::Members => client.leader_members().await?,
        ClusterCommand::Add {
            id,
            address,
            learner,
        } => {
            let (address, peer_address) =
                raftkv_server::config::parse_member_address(&address, "node address")
                    .map_err(Failure::Usage)?;
            client
                .add_node(id, &address, peer_address.as_deref(), learner)
                .await?
        }
        ClusterCommand::Promote { id } => client.promote_node(id).await?,
        ClusterCommand::Remove { id, force } => client.remove_node(id, force).await?,
        ClusterCommand::Change {
            add,
            remove,
            force,
            explicit_joint,
            leave_joint,
        } => {
            let mut adds = Vec::new();
            for item in &add {
                let (id, address) = item
                    .split_once('=')
                    .ok_or_else(|| Failure::Usage(format!("--add {item:?}: expected ID=ADDR")))?;
                let id = id
                    .parse()
                    .map_err(|_| Failure::Usage(format!("--add {item:?}: invalid id")))?;
                let (address, peer_address) =
                    raftkv_server::config::parse_member_address(address, "--add address")
                        .map_err(Failure::Usage)?;
                adds.push(pb::NodeAddress {
                    id,
                    address,
                    peer_address: peer_address.unwrap_or_default(),
                });
            }
            if adds.is_empty() && remove.is_empty() && !leave_joint {
                return Err(Failure::Usage(
                    "cluster change needs --add or --remove (or --leave-joint)".into(),
                ));
            }
            client
                .change_membership(pb::ChangeMembershipRequest {
                    add: adds,
                    remove,
                    force,
                    explicit_joint,
                    leave_joint,
                })
                .await?
        }
        ClusterCommand::TransferLeader { id } => {
            client.transfer_leader(id).await?;
            members_after_transfer(client).await?
        }
    };
    print_members(&reply, json)
}

fn print_object(value: &Value, json: bool) -> Result<(), Failure> {
    if json {
        print_json(value)?;
    } else if let Value::Object(map) = value {
        for (k, v) in map {
            outln!("{k}: {v}")?;
        }
    }
    Ok(())
}

pub async fn debug(flags: &ClientFlags, command: DebugCommand) -> Result<(), Failure> {
    let first = flags.endpoints.first().cloned().unwrap_or_default();
    let client = client_for(flags, &first)?;
    match command {
        DebugCommand::Raft => {
            let s = client
                .call_first_endpoint(|ch| async move {
                    Ok(DebugClient::new(ch)
                        .raft_state(pb::RaftStateRequest {})
                        .await?
                        .into_inner())
                })
                .await?;
            let progress: Vec<Value> = s
                .progress
                .iter()
                .map(|p| {
                    json!({"id": p.id, "match_index": p.match_index, "next_index": p.next_index,
                        "state": p.state, "paused": p.paused, "recent_active": p.recent_active,
                        "pending_snapshot": p.pending_snapshot})
                })
                .collect();
            print_object(
                &json!({"term": s.term, "vote": s.vote, "commit_index": s.commit_index,
                    "applied_index": s.applied_index, "leader_id": s.leader_id, "role": s.role,
                    "first_index": s.first_index, "last_index": s.last_index,
                    "voters": s.voters, "learners": s.learners, "voters_outgoing": s.voters_outgoing,
                    "progress": progress}),
                flags.json,
            )
        }
        DebugCommand::Storage => {
            let s = client
                .call_first_endpoint(|ch| async move {
                    Ok(DebugClient::new(ch)
                        .storage_state(pb::StorageStateRequest {})
                        .await?
                        .into_inner())
                })
                .await?;
            print_object(
                &json!({"first_index": s.first_index, "last_index": s.last_index,
                    "snapshot_index": s.snapshot_index, "snapshot_term": s.snapshot_term,
                    "snapshot_bytes": s.snapshot_bytes, "segments": s.segments,
                    "log_bytes": s.log_bytes, "disk_bytes": s.disk_bytes}),
                flags.json,
            )
        }
        DebugCommand::Snapshot => {
            let s = client
                .call_first_endpoint(|ch| async move {
                    Ok(DebugClient::new(ch)
                        .trigger_snapshot(pb::TriggerSnapshotRequest {})
                        .await?
                        .into_inner())
                })
                .await?;
            print_object(
                &json!({"snapshot_index": s.snapshot_index, "snapshot_bytes": s.snapshot_bytes}),
                flags.json,
            )
        }
        DebugCommand::Compact => {
            let s = client
                .call_first_endpoint(|ch| async move {
                    Ok(DebugClient::new(ch)
                        .compact(pb::CompactRequest {})
                        .await?
                        .into_inner())
                })
                .await?;
            print_object(
                &json!({"first_index": s.first_index, "segments_removed": s.segments_removed}),
                flags.json,
            )
        }
        DebugCommand::Check => debug_check(flags).await,
    }
}

/// One node's answer to `debug check`.
struct CheckAnswer {
    address: String,
    reply: Result<pb::CheckResponse, String>,
}

impl CheckAnswer {
    fn json(&self) -> Value {
        match &self.reply {
            Ok(c) => {
                let header = c.header.unwrap_or_default();
                json!({"address": self.address, "id": header.node_id,
                    "cluster_id": format!("{:016x}", header.cluster_id),
                    "applied_index": c.applied_index, "hash": format!("{:016x}", c.hash),
                    "keys": c.keys})
            }
            Err(e) => json!({"address": self.address, "error": e}),
        }
    }
}

/// The endpoints given and every member's address (as the first endpoint
/// that answers knows them), each once.
async fn check_targets(flags: &ClientFlags) -> Vec<String> {
    let mut targets: Vec<String> = flags.endpoints.clone();
    for endpoint in &flags.endpoints {
        let Ok(client) = client_for(flags, endpoint) else {
            continue;
        };
        if let Ok(members) = client.members().await {
            for m in members.members {
                if !targets.contains(&m.address) {
                    targets.push(m.address);
                }
            }
            break;
        }
    }
    targets
}

async fn check_round(flags: &ClientFlags, targets: &[String]) -> Vec<CheckAnswer> {
    let mut answers = Vec::new();
    for address in targets {
        let reply = match client_for(flags, address) {
            Ok(client) => client
                .call_first_endpoint(|ch| async move {
                    Ok(DebugClient::new(ch)
                        .check(pb::CheckRequest {})
                        .await?
                        .into_inner())
                })
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        answers.push(CheckAnswer {
            address: address.clone(),
            reply,
        });
    }
    answers
}

/// The verdict on one round: `Ok` when every node answered, all belong to one
/// cluster and hold the same state at the same applied index.
fn verdict(answers: &[CheckAnswer]) -> Result<String, String> {
    let unreachable: Vec<&str> = answers
        .iter()
        .filter(|a| a.reply.is_err())
        .map(|a| a.address.as_str())
        .collect();
    if !unreachable.is_empty() {
        return Err(format!("unreachable: {}", unreachable.join(", ")));
    }
    let replies: Vec<&pb::CheckResponse> = answers
        .iter()
        .filter_map(|a| a.reply.as_ref().ok())
        .collect();
    let cluster_of = |c: &pb::CheckResponse| c.header.as_ref().map_or(0, |h| h.cluster_id);
    let clusters: std::collections::BTreeSet<u64> = replies.iter().map(|c| cluster_of(c)).collect();
    if clusters.len() > 1 {
        let list: Vec<String> = answers
            .iter()
            .filter_map(|a| a.reply.as_ref().ok().map(|c| (a, c)))
            .map(|(a, c)| format!("{} in {:016x}", a.address, cluster_of(c)))
            .collect();
        return Err(format!(
            "MISMATCH: the nodes belong to different clusters ({})",
            list.join(", ")
        ));
    }
    let indexes: std::collections::BTreeSet<u64> =
        replies.iter().map(|c| c.applied_index).collect();
    if indexes.len() > 1 {
        return Err(format!(
            "cannot compare: the nodes are at different applied indexes ({}..{}); run it \
             again once writes pause",
            indexes.first().copied().unwrap_or(0),
            indexes.last().copied().unwrap_or(0)
        ));
    }
    let hashes: std::collections::BTreeSet<(u64, u64)> =
        replies.iter().map(|c| (c.hash, c.keys)).collect();
    let applied = indexes.first().copied().unwrap_or(0);
    if hashes.len() > 1 {
        return Err(format!(
            "MISMATCH: the nodes hold different states at applied index {applied}"
        ));
    }
    let (hash, keys) = hashes.first().copied().unwrap_or_default();
    Ok(format!(
        "consistent: {} node(s) of one cluster hold the same {keys} keys (hash {hash:016x}) \
         at applied index {applied}",
        replies.len()
    ))
}

/// `debug check`: asks every member (and every endpoint given) for the hash of
/// its state machine, until all stand at one applied index or `--timeout`
/// passes, and says whether they agree. Exits non-zero unless they do.
async fn debug_check(flags: &ClientFlags) -> Result<(), Failure> {
    let targets = check_targets(flags).await;
    let give_up = std::time::Instant::now() + flags.timeout;
    let (answers, outcome) = loop {
        let answers = check_round(flags, &targets).await;
        let outcome = verdict(&answers);
        let settling = matches!(&outcome, Err(e) if e.starts_with("cannot compare"));
        if !settling || std::time::Instant::now() >= give_up {
            break (answers, outcome);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let text = match &outcome {
        Ok(t) | Err(t) => t.clone(),
    };
    if flags.json {
        print_json(&json!({
            "consistent": outcome.is_ok(),
            "verdict": text,
            "nodes": answers.iter().map(CheckAnswer::json).collect::<Vec<_>>(),
        }))?;
    } else {
        outln!(
            "  {:<22} {:>4} {:<16} {:>13} {:<16} {:>8}",
            "address",
            "id",
            "cluster",
            "applied_index",
            "hash",
            "keys"
        )?;
        for answer in &answers {
            match &answer.reply {
                Ok(c) => {
                    let header = c.header.unwrap_or_default();
                    outln!(
                        "  {:<22} {:>4} {:016x} {:>13} {:016x} {:>8}",
                        answer.address,
                        header.node_id,
                        header.cluster_id,
                        c.applied_index,
                        c.hash,
                        c.keys
                    )?;
                }
                Err(e) => outln!("  {:<22} unreachable: {e}", answer.address)?,
            }
        }
        outln!("verdict: {text}")?;
    }
    outcome.map(|_| ()).map_err(Failure::Other)
}
