#!/usr/bin/env bash
# The BENCHMARKS.md matrix (issue 7; feature list §4 and §8.3), run with
# `raftkv bench` against fresh local clusters of 1, 3, 5 and 7 nodes
# (loopback, ports 27379+): put latency and throughput with 1, 16, 64 and
# 256 clients; linearizable (ReadIndex) and lease reads; batches of 1, 10 and
# 100 keys; open loops of 100, 1,000 and 10,000 ops/s (and the acceptance
# rates: 5,000 puts/s and 20,000 lease gets/s on one node, 2,000 puts/s on 3
# and 5); value sizes from 256 B to 100 MiB on 3 nodes.
#
#   cargo build --release && scripts/bench-matrix.sh [DURATION] [SECTION...] > matrix.jsonl
#   scripts/bench-table.py < matrix.jsonl          # the tables of BENCHMARKS.md
#
# DURATION (default 8s) is each case's measured time, after a 2 s warmup.
# SECTIONs (default all but floors): n1 n3 n5 n7 values, and floors (only
# the acceptance cases; repeat it, e.g. `floors floors floors`, to see the
# spread from run to run). One JSON line per case on
# stdout: {"section", "nodes", "case", ...the `raftkv bench --json` line};
# progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-8s}
shift || true
SECTIONS=("$@")
[[ ${#SECTIONS[@]} -gt 0 ]] || SECTIONS=(n1 n3 n5 n7 values)
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh

NODES=0
SECTION=""
# run CASE-ARGS...: one bench run on the current cluster, as one JSON line.
run() {
  local args="$*" out
  echo "[$(date -u +%H:%M:%S)] $SECTION nodes=$NODES: bench $args" >&2
  # shellcheck disable=SC2086
  if ! out=$("$R" --endpoints "$ENDPOINTS" --timeout 30s bench $args --json 2>/dev/null); then
    out='{"failed":true}'
  fi
  printf '{"section":"%s","nodes":%s,"case":"%s",%s\n' "$SECTION" "$NODES" "$args" "${out#\{}"
}

timed() { echo "--duration $DURATION --warmup 2s $*"; }

cluster_cases() { # nodes
  NODES=$1
  SECTION="n$1"
  start_raftkv "$NODES"
  for c in 1 16 64 256; do run "$(timed --op put --clients $c)"; done
  run "$(timed --op put --clients 64 --connections 0)"
  for consistency in linearizable lease; do
    run "$(timed --op get --clients 1 --consistency $consistency)"
    run "$(timed --op get --clients 64 --consistency $consistency)"
    run "$(timed --op get --clients 64 --connections 0 --consistency $consistency)"
  done
  if [[ $NODES -le 3 ]]; then
    for b in 10 100; do
      run "$(timed --op put --clients 64 --batch $b)"
      run "$(timed --op get --clients 64 --batch $b --consistency lease)"
    done
    run "$(timed --op mixed --read-pct 90 --clients 64)"
  fi
  local rates=(100 1000 10000)
  [[ $NODES -eq 1 ]] && rates+=(5000)
  [[ $NODES -eq 3 || $NODES -eq 5 ]] && rates+=(2000)
  for rate in "${rates[@]}"; do run "$(timed --op put --clients 64 --rate $rate)"; done
  if [[ $NODES -eq 1 ]]; then
    run "$(timed --op get --clients 64 --rate 20000 --consistency lease)"
  fi
  stop_all
}

# Only the cases behind issue 7's acceptance floors, each cluster fresh:
# quick (about 3 minutes), so it can be repeated to see the machine's spread.
floor_cases() {
  NODES=1
  SECTION=floors-n1
  start_raftkv 1
  run "$(timed --op put --clients 64)"
  run "$(timed --op put --clients 64 --connections 0)"
  run "$(timed --op put --clients 64 --rate 5000)"
  run "$(timed --op get --clients 64 --consistency lease)"
  run "$(timed --op get --clients 64 --connections 0 --consistency lease)"
  run "$(timed --op get --clients 64 --rate 20000 --consistency lease)"
  run "$(timed --op get --clients 64 --connections 0 --rate 20000 --consistency lease)"
  stop_all
  NODES=3
  SECTION=floors-n3
  start_raftkv 3
  run "$(timed --op put --clients 64)"
  run "$(timed --op put --clients 64 --connections 0)"
  run "$(timed --op get --clients 64 --consistency linearizable)"
  run "$(timed --op get --clients 64 --connections 0 --consistency linearizable)"
  run "$(timed --op put --clients 64 --rate 2000)"
  stop_all
  NODES=5
  SECTION=floors-n5
  start_raftkv 5
  run "$(timed --op put --clients 64 --rate 2000)"
  stop_all
}

value_cases() {
  NODES=3
  SECTION=values
  start_raftkv 3
  run "$(timed --op put --clients 16 --value-size 256)"
  run "$(timed --op put --clients 16 --value-size 4KiB)"
  run "$(timed --op put --clients 16 --value-size 64KiB --keys 1000)"
  run "--op put --clients 4 --value-size 1MiB --keys 100 --ops 400"
  run "--op get --clients 4 --value-size 1MiB --keys 100 --ops 400"
  run "--op put --clients 1 --value-size 10MiB --keys 10 --ops 40"
  run "--op get --clients 1 --value-size 10MiB --keys 10 --ops 40"
  run "--op put --clients 1 --value-size 100MiB --keys 2 --ops 6"
  run "--op get --clients 1 --value-size 100MiB --keys 2 --ops 6"
  stop_all
}

for section in "${SECTIONS[@]}"; do
  case $section in
    n1) cluster_cases 1 ;;
    n3) cluster_cases 3 ;;
    n5) cluster_cases 5 ;;
    n7) cluster_cases 7 ;;
    values) value_cases ;;
    floors) floor_cases ;;
    *) echo "unknown section $section (n1 n3 n5 n7 values floors)" >&2; exit 2 ;;
  esac
done
