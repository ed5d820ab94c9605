#!/usr/bin/env bash
# Runs the BENCHMARKS.md matrix: put and linearizable get, 1 and 64 clients,
# 256-byte values, on a fresh 1-node and a fresh 3-node cluster (loopback,
# ports 27379+). Prints one JSON line per run (raftkv bench --json).
#
#   cargo build --release && scripts/bench-matrix.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RAFTKV:-target/release/raftkv}
DURATION=${1:-10s}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start_cluster() { # nodes
  local n=$1 peers="" i
  for i in $(seq 1 "$n"); do peers+="${peers:+,}$i=127.0.0.1:$((27378 + i))"; done
  for i in $(seq 1 "$n"); do
    "$R" server --id "$i" --data-dir "$WORK/n$n-$i" --listen "127.0.0.1:$((27378 + i))" \
      --peers "$peers" >"$WORK/n$n-$i.log" 2>&1 &
    PIDS+=($!)
  done
  ENDPOINTS=""
  for i in $(seq 1 "$n"); do ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((27378 + i))"; done
  for _ in $(seq 1 100); do
    "$R" --endpoints "$ENDPOINTS" put bench/ready 1 --timeout 1s 2>/dev/null && return 0
    sleep 0.1
  done
  echo "cluster of $n did not become ready" >&2; exit 1
}

stop_cluster() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}

for nodes in 1 3; do
  start_cluster "$nodes"
  for op in put get; do
    for clients in 1 64; do
      printf '{"nodes":%s,' "$nodes"
      "$R" bench --endpoints "$ENDPOINTS" --op "$op" --clients "$clients" --value-size 256 \
        --duration "$DURATION" --json 2>/dev/null | sed 's/^{//'
    done
  done
  stop_cluster
done
