//! The long mode of the fault suite: one 5-node cluster of real servers
//! for `--duration` (e.g. 1h, up to 24h) while rounds of load and faults
//! follow each other. Each round: 6 clients on fresh keys, one fault from
//! the scenario list (cycled), heal, load, then convergence (`debug check`
//! on every node) and a linearizability check of that round's history.
//! Every minute it samples each server's RSS and open fds and the latency
//! of the operations of that minute, to show no leak and no slowdown.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p raftkv-testkit --example soak -- \
//!     --bin target/release/raftkv --duration 1h
//! ```
//!
//! Prints one line per round and per minute, and a Markdown summary at the
//! end (what TESTING.md records). Exits non-zero on the first violation or
//! divergence.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use raftkv_testkit::history::{check, Operation, Outcome, Verdict};
use raftkv_testkit::jepsen::{converge, Scenario, Workload, WorkloadConfig};
use raftkv_testkit::TestCluster;

struct Args {
    bin: PathBuf,
    duration: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut bin = PathBuf::from("target/release/raftkv");
    let mut duration = Duration::from_secs(3600);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bin" => bin = PathBuf::from(args.next().ok_or("--bin needs a path")?),
            "--duration" => {
                let text = args
                    .next()
                    .ok_or("--duration needs a value (30m, 1h, 24h)")?;
                duration = parse_duration(&text)?;
            }
            "-h" | "--help" => {
                println!("usage: soak [--bin PATH] [--duration 1h]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !bin.exists() {
        return Err(format!("{} does not exist; build it first", bin.display()));
    }
    Ok(Args { bin, duration })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    Ok(match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration unit in {text:?} (s, m, h)")),
    })
}

/// (RSS in KiB, open fds) of a process, from /proc.
fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Faults that fit a long-lived 5-node cluster (two-of-five instead of a
/// 3-node-only scenario).
const ROUNDS: [Scenario; 8] = Scenario::ALL;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let mut cluster = TestCluster::start(&args.bin, 5);
    let mut round = 0usize;
    let mut total_ops = 0usize;
    let mut total_ok = 0usize;
    let mut minute_lines = Vec::new();
    let mut round_lines = Vec::new();
    let mut next_sample = Instant::now();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failures = 0;
    while started.elapsed() < args.duration {
        let scenario = ROUNDS[round % ROUNDS.len()];
        round += 1;
        let config = WorkloadConfig {
            prefix: format!("soak/{round}/"),
            cas_prefix: format!("soak-cas/{round}/"),
            ..Default::default()
        };
        let workload = Workload::start(&cluster.endpoint_list(), &config);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let fault =
            tokio::task::block_in_place(|| scenario.inject(&mut cluster, Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let history: Vec<Operation> = workload.stop().await;
        let converged =
            tokio::task::block_in_place(|| converge(&cluster, Duration::from_secs(120)));
        let verdict = tokio::task::block_in_place(|| check(&history));
        let ok = history.iter().filter(|o| o.outcome == Outcome::Ok).count();
        total_ops += history.len();
        total_ok += ok;
        latencies.extend(
            history
                .iter()
                .filter(|o| o.outcome == Outcome::Ok)
                .map(|o| o.completed - o.invoked),
        );
        let verdict_text = match &verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::Violation(text) => format!("VIOLATION\n{text}"),
            Verdict::Unknown(why) => format!("unknown ({why})"),
        };
        let line = format!(
            "| {round} | {:.0} | {} | {} | {ok} | {} | {} |",
            started.elapsed().as_secs_f64() / 60.0,
            scenario.name(),
            history.len(),
            verdict_text.lines().next().unwrap_or(""),
            match &converged {
                Ok((index, hash)) => format!("yes (index {index}, {hash})"),
                Err(e) => format!("NO: {e}"),
            },
        );
        println!("round {line}  -- {fault}");
        round_lines.push(line);
        if !verdict.is_linearizable() || converged.is_err() {
            failures += 1;
            eprintln!("{verdict_text}");
            break;
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(60);
            latencies.sort();
            let mut procs = Vec::new();
            for id in cluster.ids() {
                if let Some((rss, fds)) = cluster.pid(id).and_then(sample) {
                    procs.push(format!("n{id} {} MiB/{fds} fds", rss / 1024));
                }
            }
            let line = format!(
                "| {:.0} | {} | {:.1} | {:.1} | {:.1} | {} |",
                started.elapsed().as_secs_f64() / 60.0,
                latencies.len(),
                percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
                percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
                latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
                procs.join(", ")
            );
            println!("minute {line}");
            minute_lines.push(line);
            latencies.clear();
        }
    }
    println!(
        "\n## Soak run: {:?}, 5 nodes, {round} rounds\n",
        started.elapsed()
    );
    println!("Operations: {total_ops} ({total_ok} ok). Rounds failed: {failures}.\n");
    println!("| minute | ok ops since last sample | p50 ms | p99 ms | max ms | RSS / open fds per node |");
    println!("|---|---|---|---|---|---|");
    for line in &minute_lines {
        println!("{line}");
    }
    println!("\n| round | minute | fault | ops | ok | verdict | converged |");
    println!("|---|---|---|---|---|---|---|");
    for line in &round_lines {
        println!("{line}");
    }
    if failures > 0 {
        std::process::exit(1);
    }
}
