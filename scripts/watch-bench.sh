#!/usr/bin/env bash
# Watchers side by side with etcd 3.4: a fresh 1-node RaftKV and etcd each
# take puts at a fixed rate from `etcd-bench` (16 clients, 1,000 keys)
# while watch streams on the written prefix are read as fast as they come;
# in the last case one more stream reads nothing until the load ends (a slow
# consumer), with 4 KiB values (more than the client's HTTP/2 windows and
# socket buffers hold) for longer than RaftKV's history window (10,000
# revisions), so RaftKV must drop it. Cases (watchers, slow ones, puts/s,
# seconds, value bytes): 0 0 2000 10 256; 100 0 2000 10 256;
# 1000 0 200 10 256; 10 1 1000 15 4096. CASES="..." (;-separated) overrides;
# SERVER_FLAGS="..." is given to both servers (flags they share, such as
# --auto-compaction-mode revision --auto-compaction-retention 1000).
# Prints, per run: puts/s and their p99, events/s delivered to the watchers,
# how the slow stream ended (cancelled with a compact revision, or whole with
# the events queued for it), and the server's peak RSS (VmHWM).
#
#   apt-get install etcd-server
#   cargo build --release -p raftkv -p etcd-bench && scripts/watch-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh

IFS=';' read -r -a CASES <<<"${CASES:-0 0 2000 10 256;100 0 2000 10 256;1000 0 200 10 256;10 1 1000 15 4096}"
for case in "${CASES[@]}"; do
  read -r fast slow RATE SECS SIZE <<<"$case"
  for store in raftkv etcd; do
    # shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
    if [[ $store == raftkv ]]; then start_raftkv 1 "$R" ${SERVER_FLAGS:-}; else start_etcd 1 ${SERVER_FLAGS:-}; fi
    server=${PIDS[0]}
    out=$("$E" --endpoints "$ENDPOINTS" --op put --clients 16 --rate "$RATE" --duration "$SECS" \
      --value-size "$SIZE" --watchers "$fast" --slow-watchers "$slow" --json 2>/dev/null)
    hwm=$(awk '/VmHWM/ {print $2}' /proc/"$server"/status)
    stop_all
    python3 -c '
import json, sys
store, fast, hwm, raw = sys.argv[1:5]
j = json.loads(raw)
w = j.get("watch") or {}
ops, p99 = j["ops_per_sec"], j["latency_ms"]["p99"]
events = w.get("events_per_sec", 0)
slow = w.get("slow") or []
def end(s):
    n, rev = s["events"], s["compact_revision"]
    if rev is None:
        return f"whole, {n} events queued"
    return f"cancelled at compact revision {rev} after {n} events"
ends = ", ".join(end(s) for s in slow) or "-"
print(f"{store:6} watchers {fast:>4}+{len(slow)}: {ops:7.0f} puts/s  p99 {p99:6.2f} ms  {events:10.0f} events/s  peak RSS {int(hwm) / 1024:6.1f} MiB  slow: {ends}")
' "$store" "$fast" "$hwm" "$out"
  done
done
