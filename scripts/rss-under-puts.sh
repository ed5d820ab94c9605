#!/usr/bin/env bash
# Memory under a long write load: a fresh 1-node RaftKV with automatic
# compaction by revision takes puts over 10,000 keys for MINUTES (default
# 10) from `raftkv bench`; the server's RSS and history size (/metrics) are
# sampled every 30 s. Flat RSS after the first minutes is the check: the
# history window, the log and the snapshots are all bounded.
#
#   cargo build --release -p raftkv && scripts/rss-under-puts.sh [MINUTES] [RETENTION]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
RETENTION=${2:-1000}
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh
start_raftkv 1 "$R" --auto-compaction-mode revision --auto-compaction-retention "$RETENTION" >/dev/null
server=${PIDS[0]}
"$R" --endpoints "$ENDPOINTS" bench --op put --keys 10000 --clients 16 \
  --duration "$((MINUTES * 60))s" --json >"$WORK/bench.json" 2>/dev/null &
bench=$!
metric() { # NAME: its value in the server's /metrics (HTTP on the node's port)
  python3 -c '
import sys, urllib.request
text = urllib.request.urlopen("http://%s/metrics" % sys.argv[1], timeout=5).read().decode()
print(next((l.split()[1] for l in text.splitlines() if l.startswith(sys.argv[2] + " ")), "?"))
' "$ENDPOINTS" "$1" 2>/dev/null || echo "?"
}
printf '%8s %10s %12s %12s %14s %14s\n' "minute" "RSS MiB" "revision" "compacted" "history MiB" "data dir MiB"
start=$(date +%s)
while kill -0 "$bench" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  rss=$(awk '/VmRSS/ {print $2}' /proc/"$server"/status)
  history=$(metric raftkv_history_bytes)
  printf '%8.1f %10.1f %12s %12s %14s %14s\n' "$(echo "$now / 60" | bc -l)" "$(echo "$rss / 1024" | bc -l)" \
    "$(metric raftkv_revision)" "$(metric raftkv_compacted_revision)" \
    "$(echo "scale=1; ${history%.*} / 1048576" | bc 2>/dev/null || echo "?")" \
    "$(du -sm "$WORK"/raftkv-1 | cut -f1)"
  sleep 30
done
wait "$bench" || true
python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
ops, p99, errors = j["ops_per_sec"], j["latency_ms"]["p99"], j["errors"]
print(f"bench: {ops:.0f} puts/s, p99 {p99:.2f} ms, errors {errors}")
' "$WORK/bench.json"
