//! Running the `raftkv` binary as a client command, with a time bound.
//!
//! A CLI invocation that hangs must fail its test, not hang the suite: the
//! child is killed (SIGKILL) after [`CLI_KILL_AFTER`] and reported with code
//! -1. Output is collected on helper threads so a chatty command can never
//! block on a full pipe.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A CLI command still running after this long is killed.
pub const CLI_KILL_AFTER: Duration = Duration::from_secs(60);

/// How often a running command is checked for exit.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// What one `raftkv ...` invocation did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The arguments it ran with (for failure messages).
    pub args: Vec<String>,
    /// Exit code; -1 if it was killed by a signal (e.g. after the time bound).
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliOutput {
    /// Stdout as text (lossy: invalid UTF-8 shows as U+FFFD).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stdout split into lines, without the line terminators.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_text().lines().map(str::to_string).collect()
    }

    /// The first stderr line that starts with `error: ` (docs/REFERENCE.md §1).
    pub fn error_line(&self) -> Option<&str> {
        self.stderr.lines().find(|line| line.starts_with("error: "))
    }

    /// Panics (showing the command, code and stderr) unless it exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        self.assert_code(0)
    }

    /// Panics (showing the command, code and output) unless it exited `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{}", self.describe());
        self
    }

    /// Panics unless it failed with exit `code` and a one-line `error: ` message
    /// on stderr containing `needle` (case-insensitive).
    #[track_caller]
    pub fn assert_error(&self, code: i32, needle: &str) -> &Self {
        self.assert_code(code);
        let line = self
            .error_line()
            .unwrap_or_else(|| panic!("no `error: ` line on stderr\n{}", self.describe()));
        assert!(
            line.to_lowercase().contains(&needle.to_lowercase()),
            "error line does not mention {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// A multi-line account of the invocation, for panic messages.
    pub fn describe(&self) -> String {
        let stdout = self.stdout_text();
        let stdout_shown: String = stdout.chars().take(2_000).collect();
        format!(
            "command: raftkv {:?}\nexit code: {} after {:?}\nstdout: {:?}\nstderr: {}",
            self.args, self.code, self.elapsed, stdout_shown, self.stderr
        )
    }
}

/// Runs `bin args...` and waits (at most [`CLI_KILL_AFTER`]) for it to exit.
pub fn run_cli(bin: &Path, args: &[String]) -> CliOutput {
    run(bin, args, None, CLI_KILL_AFTER)
}

/// Like [`run_cli`], with `stdin` written to the command's standard input.
pub fn run_cli_with_stdin(bin: &Path, args: &[String], stdin: &[u8]) -> CliOutput {
    run(bin, args, Some(stdin.to_vec()), CLI_KILL_AFTER)
}

/// Like [`run_cli`], but killed after `kill_after` instead of
/// [`CLI_KILL_AFTER`]: for commands that legitimately run long (moving a
/// 100 MB value in a debug build).
pub fn run_cli_bounded(bin: &Path, args: &[String], kill_after: Duration) -> CliOutput {
    run(bin, args, None, kill_after)
}

/// Kills the child if the caller unwinds before reaping it.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            // Our own unreaped child: its PID cannot belong to anyone else.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(bin: &Path, args: &[String], stdin: Option<Vec<u8>>, kill_after: Duration) -> CliOutput {
    let started = Instant::now();
    let mut command = Command::new(bin);
    command
        .args(args)
        .env_remove("RAFTKV_ENDPOINTS")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().expect("child present");

    let stdin_writer = child.stdin.take().map(|mut pipe| {
        let bytes = stdin.unwrap_or_default();
        // Dropping the pipe afterwards is what tells the command "end of input".
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let mut stdout_pipe = child.stdout.take().expect("stdout piped");
    let stdout_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut bytes);
        bytes
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr piped");
    let stderr_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut bytes);
        bytes
    });

    let deadline = started + kill_after;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(EXIT_POLL_INTERVAL),
            Err(e) => panic!("waiting for raftkv {args:?}: {e}"),
        }
    };
    // Reaped: the guard must not signal the PID any more.
    guard.0 = None;

    if let Some(writer) = stdin_writer {
        let _ = writer.join();
    }
    let stdout = stdout_reader.join().unwrap_or_default();
    let mut stderr =
        String::from_utf8_lossy(&stderr_reader.join().unwrap_or_default()).into_owned();
    let code = match status.and_then(|s| s.code()) {
        Some(code) => code,
        None => {
            if status.is_none() {
                stderr.push_str(&format!("\n[testkit: killed after {kill_after:?}]"));
            }
            -1
        }
    };
    CliOutput {
        args: args.to_vec(),
        code,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}
