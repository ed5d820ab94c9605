#!/bin/bash
# raftkv-probe [PORT [PATH]]: exit 0 if http://127.0.0.1:PORT/PATH answers 200
# with a JSON body (RaftKV's /readyz, /livez, /health), 1 otherwise. The
# image's health check: bash alone (its /dev/tcp), no curl or wget in the image.
# PORT defaults to $RAFTKV_PROBE_PORT, else 7381 (the deploy files'
# --metrics-listen port, where /readyz and /livez are served in plaintext);
# PATH defaults to /readyz. Aimed at a client port whose node has
# --metrics-listen, it fails: that port answers other paths with HTTP 200 and
# a gRPC error (application/grpc), which is not a readiness.
set -u
shopt -s nocasematch
port="${1:-${RAFTKV_PROBE_PORT:-7381}}"
path="${2:-/readyz}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
IFS= read -r -t 5 status <&3 || exit 1
status="${status%$'\r'}"
json=no
while IFS= read -r -t 5 line <&3; do
  line="${line%$'\r'}"
  [[ -z "$line" ]] && break
  [[ "$line" == content-type:*application/json* ]] && json=yes
done
if [[ "$status" == "HTTP/1."?" 200 "* && "$json" == yes ]]; then
  exit 0
fi
echo "${path} on port ${port}: ${status} (JSON: ${json})" >&2
exit 1
