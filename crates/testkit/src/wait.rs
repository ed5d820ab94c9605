//! Deadline-bounded polling: the only way the kit waits for anything.

use std::thread;
use std::time::{Duration, Instant};

/// Calls `probe` every `interval` until it returns `Some` or `timeout` passes.
///
/// Returns the value, or `Err(elapsed)` when the deadline passed first. The
/// probe runs at least once, even with a zero timeout.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, Duration> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if started.elapsed() >= timeout {
            return Err(started.elapsed());
        }
        thread::sleep(interval);
    }
}
