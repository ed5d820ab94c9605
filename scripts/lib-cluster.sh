# Shared by the bench scripts (sourced, not run): start and stop local
# RaftKV and etcd clusters on loopback. Every process started is recorded
# in PIDS and stopped by PID; nothing else is touched.
#
# Sourced from the repository's root. Sets R and E (the raftkv and
# etcd-bench binaries: $RAFTKV / $ETCD_BENCH, else the release builds) unless
# the script set them, WORK (a scratch directory, removed on exit) unless set,
# and ENDPOINTS (comma-separated) when a cluster starts; on exit every
# process it started is stopped.

R=${R:-${RAFTKV:-target/release/raftkv}}
E=${E:-${ETCD_BENCH:-target/release/etcd-bench}}
WORK=${WORK:-$(mktemp -d)}
PIDS=()
ENDPOINTS=""
RAFTKV_BASE_PORT=${RAFTKV_BASE_PORT:-27379}
ETCD_BASE_PORT=${ETCD_BASE_PORT:-23790}

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

# start_raftkv NODES [BINARY [SERVER FLAGS...]]: a fresh static cluster,
# node i on port RAFTKV_BASE_PORT+i-1; returns once a write succeeds.
start_raftkv() {
  local n=$1 bin=${2:-$R} peers="" i
  shift $(($# < 2 ? $# : 2))
  rm -rf "$WORK"/raftkv-*
  for i in $(seq 1 "$n"); do peers+="${peers:+,}$i=127.0.0.1:$((RAFTKV_BASE_PORT + i - 1))"; done
  ENDPOINTS=""
  for i in $(seq 1 "$n"); do
    "$bin" server --id "$i" --data-dir "$WORK/raftkv-$i" \
      --listen "127.0.0.1:$((RAFTKV_BASE_PORT + i - 1))" --peers "$peers" "$@" \
      >"$WORK/raftkv-$i.log" 2>&1 &
    PIDS+=($!)
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((RAFTKV_BASE_PORT + i - 1))"
  done
  for _ in $(seq 1 150); do
    "$bin" --endpoints "$ENDPOINTS" put bench/ready 1 --timeout 1s >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "raftkv cluster of $n did not become ready (logs in $WORK)" >&2
  return 1
}

# start_etcd NODES [SERVER FLAGS...]: a fresh etcd cluster (Debian's
# etcd-server), member i serving clients on ETCD_BASE_PORT+2(i-1) and peers
# on the port after.
start_etcd() {
  local n=$1 cluster="" i
  shift
  rm -rf "$WORK"/etcd-*
  for i in $(seq 1 "$n"); do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$((ETCD_BASE_PORT + 2 * i - 1))"
  done
  ENDPOINTS=""
  for i in $(seq 1 "$n"); do
    local client=$((ETCD_BASE_PORT + 2 * i - 2)) peer=$((ETCD_BASE_PORT + 2 * i - 1))
    etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new "$@" >"$WORK/etcd-$i.log" 2>&1 &
    PIDS+=($!)
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$client"
  done
  for _ in $(seq 1 150); do
    "$E" --endpoints "$ENDPOINTS" --op put --clients 1 --duration 0.2 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd cluster of $n did not become ready (logs in $WORK)" >&2
  return 1
}

# bench_line STORE NODES WORKLOAD JSON: one line of a bench's JSON report
# (`raftkv bench --json` or `etcd-bench --json`).
bench_line() {
  python3 -c '
import json, sys
store, nodes, workload, raw = sys.argv[1:5]
j = json.loads(raw)
l = j["latency_ms"]
ops, p50, p99, errors = j["ops_per_sec"], l["p50"], l["p99"], j["errors"]
print(f"{store:6} {nodes} {workload:22} {ops:9.0f} ops/s  p50 {p50:6.2f}  p99 {p99:6.2f} ms  errors {errors}")
' "$@"
}
