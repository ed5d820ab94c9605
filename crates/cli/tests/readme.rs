//! The README as a new user follows it: its command blocks run in order with
//! the real binary, so the README cannot drift from the product; and the
//! repository stands alone (every link stays inside it, LICENSE exists).
//!
//! How blocks are marked (README.md says it too, for its editors):
//! - ` ```sh ` : each line runs in order in one scratch directory and must exit
//!   0, unless its comment says `(exit N)`; `# prints: X` means standard output
//!   holds X, `# error: X` means standard error holds the line `error: X`. A line `NAME=VALUE`
//!   sets a variable for the lines after it.
//! - ` ```sh background ` : each line starts a server or the playground in the
//!   background; the next line waits until that node is a member of a cluster
//!   with a leader (a node that joins without `--learner`: until it is a voter;
//!   a member of a static cluster, `--peers`: until it answers).
//! - ` ```sh no-run ` : not run (installing, building, long runs).
//! - `<!-- readme-test: stop -->` : stops everything started in the background.
//!
//! The README's ports 7379..7399 are moved to a free block of ports, a
//! `raftkv server` without `--listen` and a `raftkv playground` without
//! `--port` get the block's first port, and client commands reach it through
//! `RAFTKV_ENDPOINTS`. `raftkv` is the binary cargo built for this test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The README's first port and how many it numbers from there.
const README_BASE_PORT: u16 = 7379;
const PORTS: u16 = 21;
/// A foreground command gets this long (they carry their own `--timeout`s).
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);
/// A background node gets this long to join a cluster with a leader.
const READY_DEADLINE: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Debug, PartialEq)]
enum Step {
    Run {
        line: String,
        code: i32,
        stdout_has: Option<String>,
        stderr_has: Option<String>,
    },
    Background(String),
    Stop,
}

#[derive(Clone, Copy, PartialEq)]
enum Block {
    Run,
    Background,
    Skipped,
}

/// What a command line's trailing comment expects.
fn expectation(comment: &str) -> (i32, Option<String>, Option<String>) {
    let code = comment
        .split("(exit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map_or(0, |n| n.trim().parse().expect("(exit N) with a number"));
    let before_exit = comment.split(" (exit").next().unwrap_or("").trim();
    let stdout_has = before_exit
        .strip_prefix("prints: ")
        .map(|s| s.trim().to_string());
    // The README shows the error line as the binary prints it.
    let stderr_has = before_exit
        .starts_with("error: ")
        .then(|| before_exit.to_string());
    (code, stdout_has, stderr_has)
}

/// The README's steps, in order.
fn steps(readme: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut block: Option<Block> = None;
    for (number, raw) in readme.lines().enumerate() {
        let trimmed = raw.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            block = match block {
                Some(_) => None,
                None => Some(match info.trim() {
                    "sh" => Block::Run,
                    "sh background" => Block::Background,
                    "sh no-run" => Block::Skipped,
                    "" => panic!(
                        "README.md:{}: a code block without a language; mark shell \
                         blocks sh, sh background or sh no-run",
                        number + 1
                    ),
                    other if other.starts_with("sh") || other.starts_with("bash") => {
                        panic!("README.md:{}: unknown block marking {other:?}", number + 1)
                    }
                    _ => Block::Skipped,
                }),
            };
            continue;
        }
        match block {
            None if trimmed == "<!-- readme-test: stop -->" => steps.push(Step::Stop),
            None | Some(Block::Skipped) => {}
            Some(kind) => {
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let (command, comment) = match raw.find(" # ") {
                    Some(at) => (&raw[..at], &raw[at + 3..]),
                    None => (raw, ""),
                };
                let command = command.trim().to_string();
                if kind == Block::Background {
                    steps.push(Step::Background(command));
                } else {
                    let (code, stdout_has, stderr_has) = expectation(comment);
                    steps.push(Step::Run {
                        line: command,
                        code,
                        stdout_has,
                        stderr_has,
                    });
                }
            }
        }
    }
    assert!(block.is_none(), "README.md: a code block is not closed");
    steps
}

/// `text` with the README's ports moved to the block starting at `base`.
fn move_ports(text: &str, base: u16) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_number = chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_ascii_digit());
        if starts_number {
            let end = (i..chars.len())
                .find(|&j| !chars[j].is_ascii_digit())
                .unwrap_or(chars.len());
            let digits: String = chars[i..end].iter().collect();
            match digits.parse::<u16>() {
                Ok(port)
                    if end - i == 4
                        && (README_BASE_PORT..README_BASE_PORT + PORTS).contains(&port) =>
                {
                    out.push_str(&(base + (port - README_BASE_PORT)).to_string())
                }
                _ => out.push_str(&digits),
            }
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The command a step runs: ports moved, default ports made explicit.
fn command_line(line: &str, base: u16) -> String {
    let mut line = move_ports(line, base);
    if line.starts_with("raftkv server") && !line.contains("--listen") {
        line.push_str(&format!(" --listen 127.0.0.1:{base}"));
    }
    if line.starts_with("raftkv playground") && !line.contains("--port") {
        line.push_str(&format!(" --port {base}"));
    }
    line
}

/// A TLS server (`--cert-file F --key-file K --trusted-ca-file CA`) is
/// probed as a client with its own certificate (the README's have the
/// clientAuth usage): `--cacert CA --cert F --key K`.
fn tls_probe_flags(command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let flag = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    match (
        flag("--cert-file"),
        flag("--key-file"),
        flag("--trusted-ca-file"),
    ) {
        (Some(cert), Some(key), Some(ca)) => format!(" --cacert {ca} --cert {cert} --key {key}"),
        _ => String::new(),
    }
}

/// The README, run: a scratch directory, the variables set so far, and what
/// runs in the background (stopped by PID, never anything else).
struct Reader {
    dir: tempfile::TempDir,
    base: u16,
    vars: Vec<(String, String)>,
    background: Vec<(String, Child, PathBuf)>,
}

impl Reader {
    fn shell(&self, line: &str) -> Command {
        let bin_dir = common::bin().parent().expect("binary dir").to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(line)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("RAFTKV_ENDPOINTS", format!("127.0.0.1:{}", self.base))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        for (name, value) in &self.vars {
            command.env(name, value);
        }
        command
    }

    fn logs(&self) -> String {
        self.background
            .iter()
            .map(|(line, _, log)| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {line}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn run(
        &mut self,
        line: &str,
        code: i32,
        stdout_has: &Option<String>,
        stderr_has: &Option<String>,
    ) {
        if self.assign(line) {
            return;
        }
        let command = command_line(line, self.base);
        // Output goes to files, so a chatty command never blocks on a pipe.
        let out_path = self.dir.path().join("last-command.stdout");
        let err_path = self.dir.path().join("last-command.stderr");
        let mut child = self
            .shell(&command)
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("start sh");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > COMMAND_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "README command `{line}` ran past {COMMAND_DEADLINE:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = std::process::Output {
            status,
            stdout: std::fs::read(&out_path).expect("stdout"),
            stderr: std::fs::read(&err_path).expect("stderr"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let context = || {
            format!(
                "README command `{line}` (run as `{command}`)\nexit: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
                output.status.code(),
                self.logs()
            )
        };
        assert_eq!(output.status.code(), Some(code), "{}", context());
        if let Some(needle) = stdout_has {
            let needle = move_ports(needle, self.base);
            assert!(
                stdout.contains(&needle),
                "expected {needle:?} on stdout: {}",
                context()
            );
        }
        if let Some(needle) = stderr_has {
            let needle = move_ports(needle, self.base);
            assert!(
                stderr.contains(&needle),
                "expected {needle:?} on stderr: {}",
                context()
            );
        }
        eprintln!("ok ({:.1}s): {line}", started.elapsed().as_secs_f64());
    }

    /// `NAME=VALUE`: a variable for the lines after it (ports moved).
    fn assign(&mut self, line: &str) -> bool {
        let Some((name, value)) = line.split_once('=') else {
            return false;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            return false;
        }
        self.vars
            .push((name.to_string(), move_ports(value, self.base)));
        true
    }

    fn start(&mut self, line: &str) {
        if self.assign(line) {
            return;
        }
        let command = command_line(line, self.base);
        let log = self
            .dir
            .path()
            .join(format!("background-{}.log", self.background.len()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = self
            .shell(&format!("exec {command}"))
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start a background command");
        self.background.push((line.to_string(), child, log));
        let address = if command.starts_with("raftkv playground") {
            format!("127.0.0.1:{}", self.base)
        } else {
            let flag = command
                .split_whitespace()
                .skip_while(|w| *w != "--listen")
                .nth(1)
                .expect("a background server has --listen");
            flag.to_string()
        };
        let wants_voter = command.contains("--join") && !command.contains("--learner");
        let static_member = command.contains("--peers");
        let started = Instant::now();
        loop {
            let (_, child, _) = self.background.last_mut().expect("just pushed");
            if let Some(status) = child.try_wait().expect("wait") {
                panic!(
                    "README background command `{line}` exited ({status})\n{}",
                    self.logs()
                );
            }
            let output = self
                .shell(&format!(
                    "raftkv --endpoints {address} --timeout 2s status --json{}",
                    tls_probe_flags(&command)
                ))
                .output()
                .expect("status");
            let status: Option<serde_json::Value> = serde_json::from_slice(&output.stdout).ok();
            let ready = status.is_some_and(|s| {
                let role = s["role"].as_str().unwrap_or("");
                // A static member answers before the others are up to elect.
                static_member
                    || s["leader_id"].as_u64().unwrap_or(0) != 0
                        && matches!(role, "leader" | "follower" | "learner")
                        && !(wants_voter && role == "learner")
            });
            if ready {
                eprintln!("ready ({:.1}s): {line}", started.elapsed().as_secs_f64());
                return;
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "README background command `{line}` not a member with a leader after {READY_DEADLINE:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM to what this test started (the playground stops its nodes),
    /// then SIGKILL to whatever is left after a few seconds.
    fn stop(&mut self) {
        for (_, child, _) in &mut self.background {
            if child.try_wait().ok().flatten().is_none() {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let give_up = Instant::now() + Duration::from_secs(10);
        for (_, child, _) in &mut self.background {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.background.clear();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn the_readme_commands_run_in_order() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let steps = steps(&readme);
    assert!(
        steps
            .iter()
            .filter(|s| matches!(s, Step::Run { .. }))
            .count()
            >= 10,
        "the README should have runnable command blocks: {steps:?}"
    );
    let mut reader = Reader {
        dir: tempfile::tempdir().expect("scratch dir"),
        base: raftkv_testkit::free_port_block(PORTS),
        vars: Vec::new(),
        background: Vec::new(),
    };
    for step in &steps {
        match step {
            Step::Run {
                line,
                code,
                stdout_has,
                stderr_has,
            } => reader.run(line, *code, stdout_has, stderr_has),
            Step::Background(line) => reader.start(line),
            Step::Stop => reader.stop(),
        }
    }
}

#[test]
fn readme_blocks_are_parsed_as_marked() {
    let text = "intro\n```sh no-run\ncargo install x\n```\n```sh background\nraftkv server\n```\n\
        ```sh\nP=1=a\nraftkv get k   # prints: v\nraftkv get j   # error: key not found (exit 1)\n\
        # a comment line\n```\n<!-- readme-test: stop -->\n```toml\nx = 1\n```\n";
    assert_eq!(
        steps(text),
        vec![
            Step::Background("raftkv server".into()),
            Step::Run {
                line: "P=1=a".into(),
                code: 0,
                stdout_has: None,
                stderr_has: None
            },
            Step::Run {
                line: "raftkv get k".into(),
                code: 0,
                stdout_has: Some("v".into()),
                stderr_has: None
            },
            Step::Run {
                line: "raftkv get j".into(),
                code: 1,
                stdout_has: None,
                stderr_has: Some("error: key not found".into())
            },
            Step::Stop,
        ]
    );
    assert_eq!(
        command_line(
            "raftkv server --peers 1=127.0.0.1:7379,2=127.0.0.1:7380",
            20000
        ),
        "raftkv server --peers 1=127.0.0.1:20000,2=127.0.0.1:20001 --listen 127.0.0.1:20000"
    );
    assert_eq!(
        command_line("raftkv playground", 20000),
        "raftkv playground --port 20000"
    );
    assert_eq!(
        move_ports("--limit 100 --x 17379 7400", 20000),
        "--limit 100 --x 17379 7400"
    );
}

/// Every text file the repository holds, outside build output.
fn repo_text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') && name != ".ci" || name == "target" {
            continue;
        }
        if path.is_dir() {
            repo_text_files(&path, out);
        } else if [
            "md", "rs", "toml", "sh", "proto", "txt", "json", "yml", "yaml",
        ]
        .iter()
        .any(|ext| name.ends_with(&format!(".{ext}")))
            || name == "run"
        {
            out.push(path);
        }
    }
}

#[test]
fn the_repository_stands_alone() {
    let root = repo_root();
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
    let mut files = Vec::new();
    repo_text_files(&root, &mut files);
    assert!(files.len() > 20, "found the repository's files: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        // Spelt in pieces, so that this file does not name them itself.
        for needle in [concat!("..", "/shared"), concat!("CONTRACT", ".md")] {
            if text.contains(needle) {
                problems.push(format!("{shown} mentions {needle}"));
            }
        }
        if !shown.ends_with(".md") {
            continue;
        }
        // Markdown links: [text](target), relative targets must exist.
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("").trim();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = file.parent().expect("parent").join(target);
            if !resolved.exists() {
                problems.push(format!(
                    "{shown} links to {target}, which is not in the repository"
                ));
            } else if !resolved
                .canonicalize()
                .is_ok_and(|p| p.starts_with(root.canonicalize().expect("root")))
            {
                problems.push(format!("{shown} links to {target}, outside the repository"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
