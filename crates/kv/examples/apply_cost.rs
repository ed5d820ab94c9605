//! What applying a put costs the state machine, per rule set: puts of
//! 256-byte values over 1,000 keys, one op per command (the shape of
//! `raftkv bench --op put`), applied to one `KvState`.
//!
//!   cargo run --release -p raftkv-kv --example apply_cost [PUTS]
//!
//! Prints ns per put for the rules before revisions (no history) and with
//! revisions (every put also recorded in the history window), each run
//! three times, interleaved.

use std::time::Instant;

use bytes::Bytes;
use raftkv_kv::{Command, KvState, Op, SessionLimits, RULES_REVISIONS, RULES_STRICT_SESSIONS};

fn run(rules: u32, puts: u64) -> f64 {
    let mut state = KvState::new(SessionLimits::default());
    let value = Bytes::from(vec![b'x'; 256]);
    let commands: Vec<Command> = (0..1_000u64)
        .map(|k| Command {
            timestamp_ms: 1,
            rules,
            ops: vec![Op {
                key: Bytes::from(format!("key-{k:06}")),
                value: value.clone(),
                delete: false,
            }],
            ..Default::default()
        })
        .collect();
    let start = Instant::now();
    for i in 0..puts {
        state.apply(i + 1, 1, &commands[(i % 1_000) as usize]);
    }
    start.elapsed().as_nanos() as f64 / puts as f64
}

fn main() {
    let puts: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |s| s.parse().expect("PUTS is a number"));
    for round in 1..=3 {
        let before = run(RULES_STRICT_SESSIONS, puts);
        let with = run(RULES_REVISIONS, puts);
        println!(
            "round {round}: no revisions {before:7.0} ns/put   revisions {with:7.0} ns/put   ratio {:.2}",
            with / before
        );
    }
}
