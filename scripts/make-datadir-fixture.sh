#!/usr/bin/env bash
# Writes a small single-node data dir with BINARY, for the data dir format
# tests (crates/cli/tests/data_dir_format.rs): 5 puts, a snapshot, a put and a
# delete after it, then 30 puts of 300-byte values so the 4 KiB WAL segments
# roll over; the server is stopped with SIGTERM. Loopback port 17411.
#
#   scripts/make-datadir-fixture.sh BINARY OUT_DIR
#   e.g. scripts/make-datadir-fixture.sh target/release/raftkv crates/cli/tests/fixtures/datadir-v2
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BINARY OUT_DIR" >&2; exit 2; }
B=$(realpath "$1") OUT=$2
[[ ! -e $OUT ]] || { echo "$OUT exists" >&2; exit 1; }
WORK=$(mktemp -d)
PID=""
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
"$B" server --data-dir "$WORK/data" --listen 127.0.0.1:17411 --wal-segment-size 4KiB \
  >"$WORK/log" 2>&1 &
PID=$!
E=(--endpoints 127.0.0.1:17411)
for _ in $(seq 1 100); do "$B" "${E[@]}" put fixture/key1 value1 >/dev/null 2>&1 && break; sleep 0.1; done
for i in 1 2 3 4 5; do "$B" "${E[@]}" put "fixture/key$i" "value$i"; done
"$B" "${E[@]}" debug snapshot >/dev/null
"$B" "${E[@]}" put fixture/after-snapshot yes
"$B" "${E[@]}" delete fixture/key5
V=$(printf 'v%.0s' $(seq 1 300))
for i in $(seq 1 30); do "$B" "${E[@]}" put "fixture/big$i" "$V$i"; done
kill "$PID"; wait "$PID" || true; PID=""
rm -f "$WORK/data/LOCK"
mkdir -p "$(dirname "$OUT")"
cp -a "$WORK/data" "$OUT"
find "$OUT" -type f | sort
