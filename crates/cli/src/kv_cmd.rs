//! `put`, `get`, `delete`, `scan`: thin wrappers over the client library.
//! Keys and values are taken as raw bytes (any bytes a command line can
//! carry); `--file`/`--out` carry any bytes at all, NUL included.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use bytes::Bytes;
use raftkv_client::{Consistency, ScanOptions};
use serde_json::{Map, Value};

use crate::args::{ConsistencyArg, DeleteArgs, GetArgs, PutArgs, ScanArgs};
use crate::failure::Failure;
use crate::output::{escaped, pair_json, print_json, put_bytes, with_revisions, write_stdout};
use crate::ClientFlags;

pub fn bytes_of(arg: &OsString) -> Bytes {
    Bytes::copy_from_slice(arg.as_bytes())
}

pub fn consistency(arg: ConsistencyArg) -> Consistency {
    match arg {
        ConsistencyArg::Linearizable => Consistency::Linearizable,
        ConsistencyArg::Lease => Consistency::Lease,
        ConsistencyArg::Stale => Consistency::Stale,
    }
}

fn read_value_file(path: &std::path::Path) -> Result<Bytes, Failure> {
    let mut value = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .read_to_end(&mut value)
            .map_err(|e| Failure::Other(format!("cannot read standard input: {e}")))?;
    } else {
        value = std::fs::read(path)
            .map_err(|e| Failure::Other(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(Bytes::from(value))
}

/// `{"ok": true, "op": OP, "key": KEY, ...}`: what a write printed under
/// `--json` (plain output prints nothing, as etcdctl's `put` prints only OK).
pub(crate) fn write_done(op: &str, key: &[u8], value_bytes: Option<usize>) -> Value {
    let mut object = Map::new();
    object.insert("ok".into(), Value::Bool(true));
    object.insert("op".into(), Value::String(op.into()));
    put_bytes(&mut object, "key", key);
    if let Some(n) = value_bytes {
        object.insert("value_bytes".into(), Value::from(n));
    }
    Value::Object(object)
}

pub async fn put(flags: &ClientFlags, args: PutArgs) -> Result<(), Failure> {
    let value = match (&args.file, &args.value) {
        (Some(path), _) => read_value_file(path)?,
        (None, Some(value)) => bytes_of(value),
        (None, None) => return Err(Failure::Usage("put needs a VALUE or --file PATH".into())),
    };
    let key = bytes_of(&args.key);
    let value_bytes = value.len();
    if args.if_version.is_some()
        || args.if_value.is_some()
        || args.if_absent
        || args.lease.is_some()
    {
        return crate::etcd_cmd::conditional_put(flags, &args, key, value).await;
    }
    flags.client()?.put(key.clone(), value).await?;
    if flags.json {
        print_json(&write_done("put", &key, Some(value_bytes)))?;
    }
    Ok(())
}

pub async fn get(flags: &ClientFlags, args: GetArgs) -> Result<(), Failure> {
    let key = bytes_of(&args.key);
    if let Some(revision) = args.rev {
        return crate::etcd_cmd::get_at(flags, key, revision).await;
    }
    let (value, revisions) = flags
        .client()?
        .get_revisions(key.clone(), consistency(args.consistency))
        .await?;
    let json = flags.json;
    if let Some(path) = &args.out {
        std::fs::write(path, &value)
            .map_err(|e| Failure::Other(format!("cannot write {}: {e}", path.display())))?;
        if json {
            let mut done = write_done("get", &key, Some(value.len()));
            done["out"] = Value::String(path.display().to_string());
            print_json(&done)?;
        }
    } else if json {
        print_json(&with_revisions(pair_json(&key, Some(&value)), &revisions))?;
    } else {
        write_stdout(&[&value, b"\n"])?;
    }
    Ok(())
}

pub async fn delete(flags: &ClientFlags, args: DeleteArgs) -> Result<(), Failure> {
    let key = bytes_of(&args.key);
    flags.client()?.delete(key.clone()).await?;
    if flags.json {
        print_json(&write_done("delete", &key, None))?;
    }
    Ok(())
}

pub async fn scan(flags: &ClientFlags, args: ScanArgs) -> Result<(), Failure> {
    let json = flags.json;
    if json && args.escape {
        return Err(Failure::Usage(
            "--escape and --json do not go together".into(),
        ));
    }
    let page = flags
        .client()?
        .scan(
            bytes_of(&args.prefix),
            ScanOptions {
                limit: args.limit,
                offset: args.offset,
                after: args.after.as_ref().map(bytes_of),
                keys_only: args.keys_only,
                consistency: consistency(args.consistency),
            },
        )
        .await?;
    for ((key, value), revisions) in page.pairs.iter().zip(&page.revisions) {
        if json {
            let pair = pair_json(key, (!args.keys_only).then_some(value));
            print_json(&with_revisions(pair, revisions))?;
        } else if args.escape && args.keys_only {
            write_stdout(&[escaped(key).as_bytes(), b"\n"])?;
        } else if args.escape {
            let line = format!("{}\t{}\n", escaped(key), escaped(value));
            write_stdout(&[line.as_bytes()])?;
        } else if args.keys_only {
            write_stdout(&[key, b"\n"])?;
        } else {
            write_stdout(&[key, b"\t", value, b"\n"])?;
        }
    }
    if page.more {
        if let Some(next) = &page.next_after {
            let cursor = if args.escape {
                escaped(next)
            } else {
                String::from_utf8_lossy(next).into_owned()
            };
            errln!("more: next page with --after {cursor}");
        }
    }
    Ok(())
}
