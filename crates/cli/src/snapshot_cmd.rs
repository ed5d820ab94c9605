//! `raftkv snapshot save|status|restore`: backups. `save` asks any member
//! for etcd's `Maintenance.Snapshot` stream (the leader takes the snapshot;
//! see the server's `etcd_cluster.rs`); `status` and `restore` read a file
//! only (`raftkv_server::backup`).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::SnapshotRequest;
use raftkv_server::backup::{BackupSummary, RestoreOptions};
use serde_json::json;

use crate::args::SnapshotCommand;
use crate::etcd_cmd::{channel, status_failure};
use crate::failure::Failure;
use crate::output::print_json;
use crate::ClientFlags;

/// How often progress is shown on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub async fn snapshot(flags: &ClientFlags, command: SnapshotCommand) -> Result<(), Failure> {
    match command {
        SnapshotCommand::Save { file } => save(flags, &file).await,
        SnapshotCommand::Status { file } => {
            let summary = read(file.clone()).await?;
            print_summary(flags, &file, &summary, None)
        }
        SnapshotCommand::Restore {
            file,
            data_dir,
            id,
            peers,
        } => {
            if id == 0 {
                return Err(Failure::Usage("--id must be 1 or more".into()));
            }
            let peers = peers
                .map(|p| raftkv_server::parse_peers(&p))
                .transpose()
                .map_err(Failure::Usage)?;
            if peers
                .as_ref()
                .is_some_and(|p| !p.addresses.contains_key(&id))
            {
                return Err(Failure::Usage(format!(
                    "--peers does not list this node's id {id}"
                )));
            }
            let (address, peer_address, members) = match &peers {
                Some(peers) => (
                    peers.addresses[&id].clone(),
                    peers.peer_listeners.get(&id).cloned(),
                    peers
                        .addresses
                        .iter()
                        .map(|(id, a)| match peers.peer_listeners.get(id) {
                            Some(peer) => format!("{id}={a}/{peer}"),
                            None => format!("{id}={a}"),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                None => ("HOST:PORT".to_string(), None, format!("{id} alone")),
            };
            let options = RestoreOptions {
                data_dir: data_dir.clone(),
                id,
                peers,
                address: raftkv_server::config::DEFAULT_LISTEN.to_string(),
            };
            let from = file.clone();
            let summary = tokio::task::spawn_blocking(move || {
                raftkv_server::backup::restore(&from, &options)
            })
            .await
            .map_err(|e| Failure::Other(format!("restore failed: {e}")))?
            .map_err(Failure::Other)?;
            let restored = Restored {
                dir: &data_dir,
                id,
                address,
                peer_address,
                members,
            };
            print_summary(flags, &file, &summary, Some(restored))
        }
    }
}

/// Reads and checks a backup off the async threads.
async fn read(file: PathBuf) -> Result<BackupSummary, Failure> {
    tokio::task::spawn_blocking(move || raftkv_server::backup::read_backup(&file))
        .await
        .map_err(|e| Failure::Other(format!("reading the backup failed: {e}")))?
        .map(|(summary, _)| summary)
        .map_err(Failure::Other)
}

/// `snapshot save FILE`: the stream into FILE.part, synced, checked, and
/// renamed to FILE.
async fn save(flags: &ClientFlags, file: &Path) -> Result<(), Failure> {
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut maintenance =
        MaintenanceClient::new(channel(flags).await?).max_decoding_message_size(16 << 20);
    // --timeout bounds waiting for the backup to start (through an
    // election, say), not its transfer.
    let give_up = tokio::time::Instant::now() + flags.timeout;
    let mut stream = loop {
        let started = tokio::time::timeout_at(
            give_up,
            maintenance.snapshot(tonic::Request::new(SnapshotRequest {})),
        )
        .await
        .map_err(|_| {
            Failure::Other(format!(
                "timeout: the backup did not start within {:?}",
                flags.timeout
            ))
        })?;
        match started {
            Ok(reply) => break reply.into_inner(),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() + Duration::from_millis(200) < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => return Err(status_failure(status)),
        }
    };
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&part)
            .map_err(|e| Failure::Other(format!("cannot create {}: {e}", part.display())))?,
    );
    let write_error =
        |e: std::io::Error| Failure::Other(format!("cannot write {}: {e}", part.display()));
    let terminal = std::io::stderr().is_terminal();
    let mut received = 0u64;
    let mut shown = Instant::now();
    let mut complete = false;
    while let Some(chunk) = stream.message().await.map_err(status_failure)? {
        out.write_all(&chunk.blob).map_err(write_error)?;
        received += chunk.blob.len() as u64;
        let total = received + chunk.remaining_bytes;
        if terminal && shown.elapsed() >= PROGRESS_EVERY {
            eprint!("\rsaving: {received} of {total} bytes");
            shown = Instant::now();
        }
        complete = chunk.remaining_bytes == 0;
    }
    if terminal {
        eprint!("\r\x1b[K");
    }
    if !complete {
        let _ = std::fs::remove_file(&part);
        return Err(Failure::Other(format!(
            "the backup stream ended after {received} bytes, before the end of the snapshot; \
             nothing was saved"
        )));
    }
    let file_handle = out.into_inner().map_err(|e| write_error(e.into_error()))?;
    file_handle.sync_all().map_err(write_error)?;
    drop(file_handle);
    // Checked before it takes the name: a damaged transfer never does.
    let summary = match read(part.clone()).await {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, file).map_err(|e| {
        Failure::Other(format!(
            "cannot rename {} to {}: {e}",
            part.display(),
            file.display()
        ))
    })?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    if !flags.json {
        println!("Snapshot saved at {}", file.display());
    }
    print_summary(flags, file, &summary, None)
}

/// Where a restore put a backup.
struct Restored<'a> {
    dir: &'a Path,
    id: u64,
    /// Where the node is to listen (its --peers entry), and its separate
    /// peer listener, if it has one.
    address: String,
    peer_address: Option<String>,
    /// The new cluster's members, as --peers gave them.
    members: String,
}

/// What a backup holds (and, after a restore, where it went).
fn print_summary(
    flags: &ClientFlags,
    file: &Path,
    s: &BackupSummary,
    restored: Option<Restored<'_>>,
) -> Result<(), Failure> {
    let members: Vec<String> = s
        .members
        .iter()
        .map(|(id, address)| format!("{id}={address}"))
        .collect();
    if flags.json {
        let mut value = json!({
            "file": file.display().to_string(),
            "index": s.index,
            "term": s.term,
            "revision": s.revision,
            "keys": s.keys,
            "leases": s.leases,
            "bytes": s.bytes,
            "hash": format!("{:016x}", s.hash),
            "cluster_id": format!("{:016x}", s.cluster_id),
            "members": members,
        });
        if let Some(r) = restored {
            value["data_dir"] = json!(r.dir.display().to_string());
            value["id"] = json!(r.id);
            value["new_members"] = json!(r.members);
        }
        return print_json(&value);
    }
    if let Some(r) = restored {
        let listen_peer = r
            .peer_address
            .as_ref()
            .map(|peer| format!(" --listen-peer {peer}"))
            .unwrap_or_default();
        println!(
            "restored {} into {} as node {} of a new cluster (members {}); start it with \
             `raftkv server --data-dir {} --listen {}{listen_peer}` (or listen elsewhere and \
             advertise these addresses). The backup held:",
            file.display(),
            r.dir.display(),
            r.id,
            r.members,
            r.dir.display(),
            r.address
        );
    }
    println!("index:      {} (term {})", s.index, s.term);
    println!("revision:   {}", s.revision);
    println!("keys:       {}", s.keys);
    println!("leases:     {}", s.leases);
    println!("size:       {} bytes", s.bytes);
    println!("hash:       {:016x}", s.hash);
    println!("cluster id: {:016x}", s.cluster_id);
    println!("members:    {}", members.join(","));
    Ok(())
}
