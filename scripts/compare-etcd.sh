#!/usr/bin/env bash
# Side by side with etcd 3.4 (Debian's etcd-server package) on this machine:
# the same load generator (crate raftkv-loadgen) drives RaftKV (`raftkv bench`)
# and etcd (`etcd-bench`) with the same workloads — put with 1 and 64
# clients, linearizable get with 64 clients, 256-byte values, 1,000 keys — on
# a fresh 1-node and a fresh 3-node cluster of each (loopback, ports 27379+
# and 23790+). Both stores fsync every write (etcd's default; RaftKV always).
# Each 64-client case runs twice: one connection per client, and the 64
# clients sharing CONNS connections (default 4) on both stores.
# Stores alternate case by case, ROUNDS times (default 2), so drift of the
# machine hits both alike. Prints one line per run:
#   store nodes workload ops/s p50 p99 (ms) errors
#
#   apt-get install etcd-server
#   cargo build --release -p raftkv -p etcd-bench && scripts/compare-etcd.sh [SECONDS] [ROUNDS] [CONNS]
#
# WORKLOADS="op clients conns;..." and NODES="1 3" override what runs, e.g.
#   NODES=1 WORKLOADS="put 1 0" scripts/compare-etcd.sh 10 5
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
ROUNDS=${2:-2}
CONNS=${3:-4}
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh

if [[ -n ${WORKLOADS:-} ]]; then
  IFS=';' read -r -a WORKLOADS <<<"$WORKLOADS"
else
  WORKLOADS=("put 1 0" "put 64 0" "put 64 $CONNS" "get 64 0" "get 64 $CONNS")
fi
for nodes in ${NODES:-1 3}; do
  for _ in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
      read -r op clients conns <<<"$w"
      name="$op c=$clients"
      [[ $conns == 0 ]] || name+=" conns=$conns"
      start_raftkv "$nodes"
      bench_line raftkv "$nodes" "$name" "$("$R" --endpoints "$ENDPOINTS" bench --op "$op" --clients "$clients" \
        --connections "$conns" --duration "${SECS}s" --warmup 2s --json 2>/dev/null)"
      stop_all
      start_etcd "$nodes"
      bench_line etcd "$nodes" "$name" "$("$E" --endpoints "$ENDPOINTS" --op "$op" --clients "$clients" \
        --connections "$conns" --duration "$SECS" --warmup 2 --json 2>/dev/null)"
      stop_all
    done
  done
done
