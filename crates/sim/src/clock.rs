//! Simulated clocks: one true time axis (the simulator's), and per node a
//! clock that runs at its own rate (bounded drift) from its own offset.
//! A paused process's clock keeps running (the machine does), so a leader
//! paused past its lease finds it expired when it resumes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkv_replica::Clock;

/// A node's clock. The simulator sets its reading before each of the
/// node's turns; the node reads it through [`Clock`].
pub struct SimClock {
    /// A fixed instant the readings are offsets from (only differences of
    /// instants are ever used, so the trace does not depend on it).
    base: Instant,
    offset_us: u64,
    /// Drift in parts per million (may be negative).
    drift_ppm: i64,
    local_us: AtomicU64,
}

impl SimClock {
    pub fn new(base: Instant, offset_us: u64, drift_ppm: i64) -> SimClock {
        SimClock {
            base,
            offset_us,
            drift_ppm,
            local_us: AtomicU64::new(offset_us),
        }
    }

    /// The node's reading at true time `t_us`.
    pub fn local_at(&self, t_us: u64) -> u64 {
        let scaled = t_us as i128 * (1_000_000 + self.drift_ppm as i128) / 1_000_000;
        self.offset_us + scaled as u64
    }

    pub fn set_true_time(&self, t_us: u64) {
        let local = self.local_at(t_us);
        // Never backwards.
        self.local_us.fetch_max(local, Ordering::Relaxed);
    }

    pub fn base(&self) -> Instant {
        self.base
    }

    pub fn drift_ppm(&self) -> i64 {
        self.drift_ppm
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_micros(self.local_us.load(Ordering::Relaxed))
    }

    fn boot(&self) -> Duration {
        Duration::from_micros(self.local_us.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_clock_runs_ahead_and_never_back() {
        let clock = SimClock::new(Instant::now(), 500, 10_000);
        clock.set_true_time(1_000_000);
        assert_eq!(clock.boot(), Duration::from_micros(500 + 1_010_000));
        clock.set_true_time(10);
        assert_eq!(clock.boot(), Duration::from_micros(500 + 1_010_000));
    }
}
