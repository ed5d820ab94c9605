#!/usr/bin/env bash
# What /metrics shows while `raftkv bench` runs: a fresh 3-node cluster
# (loopback, ports 27379+), the leader's /metrics scraped before a bench
# run, during it and after it; prints every raftkv_* series whose value
# changed (before -> during -> after) and the families that did not change.
#
#   cargo build --release && scripts/metrics-during-bench.sh [BENCH ARGS...]
#   (default: --op mixed --read-pct 50 --clients 16 --duration 6s)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(--op mixed --read-pct 50 --clients 16 --duration 6s)

start_raftkv 3
leader=$("$R" --endpoints "$ENDPOINTS" --json status |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["leader_address"])')
echo "leader at $leader; bench ${ARGS[*]}" >&2
curl -sf "http://$leader/metrics" >"$WORK/before.txt"
"$R" --endpoints "$ENDPOINTS" bench "${ARGS[@]}" >"$WORK/bench.txt" 2>/dev/null &
bench=$!
sleep 3
curl -sf "http://$leader/metrics" >"$WORK/during.txt"
wait "$bench"
curl -sf "http://$leader/metrics" >"$WORK/after.txt"
cat "$WORK/bench.txt"
python3 - "$WORK/before.txt" "$WORK/during.txt" "$WORK/after.txt" <<'EOF'
import sys
def load(path):
    series = {}
    for line in open(path):
        if line.startswith("raftkv_"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series
before, during, after = (load(p) for p in sys.argv[1:4])
family = lambda name: name.split("{")[0].removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
changed, unchanged = set(), set()
print(f"{'series':<90} {'before':>14} {'during':>14} {'after':>14}")
for name in sorted(after):
    b, d, a = before.get(name, 0.0), during.get(name, 0.0), after[name]
    if (b, d) != (a, a):
        changed.add(family(name))
        if "_bucket" not in name:
            print(f"{name:<90} {b:>14g} {d:>14g} {a:>14g}")
    else:
        unchanged.add(family(name))
print("\nfamilies that changed:", len(changed))
print("families unchanged:", ", ".join(sorted(unchanged - changed)) or "none")
EOF
