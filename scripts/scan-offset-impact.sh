#!/usr/bin/env bash
# Put latency on one node while scans with huge offsets run, two builds side
# by side. For each binary: a fresh single node, KEYS keys loaded, then an
# open-loop put bench (1,000 puts/s, 8 clients, SECONDS) alone and again while
# 8 shell loops each run `raftkv scan bench/ --offset OFFSET --limit 1` and
# pause 100 ms (OFFSET defaults to 18446744073709551615; the pause keeps the
# request rate the same for both builds, and the machine's cores for the server). Prints the put P99 of both runs for each binary, and how many
# scans the loops finished. Loopback, port 27379; stops only what it started.
#
#   scripts/scan-offset-impact.sh BINARY_A BINARY_B [KEYS] [SECONDS]
#   e.g. scripts/scan-offset-impact.sh /tmp/raftkv-before target/release/raftkv 1000000 15
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 BINARY_A BINARY_B [KEYS] [SECONDS]" >&2; exit 2; }
A=$(realpath "$1") B=$(realpath "$2") KEYS=${3:-1000000} SECONDS_=${4:-15}
OFFSET=${OFFSET:-18446744073709551615}
WORK=$(mktemp -d)
source "$(dirname "$0")/lib-cluster.sh"
LOOPS=()
stop_loops() {
  local p
  for p in "${LOOPS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${LOOPS[@]}"; do wait "$p" 2>/dev/null || true; done
  LOOPS=()
}
trap 'stop_loops; stop_all; rm -rf "$WORK"' EXIT

p99() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["latency_ms"]["p99"])'; }

measure() {
  local name=$1 bin=$2
  start_raftkv 1 "$bin"
  "$bin" --endpoints "$ENDPOINTS" bench --op get --keys "$KEYS" --value-size 16 --ops 1 \
    --clients 1 --json >/dev/null
  local alone busy
  alone=$("$bin" --endpoints "$ENDPOINTS" bench --op put --keys 1000 --rate 1000 --clients 8 \
    --duration "${SECONDS_}s" --warmup 1s --json | p99)
  local i
  for i in $(seq 1 8); do
    (
      n=0
      while :; do
        "$bin" --endpoints "$ENDPOINTS" scan bench/ --offset "$OFFSET" --limit 1 \
          --timeout 30s >/dev/null 2>&1 || true
        n=$((n + 1))
        sleep 0.1
        echo "$n" >"$WORK/scans-$i"
      done
    ) &
    LOOPS+=($!)
  done
  sleep 1
  busy=$("$bin" --endpoints "$ENDPOINTS" bench --op put --keys 1000 --rate 1000 --clients 8 \
    --duration "${SECONDS_}s" --warmup 1s --json | p99)
  stop_loops
  local scans=0 f
  for f in "$WORK"/scans-*; do scans=$((scans + $(cat "$f"))); done
  rm -f "$WORK"/scans-*
  stop_all
  printf '%s: %s keys; put P99 at 1,000/s alone %s ms, with 8 scan loops at offset %s %s ms (%s scans sent)\n' \
    "$name" "$KEYS" "$alone" "$OFFSET" "$busy" "$scans"
}

measure A "$A"
measure B "$B"
