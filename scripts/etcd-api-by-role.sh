#!/usr/bin/env bash
# One client through etcd's API, by the role of the member it talks to: a
# fresh 3-node RaftKV and etcd 3.4 (Debian's etcd-server) each take put and
# linearizable range from `etcd-bench --clients 1` sent to their leader, then
# to a follower (which forwards writes to the leader: RaftKV over a gRPC call,
# etcd through raft's message stream). With one client, who leads decides
# the figure more than the store does; this compares like with like.
# Stores alternate round by round, ROUNDS times; one line per run:
#   store-role nodes workload ops/s p50 p99 (ms) errors
# STORES (default "raftkv etcd") lists the stores of a round: `raftkv`,
# `etcd`, or NAME=BINARY for another raftkv build (A/B of two builds).
#
#   apt-get install etcd-server etcd-client
#   cargo build --release -p raftkv -p etcd-bench && scripts/etcd-api-by-role.sh [SECONDS] [ROUNDS]
#   STORES="before=/tmp/raftkv-old raftkv etcd" scripts/etcd-api-by-role.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
ROUNDS=${2:-3}
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh

# The index in ENDPOINTS of the member that leads (etcdctl endpoint status).
leader_index() {
  local status
  status=$(ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint status -w json)
  python3 -c '
import json, sys
for i, e in enumerate(json.loads(sys.argv[1])):
    if e["Status"]["leader"] == e["Status"]["header"]["member_id"]:
        print(i)
' "$status"
}

for _ in $(seq 1 "$ROUNDS"); do
  for store in ${STORES:-raftkv etcd}; do
    case $store in
      etcd) start_etcd 3 ;;
      raftkv) start_raftkv 3 ;;
      *=*) start_raftkv 3 "${store#*=}"; store=${store%%=*} ;;
      *) echo "unknown store $store" >&2; exit 2 ;;
    esac
    IFS=',' read -r -a eps <<<"$ENDPOINTS"
    leader=$(leader_index)
    for role in leader follower; do
      at=$leader
      [[ $role == follower ]] && at=$(((leader + 1) % 3))
      for op in put get; do
        bench_line "$store-$role" 3 "$op c=1" "$("$E" --endpoints "${eps[$at]}" --op "$op" --clients 1 \
          --connections 0 --keys 1000 --duration "$SECS" --warmup 2 --json 2>/dev/null)"
      done
    done
    stop_all
  done
done
