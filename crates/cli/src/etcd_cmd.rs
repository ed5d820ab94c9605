//! `watch`, `compact` and `get --rev`: served through the node's etcd API
//! (the same port), which any member answers — a member that does not lead
//! forwards what must go to the leader.

use bytes::Bytes;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::etcdserverpb::{
    watch_request, CompactionRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use raftkv_proto::mvccpb::event::EventType;
use serde_json::{Map, Value};
use tonic::transport::Channel;

use crate::args::{CompactArgs, WatchArgs};
use crate::failure::Failure;
use crate::kv_cmd::bytes_of;
use crate::output::{pair_json, print_json, put_bytes, with_revisions, write_stdout};
use crate::ClientFlags;

/// A channel to the first endpoint that accepts a connection.
async fn channel(flags: &ClientFlags) -> Result<Channel, Failure> {
    let mut errors = Vec::new();
    for endpoint in &flags.endpoints {
        let url = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        let endpoint_config = Channel::from_shared(url)
            .map_err(|e| Failure::Usage(format!("endpoint {endpoint}: {e}")))?
            .connect_timeout(flags.timeout);
        match endpoint_config.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => errors.push(format!("{endpoint}: {e}")),
        }
    }
    Err(Failure::Other(format!(
        "unavailable: cannot reach {}",
        errors.join("; ")
    )))
}

fn status_failure(status: tonic::Status) -> Failure {
    Failure::Other(status.message().to_string())
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

/// The end of the range of keys starting with `prefix` (etcd's).
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// `watch KEY [--prefix] [--rev N]`: until interrupted or the stream ends.
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
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: if key.is_empty() {
                    Bytes::from_static(b"\0")
                } else {
                    key
                },
                range_end,
                start_revision: args.rev.unwrap_or(0) as i64,
                ..Default::default()
            },
        )),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(create).await.expect("the channel is open");
    let mut stream = WatchClient::new(channel(flags).await?)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status_failure)?
        .into_inner();
    while let Some(response) = stream.message().await.map_err(status_failure)? {
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
        }
    }
    drop(tx);
    Ok(())
}
