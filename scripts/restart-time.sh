#!/usr/bin/env bash
# Restart time of a single node, two builds side by side: each binary gets
# its own data directory with PUTS puts in it, then ROUNDS times, A and B
# alternating, the node is started on that directory with the page cache of
# its WAL files dropped first (as after a reboot; posix_fadvise DONTNEED, no
# root needed), and the time from spawn to the first linearizable get served
# is printed. Loopback, port 27379; stops only the processes it started.
#
#   scripts/restart-time.sh BINARY_A BINARY_B ROUNDS [PUTS]
#   e.g. scripts/restart-time.sh /tmp/raftkv-before target/release/raftkv 5 0
#
# PUTS=0 restarts a node that holds only its first entries. TORN=1 writes 4 KiB
# of random bytes a little after the end of the data in the last WAL segment
# before each start, as a crash in the middle of a write can leave: the node
# cuts them off as a torn tail, after looking for an intact batch beyond them.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 BINARY_A BINARY_B ROUNDS [PUTS]" >&2; exit 2; }
A=$(realpath "$1") B=$(realpath "$2") ROUNDS=$3 PUTS=${4:-0}
PORT=${RAFTKV_BASE_PORT:-27379}
ADDR=127.0.0.1:$PORT
WORK=$(mktemp -d)
PID=""
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

# serve BINARY DIR: starts the node; returns once a linearizable get is served.
serve() {
  "$1" server --data-dir "$2" --listen "$ADDR" >>"$2.log" 2>&1 &
  PID=$!
  local rc
  for _ in $(seq 1 2000); do
    rc=0
    "$1" --endpoints "$ADDR" get bench/ready --timeout 1s >/dev/null 2>&1 || rc=$?
    # 0: found, 1: not found (exit codes: docs/REFERENCE.md §1) — either way a get was served.
    [[ $rc -le 1 ]] && return 0
    sleep 0.005
  done
  echo "node on $2 served no get (log: $2.log)" >&2
  return 1
}

stop() {
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
}

for label in A B; do
  bin=$A; [[ $label == B ]] && bin=$B
  serve "$bin" "$WORK/$label"
  "$bin" --endpoints "$ADDR" put bench/ready 1 >/dev/null
  if [[ $PUTS -gt 0 ]]; then
    "$bin" --endpoints "$ADDR" bench --op put --clients 16 --ops "$PUTS" >/dev/null 2>&1
  fi
  stop
done

for round in $(seq 1 "$ROUNDS"); do
  for label in A B; do
    bin=$A; [[ $label == B ]] && bin=$B
    python3 - "$WORK/$label/wal" "${TORN:-0}" <<'EOF'
import os, sys
wal, torn = sys.argv[1], sys.argv[2] == "1"
def drop_cache():
    for name in os.listdir(wal):
        fd = os.open(os.path.join(wal, name), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
if torn:
    # Read only up to the first hole: cached pages of the preallocated tail
    # would count as data for SEEK_DATA, which a crash does not leave behind.
    drop_cache()
    last = os.path.join(wal, max(n for n in os.listdir(wal) if n.endswith(".wal")))
    with open(last, "r+b") as f:
        first_hole = os.lseek(f.fileno(), 0, os.SEEK_HOLE)
        f.seek(0)
        data = f.read(first_hole)
        f.seek(len(data.rstrip(b"\0")) + 64)
        f.write(os.urandom(4096))
        f.flush()
        os.fsync(f.fileno())
drop_cache()
EOF
    started=$(date +%s%N)
    serve "$bin" "$WORK/$label"
    served=$(date +%s%N)
    stop
    echo "$label round $round: $(( (served - started) / 1000000 )) ms to the first get"
  done
done
