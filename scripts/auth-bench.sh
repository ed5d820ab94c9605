#!/usr/bin/env bash
# What auth costs when it is on: one node, auth off against auth on with a
# user whose role grants readwrite on the bench's prefix (every request then
# carries a token that is checked, and its keys are matched against the
# role), alternating on fresh nodes, 64 clients, put then get.
#
#   scripts/auth-bench.sh [ROUNDS] [BINARY]     (defaults: 4, target/release/raftkv)
#
# Prints one line per run: round, mode, op, ops/s, p99 ms, errors.
set -euo pipefail
ROUNDS=${1:-4}
BIN=$(realpath "${2:-target/release/raftkv}")
PORT=${PORT:-27500}
R="$BIN --endpoints 127.0.0.1:$PORT"
bench() { # label, then extra bench args
  local label=$1
  shift
  for op in put get; do
    $R bench --op "$op" --clients 64 --duration 5s --warmup 2s --prefix bench/ --json "$@" 2>/dev/null |
      tail -1 |
      python3 -c 'import json,sys
d=json.load(sys.stdin); op=next(iter(d["by_op"])); r=d["by_op"][op]
print(sys.argv[1], op, round(r["ops_per_sec"]), "ops/s p99", r["latency_ms"]["p99"], "ms errors", d["errors"])' "$label"
  done
}
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    dir=$(mktemp -d)
    "$BIN" server --data-dir "$dir" --listen 127.0.0.1:$PORT >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do $R status >/dev/null 2>&1 && break; sleep 0.2; done
    if [[ $mode == on ]]; then
      $R user add root:rootpw >/dev/null
      $R user grant-role root root >/dev/null
      $R user add alice:alicepw >/dev/null
      $R role add bench >/dev/null
      $R role grant-permission bench readwrite bench/ --prefix >/dev/null
      $R user grant-role alice bench >/dev/null
      $R auth enable >/dev/null
      bench "round $round auth on " --user alice:alicepw
    else
      bench "round $round auth off"
    fi
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
