//! `NodeIdentity` and its file `<data-dir>/raftkv.id`: which node of which cluster this
//! data directory belongs to, so a directory is never started as another node.
//!
//! The file is small text, readable by an operator, with a CRC32C line so a damaged file
//! is reported rather than misread. It is replaced atomically (temporary file, fsync,
//! rename, fsync of the directory). This file must not touch the WAL.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::segment::sync_dir;

/// Name of the identity file inside the data directory.
pub const IDENTITY_FILE_NAME: &str = "raftkv.id";
const TEMP_FILE_NAME: &str = "raftkv.id.tmp";
const FIRST_LINE: &str = "raftkv-identity 1";

/// Which node of which cluster a data directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub cluster_id: u64,
}

pub(crate) fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE_NAME)
}

fn body(identity: &NodeIdentity) -> String {
    format!(
        "{FIRST_LINE}\nnode_id {}\ncluster_id {}\n",
        identity.node_id, identity.cluster_id
    )
}

fn render(identity: &NodeIdentity) -> String {
    let body = body(identity);
    format!("{body}crc32c {:08x}\n", crc32c::crc32c(body.as_bytes()))
}

/// Reads the identity; `Ok(None)` when the file does not exist (fresh directory).
pub(crate) fn read_identity(data_dir: &Path) -> Result<Option<NodeIdentity>, StorageError> {
    let path = identity_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StorageError::io(path, err)),
    };
    parse(&text)
        .map(Some)
        .map_err(|reason| StorageError::corrupted(&path, 0, reason))
}

fn parse(text: &str) -> Result<NodeIdentity, String> {
    let mut lines = text.lines();
    if lines.next() != Some(FIRST_LINE) {
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
    let node_id = field("node_id")?
        .parse::<u64>()
        .map_err(|err| format!("bad node_id: {err}"))?;
    let cluster_id = field("cluster_id")?
        .parse::<u64>()
        .map_err(|err| format!("bad cluster_id: {err}"))?;
    let stored_crc =
        u32::from_str_radix(&field("crc32c")?, 16).map_err(|err| format!("bad crc32c: {err}"))?;
    let identity = NodeIdentity {
        node_id,
        cluster_id,
    };
    if crc32c::crc32c(body(&identity).as_bytes()) != stored_crc {
        return Err("identity file checksum mismatch".to_string());
    }
    Ok(identity)
}

/// Writes the identity atomically and durably.
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

    #[test]
    fn identity_survives_a_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), None);
        let identity = NodeIdentity {
            node_id: 3,
            cluster_id: 0xdead_beef,
        };
        write_identity(dir.path(), &identity).unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), Some(identity));
    }

    #[test]
    fn an_edited_identity_file_is_reported_as_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        write_identity(
            dir.path(),
            &NodeIdentity {
                node_id: 3,
                cluster_id: 9,
            },
        )
        .unwrap();
        let path = identity_path(dir.path());
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("node_id 3", "node_id 4");
        fs::write(&path, text).unwrap();
        let err = read_identity(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
        assert!(err.to_string().contains("raftkv.id"), "{err}");
    }
}
