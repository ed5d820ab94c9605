//! The deadline of one client operation. `--timeout` bounds *waiting*, not
//! transferring: every chunk of a large value that moves pushes the deadline
//! back, so a 100 MB put to a healthy cluster succeeds with the default 5 s,
//! while a stalled transfer or an unavailable cluster still fails in time.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct Deadline {
    start: Instant,
    timeout: Duration,
    /// Milliseconds after `start` when data last moved.
    last_progress_ms: AtomicU64,
}

impl Deadline {
    pub(crate) fn new(timeout: Duration) -> Arc<Deadline> {
        Arc::new(Deadline {
            start: Instant::now(),
            timeout,
            last_progress_ms: AtomicU64::new(0),
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Data moved: the wait starts again from now.
    pub(crate) fn progress(&self) {
        let now_ms = self.start.elapsed().as_millis() as u64;
        self.last_progress_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn expires_at(&self) -> Instant {
        self.start
            + Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed))
            + self.timeout
    }

    /// Runs `future` until it finishes (`Some`) or the deadline passes
    /// without progress (`None`).
    pub(crate) async fn run<F: Future>(&self, future: F) -> Option<F::Output> {
        tokio::pin!(future);
        loop {
            let expires_at = self.expires_at();
            tokio::select! {
                output = &mut future => return Some(output),
                () = tokio::time::sleep_until(expires_at) => {
                    if self.expires_at() <= Instant::now() {
                        return None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_future_times_out() {
        let deadline = Deadline::new(Duration::from_secs(5));
        let never = std::future::pending::<()>();
        assert!(deadline.run(never).await.is_none());
        assert!(deadline.start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_a_long_transfer_alive() {
        let deadline = Deadline::new(Duration::from_secs(5));
        let transfer = async {
            // 30 s of transfer, moving data every second.
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                deadline.progress();
            }
            "done"
        };
        assert_eq!(deadline.run(transfer).await, Some("done"));
    }
}
