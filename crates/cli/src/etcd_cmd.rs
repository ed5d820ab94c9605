//! `watch`, `compact` and `get --rev`: served through the node's etcd API
//! (the same port), which any member answers — a member that does not lead
//! forwards what must go to the leader.

use bytes::Bytes;
use raftkv_client::prefix_end;
use raftkv_client::Channel;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::etcdserverpb::{
    watch_request, CompactionRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use raftkv_proto::mvccpb::event::EventType;
use serde_json::{Map, Value};
use tonic::transport::Channel as RawChannel;

use crate::args::{CompactArgs, WatchArgs};
use crate::failure::Failure;
use crate::kv_cmd::bytes_of;
use crate::output::{pair_json, print_json, put_bytes, with_revisions, write_stdout};
use crate::ClientFlags;

/// A channel to the first endpoint that accepts a connection.
pub(crate) async fn channel(flags: &ClientFlags) -> Result<Channel, Failure> {
    Ok(channel_from(flags, 0).await?.0)
}

/// A channel to the first endpoint that answers, trying them in order from
/// the `first`-th (wrapping around), and the index of the one it reached.
async fn channel_from(flags: &ClientFlags, first: usize) -> Result<(Channel, usize), Failure> {
    let mut errors = Vec::new();
    let count = flags.endpoints.len();
    for index in (first..first + count).map(|i| i % count) {
        let endpoint = &flags.endpoints[index];
        let endpoint_config = RawChannel::from_shared(format!("http://{endpoint}"))
            .map_err(|e| Failure::Usage(format!("endpoint {endpoint}: {e}")))?
            .connect_timeout(flags.timeout);
        match endpoint_config
            .connect_with_connector(raftkv_net::connector(flags.tls.clone()))
            .await
        {
            Ok(channel) => return Ok((Channel::new(channel, flags.token().await?), index)),
            Err(e) => errors.push(format!("{endpoint}: {e}")),
        }
    }
    Err(Failure::Other(format!(
        "unavailable: cannot reach {}",
        errors.join("; ")
    )))
}

/// `message` as a request bounded by `--timeout`.
pub(crate) fn timed<T>(flags: &ClientFlags, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(flags.timeout);
    request
}

/// A refusal for want of a user or of a permission: every member would
/// answer the same, so it is final.
fn is_auth_refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    ) || status.message() == USER_EMPTY
}

const USER_EMPTY: &str = "etcdserver: user name is empty";

/// An etcd API error as the CLI reports it: auth refusals with their kind
/// and, for a missing user, what to do about it.
pub(crate) fn status_failure(status: tonic::Status) -> Failure {
    let message = status.message().to_string();
    if message == USER_EMPTY {
        return Failure::Client(raftkv_client::Error::Unauthenticated(format!(
            "authentication required: auth is enabled and the request names no user (give \
             --user NAME, or a client certificate whose CN is a user) ({message})"
        )));
    }
    match status.code() {
        tonic::Code::PermissionDenied => {
            Failure::Client(raftkv_client::Error::PermissionDenied(message))
        }
        tonic::Code::Unauthenticated => {
            Failure::Client(raftkv_client::Error::Unauthenticated(message))
        }
        _ if message.ends_with("invalid auth management") => Failure::Other(format!(
            "{message} (while auth is on, user root keeps role root and neither can be \
             deleted)"
        )),
        _ => Failure::Other(message),
    }
}

/// `get KEY --rev N`: the key as of revision N.
pub async fn get_at(flags: &ClientFlags, key: Bytes, revision: u64) -> Result<(), Failure> {
    let mut kv = KvClient::new(channel(flags).await?);
    let mut request = tonic::Request::new(RangeRequest {
        key: key.clone(),
        revision: revision as i64,
        ..Default::default()
    });
    request.set_timeout(flags.timeout);
    let reply = kv
        .range(request)
        .await
        .map_err(status_failure)?
        .into_inner();
    let Some(found) = reply.kvs.first() else {
        return Err(Failure::NotFound);
    };
    if flags.json {
        let revisions = raftkv_client::KeyRevisions {
            create_revision: found.create_revision as u64,
            mod_revision: found.mod_revision as u64,
            version: found.version as u64,
            lease: found.lease as u64,
        };
        print_json(&with_revisions(
            pair_json(&key, Some(&found.value)),
            &revisions,
        ))
    } else {
        write_stdout(&[&found.value, b"\n"])
    }
}

/// `compact REV`.
pub async fn compact(flags: &ClientFlags, args: CompactArgs) -> Result<(), Failure> {
    let mut kv = KvClient::new(channel(flags).await?);
    let mut request = tonic::Request::new(CompactionRequest {
        revision: args.rev as i64,
        physical: false,
    });
    request.set_timeout(flags.timeout);
    kv.compact(request).await.map_err(status_failure)?;
    if flags.json {
        let mut object = Map::new();
        object.insert("ok".into(), Value::Bool(true));
        object.insert("op".into(), Value::String("compact".into()));
        object.insert("revision".into(), Value::from(args.rev));
        print_json(&Value::Object(object))?;
    }
    Ok(())
}

/// `watch KEY [--prefix] [--rev N]`: until interrupted, moving to the next
/// endpoint when a member fails.
pub async fn watch(flags: &ClientFlags, args: WatchArgs) -> Result<(), Failure> {
    let key = bytes_of(&args.key);
    if key.is_empty() && !args.prefix {
        return Err(Failure::Usage(
            "watch needs a KEY (or --prefix \"\" for every key)".into(),
        ));
    }
    let range_end = if args.prefix {
        prefix_end(&key)
    } else {
        Bytes::new()
    };
    let key = if key.is_empty() {
        Bytes::from_static(b"\0")
    } else {
        key
    };
    // The next revision to print (0: changes after now). When the member
    // streaming fails, loses its leader or ends the stream, the watch is
    // opened again on the next endpoint from there: nothing is missed or
    // printed twice.
    let mut next = args.rev.unwrap_or(0) as i64;
    let mut at = 0;
    let mut fruitless = 0;
    loop {
        let (channel, used) = channel_from(flags, at).await?;
        let (ended, answered) = watch_on(flags, channel, &key, &range_end, &mut next).await?;
        // Every endpoint failing again and again without a response is not
        // a member going away: stop and say why.
        fruitless = if answered { 0 } else { fruitless + 1 };
        if fruitless >= 3 * flags.endpoints.len() {
            return Err(Failure::Other(format!("watch failed: {ended}")));
        }
        eprintln!(
            "watch: the stream from {} ended ({ended}); resuming from revision {next} on the next endpoint",
            flags.endpoints[used]
        );
        at = used + 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Prints the changes one watch stream on `channel` delivers from revision
/// `next` on, moving `next` past each; returns why the stream ended and
/// whether the member answered at all (a cancel or a local failure is an
/// error).
async fn watch_on(
    flags: &ClientFlags,
    channel: Channel,
    key: &Bytes,
    range_end: &Bytes,
    next: &mut i64,
) -> Result<(String, bool), Failure> {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: key.clone(),
                range_end: range_end.clone(),
                start_revision: *next,
                ..Default::default()
            },
        )),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(create).await.expect("the channel is open");
    // etcd's `hasleader`: a member cut off from its leader ends the stream,
    // so the watch moves to one that still hears the cluster.
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut stream = match WatchClient::new(channel).watch(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) if is_auth_refusal(&status) => return Err(status_failure(status)),
        Err(status) => return Ok((status.message().to_string(), false)),
    };
    let mut answered = false;
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(("closed by the server".into(), answered)),
            Err(status) if is_auth_refusal(&status) => return Err(status_failure(status)),
            Err(status) => return Ok((status.message().to_string(), answered)),
        };
        answered = true;
        if response.created && *next == 0 {
            // From now: the revision after the one the watch was created at.
            *next = response.header.as_ref().map_or(0, |h| h.revision) + 1;
        }
        if response.canceled {
            let why = if response.compact_revision > 0 {
                format!(
                    "watch canceled: {} (the oldest revision served is {})",
                    response.cancel_reason, response.compact_revision
                )
            } else {
                format!("watch canceled: {}", response.cancel_reason)
            };
            return Err(Failure::Other(why));
        }
        for event in response.events {
            let kv = event.kv.unwrap_or_default();
            let put = event.r#type == EventType::Put as i32;
            if flags.json {
                let mut object = Map::new();
                object.insert(
                    "type".into(),
                    Value::String(if put { "PUT" } else { "DELETE" }.into()),
                );
                put_bytes(&mut object, "key", &kv.key);
                if put {
                    put_bytes(&mut object, "value", &kv.value);
                }
                object.insert("mod_revision".into(), Value::from(kv.mod_revision));
                print_json(&Value::Object(object))?;
            } else if put {
                write_stdout(&[b"PUT\t", &kv.key, b"\t", &kv.value, b"\n"])?;
            } else {
                write_stdout(&[b"DELETE\t", &kv.key, b"\n"])?;
            }
            *next = (*next).max(kv.mod_revision + 1);
        }
    }
}

fn lease_id(text: &str) -> Result<i64, Failure> {
    let digits = text.trim_start_matches("0x");
    let id = u64::from_str_radix(digits, 16)
        .map_err(|_| Failure::Usage(format!("lease id {text:?}: expected a hex id")))?;
    i64::try_from(id).ok().filter(|id| *id > 0).ok_or_else(|| {
        Failure::Usage(format!(
            "lease id {text:?}: out of range (lease ids run from 1 to 7fffffffffffffff)"
        ))
    })
}

/// `put KEY VALUE --if-version N | --if-value V | --if-absent | --lease ID`:
/// one etcd transaction; exit 1 when the condition does not hold.
pub async fn conditional_put(
    flags: &ClientFlags,
    args: &crate::args::PutArgs,
    key: Bytes,
    value: Bytes,
) -> Result<(), Failure> {
    use raftkv_proto::etcdserverpb::{
        compare, request_op, Compare, PutRequest, RequestOp, TxnRequest,
    };
    let condition = |target: compare::CompareTarget, union: compare::TargetUnion| Compare {
        result: compare::CompareResult::Equal as i32,
        target: target as i32,
        key: key.clone(),
        target_union: Some(union),
        range_end: Bytes::new(),
    };
    let mut compares = Vec::new();
    if let Some(version) = args.if_version {
        compares.push(condition(
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(version as i64),
        ));
    }
    if let Some(expected) = &args.if_value {
        compares.push(condition(
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(bytes_of(expected)),
        ));
    }
    if args.if_absent {
        compares.push(condition(
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(0),
        ));
    }
    let lease = args
        .lease
        .as_deref()
        .map(lease_id)
        .transpose()?
        .unwrap_or(0);
    let value_bytes = value.len();
    let txn = TxnRequest {
        compare: compares,
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                lease,
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    };
    let mut request = tonic::Request::new(txn);
    request.set_timeout(flags.timeout);
    let mut kv = KvClient::new(channel(flags).await?);
    let reply = kv.txn(request).await.map_err(status_failure)?.into_inner();
    if !reply.succeeded {
        return Err(Failure::ConditionFailed(
            "not written: the condition did not hold".into(),
        ));
    }
    if flags.json {
        let mut done = crate::kv_cmd::write_done("put", &key, Some(value_bytes));
        let revision = reply.header.map_or(0, |h| h.revision);
        done["revision"] = Value::from(revision);
        print_json(&done)?;
    }
    Ok(())
}

/// `lease grant | keep-alive | revoke | list | ttl`.
pub async fn lease(flags: &ClientFlags, command: crate::args::LeaseCommand) -> Result<(), Failure> {
    use crate::args::LeaseCommand;
    use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
    use raftkv_proto::etcdserverpb::{
        LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
        LeaseTimeToLiveRequest,
    };
    let mut leases = LeaseClient::new(channel(flags).await?);
    let say = |text: String, json: Value| {
        if flags.json {
            print_json(&json)
        } else {
            write_stdout(&[text.as_bytes(), b"\n"])
        }
    };
    match command {
        LeaseCommand::Grant { ttl } => {
            let reply = leases
                .lease_grant(timed(
                    flags,
                    LeaseGrantRequest {
                        ttl: ttl as i64,
                        id: 0,
                    },
                ))
                .await
                .map_err(status_failure)?
                .into_inner();
            say(
                format!("lease {:x} granted with TTL({}s)", reply.id, reply.ttl),
                serde_json::json!({"id": format!("{:x}", reply.id), "ttl": reply.ttl}),
            )
        }
        LeaseCommand::Revoke { id } => {
            let id = lease_id(&id)?;
            leases
                .lease_revoke(timed(flags, LeaseRevokeRequest { id }))
                .await
                .map_err(status_failure)?;
            say(
                format!("lease {id:x} revoked"),
                serde_json::json!({"ok": true, "op": "revoke", "id": format!("{id:x}")}),
            )
        }
        LeaseCommand::List => {
            let reply = leases
                .lease_leases(timed(flags, LeaseLeasesRequest {}))
                .await
                .map_err(status_failure)?
                .into_inner();
            for lease in reply.leases {
                say(
                    format!("{:x}", lease.id),
                    serde_json::json!({"id": format!("{:x}", lease.id)}),
                )?;
            }
            Ok(())
        }
        LeaseCommand::Ttl { id, keys } => {
            let id = lease_id(&id)?;
            let reply = leases
                .lease_time_to_live(timed(flags, LeaseTimeToLiveRequest { id, keys }))
                .await
                .map_err(status_failure)?
                .into_inner();
            if reply.ttl < 0 {
                return Err(Failure::LeaseNotFound(id));
            }
            let names: Vec<String> = reply
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            say(
                format!(
                    "lease {id:x}: {}s left of {}s{}",
                    reply.ttl,
                    reply.granted_ttl,
                    if keys {
                        format!(", keys [{}]", names.join(", "))
                    } else {
                        String::new()
                    }
                ),
                serde_json::json!({"id": format!("{id:x}"), "ttl": reply.ttl,
                    "granted_ttl": reply.granted_ttl, "keys": names}),
            )
        }
        LeaseCommand::KeepAlive { id } => {
            let id = lease_id(&id)?;
            // Through the first endpoint that answers; when its member fails,
            // through the next one, until the lease could have expired.
            let mut at = 0;
            let mut renewed: Option<(std::time::Instant, i64)> = None;
            let mut tries = 0;
            loop {
                let (channel, used) = channel_from(flags, at).await?;
                // The first request is queued before the call is awaited:
                // etcd sends the stream's headers only with its first reply.
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(LeaseKeepAliveRequest { id })
                    .await
                    .expect("the channel is open");
                let stream = LeaseClient::new(channel)
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await;
                let ended = match stream {
                    Err(status) => status.message().to_string(),
                    Ok(stream) => {
                        let mut replies = stream.into_inner();
                        loop {
                            let reply = match replies.message().await {
                                Ok(Some(reply)) => reply,
                                Ok(None) => break "closed by the server".to_string(),
                                Err(status) => break status.message().to_string(),
                            };
                            if reply.ttl <= 0 {
                                return Err(Failure::LeaseNotFound(id));
                            }
                            renewed = Some((std::time::Instant::now(), reply.ttl));
                            say(
                                format!("lease {id:x} kept alive with TTL({}s)", reply.ttl),
                                serde_json::json!({"id": format!("{id:x}"), "ttl": reply.ttl}),
                            )?;
                            // Renew at a third of the TTL, as etcd's clients do.
                            tokio::time::sleep(std::time::Duration::from_millis(
                                reply.ttl as u64 * 1000 / 3,
                            ))
                            .await;
                            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                                break "the stream closed".to_string();
                            }
                        }
                    }
                };
                tries += 1;
                let in_time = match renewed {
                    Some((at_time, ttl)) => at_time.elapsed().as_secs() < ttl as u64,
                    // Not renewed yet: each endpoint gets its try.
                    None => tries < flags.endpoints.len(),
                };
                if !in_time {
                    return Err(Failure::Other(format!(
                        "lease {id:x}: keep-alive through {} failed ({ended}) and the lease was not renewed within its TTL",
                        flags.endpoints[used]
                    )));
                }
                eprintln!(
                    "lease keep-alive: the stream through {} ended ({ended}); going on through the next endpoint",
                    flags.endpoints[used]
                );
                at = used + 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// `alarm list|disarm` (etcd's Maintenance.Alarm).
pub async fn alarm(flags: &ClientFlags, command: crate::args::AlarmCommand) -> Result<(), Failure> {
    use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use raftkv_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
    let (action, alarm) = match command {
        crate::args::AlarmCommand::List => (AlarmAction::Get, AlarmType::None),
        crate::args::AlarmCommand::Disarm => (AlarmAction::Deactivate, AlarmType::Nospace),
    };
    let request = AlarmRequest {
        action: action as i32,
        member_id: 0,
        alarm: alarm as i32,
    };
    let reply = MaintenanceClient::new(channel(flags).await?)
        .alarm(timed(flags, request))
        .await
        .map_err(status_failure)?
        .into_inner();
    let kind = |alarm: i32| {
        AlarmType::try_from(alarm)
            .map(|a| a.as_str_name().to_string())
            .unwrap_or_else(|_| alarm.to_string())
    };
    if flags.json {
        let alarms: Vec<Value> = reply
            .alarms
            .iter()
            .map(|a| serde_json::json!({"member_id": a.member_id, "alarm": kind(a.alarm)}))
            .collect();
        return print_json(&serde_json::json!({ "alarms": alarms }));
    }
    for a in &reply.alarms {
        println!("memberID:{} alarm:{}", a.member_id, kind(a.alarm));
    }
    Ok(())
}
