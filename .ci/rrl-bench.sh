#!/usr/bin/env bash
# The cost of response rate limiting: the 90/5/5 query mix from 8 dnsperf
# processes in 8 client /24s, against one farmdns alone on core 0
# (GOMAXPROCS=1, dnsperf on core 1), with RRL off and on at a rate no client
# reaches, switched by reload, the order swapped every round. Prints QPS and
# server CPU per query for both, and fails if anything was limited.
#   .ci/rrl-bench.sh [seconds per round] [rounds]
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

# Pool answers: every query for pool.bench.example gets its own choice among
# 20 nodes that a real Consul agent holds, loads reported in KV.
for _ in $(seq 100000); do echo "pool.bench.example A"; done >"$work/pool-queries"
for _ in $(seq 100000); do echo "host1.bench.example A"; done >"$work/static-queries"
consul=$(.ci/consul.sh)
port_consul=28500
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $port_consul -dns-port -1 -grpc-port -1 -grpc-tls-port -1 \
  -serf-lan-port 28301 -serf-wan-port 28302 -server-port 28300 -data-dir "$work/consul" >"$work/consul.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$port_consul/v1/status/leader" | grep -q : && break; sleep 0.2; done
for i in $(seq 1 20); do
  curl -sf -X PUT "127.0.0.1:$port_consul/v1/catalog/register" -d "{\"Node\":\"n$i\",\"Address\":\"10.1.0.$i\",\"Service\":{\"ID\":\"ws-n$i\",\"Service\":\"ws\",\"Port\":8080}}" >/dev/null
  curl -sf -X PUT "127.0.0.1:$port_consul/v1/kv/farmdns/load/ws/n$i/ws-n$i" \
    -d "{\"connections\":$((i * 100)),\"accepted\":$((i * 100)),\"capacity\":20000,\"updated\":\"$(date -u +%FT%TZ)\"}" >/dev/null
done

port_farm=25353
port_knot=25354
port_rrl=25355
port_rrl_http=25356
cat >"$work/farmdns.yaml" <<CONF
dns:
  listen: ["127.0.0.1:$port_farm"]
http:
  listen: "127.0.0.1:0"
log:
  level: warn
consul:
  address: "127.0.0.1:$port_consul"
  max_report_age: 1h
zones:
  - origin: bench.example.
    file: $work/bench.zone
    pools:
      - name: pool
        service: ws
        answers: 3
CONF
# A second farmdns for RRL off against on: one process, switched by reload
# (rrl_rate), so nothing but RRL differs. 8 prefixes share ~250k qps, ~1,500
# NXDOMAIN/s per prefix for the zone, so the rate when on is above that:
# every response is checked, none is limited (checked below), which is the
# cost to measure.
sed -e "s/127.0.0.1:$port_farm/127.0.0.1:$port_rrl/" -e "s/127.0.0.1:0/127.0.0.1:$port_rrl_http/" \
  -e 's/^dns:$/dns:\n  rrl: {responses_per_second: 100000}/' "$work/farmdns.yaml" >"$work/farmdns-rrl.yaml"
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
GOMAXPROCS=1 taskset -c 0 "$work/farmdns" -config "$work/farmdns-rrl.yaml" & pids+=($!); rrl_pid=$!
taskset -c 0 knotd -c "$work/knot.conf" & pids+=($!); knot_pid=$!
for port in $port_farm $port_knot $port_rrl; do
  for _ in $(seq 50); do dig +short +time=1 +tries=1 @127.0.0.1 -p $port host1.bench.example A >/dev/null 2>&1 && break; sleep 0.2; done
done

dig +short @127.0.0.1 -p $port_farm pool.bench.example A | grep -q . || { echo "the pool did not fill from Consul" >&2; exit 1; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-14s %-6s %10s %12s %10s\n' server round qps "avg lat ms" "cpu %"
# rrl_rate sets the second farmdns's RRL rate (0: off) and waits for the reload.
rrl_rate() {
  local before
  before=$(curl -sf "127.0.0.1:$port_rrl_http/metrics" | awk '/^farmdns_config_last_reload_timestamp_seconds/ { print $2 }')
  sed -i "s/responses_per_second: [0-9]*/responses_per_second: $1/" "$work/farmdns-rrl.yaml"
  kill -HUP $rrl_pid
  for _ in $(seq 100); do
    [ "$(curl -sf "127.0.0.1:$port_rrl_http/metrics" | awk '/^farmdns_config_last_reload_timestamp_seconds/ { print $2 }')" != "$before" ] && return
    sleep 0.1
  done
  echo "farmdns did not reload" >&2; exit 1
}
# perf8 runs dnsperf from 8 client /24s at once (127.0.1.1 ... 127.0.8.1), 25
# queries in flight each, and prints the summed report lines.
perf8() {
  local ps=()
  for i in $(seq 8); do
    taskset -c 1 dnsperf -a 127.0.$i.1 -s 127.0.0.1 -p "$1" -d "$work/$2" -l "$secs" -c 1 -q 25 -S 0 >"$work/perf$i" 2>&1 & ps+=($!)
  done
  wait "${ps[@]}"
  cat "$work"/perf[1-8] | awk '/Queries per second/ { q += $4 } /Average Latency/ { l += $4; n++ } /Queries lost/ { lost += $3 }
    END { printf "  Queries per second: %f\n  Average Latency (s): %f\n  Queries lost: %d\n", q, l / n, lost }'
}
declare -A total ticks
for r in $(seq "$rounds"); do
  # farmdns and knot on the 90/5/5 mix; farmdns on one static name and on a
  # pool's name; farmdns without and with RRL, from 8 prefixes.
  # RRL off and on swap places every round: drift falls on both alike.
  pair="farmdns-8pfx rrl-on-8pfx"
  [ $((r % 2)) = 0 ] && pair="rrl-on-8pfx farmdns-8pfx"
  for s in $pair; do
    case $s in
      farmdns) port=$port_farm pid=$farm_pid file=queries ;;
      knot) port=$port_knot pid=$knot_pid file=queries ;;
      farmdns-static) port=$port_farm pid=$farm_pid file=static-queries ;;
      farmdns-pool) port=$port_farm pid=$farm_pid file=pool-queries ;;
      farmdns-8pfx) port=$port_rrl pid=$rrl_pid file=queries; rrl_rate 0 ;;
      rrl-on-8pfx) port=$port_rrl pid=$rrl_pid file=queries; rrl_rate 100000 ;;
    esac
    t0=$(cpu_ticks $pid)
    case $s in
      *-8pfx) out=$(perf8 $port $file) ;;
      *) out=$(taskset -c 1 dnsperf -s 127.0.0.1 -p $port -d "$work/$file" -l "$secs" -c 8 -q 200 -S 0 2>&1) ;;
    esac
    t1=$(cpu_ticks $pid)
    qps=$(echo "$out" | awk '/Queries per second/ { print $4 }')
    lat=$(echo "$out" | awk '/Average Latency/ { print $4 * 1000 }')
    cpu=$(( (t1 - t0) * 100 / hz / secs ))
    lost=$(echo "$out" | awk '/Queries lost/ { print $3 }')
    printf '%-14s %-6s %10.0f %12.3f %10s   lost %s\n' $s $r "$qps" "$lat" "$cpu" "$lost"
    total[$s]=$(awk -v a="${total[$s]:-0}" -v b="$qps" 'BEGIN { print a + b }')
    ticks[$s]=$(( ${ticks[$s]:-0} + t1 - t0 ))
  done
done
awk -v off="${total[farmdns-8pfx]}" -v on="${total[rrl-on-8pfx]}" -v n="$rounds" \
  'BEGIN { printf "mean qps, 90/5/5 mix from 8 client /24s: rrl off %.0f, on %.0f; on/off = %.2f\n", off / n, on / n, on / off }'
# On a shared machine a server's QPS follows the CPU it gets; its CPU time
# per query does not.
awk -v off="${total[farmdns-8pfx]}" -v on="${total[rrl-on-8pfx]}" -v toff="${ticks[farmdns-8pfx]}" -v ton="${ticks[rrl-on-8pfx]}" \
  -v hz="$hz" -v secs="$secs" \
  'BEGIN { a = toff / hz / (off * secs) * 1e6; b = ton / hz / (on * secs) * 1e6
           printf "server cpu per query, same: rrl off %.2f us, on %.2f us; qps per cpu on/off = %.2f\n", a, b, a / b }'
# RRL was on and limited nobody: otherwise the comparison means nothing.
curl -sf "127.0.0.1:$port_rrl_http/metrics" | grep '^farmdns_rrl_responses_total'
curl -sf "127.0.0.1:$port_rrl_http/metrics" | awk '/^farmdns_rrl_responses_total\{action="pass"\}/ { pass = $2 }
  /^farmdns_rrl_responses_total\{action="(drop|slip)"\}/ { limited += $2 }
  END { if (pass == 0 || limited > 0) { print "rrl: passed " pass ", limited " limited ": not the comparison intended" > "/dev/stderr"; exit 1 } }'
