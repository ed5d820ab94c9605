//! `raftkv-sim`: runs seeds of the deterministic simulation.
//!
//! ```text
//! cargo run -p raftkv-sim --release -- --seeds 1000            # a sweep from seed 0
//! cargo run -p raftkv-sim --release -- --seeds 1000 --from 5000
//! cargo run -p raftkv-sim --release -- --seed 42 [--steps M]    # replay one seed, with its event log
//! ```

use std::process::ExitCode;
use std::time::Instant;

use raftkv_sim::{bug, run_seed_with_bugs, Bugs, Report, BUGS, DEFAULT_STEPS};

const USAGE: &str =
    "usage: raftkv-sim (--seed N | --seeds COUNT [--from FIRST] [--minutes T]) [--steps M]

  --seed N        run seed N once and print its event log (a replay)
  --seeds COUNT   run COUNT seeds (FIRST, FIRST+1, ...) and print a summary
  --from FIRST    first seed of a sweep (default 0)
  --minutes T     stop a sweep after T minutes (the seed running then finishes)
  --steps M       simulated milliseconds of faults and load per seed (default 20000)
  --bug NAME      run the replicas with a deliberate bug, to see the checks catch it:
                  ack-before-fsync, long-lease, apply-before-commit, read-before-applied,
                  forget-vote";

struct Args {
    seed: Option<u64>,
    seeds: Option<u64>,
    from: u64,
    minutes: Option<u64>,
    steps: u64,
    bugs: Bugs,
    bug_name: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seed: None,
        seeds: None,
        from: 0,
        minutes: None,
        steps: DEFAULT_STEPS,
        bugs: Bugs::default(),
        bug_name: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--bug" {
            args.bugs = bug(&value).ok_or_else(|| {
                let names: Vec<&str> = BUGS.iter().map(|(n, _)| *n).collect();
                format!("unknown bug {value} (one of {})", names.join(", "))
            })?;
            args.bug_name = Some(value);
            continue;
        }
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--seed" => args.seed = Some(number),
            "--seeds" => args.seeds = Some(number),
            "--from" => args.from = number,
            "--minutes" => args.minutes = Some(number),
            "--steps" => args.steps = number,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.seed.is_some() == args.seeds.is_some() {
        return Err("give --seed or --seeds".into());
    }
    Ok(args)
}

fn print_failure(report: &Report, args: &Args) {
    eprintln!("seed {} FAILED:", report.seed);
    for v in &report.violations {
        eprintln!("  {v}");
    }
    let bug = args
        .bug_name
        .as_ref()
        .map(|name| format!(" --bug {name}"))
        .unwrap_or_default();
    eprintln!(
        "  replay: cargo run -p raftkv-sim --release -- --seed {} --steps {}{bug}",
        report.seed, args.steps
    );
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("raftkv-sim: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.seed {
        let report = run_seed_with_bugs(seed, args.steps, true, args.bugs);
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
        print_failure(&report, &args);
        return ExitCode::FAILURE;
    }
    let count = args.seeds.expect("checked");
    let started = Instant::now();
    let mut failed = Vec::new();
    let (mut operations, mut acknowledged, mut snapshots) = (0u64, 0u64, 0u64);
    let mut faults = std::collections::BTreeMap::new();
    let stop_at = args
        .minutes
        .map(|m| started + std::time::Duration::from_secs(60 * m));
    let mut count = count;
    for seed in args.from..args.from.saturating_add(count) {
        if stop_at.is_some_and(|at| Instant::now() >= at) {
            count = seed - args.from;
            break;
        }
        let report = run_seed_with_bugs(seed, args.steps, false, args.bugs);
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
        let done = seed - args.from + 1;
        if done % 100 == 0 || done == count {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{done}/{count} seeds, {} failed, {:.1} seeds/min, {:.0} simulated ops/s",
                failed.len(),
                done as f64 * 60.0 / secs,
                operations as f64 / secs
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} seeds ({}..{}) of {} steps in {secs:.1}s: {:.1} seeds/min; {operations} \
         operations ({acknowledged} acknowledged), {:.0} simulated ops/s; faults {faults:?}; \
         {snapshots} snapshots sent",
        args.from,
        args.from + count - 1,
        args.steps,
        count as f64 * 60.0 / secs,
        operations as f64 / secs
    );
    if failed.is_empty() {
        println!("every seed passed");
        ExitCode::SUCCESS
    } else {
        println!("failed seeds: {failed:?}");
        ExitCode::FAILURE
    }
}
