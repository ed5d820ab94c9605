//! `NodeIdentity` and its file `<data-dir>/raftkv.id`: which node of which cluster this
//! data directory belongs to, so a directory is never started as another node — and the
//! data directory's format version, so a build never misreads a newer one.
//!
//! A cluster's id is chosen at random when it is bootstrapped and adopted by every
//! member through the log (see the replica's `cluster_id.rs`), so two clusters started
//! with the same flags never share one. Until a node has adopted it, its identity holds
//! only the *bootstrap id* (a hash of the initial member list), which members of one
//! bootstrap share. The file is rewritten once, when the id is adopted.
//!
//! The file is small text, readable by an operator, with a CRC32C line so a damaged file
//! is reported rather than misread. It is replaced atomically (temporary file, fsync,
//! rename, fsync of the directory). This file must not touch the WAL.
//!
//! Format 1 (`raftkv-identity 1`: node id and cluster id; the cluster id was the bootstrap
//! hash) is read and rewritten as format 2 (adds the format line and the bootstrap id;
//! an older cluster keeps its id as both).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::segment::sync_dir;

/// Name of the identity file inside the data directory.
pub const IDENTITY_FILE_NAME: &str = "raftkv.id";
const TEMP_FILE_NAME: &str = "raftkv.id.tmp";
const FIRST_LINE_V1: &str = "raftkv-identity 1";
const FIRST_LINE: &str = "raftkv-identity 2";

/// The data directory format this build writes. 1: identity format 1, WAL segments of
/// format 1 to 3. 2: identity format 2 (cluster ids adopted through the log), WAL
/// segment format 4. Every change of the on-disk format bumps it (and adds a fixture
/// data dir to the tests).
pub const DATA_DIR_FORMAT: u32 = 2;
/// The oldest data directory format this build opens (and upgrades).
pub const OLDEST_DATA_DIR_FORMAT: u32 = 1;

/// Which node of which cluster a data directory belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_id: u64,
    /// The cluster's id; 0 until this node has adopted it from the log.
    pub cluster_id: u64,
    /// Shared by the members of one bootstrap (a hash of the initial member list);
    /// 0 when not known (a node that joined learns it with its first snapshot).
    pub bootstrap_id: u64,
}

/// What the identity file says, with the format it was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredIdentity {
    pub identity: NodeIdentity,
    pub format: u32,
}

pub(crate) fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE_NAME)
}

fn body(identity: &NodeIdentity) -> String {
    format!(
        "{FIRST_LINE}\nformat {DATA_DIR_FORMAT}\nnode_id {}\ncluster_id {}\nbootstrap_id {}\n",
        identity.node_id, identity.cluster_id, identity.bootstrap_id
    )
}

fn render(identity: &NodeIdentity) -> String {
    let body = body(identity);
    format!("{body}crc32c {:08x}\n", crc32c::crc32c(body.as_bytes()))
}

/// Reads the identity; `Ok(None)` when the file does not exist (fresh directory). A
/// directory of a newer format than this build reads is `StorageError::NewerFormat`.
pub(crate) fn read_identity(data_dir: &Path) -> Result<Option<StoredIdentity>, StorageError> {
    let path = identity_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StorageError::io(path, err)),
    };
    if let Some(format) = newer_format(&text) {
        return Err(StorageError::NewerFormat {
            dir: data_dir.to_path_buf(),
            format,
        });
    }
    parse(&text)
        .map(Some)
        .map_err(|reason| StorageError::corrupted(&path, 0, reason))
}

/// The format of a file written by a newer build, if it is one (its first line names
/// a later identity version, or its format line a later data dir format).
fn newer_format(text: &str) -> Option<u32> {
    let mut lines = text.lines();
    let version: u32 = lines
        .next()?
        .strip_prefix("raftkv-identity ")?
        .trim()
        .parse()
        .ok()?;
    let format = lines
        .next()
        .and_then(|line| line.strip_prefix("format "))
        .and_then(|f| f.trim().parse::<u32>().ok());
    match format {
        Some(format) if format > DATA_DIR_FORMAT => Some(format),
        _ if version > 2 => Some(format.unwrap_or(version)),
        _ => None,
    }
}

fn parse(text: &str) -> Result<StoredIdentity, String> {
    let mut lines = text.lines();
    let first = lines.next();
    let v1 = first == Some(FIRST_LINE_V1);
    if !v1 && first != Some(FIRST_LINE) {
        return Err(format!("identity file does not start with {FIRST_LINE:?}"));
    }
    let mut field = |name: &str| -> Result<String, String> {
        let line = lines
            .next()
            .ok_or(format!("identity file is missing {name}"))?;
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(str::to_string)
            .ok_or(format!(
                "expected {name:?} in identity file, found {line:?}"
            ))
    };
    let number = |value: String, name: &str| {
        value
            .parse::<u64>()
            .map_err(|err| format!("bad {name}: {err}"))
    };
    let format = if v1 {
        1
    } else {
        number(field("format")?, "format")? as u32
    };
    let node_id = number(field("node_id")?, "node_id")?;
    let cluster_id = number(field("cluster_id")?, "cluster_id")?;
    // Format 1 had no bootstrap id: its cluster id was the bootstrap hash.
    let bootstrap_id = if v1 {
        cluster_id
    } else {
        number(field("bootstrap_id")?, "bootstrap_id")?
    };
    let stored_crc =
        u32::from_str_radix(&field("crc32c")?, 16).map_err(|err| format!("bad crc32c: {err}"))?;
    let identity = NodeIdentity {
        node_id,
        cluster_id,
        bootstrap_id,
    };
    let checked = if v1 {
        format!("{FIRST_LINE_V1}\nnode_id {node_id}\ncluster_id {cluster_id}\n")
    } else {
        body(&identity)
    };
    if crc32c::crc32c(checked.as_bytes()) != stored_crc {
        return Err("identity file checksum mismatch".to_string());
    }
    Ok(StoredIdentity { identity, format })
}

/// Writes the identity atomically and durably, in this build's format.
pub(crate) fn write_identity(data_dir: &Path, identity: &NodeIdentity) -> Result<(), StorageError> {
    let temp_path = data_dir.join(TEMP_FILE_NAME);
    let mut file = fs::File::create(&temp_path).map_err(|err| StorageError::io(&temp_path, err))?;
    file.write_all(render(identity).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|err| StorageError::io(&temp_path, err))?;
    drop(file);
    let path = identity_path(data_dir);
    fs::rename(&temp_path, &path).map_err(|err| StorageError::io(&path, err))?;
    sync_dir(data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(node_id: u64, cluster_id: u64, bootstrap_id: u64) -> NodeIdentity {
        NodeIdentity {
            node_id,
            cluster_id,
            bootstrap_id,
        }
    }

    #[test]
    fn identity_survives_a_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), None);
        let written = identity(3, 0xdead_beef, 0xfeed);
        write_identity(dir.path(), &written).unwrap();
        let stored = read_identity(dir.path()).unwrap().unwrap();
        assert_eq!(stored.identity, written);
        assert_eq!(stored.format, DATA_DIR_FORMAT);
    }

    #[test]
    fn an_edited_identity_file_is_reported_as_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        write_identity(dir.path(), &identity(3, 9, 9)).unwrap();
        let path = identity_path(dir.path());
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("node_id 3", "node_id 4");
        fs::write(&path, text).unwrap();
        let err = read_identity(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
        assert!(err.to_string().contains("raftkv.id"), "{err}");
    }

    #[test]
    fn a_format_1_file_reads_with_its_cluster_id_as_bootstrap_id() {
        let dir = tempfile::tempdir().unwrap();
        let body = "raftkv-identity 1\nnode_id 2\ncluster_id 77\n";
        let text = format!("{body}crc32c {:08x}\n", crc32c::crc32c(body.as_bytes()));
        fs::write(identity_path(dir.path()), text).unwrap();
        let stored = read_identity(dir.path()).unwrap().unwrap();
        assert_eq!(stored.identity, identity(2, 77, 77));
        assert_eq!(stored.format, 1);
    }

    #[test]
    fn a_newer_format_is_refused_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            identity_path(dir.path()),
            "raftkv-identity 2\nformat 9\nnode_id 1\ncluster_id 1\nbootstrap_id 1\ncrc32c 0\n",
        )
        .unwrap();
        let err = read_identity(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::NewerFormat { format: 9, .. }),
            "{err}"
        );
        fs::write(identity_path(dir.path()), "raftkv-identity 3\nwhatever\n").unwrap();
        let err = read_identity(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::NewerFormat { .. }), "{err}");
    }
}
