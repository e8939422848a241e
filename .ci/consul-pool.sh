#!/usr/bin/env bash
# Registers a large pool in a Consul agent: <instances> nodes <prefix>00000..
# (addresses 10.64.0.0 up), each running one instance of <service> on port
# 8080, and each instance's load report in KV (farmdns/load/<service>/<node>/
# <service>-<node>, as health/ reads them; 100 different loads). One node per
# instance keeps the SRV target labels plain: <node>.nodes.<pool>. 42
# instances per /v1/txn (126 operations; Consul takes at most 128), four
# transactions at a time from one curl: 50,000 instances take about 45 s,
# nearly all of it Consul's.
#   .ci/consul-pool.sh <http addr> <service> <instances> [node prefix]
set -euo pipefail
addr=$1 service=$2 instances=$3 prefix=${4:-t}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
now=$(date -u +%FT%TZ)
# KV values go base64 in a transaction; 100 loads, encoded once.
loads=$(for c in $(seq 0 99); do
  printf '{"connections":%d,"accepted":%d,"capacity":20000,"updated":"%s"}' $((c * 100)) $((c * 100)) "$now" | base64 -w0
  echo
done | paste -sd' ')
awk -v n="$instances" -v svc="$service" -v prefix="$prefix" -v loads="$loads" -v dir="$dir" -v url="http://$addr/v1/txn" 'BEGIN {
  split(loads, load, " ")
  for (i = 0; i < n; i++) {
    if (i % 42 == 0) {
      if (f) { print "]" > f; close(f) }
      f = dir "/txn" i
      printf "[" > f
      print "url = \"" url "\"\nupload-file = \"" f "\"\noutput = \"/dev/null\"" > dir "/curl.conf"
    } else printf "," > f
    node = sprintf("%s%05d", prefix, i); id = svc "-" node
    printf "{\"Node\":{\"Verb\":\"set\",\"Node\":{\"Node\":\"%s\",\"Address\":\"10.%d.%d.%d\"}}},", node, 64 + int(i / 65536), int(i / 256) % 256, i % 256 > f
    printf "{\"Service\":{\"Verb\":\"set\",\"Node\":\"%s\",\"Service\":{\"ID\":\"%s\",\"Service\":\"%s\",\"Port\":8080}}},", node, id, svc > f
    printf "{\"KV\":{\"Verb\":\"set\",\"Key\":\"farmdns/load/%s/%s/%s\",\"Value\":\"%s\"}}", svc, node, id, load[i % 100 + 1] > f
  }
  if (f) print "]" > f }'
# A dev agent that has just elected itself may refuse writes for a moment;
# every operation is a set, so a retried transaction does no harm.
curl -sS --fail --no-progress-meter --retry 5 --retry-all-errors --parallel --parallel-max 4 -X PUT -K "$dir/curl.conf"
