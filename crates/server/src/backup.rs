//! Backups: a snapshot file streamed by `Maintenance.Snapshot` (RaftKV's
//! snapshot format: per-record and whole-file CRC32C), what
//! `raftkv snapshot status` reads from one, and `raftkv snapshot restore`,
//! which makes from one the data dir of a member of a new cluster.
//!
//! A restored member holds exactly the backup's keys, revisions, history,
//! leases and users, at the backup's index and term; its membership comes
//! from the restore's flags, and the state forgets the old cluster's id, so
//! the new cluster's first leader chooses a new one (and the old members,
//! should they come back, are told apart from the new ones).

use std::collections::BTreeMap;
use std::path::Path;

use raftkv_kv::{KvState, SessionLimits};
use raftkv_storage::{
    FileStorage, MembershipRecord, NodeIdentity, SnapshotReader, SnapshotStore, StorageOptions,
};

use crate::config::Peers;

/// What etcd clients (`etcdctl snapshot save`) check of a snapshot stream:
/// it ends with a SHA-256 of what precedes it, 32 bytes past a multiple of
/// 512. A backup stream is the snapshot file, zeros up to 8 bytes before
/// such a boundary, the file's length (u64, LE), and the SHA-256 of all of
/// that: [`backup_tail`].
const BLOCK_BYTES: u64 = 512;
const HASH_BYTES: u64 = 32;

/// Bytes a backup stream carries after a snapshot file of `file_len` bytes.
pub fn tail_len(file_len: u64) -> u64 {
    let padding = (BLOCK_BYTES - (file_len + 8) % BLOCK_BYTES) % BLOCK_BYTES;
    padding + 8 + HASH_BYTES
}

/// The tail of a backup stream whose snapshot file is `file_len` bytes,
/// given `hasher` fed with those bytes.
pub fn backup_tail(file_len: u64, mut hasher: sha2::Sha256) -> Vec<u8> {
    use sha2::Digest as _;
    let mut tail = vec![0u8; (tail_len(file_len) - 8 - HASH_BYTES) as usize];
    tail.extend_from_slice(&file_len.to_le_bytes());
    hasher.update(&tail);
    tail.extend_from_slice(&hasher.finalize());
    tail
}

/// The length of the snapshot in a backup file: a stream saved whole (by
/// `raftkv snapshot save` or `etcdctl snapshot save`) carries a tail, which
/// is checked (its SHA-256) and left out; any other file is a bare snapshot
/// file (whose own checksums the reader checks). A tail whose length fits
/// but whose SHA-256 does not is a damaged file.
fn snapshot_len(path: &Path) -> Result<u64, String> {
    use sha2::Digest as _;
    use std::io::{Read as _, Seek as _};
    let io = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size % BLOCK_BYTES != HASH_BYTES || size < BLOCK_BYTES + HASH_BYTES {
        return Ok(size);
    }
    let body = size - HASH_BYTES;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut left = body;
    while left > 0 {
        let n = buffer.len().min(left as usize);
        file.read_exact(&mut buffer[..n]).map_err(io)?;
        hasher.update(&buffer[..n]);
        left -= n as u64;
    }
    let mut tail = [0u8; (8 + HASH_BYTES) as usize];
    file.seek(std::io::SeekFrom::Start(body - 8)).map_err(io)?;
    file.read_exact(&mut tail).map_err(io)?;
    let len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
    if len.checked_add(tail_len(len)) != Some(size) {
        return Ok(size);
    }
    if hasher.finalize()[..] != tail[8..] {
        return Err(format!(
            "{} is damaged: the SHA-256 it ends with does not match its contents (the file \
             changed after it was saved)",
            path.display()
        ));
    }
    Ok(len)
}

/// What a backup holds.
#[derive(Clone, Debug)]
pub struct BackupSummary {
    pub index: u64,
    pub term: u64,
    /// The store revision (etcd's).
    pub revision: u64,
    pub keys: u64,
    pub leases: u64,
    /// The file's size.
    pub bytes: u64,
    /// The state's content hash, as `raftkv debug check` compares it.
    pub hash: u64,
    /// The cluster it was taken from (0: none chosen yet).
    pub cluster_id: u64,
    /// The members at the backup's index: id -> address.
    pub members: BTreeMap<u64, String>,
    /// The highest node id the old cluster ever used (a restored cluster
    /// never gives one out again).
    pub max_node_id: u64,
}

/// Reads and checks a whole backup: every record's and the file's checksum,
/// and the state it decodes to. An error says what is wrong with the file.
pub fn read_backup(path: &Path) -> Result<(BackupSummary, KvState), String> {
    let bytes = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    let len = snapshot_len(path)?;
    let mut reader = SnapshotReader::open_file(path, Some(len))
        .map_err(|e| format!("{} is not a usable RaftKV backup: {e}", path.display()))?;
    let meta = reader.meta();
    let (state, membership) =
        KvState::restore_snapshot(SessionLimits::default(), || reader.next_record())
            .map_err(|e| format!("{} is not a usable RaftKV backup: {e}", path.display()))?;
    let membership = MembershipRecord::decode(&membership)
        .map_err(|e| format!("{}: its membership does not decode: {e}", path.display()))?;
    if state.applied_index() != meta.index {
        return Err(format!(
            "{}: the file's header says index {} but its state is at {}",
            path.display(),
            meta.index,
            state.applied_index()
        ));
    }
    let summary = BackupSummary {
        index: meta.index,
        term: meta.term,
        revision: state.revision(),
        keys: state.len() as u64,
        leases: state.leases().count() as u64,
        bytes,
        hash: state.content_hash(),
        cluster_id: state.cluster_id(),
        members: membership.addresses.clone(),
        max_node_id: membership.max_node_id,
    };
    Ok((summary, state))
}

/// Where a restored member goes.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Must not exist, or be empty.
    pub data_dir: std::path::PathBuf,
    pub id: u64,
    /// The new cluster's members (each restored from the same backup); for a
    /// single node, `None`: it is recorded at `address`, which its first
    /// start corrects to its `--listen` (or `--advertise`).
    pub peers: Option<Peers>,
    pub address: String,
}

/// Writes the data dir of member `options.id` of a new cluster holding the
/// backup at `path`. Returns what the backup held.
pub fn restore(path: &Path, options: &RestoreOptions) -> Result<BackupSummary, String> {
    let (summary, mut state) = read_backup(path)?;
    let dir = &options.data_dir;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!(
            "data dir {} is not empty: a backup is restored into a new data dir",
            dir.display()
        ));
    }
    let peers = match &options.peers {
        Some(peers) => peers.clone(),
        None => Peers {
            addresses: [(options.id, options.address.clone())].into(),
            peer_listeners: BTreeMap::new(),
        },
    };
    if !peers.addresses.contains_key(&options.id) {
        return Err(format!(
            "--peers does not list this node's id {}",
            options.id
        ));
    }
    state.forget_cluster_id();
    let membership = MembershipRecord {
        index: summary.index,
        conf_state: raft::eraftpb::ConfState {
            voters: peers.addresses.keys().copied().collect(),
            ..Default::default()
        },
        addresses: peers.addresses.clone(),
        peer_addresses: peers.peer_listeners.clone(),
        max_node_id: peers
            .addresses
            .keys()
            .max()
            .copied()
            .unwrap_or(0)
            .max(summary.max_node_id),
    };
    let identity = NodeIdentity {
        node_id: options.id,
        cluster_id: 0,
        bootstrap_id: restored_bootstrap_id(&peers, &summary),
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    let written = (|| -> Result<(), String> {
        let snapshots = SnapshotStore::open(dir).map_err(|e| e.to_string())?;
        let meta = raftkv_storage::SnapshotMeta {
            index: summary.index,
            term: summary.term,
        };
        let mut writer = snapshots.create(meta).map_err(|e| e.to_string())?;
        state
            .write_snapshot(&membership.encode(), |record| writer.write_record(record))
            .map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
        let mut storage =
            FileStorage::open(dir, StorageOptions::default()).map_err(|e| e.to_string())?;
        storage
            .bootstrap_from_snapshot(identity, meta, membership)
            .map_err(|e| e.to_string())
    })();
    if let Err(e) = written {
        // Nothing half-made is left to be started by mistake.
        let _ = std::fs::remove_dir_all(dir);
        return Err(format!("cannot restore into {}: {e}", dir.display()));
    }
    Ok(summary)
}

/// The bootstrap id of a cluster restored from a backup: its member list,
/// and which backup (the old cluster and the index), so that every member
/// restored with the same flags from the same file agrees, and no other
/// cluster started with those flags does.
fn restored_bootstrap_id(peers: &Peers, backup: &BackupSummary) -> u64 {
    let mut marked = peers.clone();
    // Not an address: a marker no --peers can hold.
    marked.addresses.insert(
        0,
        format!("restored:{:016x}:{}", backup.cluster_id, backup.index),
    );
    crate::config::bootstrap_id_of(&marked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn a_backup_stream_ends_as_etcd_clients_expect_and_gives_back_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0u64, 1, 471, 472, 473, 503, 504, 505, 512, 4096, 70_001] {
            let total = len + tail_len(len);
            assert_eq!(total % BLOCK_BYTES, HASH_BYTES, "len {len}");
            assert!(tail_len(len) < BLOCK_BYTES + 8 + HASH_BYTES);
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let mut hasher = sha2::Sha256::new();
            hasher.update(&body);
            let mut stream = body.clone();
            stream.extend(backup_tail(len, hasher));
            let path = dir.path().join(format!("{len}.snap"));
            std::fs::write(&path, &stream).unwrap();
            if total >= BLOCK_BYTES + HASH_BYTES {
                assert_eq!(snapshot_len(&path).unwrap(), len);
                // A flipped byte: a damaged stream, said so.
                stream[(len / 2) as usize] ^= 1;
                std::fs::write(&path, &stream).unwrap();
                let err = snapshot_len(&path).unwrap_err();
                assert!(err.contains("is damaged: the SHA-256"), "{err}");
            }
        }
    }
}
