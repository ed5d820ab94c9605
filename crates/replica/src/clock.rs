//! The clock leases are measured on: `CLOCK_BOOTTIME`, which, unlike
//! `CLOCK_MONOTONIC` (Rust's `Instant` on Linux), keeps counting while the
//! machine is suspended, and is never set (a wall-clock jump changes
//! nothing). A leader whose host slept through its lease finds it expired.

use std::time::Duration;

/// Time since boot, suspend included.
pub(crate) fn boot_time() -> Duration {
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
        let a = boot_time();
        std::thread::sleep(Duration::from_millis(2));
        assert!(boot_time() >= a + Duration::from_millis(2));
    }
}
