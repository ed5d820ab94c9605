//! `put`, `get`, `delete`, `scan`: thin wrappers over the client library.
//! Keys and values are taken as raw bytes (any bytes a command line can
//! carry); `--file`/`--out` carry any bytes at all, NUL included.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use bytes::Bytes;
use raftkv_client::{Client, Consistency, ScanOptions};

use crate::args::{ConsistencyArg, DeleteArgs, GetArgs, PutArgs, ScanArgs};
use crate::failure::Failure;
use crate::output::{pair_json, print_json, write_stdout};

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

pub async fn put(client: &Client, args: PutArgs) -> Result<(), Failure> {
    let value = match (&args.file, &args.value) {
        (Some(path), _) => read_value_file(path)?,
        (None, Some(value)) => bytes_of(value),
        (None, None) => return Err(Failure::Usage("put needs a VALUE or --file PATH".into())),
    };
    client.put(bytes_of(&args.key), value).await?;
    Ok(())
}

pub async fn get(client: &Client, args: GetArgs, json: bool) -> Result<(), Failure> {
    let key = bytes_of(&args.key);
    let value = client
        .get_with(key.clone(), consistency(args.consistency))
        .await?;
    if let Some(path) = &args.out {
        std::fs::write(path, &value)
            .map_err(|e| Failure::Other(format!("cannot write {}: {e}", path.display())))?;
    } else if json {
        print_json(&pair_json(&key, Some(&value)))?;
    } else {
        write_stdout(&[&value, b"\n"])?;
    }
    Ok(())
}

pub async fn delete(client: &Client, args: DeleteArgs) -> Result<(), Failure> {
    client.delete(bytes_of(&args.key)).await?;
    Ok(())
}

pub async fn scan(client: &Client, args: ScanArgs, json: bool) -> Result<(), Failure> {
    let page = client
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
    for (key, value) in &page.pairs {
        if json {
            print_json(&pair_json(key, (!args.keys_only).then_some(value)))?;
        } else if args.keys_only {
            write_stdout(&[key, b"\n"])?;
        } else {
            write_stdout(&[key, b"\t", value, b"\n"])?;
        }
    }
    if page.more {
        if let Some(next) = &page.next_after {
            eprintln!(
                "more: next page with --after {}",
                String::from_utf8_lossy(next)
            );
        }
    }
    Ok(())
}
