#!/usr/bin/env bash
# Throughput of farmdns against Knot DNS serving the same zone, in one run:
# A B A B rounds, each server alone on core 0 (GOMAXPROCS=1, one Knot UDP
# worker), dnsperf on core 1. Prints QPS, latency, server CPU and the ratio.
#   .ci/dnsperf.sh [seconds per round] [rounds]
set -euo pipefail
secs=${1:-10}
rounds=${2:-2}
cd "$(dirname "$0")/.."
for tool in knotd dnsperf taskset; do
  command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "$tool missing: make test-deps" >&2; exit 1; }
done
PATH=$PATH:/usr/sbin
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/farmdns" ./cmd/farmdns

# The zone: 1,000 hosts with A records, some with AAAA, MX and TXT.
{
  echo '$ORIGIN bench.example.'
  echo '$TTL 300'
  echo '@ SOA ns1 hostmaster 1 7200 3600 1209600 60'
  echo '@ NS ns1'
  echo 'ns1 A 192.0.2.53'
  for i in $(seq 0 999); do
    echo "host$i A 10.$((i / 256)).$((i % 256)).1"
    [ $((i % 4)) = 0 ] && echo "host$i AAAA 2001:db8::$i"
    [ $((i % 10)) = 0 ] && echo "host$i MX 10 host$((i + 1))" && echo "host$i TXT \"host $i\""
  done
} >"$work/bench.zone"

# The queries: 90% A, 5% NXDOMAIN, 5% other types.
awk 'BEGIN { srand(1); for (n = 0; n < 100000; n++) { r = rand(); i = int(rand() * 1000)
  if (r < 0.90) print "host" i ".bench.example A";
  else if (r < 0.95) print "missing" n ".bench.example A";
  else { j = i - i % 10; t = (n % 3 == 0) ? "MX" : (n % 3 == 1) ? "TXT" : "AAAA"; print "host" j ".bench.example " t } } }' >"$work/queries"

port_farm=25353
port_knot=25354
cat >"$work/farmdns.yaml" <<CONF
dns:
  listen: ["127.0.0.1:$port_farm"]
http:
  listen: "127.0.0.1:0"
log:
  level: warn
zones:
  - origin: bench.example.
    file: $work/bench.zone
CONF
cat >"$work/knot.conf" <<CONF
server:
    rundir: "$work"
    listen: 127.0.0.1@$port_knot
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: error
database:
    storage: "$work"
zone:
  - domain: bench.example.
    file: "$work/bench.zone"
    zonefile-sync: -1
    journal-content: none
CONF

GOMAXPROCS=1 taskset -c 0 "$work/farmdns" -config "$work/farmdns.yaml" & pids+=($!); farm_pid=$!
taskset -c 0 knotd -c "$work/knot.conf" & pids+=($!); knot_pid=$!
for port in $port_farm $port_knot; do
  for _ in $(seq 50); do dig +short +time=1 +tries=1 @127.0.0.1 -p $port host1.bench.example A >/dev/null 2>&1 && break; sleep 0.2; done
done

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-8s %-6s %10s %12s %10s\n' server round qps "avg lat ms" "cpu %"
declare -A total
for r in $(seq "$rounds"); do
  for s in farmdns knot; do
    if [ $s = farmdns ]; then port=$port_farm pid=$farm_pid; else port=$port_knot pid=$knot_pid; fi
    t0=$(cpu_ticks $pid)
    out=$(taskset -c 1 dnsperf -s 127.0.0.1 -p $port -d "$work/queries" -l "$secs" -c 8 -q 200 -S 0 2>&1)
    t1=$(cpu_ticks $pid)
    qps=$(echo "$out" | awk '/Queries per second/ { print $4 }')
    lat=$(echo "$out" | awk '/Average Latency/ { print $4 * 1000 }')
    cpu=$(( (t1 - t0) * 100 / hz / secs ))
    lost=$(echo "$out" | awk '/Queries lost/ { print $3 }')
    printf '%-8s %-6s %10.0f %12.3f %10s   lost %s\n' $s $r "$qps" "$lat" "$cpu" "$lost"
    total[$s]=$(awk -v a="${total[$s]:-0}" -v b="$qps" 'BEGIN { print a + b }')
  done
done
awk -v f="${total[farmdns]}" -v k="${total[knot]}" -v n="$rounds" \
  'BEGIN { printf "mean qps: farmdns %.0f, knot %.0f; farmdns/knot = %.2f\n", f / n, k / n, f / k }'
