#!/usr/bin/env bash
# What a large catalog costs Consul and farmdns's consul_dns: 1,000 services
# (3 instances each on 100 nodes) in a Consul dev agent, farmdns reading it
# through a counting proxy. For a few services asked, then all of them:
# requests/s and bytes/s farmdns sends and receives, and its CPU, idle and
# while checks flap (about 10 changes/s, on random services).
#   .ci/consuldns-scale.sh [seconds per phase] [services]
set -euo pipefail
secs=${1:-30}
services=${2:-1000}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/farmdns" ./cmd/farmdns
go build -o "$work/countproxy" ./.ci/countproxy
consul=$(.ci/consul.sh)
port_http=26500 port_proxy=26510 port_farm=26653
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $port_http -dns-port -1 -grpc-port -1 -grpc-tls-port -1 \
  -serf-lan-port 26301 -serf-wan-port 26302 -server-port 26300 -data-dir "$work/consul" -log-level warn >"$work/consul.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$port_http/v1/status/leader" | grep -q : && break; sleep 0.2; done
nodes=100
.ci/consul-catalog.sh "127.0.0.1:$port_http" $nodes "$services" 3
"$work/countproxy" -listen 127.0.0.1:$port_proxy -consul 127.0.0.1:$port_http & pids+=($!)

cat >"$work/farmdns.yaml" <<CONF
dns:
  listen: ["127.0.0.1:$port_farm"]
http:
  listen: "127.0.0.1:0"
log:
  level: warn
consul:
  address: "127.0.0.1:$port_proxy"
consul_dns: {}
CONF
"$work/farmdns" -config "$work/farmdns.yaml" & pids+=($!); farm_pid=$!
for _ in $(seq 50); do dig +short +time=1 +tries=1 @127.0.0.1 -p $port_farm svc0.service.consul A | grep -q . && break; sleep 0.2; done

counts() { curl -sf "127.0.0.1:$port_proxy/countproxy"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# churn flips the check of a random instance about 10 times a second.
churn() {
  while :; do
    s=$((RANDOM % services)) i=$((RANDOM % 3)); n=$(( (s + i * 7) % nodes ))
    st=passing; [ $((RANDOM % 2)) = 0 ] && st=warning
    curl -sf -X PUT "127.0.0.1:$port_http/v1/txn" -d "[{\"Check\":{\"Verb\":\"set\",\"Check\":{\"Node\":\"n$n\",\"CheckID\":\"service:svc$s-$i\",\"Name\":\"alive\",\"Status\":\"$st\",\"ServiceID\":\"svc$s-$i\"}}}]" >/dev/null
    sleep 0.1
  done
}
# phase NAME CHURN: counts over $secs seconds.
phase() {
  local c0 c1 t0 t1 cp=
  [ "$2" = churn ] && { churn & cp=$!; }
  c0=$(counts) t0=$(cpu_ticks $farm_pid)
  sleep "$secs"
  c1=$(counts) t1=$(cpu_ticks $farm_pid)
  [ -n "$cp" ] && { kill $cp; wait $cp 2>/dev/null || true; }
  echo "$c0 $c1 $t0 $t1" | awk -v name="$1" -v s="$secs" -v hz="$hz" '{
    printf "%-22s %10.1f %14.0f %14.0f %8.1f\n", name, ($4 - $1) / s, ($5 - $2) / s, ($6 - $3) / s, ($8 - $7) * 100 / hz / s }'
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $services services x 3 instances, $nodes nodes"
printf '%-22s %10s %14s %14s %8s\n' phase "req/s" "bytes/s in" "bytes/s out" "cpu %"
for i in $(seq 0 9); do dig +short @127.0.0.1 -p $port_farm svc$i.service.consul A >/dev/null; done
phase "10 asked, idle" idle
phase "10 asked, churn" churn
for i in $(seq 0 $((services - 1))); do echo "svc$i.service.consul A"; done >"$work/all"
dnsperf -s 127.0.0.1 -p $port_farm -d "$work/all" -n 1 -q 20 >/dev/null 2>&1
dnsperf -s 127.0.0.1 -p $port_farm -d "$work/all" -n 1 -q 20 2>&1 | grep -E 'Response codes'
phase "$services asked, idle" idle
phase "$services asked, churn" churn
