#!/usr/bin/env bash
# What TLS costs: `raftkv bench` put and linearizable get with 64 clients on
# 1 and 3 nodes, plaintext against client and peer TLS with client
# certificates required (certificates made with openssl at the start),
# plaintext and TLS alternating on fresh clusters, ROUNDS rounds of SECONDS
# each (2 s warmup). One line per run:
#   mode nodes workload ops/s p50 p99 (ms) errors
#
#   cargo build --release -p raftkv && scripts/tls-bench.sh [SECONDS] [ROUNDS]
# NODES (default "1 3") picks the cluster sizes; R another raftkv binary.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-5}
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh

PKI=$WORK/pki
mkdir -p "$PKI"
(
  cd "$PKI"
  key="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
  # shellcheck disable=SC2086
  openssl req -x509 $key -days 30 -subj /CN=bench-ca -keyout ca-key.pem -out ca.pem
  # shellcheck disable=SC2086
  openssl req $key -subj /CN=node -addext subjectAltName=IP:127.0.0.1 \
    -addext extendedKeyUsage=serverAuth,clientAuth -keyout node-key.pem -out node.csr
  openssl x509 -req -in node.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
    -copy_extensions copyall -out node.pem
) >/dev/null 2>&1
TLS_FLAGS=(--cert-file "$PKI/node.pem" --key-file "$PKI/node-key.pem"
  --trusted-ca-file "$PKI/ca.pem" --client-cert-auth
  --peer-cert-file "$PKI/node.pem" --peer-key-file "$PKI/node-key.pem"
  --peer-trusted-ca-file "$PKI/ca.pem")

for _ in $(seq 1 "$ROUNDS"); do
  for nodes in ${NODES:-1 3}; do
    for mode in plain tls; do
      if [[ $mode == tls ]]; then
        # Every raftkv client command below (the readiness put, the bench)
        # then talks TLS with the node's certificate as its own.
        export RAFTKV_CACERT=$PKI/ca.pem RAFTKV_CERT=$PKI/node.pem RAFTKV_KEY=$PKI/node-key.pem
        start_raftkv "$nodes" "$R" "${TLS_FLAGS[@]}"
      else
        unset RAFTKV_CACERT RAFTKV_CERT RAFTKV_KEY
        start_raftkv "$nodes"
      fi
      for op in put get; do
        bench_line "$mode" "$nodes" "$op c=64" "$("$R" --endpoints "$ENDPOINTS" bench --op "$op" \
          --clients 64 --keys 1000 --duration "${SECS}s" --warmup 2s --json 2>/dev/null)"
      done
      stop_all
    done
  done
done
