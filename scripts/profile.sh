#!/usr/bin/env bash
# A profile of one bench case on a fresh 1-node cluster of RaftKV, etcd or
# both side by side (loopback, ports 27379+ / 23790+), with the same load
# generator. The case runs for 14 s (2 s warmup); in its middle:
#   - `perf stat --per-thread` on the server process: CPU, context switches,
#     syscalls and migrations per operation, and per kind of thread;
#   - `perf sched record -a` and `perf sched latency`: how long the server's
#     threads waited for a CPU after being woken;
#   - `perf record -a` (no call graph): where the machine's CPU goes, by
#     process and by symbol.
# Needs perf (linux-perf) and, for etcd, etcd-server; run as root or with
# kernel.perf_event_paranoid <= 1. BENCH ARGS default to
# `--op put --clients 1` (the one case of the etcd comparison where RaftKV
# is level, not ahead); etcd-bench takes --op put|get, --clients,
# --connections, --value-size, --keys.
#
#   cargo build --release -p raftkv -p etcd-bench
#   scripts/profile.sh [raftkv|etcd|both] [BENCH ARGS...]
#   e.g. scripts/profile.sh raftkv --op get --clients 64 --consistency lease
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-both}
shift || true
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(--op put --clients 1)
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh
PROFILE_SECS=5

profile() { # store
  local store=$1 server bench_pid
  if [[ $store == raftkv ]]; then
    start_raftkv 1
    server=${PIDS[0]}
    "$R" --endpoints "$ENDPOINTS" bench "${ARGS[@]}" --duration 14s --warmup 2s --json \
      >"$WORK/bench.json" 2>/dev/null &
  else
    start_etcd 1
    server=${PIDS[0]}
    "$E" --endpoints "$ENDPOINTS" "${ARGS[@]}" --duration 14 --warmup 2 --json \
      >"$WORK/bench.json" 2>/dev/null &
  fi
  bench_pid=$!
  sleep 4
  perf stat --per-thread -x, -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter -p "$server" \
    -o "$WORK/stat.csv" -- sleep "$PROFILE_SECS" &
  local stat=$!
  perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$bench_pid" \
    -o "$WORK/bench-stat.csv" -- sleep "$PROFILE_SECS" &
  local bench_stat=$!
  perf sched record -a -o "$WORK/sched.data" -- sleep 2 >/dev/null 2>&1
  wait "$stat" "$bench_stat"
  perf record -a -F 1999 -o "$WORK/cpu.data" -- sleep 2 >/dev/null 2>&1
  cat /proc/"$server"/task/*/comm | sort -u >"$WORK/threads.txt"
  wait "$bench_pid"
  stop_all
  python3 - "$store" "$WORK/bench.json" "$WORK/stat.csv" "$PROFILE_SECS" "${ARGS[*]}" "$WORK/bench-stat.csv" <<'EOF'
import json, sys
store, bench, stat, secs, case = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
j = json.load(open(bench))
ops = j["ops_per_sec"] * secs
l = j["latency_ms"]
print(f"== {store}: {case}, {j['ops_per_sec']:.0f} ops/s, p50 {l['p50']:.3f} ms, p99 {l['p99']:.3f} ms")
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
        print(f"server CPU per op:               {value * 1000 / ops:7.1f} us")
    else:
        print(f"server {event + ' per op:':25} {value / ops:7.2f}")
load = collections.Counter()
for line in open(sys.argv[6]):
    parts = line.strip().split(",")
    try:
        load[parts[2]] += float(parts[0])
    except (ValueError, IndexError):
        continue
print(f"load generator per op:            {load['task-clock'] * 1000 / ops:7.1f} us CPU, "
      f"{load['context-switches'] / ops:.2f} context switches, {load['raw_syscalls:sys_enter'] / ops:.2f} syscalls")
print("server per thread kind, per op: CPU us / context switches / syscalls")
for thread, c in sorted(by_thread.items(), key=lambda kv: -kv[1]["context-switches"]):
    cpu = sum(v for e, v in c.items() if e.startswith("task-clock"))
    if c["context-switches"] / ops >= 0.05 or cpu * 1000 / ops >= 5:
        print(f"  {thread:24} {cpu * 1000 / ops:7.1f} us  {c['context-switches'] / ops:6.2f}  {c['raw_syscalls:sys_enter'] / ops:6.2f}")
EOF
  echo "-- wake-up to running delay of the server's threads (perf sched latency)"
  perf sched latency -i "$WORK/sched.data" --sort avg 2>/dev/null | grep -E " Task |$(paste -sd'|' "$WORK/threads.txt")" | head -10 || true
  echo "-- the server's share of the machine's CPU samples, by symbol (perf record -a, over 1.5%)"
  perf report -i "$WORK/cpu.data" --pid "$server" --no-children --sort dso,sym --percent-limit 1.5 --stdio 2>/dev/null |
    grep -E "^ +[0-9]" | head -12 || true
  rm -f "$WORK"/*.data
}

case $WHICH in
  raftkv | etcd) profile "$WHICH" ;;
  both) profile raftkv; profile etcd ;;
  *) echo "usage: $0 [raftkv|etcd|both]" >&2; exit 2 ;;
esac
