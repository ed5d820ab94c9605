#!/usr/bin/env bash
# Profile of one client putting to one node, RaftKV and etcd side by side
# (the one case of the etcd comparison where RaftKV is level, not ahead).
# For each store: a fresh 1-node cluster (loopback, ports 27379+ / 23790+),
# `put --clients 1` for 14 s with the same load generator, and in its middle
#   - `perf stat` on the server process: CPU, context switches, migrations,
#     reported per operation;
#   - `perf sched record -a` and `perf sched latency`: how long the server's
#     threads waited for a CPU after being woken;
#   - `perf record` (no call graph) on the server: where its CPU time goes.
# Needs perf (linux-perf) and, for etcd, etcd-server; run as root or with
# kernel.perf_event_paranoid <= 1.
#
#   cargo build --release -p raftkv -p etcd-bench && scripts/profile-put-c1.sh [raftkv|etcd|both]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RAFTKV:-target/release/raftkv}
E=${ETCD_BENCH:-target/release/etcd-bench}
WHICH=${1:-both}
WORK=$(mktemp -d)
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh
trap 'stop_all; rm -rf "$WORK"' EXIT
PROFILE_SECS=5

profile() { # store
  local store=$1 server bench_pid
  if [[ $store == raftkv ]]; then
    start_raftkv 1
    server=${PIDS[0]}
    "$R" --endpoints "$ENDPOINTS" bench --op put --clients 1 --duration 14s --warmup 2s --json \
      >"$WORK/bench.json" 2>/dev/null &
  else
    start_etcd 1
    server=${PIDS[0]}
    "$E" --endpoints "$ENDPOINTS" --op put --clients 1 --duration 14 --warmup 2 --json \
      >"$WORK/bench.json" 2>/dev/null &
  fi
  bench_pid=$!
  sleep 4
  perf stat --per-thread -x, -e task-clock,context-switches,cpu-migrations -p "$server" \
    -o "$WORK/stat.csv" -- sleep "$PROFILE_SECS" &
  local stat=$!
  perf sched record -a -o "$WORK/sched.data" -- sleep 2 >/dev/null 2>&1
  wait "$stat"
  perf record -F 1999 -p "$server" -o "$WORK/cpu.data" -- sleep 2 >/dev/null 2>&1
  cat /proc/"$server"/task/*/comm | sort -u >"$WORK/threads.txt"
  wait "$bench_pid"
  stop_all
  python3 - "$store" "$WORK/bench.json" "$WORK/stat.csv" "$PROFILE_SECS" <<'EOF'
import json, sys
store, bench, stat, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
j = json.load(open(bench))
ops = j["ops_per_sec"] * secs
l = j["latency_ms"]
print(f"== {store}: put --clients 1, {j['ops_per_sec']:.0f} ops/s, p50 {l['p50']:.3f} ms, p99 {l['p99']:.3f} ms")
import collections, re
total = collections.Counter()
by_thread = collections.defaultdict(collections.Counter)
for line in open(stat):
    parts = line.strip().split(",")
    # --per-thread -x,: thread-tid,value,unit,event,...
    if len(parts) < 4:
        continue
    try:
        value = float(parts[1])
    except ValueError:
        continue
    thread = re.sub(r"-\d+$", "", parts[0])
    event = parts[3]
    total[event] += value
    by_thread[thread][event] += value
for event, value in sorted(total.items()):
    if event.startswith("task-clock"):
        print(f"server CPU per put:              {value * 1000 / ops:7.1f} us")
    else:
        print(f"server {event + ' per put:':25} {value / ops:7.2f}")
print("per thread kind: CPU us / context switches, per put")
for thread, c in sorted(by_thread.items(), key=lambda kv: -kv[1]["context-switches"]):
    cpu = sum(v for e, v in c.items() if e.startswith("task-clock"))
    if c["context-switches"] / ops >= 0.05 or cpu * 1000 / ops >= 5:
        print(f"  {thread:24} {cpu * 1000 / ops:7.1f} us  {c['context-switches'] / ops:6.2f}")
EOF
  echo "-- wake-up to running delay of the server's threads (perf sched latency)"
  perf sched latency -i "$WORK/sched.data" --sort avg 2>/dev/null | grep -E " Task |$(paste -sd'|' "$WORK/threads.txt")" | head -10 || true
  echo "-- server CPU by symbol (perf report, over 2%)"
  perf report -i "$WORK/cpu.data" --no-children --sort dso,sym --percent-limit 2 --stdio 2>/dev/null |
    grep -E "^ +[0-9]" | head -15 || true
  rm -f "$WORK"/*.data
}

case $WHICH in
  raftkv | etcd) profile "$WHICH" ;;
  both) profile raftkv; profile etcd ;;
  *) echo "usage: $0 [raftkv|etcd|both]" >&2; exit 2 ;;
esac
