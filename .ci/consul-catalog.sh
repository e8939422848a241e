#!/usr/bin/env bash
# Registers a synthetic catalog in a Consul agent: nodes n0.. with an
# address and meta, services svc0.. of <instances> instances each, spread
# over the nodes, tagged, with a passing check; 64 operations per /v1/txn.
#   .ci/consul-catalog.sh <http addr> <nodes> <services> <instances>
set -euo pipefail
addr=$1 nodes=$2 services=$3 instances=$4
awk -v nodes="$nodes" -v services="$services" -v inst="$instances" 'BEGIN {
  for (n = 0; n < nodes; n++)
    print "{\"Node\":{\"Verb\":\"set\",\"Node\":{\"Node\":\"n" n "\",\"Address\":\"10.0." int(n / 250) "." (n % 250 + 1) "\",\"Meta\":{\"rack\":\"r" (n % 4) "\"}}}}"
  for (s = 0; s < services; s++) for (i = 0; i < inst; i++) {
    n = (s + i * 7) % nodes
    id = "svc" s "-" i
    print "{\"Service\":{\"Verb\":\"set\",\"Node\":\"n" n "\",\"Service\":{\"ID\":\"" id "\",\"Service\":\"svc" s "\",\"Port\":" (8000 + i) ",\"Tags\":[\"t" (i % 2) "\"]}}}"
    print "{\"Check\":{\"Verb\":\"set\",\"Check\":{\"Node\":\"n" n "\",\"CheckID\":\"service:" id "\",\"Name\":\"alive\",\"Status\":\"passing\",\"ServiceID\":\"" id "\"}}}"
  } }' | split -l 64 - "${TMPDIR:-/tmp}/consul-catalog.$$."
# A dev agent that has just elected itself may refuse writes for a moment.
for f in "${TMPDIR:-/tmp}/consul-catalog.$$."*; do
  for try in $(seq 20); do
    { printf '['; paste -sd, "$f"; printf ']'; } | curl -sS --fail-with-body -X PUT "$addr/v1/txn" --data-binary @- >"$f.out" 2>&1 && break
    [ "$try" = 20 ] && { echo "txn failed: $(cat "$f.out")" >&2; rm -f "${TMPDIR:-/tmp}/consul-catalog.$$."*; exit 1; }
    sleep 0.5
  done
  rm -f "$f" "$f.out"
done
