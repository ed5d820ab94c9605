#!/usr/bin/env bash
# Before/after in one run: the same bench cases against two builds of
# `raftkv`, alternating A and B case by case on fresh clusters (loopback,
# ports 27379+), so drift of the machine hits both alike. Each binary
# drives its own cluster with its own `bench`.
#
#   scripts/ab-compare.sh BINARY_A BINARY_B NODES ROUNDS -- BENCH ARGS... [-- BENCH ARGS...]
#   e.g. scripts/ab-compare.sh /tmp/raftkv-base target/release/raftkv 1 3 \
#          -- --op put --clients 1 -- --op get --clients 64 --consistency lease
#
# Prints one line per run: label, case, ops/s, p50, p99 (ms), errors, and the
# servers' CPU time per operation (user + system, all nodes, from
# /proc/PID/stat over the bench; 10 ms ticks, so compare over several runs).
set -euo pipefail
A=$(realpath "$1") B=$(realpath "$2") NODES=$3 ROUNDS=$4
shift 4
[[ ${1:-} == -- ]] || { echo "usage: $0 A B NODES ROUNDS -- ARGS... [-- ARGS...]" >&2; exit 2; }
shift
CASES=()
current=""
for arg in "$@"; do
  if [[ $arg == -- ]]; then CASES+=("$current"); current=""; else current+="${current:+ }$arg"; fi
done
CASES+=("$current")
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh

# User + system CPU ticks of every server started (PIDS).
cpu_ticks() {
  local total=0 p stat
  for p in "${PIDS[@]}"; do
    stat=$(cat "/proc/$p/stat")
    # Fields after the command name (which is in parentheses): utime is
    # the 12th, stime the 13th.
    read -r -a f <<<"${stat##*) }"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

for round in $(seq 1 "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    for label in A B; do
      bin=$A; [[ $label == B ]] && bin=$B
      start_raftkv "$NODES" "$bin"
      before=$(cpu_ticks)
      # shellcheck disable=SC2086
      out=$("$bin" --endpoints "$ENDPOINTS" bench $c --json 2>/dev/null)
      after=$(cpu_ticks)
      stop_all
      python3 -c '
import json, sys
label, case, raw, ticks, hz = sys.argv[1:6]
j = json.loads(raw); l = j["latency_ms"]
ops, p50, p99, errors = j["ops_per_sec"], l["p50"], l["p99"], j["errors"]
cpu_us = int(ticks) / int(hz) * 1e6 / max(j["ops"], 1)
print(f"{label} | {case:60} | {ops:9.0f} ops/s | p50 {p50:6.3f} | p99 {p99:6.3f} ms | errors {errors} | cpu {cpu_us:6.1f} us/op")
' "$label" "$c" "$out" "$((after - before))" "$(getconf CLK_TCK)"
    done
  done
done
