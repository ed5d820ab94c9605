//! A process-wide limit on clusters running at once.
//!
//! `cargo test` runs the tests of one binary on parallel threads. On a 2-core
//! machine, more than two clusters at a time starve each other of CPU and turn
//! election timeouts into flaky failures, so each [`TestCluster`] holds a permit
//! of this counting semaphore for as long as its processes run.
//!
//! [`TestCluster`]: crate::TestCluster

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many clusters of one test binary may run at the same time.
pub const MAX_RUNNING_CLUSTERS: usize = 2;

/// How long a test waits for a permit before giving up; generous, because
/// other tests of the binary legitimately hold the permits meanwhile.
const PERMIT_WAIT: Duration = Duration::from_secs(30 * 60);

static RUNNING_CLUSTERS: Mutex<usize> = Mutex::new(0);
static PERMIT_RELEASED: Condvar = Condvar::new();

/// One of the [`MAX_RUNNING_CLUSTERS`] permits; released on drop.
pub(crate) struct ClusterPermit {
    _private: (),
}

impl ClusterPermit {
    /// Blocks until a permit is free (panics after [`PERMIT_WAIT`]).
    pub(crate) fn acquire() -> ClusterPermit {
        let deadline = Instant::now() + PERMIT_WAIT;
        let mut running = RUNNING_CLUSTERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *running >= MAX_RUNNING_CLUSTERS {
            let now = Instant::now();
            assert!(
                now < deadline,
                "waited {PERMIT_WAIT:?} for a cluster permit"
            );
            running = PERMIT_RELEASED
                .wait_timeout(running, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *running += 1;
        ClusterPermit { _private: () }
    }
}

impl Drop for ClusterPermit {
    fn drop(&mut self) {
        let mut running = RUNNING_CLUSTERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *running -= 1;
        PERMIT_RELEASED.notify_one();
    }
}
