//! `DataDirLock`: one process per data directory.
//!
//! Two servers on one data directory would both append to the same WAL and overwrite
//! each other's records; the next start then finds a checksum failure with intact data
//! after it, and every acknowledged write is gone. So before anything in the directory
//! is read or written, the opener takes an exclusive `flock` on `<data-dir>/LOCK` and
//! holds it for as long as it lives (the kernel drops it when the process exits, however
//! it exits, so a crash never leaves a stale lock). The holder's PID is written into the
//! file so that a refused second process can name it.
//!
//! This file must not read or write anything else in the directory.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use crate::error::StorageError;

/// Name of the lock file inside the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// An exclusive lock on a data directory, released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    /// Holding the open file holds the lock.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and locks it, or fails at once with
    /// `StorageError::Locked` (naming the holder's PID where it is known) if another
    /// process holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|err| StorageError::io(data_dir, err))?;
        let path = data_dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| StorageError::io(&path, err))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(StorageError::io(&path, err));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StorageError::Locked {
                dir: data_dir.to_path_buf(),
                holder_pid: text.trim().parse().ok(),
            });
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()))
            .map_err(|err| StorageError::io(&path, err))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        match &err {
            StorageError::Locked {
                dir: locked,
                holder_pid,
            } => {
                assert_eq!(locked, dir.path());
                assert_eq!(*holder_pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other}"),
        }
        assert!(err.to_string().contains(&dir.path().display().to_string()));
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
