//! Acceptance: `raftkv bench` (docs/REFERENCE.md §7) against a real node: every op,
//! --ops, --batch, --read-pct, open loop with --rate, and the --json summary
//! fields. Figures themselves are measured in BENCHMARKS.md, not here.

mod common;

use raftkv_testkit::TestCluster;
use serde_json::Value;

use common::bin;
use common::storage::single_json;

fn bench(cluster: &TestCluster, args: &[&str]) -> Value {
    let mut all = vec!["bench", "--json", "--keys", "50", "--clients", "4"];
    all.extend_from_slice(args);
    single_json(&cluster.cli(&all))
}

#[test]
fn bench_runs_every_op_and_reports_the_contract_fields() {
    let cluster = TestCluster::start(bin(), 1);
    for op in ["put", "get", "delete", "scan", "mixed"] {
        let out = bench(&cluster, &["--op", op, "--ops", "200"]);
        assert_eq!(out["ops"], 200, "{op}: {out}");
        assert_eq!(out["errors"], 0, "{op}: {out}");
        for field in ["ops_per_sec", "errors", "latency_ms"] {
            assert!(!out[field].is_null(), "{op}: no {field} in {out}");
        }
        for q in ["p50", "p95", "p99", "p999", "max"] {
            assert!(
                out["latency_ms"][q].as_f64().is_some(),
                "{op}: {q} in {out}"
            );
        }
    }
    // Mixed: both ops measured; all reads at --read-pct 100.
    let mixed = bench(
        &cluster,
        &["--op", "mixed", "--read-pct", "50", "--ops", "400"],
    );
    assert!(
        mixed["by_op"]["get"]["ops"].as_u64().unwrap() > 0,
        "{mixed}"
    );
    assert!(
        mixed["by_op"]["put"]["ops"].as_u64().unwrap() > 0,
        "{mixed}"
    );
    let reads = bench(
        &cluster,
        &["--op", "mixed", "--read-pct", "100", "--ops", "100"],
    );
    assert!(reads["by_op"]["put"].is_null(), "{reads}");
    // Batches: keys/s is ops/s times the batch size.
    let batch = bench(&cluster, &["--op", "put", "--batch", "10", "--ops", "50"]);
    let (ops, keys) = (
        batch["ops_per_sec"].as_f64().unwrap(),
        batch["keys_per_sec"].as_f64().unwrap(),
    );
    assert!((keys - 10.0 * ops).abs() < 1e-6 * keys.max(1.0), "{batch}");
    // Open loop: operations go out on the schedule, never ahead of it, so
    // 100 operations at 100 ops/s cannot take less than 0.99 s.
    let open = bench(&cluster, &["--op", "put", "--rate", "100", "--ops", "100"]);
    assert_eq!(open["ops"], 100, "{open}");
    assert!(open["duration_s"].as_f64().unwrap() >= 0.98, "{open}");
    assert_eq!(open["rate"], 100.0);
    // The clients share a few connections unless told otherwise; 0 gives
    // each client its own.
    let shared = single_json(&cluster.cli(&["bench", "--json", "--clients", "16", "--ops", "64"]));
    assert_eq!(shared["connections"], 4, "{shared}");
    let few = bench(&cluster, &["--connections", "9", "--ops", "20"]);
    assert_eq!(
        few["connections"], 4,
        "never more than the 4 clients: {few}"
    );
    let own = single_json(&cluster.cli(&[
        "bench",
        "--json",
        "--clients",
        "16",
        "--connections",
        "0",
        "--ops",
        "64",
    ]));
    assert_eq!(own["connections"], 16, "{own}");
    assert_eq!(own["errors"], 0, "{own}");
    // Bad input is a usage error.
    cluster
        .cli(&["bench", "--op", "scan", "--batch", "5"])
        .assert_code(2);
}
