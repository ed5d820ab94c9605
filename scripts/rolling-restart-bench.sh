#!/usr/bin/env bash
# What a client sees of a rolling restart: 3 nodes on loopback, `raftkv bench`
# with 8 clients (half gets, half puts) running throughout; every node in turn
# (the leader last) is stopped with SIGTERM, started again, and waited for
# (/readyz) before the next. Then the same bench without restarts, for
# comparison. Prints, per run: ops/s, p99, p999 and max latency (the longest
# client-visible pause), and the errors the clients saw.
#
#   scripts/rolling-restart-bench.sh [BINARY]     (default: target/release/raftkv)
set -euo pipefail
BIN=$(realpath "${1:-target/release/raftkv}")
BASE=${PORT:-27600}
DIR=$(mktemp -d)
PEERS="1=127.0.0.1:$BASE,2=127.0.0.1:$((BASE + 1)),3=127.0.0.1:$((BASE + 2))"
EP="127.0.0.1:$BASE,127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"
declare -A PID
start() { # id
  local id=$1
  "$BIN" server --id "$id" --data-dir "$DIR/d$id" --listen "127.0.0.1:$((BASE + id - 1))" \
    --peers "$PEERS" >>"$DIR/log$id" 2>&1 &
  PID[$id]=$!
}
ready() { # id: wait until /readyz answers 200
  local port=$((BASE + $1 - 1))
  for _ in $(seq 1 200); do
    if python3 -c 'import sys,urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/readyz" % sys.argv[1], timeout=1)' "$port" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "node $1 not ready" >&2
  return 1
}
stop_all() {
  for id in 1 2 3; do kill "${PID[$id]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'stop_all; rm -rf "$DIR"' EXIT
report() { # label
  python3 -c 'import json,sys
d=json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
for op, r in d["by_op"].items():
    l=r["latency_ms"]
    print(sys.argv[1], op, round(r["ops_per_sec"]), "ops/s p99", l["p99"], "ms p999", l["p999"], "ms max", l["max"], "ms")
print(sys.argv[1], "errors", d["errors"])' "$1" "$DIR/bench.json"
}
bench() { # seconds
  "$BIN" --endpoints "$EP" bench --op mixed --read-pct 50 --clients 8 --duration "$1s" \
    --warmup 1s --prefix roll/ --json >"$DIR/bench.json" 2>"$DIR/bench.err"
}
for id in 1 2 3; do start "$id"; done
for id in 1 2 3; do ready "$id"; done
leader=$("$BIN" --endpoints "$EP" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
order=()
for id in 1 2 3; do [[ $id != "$leader" ]] && order+=("$id"); done
order+=("$leader")

bench 30 &
bench_pid=$!
sleep 4
for id in "${order[@]}"; do
  t0=$(date +%s.%N)
  kill -TERM "${PID[$id]}"
  wait "${PID[$id]}" 2>/dev/null || true
  start "$id"
  ready "$id"
  echo "node $id restarted (leader: $([[ $id == "$leader" ]] && echo yes || echo no)) in $(python3 -c "import sys; print(round($(date +%s.%N) - $t0, 2))") s"
  sleep 4
done
wait "$bench_pid"
report "rolling restart"
bench 30
report "no restart     "
