#!/usr/bin/env bash
# etcd's API side by side: the same load generator (`etcd-bench`, crate
# raftkv-loadgen driving etcd's v3 gRPC KV service) against RaftKV's etcd API
# and against etcd 3.4 (Debian's etcd-server) on this machine — put and
# linearizable range with 1 and 64 clients, and txn (a compare and a put, the
# compare-and-swap path) with 64 clients on 100 keys; 256-byte values, fresh
# 1-node and 3-node clusters of each (loopback, ports 27379+ and 23790+).
# Client i talks to member i mod N: RaftKV's followers forward to the leader
# as etcd's do. Stores alternate case by case, ROUNDS times. One line per run:
#   store nodes workload ops/s p50 p99 (ms) errors
#
#   apt-get install etcd-server
#   cargo build --release -p raftkv -p etcd-bench && scripts/compare-etcd-api.sh [SECONDS] [ROUNDS]
#
# WORKLOADS="op clients keys;..." and NODES="1 3" override what runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
ROUNDS=${2:-1}
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh

if [[ -n ${WORKLOADS:-} ]]; then
  IFS=';' read -r -a WORKLOADS <<<"$WORKLOADS"
else
  WORKLOADS=("put 1 1000" "put 64 1000" "get 1 1000" "get 64 1000" "txn 64 100")
fi
for nodes in ${NODES:-1 3}; do
  for _ in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
      read -r op clients keys <<<"$w"
      name="$op c=$clients keys=$keys"
      for store in raftkv etcd; do
        if [[ $store == raftkv ]]; then start_raftkv "$nodes"; else start_etcd "$nodes"; fi
        bench_line "$store" "$nodes" "$name" "$("$E" --endpoints "$ENDPOINTS" --op "$op" --clients "$clients" \
          --connections 0 --keys "$keys" --duration "$SECS" --warmup 2 --json 2>/dev/null)"
        stop_all
      done
    done
  done
done
