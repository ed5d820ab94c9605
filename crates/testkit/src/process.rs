//! One `raftkv server` child process, signalled only by its own PID.
//!
//! The process is a child of the test, so its PID cannot be reused by another
//! program until we reap it: signalling it before `wait` is always safe, and
//! after it is reaped we never signal it again. Dropping a [`ServerProcess`]
//! kills (SIGKILL) and reaps it, so a panicking test leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

pub(crate) struct ServerProcess {
    child: Child,
    /// Set once the child has been reaped; from then on the PID is not ours.
    exit_status: Option<ExitStatus>,
    paused: bool,
}

impl ServerProcess {
    /// Starts `bin args...` with stdout and stderr appended to `log_path`.
    pub(crate) fn spawn(
        bin: &Path,
        args: &[String],
        log_path: &Path,
        env: &[(&str, std::ffi::OsString)],
    ) -> std::io::Result<Self> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        // A marker line separates the runs of a restarted node in one log.
        writeln!(
            log,
            "=== testkit: starting {} {}",
            bin.display(),
            args.join(" ")
        )?;
        let log_for_stderr: File = log.try_clone()?;
        let mut command = Command::new(bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            // The developer's shell must not change which cluster is talked to.
            .env_remove("RAFTKV_ENDPOINTS")
            .env("RUST_BACKTRACE", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            // Logs are only read when a test fails; make them worth reading.
            command.env("RUST_LOG", "info");
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn()?;
        Ok(ServerProcess {
            child,
            exit_status: None,
            paused: false,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// The exit status if the process has ended on its own (reaps it).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit_status = Some(status);
            }
        }
        self.exit_status
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub(crate) fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub(crate) fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// SIGTERM, then waits (up to `within`) for the process to exit as an
    /// operator's `kill PID` lets it: its exit status, or `None` if it was
    /// still running at the deadline (it is then killed with SIGKILL).
    pub(crate) fn terminate(mut self, within: std::time::Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill_and_reap();
        None
    }

    /// SIGKILL and reap: like `kill -9`, the process gets no chance to flush
    /// anything it has not already made durable.
    pub(crate) fn kill(mut self) -> Option<ExitStatus> {
        self.kill_and_reap();
        self.exit_status
    }

    fn kill_and_reap(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SIGKILL also ends a stopped (SIGSTOP) process.
        self.signal(libc::SIGKILL);
        // wait() blocks only until the kernel has torn the process down.
        if let Ok(status) = self.child.wait() {
            self.exit_status = Some(status);
        }
    }

    fn signal(&mut self, signal: libc::c_int) {
        // Never signal a reaped PID: it may belong to someone else by now.
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
        // unreaped child, so it cannot name another process.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            result,
            0,
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
