//! Free space on the data dir's filesystem, and the test-only disk fault
//! hook.
//!
//! The hook is enabled only when the environment variable
//! `RAFTKV_DISK_FAULTS` names a file; it is read at most every 100 ms.
//! Lines:
//!
//! ```text
//! free 0          # pretend the filesystem has this many bytes free
//! fsync-error     # every WAL fsync fails (EIO): the node must fail-stop
//! fsync-delay 5   # every WAL fsync takes 5 ms longer (a slow disk, for benchmarks)
//! ```
//!
//! An empty or missing file means no faults. The real free space comes
//! from `statvfs(2)`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The variable naming the hook's file.
pub const ENV_VAR: &str = "RAFTKV_DISK_FAULTS";

const REREAD_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Faults {
    free_bytes: Option<u64>,
    fsync_error: bool,
    fsync_delay_ms: Option<u64>,
}

fn parse(text: &str) -> Faults {
    let mut faults = Faults::default();
    for line in text.lines() {
        let mut words = line.split('#').next().unwrap_or("").split_whitespace();
        match (words.next(), words.next()) {
            (Some("free"), Some(n)) => faults.free_bytes = n.parse().ok(),
            (Some("fsync-error"), _) => faults.fsync_error = true,
            (Some("fsync-delay"), Some(ms)) => faults.fsync_delay_ms = ms.parse().ok(),
            _ => {}
        }
    }
    faults
}

static CACHE: Mutex<Option<(Instant, Faults)>> = Mutex::new(None);

fn faults() -> Faults {
    let Some(path) = std::env::var_os(ENV_VAR).map(PathBuf::from) else {
        return Faults::default();
    };
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, faults)) = &*cache {
        if at.elapsed() < REREAD_EVERY {
            return faults.clone();
        }
    }
    let faults = parse(&std::fs::read_to_string(path).unwrap_or_default());
    *cache = Some((Instant::now(), faults.clone()));
    faults
}

/// Bytes available to an unprivileged writer on the filesystem holding
/// `dir` (or what the test hook says); `None` if it cannot be told.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    if let Some(free) = faults().free_bytes {
        return Some(free);
    }
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid,
    // writable statvfs struct for the duration of the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Bytes the files under `dir` take on disk (allocated blocks, so a
/// preallocated WAL segment counts in full), walking subdirectories;
/// files that vanish meanwhile are skipped.
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => allocated_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Applies the test hook's fsync faults: sleeps for its injected delay, if any, then
/// returns its injected failure, if any.
pub(crate) fn apply_fsync_faults() -> Option<std::io::Error> {
    let faults = faults();
    if let Some(ms) = faults.fsync_delay_ms {
        std::thread::sleep(Duration::from_millis(ms));
    }
    faults
        .fsync_error
        .then(|| std::io::Error::from_raw_os_error(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_rules_parse() {
        assert_eq!(parse(""), Faults::default());
        let f = parse("free 1024\nfsync-error # boom\n");
        assert_eq!(f.free_bytes, Some(1024));
        assert!(f.fsync_error);
        assert_eq!(f.fsync_delay_ms, None);
        assert_eq!(parse("fsync-delay 5").fsync_delay_ms, Some(5));
    }

    #[test]
    fn the_real_free_space_of_a_directory_is_known() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some());
    }
}
