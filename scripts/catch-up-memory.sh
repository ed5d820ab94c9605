#!/usr/bin/env bash
# Memory and stalls while followers catch up: a fresh local cluster of N
# nodes (loopback, ports 28379+) under `raftkv bench`; 5 s in, KILL
# followers are killed (SIGKILL, by PID) and DOWN s later started again.
# Every STEP s it samples each server's RSS. Prints the peak RSS per node
# and the bench's throughput and worst latency per op.
#
#   cargo build --release && scripts/catch-up-memory.sh [BINARY]
#   N=5 KILL=2 DOWN=5 CLIENTS=6 DURATION=25 STEP=0.1 \
#     BENCH="--op mixed --read-pct 50 --consistency linearizable" scripts/catch-up-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/raftkv}")
N=${N:-5} KILL=${KILL:-2} DOWN=${DOWN:-5} CLIENTS=${CLIENTS:-6} DURATION=${DURATION:-25}
STEP=${STEP:-0.1} BENCH=${BENCH:---op mixed --read-pct 50 --consistency linearizable}
BASE=${BASE_PORT:-28379}
WORK=$(mktemp -d)
declare -A PID
peers="" endpoints=""
for i in $(seq 1 "$N"); do
  peers+="${peers:+,}$i=127.0.0.1:$((BASE + i - 1))"
  endpoints+="${endpoints:+,}127.0.0.1:$((BASE + i - 1))"
done
start() {
  "$BIN" server --id "$1" --data-dir "$WORK/d$1" --listen "127.0.0.1:$((BASE + $1 - 1))" \
    --peers "$peers" >>"$WORK/n$1.log" 2>&1 &
  PID[$1]=$!
}
BENCH_PID=""
cleanup() {
  for p in "${PID[@]}" $BENCH_PID; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for i in $(seq 1 "$N"); do start "$i"; done
for _ in $(seq 1 150); do
  "$BIN" --endpoints "$endpoints" put bench/ready 1 --timeout 1s >/dev/null 2>&1 && break
  sleep 0.1
done
# shellcheck disable=SC2086
"$BIN" --endpoints "$endpoints" bench $BENCH --clients "$CLIENTS" --duration "${DURATION}s" \
  --json >"$WORK/bench.json" 2>/dev/null &
BENCH_PID=$!
started=$(date +%s%N)
elapsed_ms() { echo $((($(date +%s%N) - started) / 1000000)); }
killed="" restarted=""
while kill -0 "$BENCH_PID" 2>/dev/null; do
  for i in $(seq 1 "$N"); do
    awk -v n="$i" '/VmRSS/ {print n, int($2 / 1024)}' "/proc/${PID[$i]}/status" 2>/dev/null || true
  done >>"$WORK/rss.txt"
  if [[ -z $killed && $(elapsed_ms) -ge 5000 ]]; then
    leader=""
    for i in $(seq 1 "$N"); do
      role=$("$BIN" --endpoints "127.0.0.1:$((BASE + i - 1))" debug raft 2>/dev/null \
        | awk '/^role:/ {gsub(/"/, "", $2); print $2}')
      if [[ $role == leader ]]; then
        leader=$i
      elif [[ $role == follower && $(wc -w <<<"$killed") -lt $KILL ]]; then
        killed+=" $i"
      fi
    done
    for i in $killed; do kill -9 "${PID[$i]}"; wait "${PID[$i]}" 2>/dev/null || true; done
    echo "[$(elapsed_ms) ms] leader $leader; killed followers$killed" >&2
  fi
  if [[ -n $killed && -z $restarted && $(elapsed_ms) -ge $((5000 + DOWN * 1000)) ]]; then
    for i in $killed; do start "$i"; done
    restarted=yes
    echo "[$(elapsed_ms) ms] started them again" >&2
  fi
  sleep "$STEP"
done
wait "$BENCH_PID" || true
BENCH_PID=""
"$BIN" --endpoints "$endpoints" status 2>/dev/null | grep -i -m1 "leader" >&2 || true
python3 - "$WORK/rss.txt" "$WORK/bench.json" <<'PY'
import json, sys
peak = {}
for line in open(sys.argv[1]):
    node, mib = map(int, line.split())
    peak[node] = max(peak.get(node, 0), mib)
bench = json.load(open(sys.argv[2]))
print("peak RSS MiB:", " ".join(f"n{n} {m}" for n, m in sorted(peak.items())))
for op, figures in sorted(bench["by_op"].items()):
    print(f"{op}: {figures['ops_per_sec']:.0f} ops/s, max {figures['latency_ms']['max']:.0f} ms, p99 {figures['latency_ms']['p99']:.1f} ms")
print("errors:", bench["errors"])
PY
