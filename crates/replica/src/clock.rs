//! The clocks a replica reads, handed to it rather than read directly, so a
//! simulator can run it on simulated time.
//!
//! Two readings: `now`, monotonic (`Instant`), for tick deadlines and
//! timeouts; and `boot`, the clock leases are measured on — in a real
//! process `CLOCK_BOOTTIME`, which, unlike `CLOCK_MONOTONIC` (Rust's
//! `Instant` on Linux), keeps counting while the machine is suspended, and
//! is never set (a wall-clock jump changes nothing). A leader whose host
//! slept through its lease finds it expired.

use std::time::{Duration, Instant};

/// Where a replica gets the time. Implementations must never go backwards.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time.
    fn now(&self) -> Instant;
    /// Time on the lease clock (counts through suspend; never set).
    fn boot(&self) -> Duration;
}

/// The process's real clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn boot(&self) -> Duration {
        boot_time()
    }
}

/// Time since boot, suspend included.
fn boot_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_moves_forward() {
        let a = SystemClock.boot();
        std::thread::sleep(Duration::from_millis(2));
        assert!(SystemClock.boot() >= a + Duration::from_millis(2));
    }
}
