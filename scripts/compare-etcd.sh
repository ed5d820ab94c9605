#!/usr/bin/env bash
# Side by side with etcd 3.4 (Debian's etcd-server package) on this machine:
# the same load generator (crate raftkv-loadgen) drives RaftKV (`raftkv bench`)
# and etcd (`etcd-bench`) with the same workloads — put with 1 and 64
# clients, linearizable get with 64 clients, 256-byte values — on a fresh
# 1-node and a fresh 3-node cluster of each (loopback, ports 27379+ and
# 23790+). Both stores fsync every write (etcd's default; RaftKV always).
# Prints one line per run: store nodes workload ops/s p50 p99 (ms) errors.
#
#   apt-get install etcd-server
#   cargo build --release -p raftkv -p etcd-bench && scripts/compare-etcd.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RAFTKV:-target/release/raftkv}
E=${ETCD_BENCH:-target/release/etcd-bench}
SECS=${1:-10}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }

start_raftkv() { # nodes
  local n=$1 peers="" i
  for i in $(seq 1 "$n"); do peers+="${peers:+,}$i=127.0.0.1:$((27378 + i))"; done
  ENDPOINTS=""
  for i in $(seq 1 "$n"); do
    "$R" server --id "$i" --data-dir "$WORK/r$n-$i" --listen "127.0.0.1:$((27378 + i))" \
      --peers "$peers" >"$WORK/r$n-$i.log" 2>&1 &
    PIDS+=($!)
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((27378 + i))"
  done
  for _ in $(seq 1 100); do
    "$R" --endpoints "$ENDPOINTS" put bench/ready 1 --timeout 1s 2>/dev/null && return 0
    sleep 0.1
  done
  echo "raftkv cluster of $n did not become ready" >&2; exit 1
}

start_etcd() { # nodes
  local n=$1 cluster="" i
  for i in $(seq 1 "$n"); do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((23799 + 2 * i))"; done
  ENDPOINTS=""
  for i in $(seq 1 "$n"); do
    local client=$((23798 + 2 * i)) peer=$((23799 + 2 * i))
    etcd --name "e$i" --data-dir "$WORK/e$n-$i" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new >"$WORK/e$n-$i.log" 2>&1 &
    PIDS+=($!)
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$client"
  done
  for _ in $(seq 1 100); do
    "$E" --endpoints "$ENDPOINTS" --op put --clients 1 --duration 0.2 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd cluster of $n did not become ready" >&2; exit 1
}

line() { # store nodes workload json
  python3 -c '
import json, sys
store, nodes, workload, raw = sys.argv[1:5]
j = json.loads(raw)
l = j["latency_ms"]
ops, p50, p99, errors = j["ops_per_sec"], l["p50"], l["p99"], j["errors"]
print(f"{store:6} {nodes} {workload:14} {ops:9.0f} ops/s  p50 {p50:6.2f}  p99 {p99:6.2f} ms  errors {errors}")
' "$@"
}

for nodes in 1 3; do
  start_raftkv "$nodes"
  line raftkv "$nodes" "put c=1" "$("$R" --endpoints "$ENDPOINTS" bench --op put --clients 1 --duration "${SECS}s" --warmup 2s --json 2>/dev/null)"
  line raftkv "$nodes" "put c=64" "$("$R" --endpoints "$ENDPOINTS" bench --op put --clients 64 --duration "${SECS}s" --warmup 2s --json 2>/dev/null)"
  line raftkv "$nodes" "get c=64" "$("$R" --endpoints "$ENDPOINTS" bench --op get --clients 64 --duration "${SECS}s" --warmup 2s --json 2>/dev/null)"
  stop_all
  start_etcd "$nodes"
  line etcd "$nodes" "put c=1" "$("$E" --endpoints "$ENDPOINTS" --op put --clients 1 --duration "$SECS" --warmup 2 --json 2>/dev/null)"
  line etcd "$nodes" "put c=64" "$("$E" --endpoints "$ENDPOINTS" --op put --clients 64 --duration "$SECS" --warmup 2 --json 2>/dev/null)"
  line etcd "$nodes" "get c=64" "$("$E" --endpoints "$ENDPOINTS" --op get --clients 64 --duration "$SECS" --warmup 2 --json 2>/dev/null)"
  stop_all
done
