//! `raftkv-sim`: runs seeds of the deterministic simulation.
//!
//! ```text
//! cargo run -p raftkv-sim --release -- --seeds 1000            # a sweep from seed 0
//! cargo run -p raftkv-sim --release -- --seeds 1000 --from 5000
//! cargo run -p raftkv-sim --release -- --seed 42 [--steps M]    # replay one seed, with its event log
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use raftkv_sim::{bug, run_seed_with_bugs, Bugs, Report, BUGS, DEFAULT_STEPS};

/// Runs seeds of RaftKV's deterministic simulation: the real replica code,
/// 3 or 5 nodes in one thread, simulated network, disks and clocks, faults
/// and clients drawn from the seed, every run checked (one leader per term,
/// committed entries agree, replicas converge, linearizability, ...). A
/// failing seed prints the command that replays it.
#[derive(Parser, Debug)]
#[command(
    name = "raftkv-sim",
    version,
    group(clap::ArgGroup::new("run").required(true).args(["seed", "seeds"])),
    after_help = "Examples:\n  raftkv-sim --seeds 1000 --from 5000      # a sweep\n  \
                  raftkv-sim --seed 137                    # replay one seed, with its event log\n  \
                  raftkv-sim --seeds 100 --bug forget-vote # see the checks catch a planted bug"
)]
struct Args {
    /// Run seed N once and print its event log (a replay).
    #[arg(long, value_name = "N", conflicts_with_all = ["from", "minutes"])]
    seed: Option<u64>,
    /// Run COUNT seeds (FIRST, FIRST+1, ...) with progress and a summary.
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    seeds: Option<u64>,
    /// First seed of a sweep.
    #[arg(long, value_name = "FIRST", default_value_t = 0, requires = "seeds")]
    from: u64,
    /// Stop a sweep after T minutes (the seed running then finishes).
    #[arg(long, value_name = "T", requires = "seeds", value_parser = clap::value_parser!(u64).range(1..))]
    minutes: Option<u64>,
    /// Simulated milliseconds of faults and load per seed (8 s of settling
    /// and the final checks follow).
    #[arg(long, value_name = "M", default_value_t = DEFAULT_STEPS, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    steps: u64,
    /// Run the replicas with a deliberate bug, to see the checks catch it.
    #[arg(long, value_name = "NAME", value_parser = bug_names())]
    bug: Option<String>,
}

fn bug_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(BUGS.iter().map(|(name, _)| *name))
}

fn print_failure(report: &Report, args: &Args) {
    eprintln!("seed {} FAILED:", report.seed);
    for v in &report.violations {
        eprintln!("  {v}");
    }
    let bug = args
        .bug
        .as_ref()
        .map(|name| format!(" --bug {name}"))
        .unwrap_or_default();
    eprintln!(
        "  replay: cargo run -p raftkv-sim --release -- --seed {} --steps {}{bug}",
        report.seed, args.steps
    );
}

fn replay(seed: u64, args: &Args, bugs: Bugs) -> ExitCode {
    let report = run_seed_with_bugs(seed, args.steps, true, bugs);
    for line in &report.log {
        println!("{line}");
    }
    println!(
        "seed {seed}: {} operations ({} acknowledged), faults {:?}, {} snapshots sent, {} \
         events, trace hash {:016x}",
        report.operations,
        report.acknowledged,
        report.faults,
        report.snapshots_sent,
        report.events,
        report.trace_hash
    );
    if report.violations.is_empty() {
        println!("seed {seed}: every check passed");
        return ExitCode::SUCCESS;
    }
    print_failure(&report, args);
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        // The replicas' own log (raft-rs's included, target `raft`), for a
        // replay: `RUST_LOG=raft=debug raftkv-sim --seed N`. Lines carry no
        // time: they interleave with the event log in order.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stdout)
            .without_time()
            .init();
    }
    let bugs = args
        .bug
        .as_deref()
        .map(|name| bug(name).expect("a name clap accepted"))
        .unwrap_or_default();
    if let Some(seed) = args.seed {
        return replay(seed, &args, bugs);
    }
    let Some(count) = args.seeds else {
        unreachable!("clap requires --seed or --seeds")
    };
    if args.from.checked_add(count - 1).is_none() {
        eprintln!(
            "error: --from {} with --seeds {count} runs past the last seed, {}",
            args.from,
            u64::MAX
        );
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    let (mut operations, mut acknowledged, mut snapshots) = (0u64, 0u64, 0u64);
    let mut faults = std::collections::BTreeMap::new();
    let stop_at = args.minutes.map(|m| started + Duration::from_secs(60 * m));
    let mut ran = 0u64;
    for seed in (args.from..=args.from + (count - 1))
        .take_while(|_| stop_at.is_none_or(|at| Instant::now() < at))
    {
        let report = run_seed_with_bugs(seed, args.steps, false, bugs);
        ran += 1;
        operations += report.operations;
        acknowledged += report.acknowledged;
        snapshots += report.snapshots_sent;
        for (kind, n) in &report.faults {
            *faults.entry(*kind).or_insert(0u64) += n;
        }
        if !report.violations.is_empty() {
            print_failure(&report, &args);
            failed.push(seed);
        }
        if ran.is_multiple_of(100) || ran == count {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{ran}/{count} seeds, {} failed, {:.1} seeds/min, {:.0} simulated ops/s",
                failed.len(),
                ran as f64 * 60.0 / secs,
                operations as f64 / secs
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let planted = args
        .bug
        .as_ref()
        .map(|name| format!(" with the planted bug {name}"))
        .unwrap_or_default();
    println!(
        "{ran} seeds ({}..={}) of {} steps{planted} in {secs:.1}s: {:.1} seeds/min; \
         {operations} operations ({acknowledged} acknowledged), {:.0} simulated ops/s; \
         faults {faults:?}; {snapshots} snapshots sent",
        args.from,
        args.from + ran.saturating_sub(1),
        args.steps,
        ran as f64 * 60.0 / secs,
        operations as f64 / secs
    );
    match (&args.bug, failed.is_empty()) {
        (None, true) => {
            println!("every seed passed");
            ExitCode::SUCCESS
        }
        (Some(name), true) => {
            println!("the planted bug {name} was caught by none of these seeds");
            ExitCode::SUCCESS
        }
        (Some(name), false) => {
            println!(
                "the planted bug {name} was caught by {} of {ran} seeds: {failed:?}",
                failed.len()
            );
            ExitCode::FAILURE
        }
        (None, false) => {
            println!("failed seeds: {failed:?}");
            ExitCode::FAILURE
        }
    }
}
