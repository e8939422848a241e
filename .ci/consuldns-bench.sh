#!/usr/bin/env bash
# Consul's DNS interface against farmdns's consul_dns on one catalog: the
# same dnsperf query file, A B A B rounds, each server alone on core 0
# (GOMAXPROCS=1), dnsperf on core 1. Prints QPS, latency, server CPU per
# query, the medians and the ratio farmdns/consul.
#   .ci/consuldns-bench.sh [seconds per round] [rounds] [services]
set -euo pipefail
secs=${1:-10}
rounds=${2:-3}
services=${3:-200}
cd "$(dirname "$0")/.."
for tool in dnsperf taskset curl dig; do
  command -v $tool >/dev/null || { echo "$tool missing: make test-deps" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/farmdns" ./cmd/farmdns
consul=$(.ci/consul.sh)
port_http=27500
port_consul_dns=27600
port_farm=27653
GOMAXPROCS=1 taskset -c 0 "$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $port_http \
  -dns-port $port_consul_dns -grpc-port -1 -grpc-tls-port -1 -serf-lan-port 27301 -serf-wan-port 27302 -server-port 27300 \
  -data-dir "$work/consul" -log-level warn >"$work/consul.log" 2>&1 & pids+=($!); consul_pid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port_http/v1/status/leader" | grep -q : && break; sleep 0.2; done
curl -sf "127.0.0.1:$port_http/v1/status/leader" | grep -q : || { echo "consul did not start:" >&2; tail -5 "$work/consul.log" >&2; exit 1; }

# The catalog: 50 nodes with meta; $services services of 5 instances each
# spread over the nodes, tagged; registered 64 operations per transaction.
.ci/consul-catalog.sh "127.0.0.1:$port_http" 50 "$services" 5

# The queries: 80% service A, 10% SRV, 5% node A, 5% unknown services.
awk -v s="$services" 'BEGIN { srand(1); for (n = 0; n < 100000; n++) { r = rand(); i = int(rand() * s)
  if (r < 0.80) print "svc" i ".service.consul A";
  else if (r < 0.90) print "svc" i ".service.consul SRV";
  else if (r < 0.95) print "n" (i % 50) ".node.consul A";
  else print "missing" n ".service.consul A" } }' >"$work/queries"

cat >"$work/farmdns.yaml" <<CONF
dns:
  listen: ["127.0.0.1:$port_farm"]
http:
  listen: "127.0.0.1:0"
log:
  level: warn
consul:
  address: "127.0.0.1:$port_http"
consul_dns: {}
CONF
GOMAXPROCS=1 taskset -c 0 "$work/farmdns" -config "$work/farmdns.yaml" & pids+=($!); farm_pid=$!
for port in $port_consul_dns $port_farm; do
  for _ in $(seq 50); do dig +short +time=1 +tries=1 @127.0.0.1 -p $port svc1.service.consul A | grep -q . && break; sleep 0.2; done
done
# Both answer alike before they are timed; farmdns loads each service on
# its first question, so a short warm-up run asks them all first.
for s in svc0 svc1; do
  a=$(dig +short @127.0.0.1 -p $port_consul_dns $s.service.consul A | sort)
  b=$(dig +short @127.0.0.1 -p $port_farm $s.service.consul A | sort)
  [ -n "$a" ] && [ "$a" = "$b" ] || { echo "consul and farmdns differ on $s: [$a] [$b]" >&2; exit 1; }
done
taskset -c 1 dnsperf -s 127.0.0.1 -p $port_farm -d "$work/queries" -l 3 -c 8 -q 200 -S 0 >/dev/null 2>&1

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf 'load average: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-6s %10s %12s %10s %12s\n' server round qps "avg lat ms" "cpu %" "cpu us/query"
: >"$work/results"
for r in $(seq "$rounds"); do
  order="consul farmdns"
  [ $((r % 2)) = 0 ] && order="farmdns consul"
  for s in $order; do
    case $s in
      consul) port=$port_consul_dns pid=$consul_pid ;;
      farmdns) port=$port_farm pid=$farm_pid ;;
    esac
    t0=$(cpu_ticks $pid)
    out=$(taskset -c 1 dnsperf -s 127.0.0.1 -p $port -d "$work/queries" -l "$secs" -c 8 -q 200 -S 0 2>&1)
    t1=$(cpu_ticks $pid)
    qps=$(echo "$out" | awk '/Queries per second/ { print $4 }')
    lat=$(echo "$out" | awk '/Average Latency/ { print $4 * 1000 }')
    lost=$(echo "$out" | awk '/Queries lost/ { print $3 }')
    servfail=$(echo "$out" | grep -o 'SERVFAIL [0-9]*' | awk '{ print $2 }' || true)
    cpu=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.0f", t * 100 / hz / s }')
    us=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v s="$secs" -v q="$qps" 'BEGIN { printf "%.2f", t / hz / (q * s) * 1e6 }')
    printf '%-8s %-6s %10.0f %12.3f %10s %12s   lost %s servfail %s\n' $s $r "$qps" "$lat" "$cpu" "$us" "$lost" "${servfail:-0}"
    echo "$s $qps $us" >>"$work/results"
  done
done
median() { awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$work/results" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fq=$(median farmdns 2) cq=$(median consul 2) fu=$(median farmdns 3) cu=$(median consul 3)
awk -v f="$fq" -v c="$cq" -v fu="$fu" -v cu="$cu" -v n="$rounds" -v s="$services" 'BEGIN {
  printf "median of %d rounds, %d services x 5 instances: qps farmdns %.0f, consul %.0f; farmdns/consul = %.1f\n", n, s, f, c, f / c
  printf "server cpu per query: farmdns %.2f us, consul %.2f us; consul/farmdns = %.1f\n", fu, cu, cu / fu }'
