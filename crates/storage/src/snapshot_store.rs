//! `SnapshotStore`: the snapshot files of one node in `<data-dir>/snap/` — creating them
//! (through `SnapshotWriter`), listing, verifying, pruning, and receiving one streamed
//! from a peer as raw file bytes (through `SnapshotReceiver`).
//!
//! Only complete files are named `*.snap`: a writer works on `<name>.snap.tmp`, a
//! receiver on `<name>.snap.partial`, and both rename into place only after an fsync
//! (and, for a received file, a full verification). Leftover temporary files from a crash
//! are deleted at `open`. This file must not know the file format beyond what
//! `snapshot_file.rs` exposes, and must not touch the WAL: recording which snapshot is
//! durable is `FileStorage::record_snapshot`'s job.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::segment::sync_dir;
use crate::snapshot_file::{
    parse_snapshot_file_name, publish_snapshot, SnapshotInfo, SnapshotMeta, SnapshotReader,
    SnapshotWriter, PARTIAL_SUFFIX, SNAPSHOT_SUFFIX, TEMP_SUFFIX,
};

/// Name of the snapshot directory inside the data directory.
pub const SNAPSHOT_DIR_NAME: &str = "snap";

/// The snapshot directory of one node. Cheap to clone (it is just the path).
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Free bytes on the filesystem of `snap/` (the test hook's figure when it is set).
    pub fn free_bytes(&self) -> Option<u64> {
        crate::disk::free_bytes(&self.dir)
    }

    /// Opens `<data_dir>/snap/`, creating it, and deletes leftover `*.snap.tmp` and
    /// `*.snap.partial` files (unfinished writes and transfers from before a restart).
    /// Call it once at startup, before any writer or receiver exists.
    pub fn open(data_dir: &Path) -> Result<SnapshotStore, StorageError> {
        let dir = data_dir.join(SNAPSHOT_DIR_NAME);
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|err| StorageError::io(&dir, err))?;
            sync_dir(data_dir)?;
        }
        let mut removed = 0;
        for dir_entry in fs::read_dir(&dir).map_err(|err| StorageError::io(&dir, err))? {
            let dir_entry = dir_entry.map_err(|err| StorageError::io(&dir, err))?;
            let name = dir_entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TEMP_SUFFIX) || name.ends_with(PARTIAL_SUFFIX) {
                let path = dir_entry.path();
                tracing::info!(path = %path.display(), "removing an unfinished snapshot file");
                fs::remove_file(&path).map_err(|err| StorageError::io(&path, err))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&dir)?;
        }
        Ok(SnapshotStore { dir })
    }

    /// The `snap/` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts writing the snapshot `meta` (to `<name>.snap.tmp`; an existing complete
    /// file of the same name is replaced at `finish`). Fails if another writer for the
    /// same snapshot is still alive.
    pub fn create(&self, meta: SnapshotMeta) -> Result<SnapshotWriter, StorageError> {
        SnapshotWriter::create(&self.dir, meta)
    }

    /// The complete snapshots, oldest (lowest index) first.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, StorageError> {
        let mut infos = Vec::new();
        for dir_entry in fs::read_dir(&self.dir).map_err(|err| StorageError::io(&self.dir, err))? {
            let dir_entry = dir_entry.map_err(|err| StorageError::io(&self.dir, err))?;
            let name = dir_entry.file_name();
            let Some(meta) = name.to_str().and_then(parse_snapshot_file_name) else {
                continue;
            };
            let path = dir_entry.path();
            match dir_entry.metadata() {
                Ok(metadata) => infos.push(SnapshotInfo {
                    meta,
                    path,
                    size_bytes: metadata.len(),
                }),
                // Deleted by `retain_newest` since the listing started.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(StorageError::io(path, err)),
            }
        }
        infos.sort_by_key(|info| (info.meta.index, info.meta.term));
        Ok(infos)
    }

    /// The complete snapshot `meta`, if there is one.
    pub fn find(&self, meta: SnapshotMeta) -> Result<Option<SnapshotInfo>, StorageError> {
        let path = self.dir.join(meta.file_name());
        match fs::metadata(&path) {
            Ok(metadata) => Ok(Some(SnapshotInfo {
                meta,
                path,
                size_bytes: metadata.len(),
            })),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StorageError::io(path, err)),
        }
    }

    /// Size of the snapshot file for `meta`, 0 if it is gone (or unreadable):
    /// for status and metrics, never for deciding what to send.
    pub fn size_bytes(&self, meta: SnapshotMeta) -> u64 {
        self.find(meta)
            .ok()
            .flatten()
            .map_or(0, |info| info.size_bytes)
    }

    /// A streaming reader over the snapshot's payloads; its header is checked now.
    pub fn open_reader(&self, info: &SnapshotInfo) -> Result<SnapshotReader, StorageError> {
        SnapshotReader::open(&info.path, Some(info.meta))
    }

    /// Reads the whole file, checking every record and the trailer. The error of a
    /// damaged file is `Corrupted` naming the file and the offset of the bad record.
    pub fn verify(&self, info: &SnapshotInfo) -> Result<(), StorageError> {
        verify_file(&info.path, info.meta)
    }

    /// Deletes all but the `keep` newest complete snapshots; returns how many it deleted.
    pub fn retain_newest(&self, keep: usize) -> Result<usize, StorageError> {
        let infos = self.list()?;
        let doomed = infos.len().saturating_sub(keep);
        for info in &infos[..doomed] {
            fs::remove_file(&info.path).map_err(|err| StorageError::io(&info.path, err))?;
            tracing::debug!(path = %info.path.display(), "deleted an old snapshot");
        }
        if doomed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(doomed)
    }

    /// Starts receiving the snapshot `meta` from a peer: the exact bytes of the sender's
    /// `.snap` file, `total_bytes` long, written in order by
    /// [`SnapshotReceiver::write_chunk`] into `<name>.snap.partial`. Fails if another
    /// receiver for the same snapshot is still alive.
    pub fn receive(
        &self,
        meta: SnapshotMeta,
        total_bytes: u64,
    ) -> Result<SnapshotReceiver, StorageError> {
        let stem = meta.file_name();
        let stem = stem
            .strip_suffix(SNAPSHOT_SUFFIX)
            .expect("snapshot file name");
        let partial_path = self.dir.join(format!("{stem}{PARTIAL_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial_path)
            .map_err(|err| StorageError::io(&partial_path, err))?;
        Ok(SnapshotReceiver {
            meta,
            total_bytes,
            written_bytes: 0,
            dir: self.dir.clone(),
            partial_path,
            file: Some(file),
            finished: false,
        })
    }
}

fn verify_file(path: &Path, meta: SnapshotMeta) -> Result<(), StorageError> {
    let mut reader = SnapshotReader::open(path, Some(meta))?;
    while reader.next_record()?.is_some() {}
    Ok(())
}

/// A snapshot arriving from a peer. Dropped without a successful
/// [`SnapshotReceiver::finish`], it removes its partial file.
#[derive(Debug)]
pub struct SnapshotReceiver {
    meta: SnapshotMeta,
    total_bytes: u64,
    written_bytes: u64,
    dir: PathBuf,
    partial_path: PathBuf,
    file: Option<File>,
    finished: bool,
}

impl SnapshotReceiver {
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// Bytes received so far (the offset the next chunk is written at).
    pub fn received_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// Appends the next chunk. More bytes than announced is `InvalidRequest` (nothing is
    /// written).
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        if self.written_bytes + bytes.len() as u64 > self.total_bytes {
            return Err(StorageError::InvalidRequest {
                reason: format!(
                    "snapshot {} would grow to {} bytes, {} were announced",
                    self.partial_path.display(),
                    self.written_bytes + bytes.len() as u64,
                    self.total_bytes
                ),
            });
        }
        let file = self.file.as_ref().expect("file is open until finish");
        file.write_all_at(bytes, self.written_bytes)
            .map_err(|err| StorageError::io(&self.partial_path, err))?;
        self.written_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Checks the size, fsyncs, verifies the whole file (every record, the trailer and
    /// the whole-file CRC; the header must name this receiver's snapshot), renames it to
    /// `<name>.snap` and fsyncs `snap/`. On any failure the partial file is removed.
    pub fn finish(mut self) -> Result<SnapshotInfo, StorageError> {
        if self.written_bytes != self.total_bytes {
            return Err(StorageError::corrupted(
                &self.partial_path,
                self.written_bytes,
                format!(
                    "received {} of {} bytes",
                    self.written_bytes, self.total_bytes
                ),
            ));
        }
        let file = self.file.take().expect("file is open until finish");
        file.sync_all()
            .map_err(|err| StorageError::io(&self.partial_path, err))?;
        drop(file);
        verify_file(&self.partial_path, self.meta)?;
        let info = publish_snapshot(&self.dir, &self.partial_path, self.meta, self.total_bytes)?;
        self.finished = true;
        Ok(info)
    }
}

impl Drop for SnapshotReceiver {
    fn drop(&mut self) {
        if !self.finished {
            self.file = None;
            if let Err(err) = fs::remove_file(&self.partial_path) {
                tracing::warn!(path = %self.partial_path.display(), %err, "could not remove a partial snapshot");
            }
        }
    }
}
