#!/usr/bin/env bash
# farmdns against Knot DNS serving the same zone, in one run (make bench):
# CPU per query at fixed rates (dnsperf -Q; process CPU time from
# /proc/<pid>/stat over the run, divided by the queries answered), each
# server alone on core 0 (GOMAXPROCS=1 against one Knot UDP worker) with
# dnsperf on core 1; then QPS at saturation on 1 and 2 cores. The servers
# take turns in each round; figures are medians with their range. Prints
# markdown tables, the ones README's performance section quotes. Last, with
# TARGETS50K=1, farmdns alone on core 0 holds a second pool of 50,000
# targets with SRV records, and a third table compares its A, SRV and
# target names with the static name and the 20-node pool, all from that one
# process. Each part can be left out: RATES="" (no fixed rates),
# SATURATION=0, TARGETS50K=0.
#   RATES="20000 50000 80000" SATURATION=1 TARGETS50K=1 .ci/dnsperf.sh [seconds per run] [rounds]
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
load=$(cut -d' ' -f1-3 /proc/loadavg)

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
  -serf-lan-port 28301 -serf-wan-port 28302 -server-port 28300 -data-dir "$work/consul" >"$work/consul.log" 2>&1 & pids+=($!); consul_pid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port_consul/v1/status/leader" | grep -q : && break; sleep 0.2; done
for i in $(seq 1 20); do
  curl -sf -X PUT "127.0.0.1:$port_consul/v1/catalog/register" -d "{\"Node\":\"n$i\",\"Address\":\"10.1.0.$i\",\"Service\":{\"ID\":\"ws-n$i\",\"Service\":\"ws\",\"Port\":8080}}" >/dev/null
  curl -sf -X PUT "127.0.0.1:$port_consul/v1/kv/farmdns/load/ws/n$i/ws-n$i" \
    -d "{\"connections\":$((i * 100)),\"accepted\":$((i * 100)),\"capacity\":20000,\"updated\":\"$(date -u +%FT%TZ)\"}" >/dev/null
done

port_farm=25353
port_knot=25354
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

# start <cores>: farmdns and Knot with that many cores each (1: both on
# core 0, GOMAXPROCS=1 against one Knot UDP worker, dnsperf on core 1).
start() {
  [ -n "${farm_pid:-}" ] && kill "$farm_pid" "$knot_pid" && wait "$farm_pid" "$knot_pid" 2>/dev/null || true
  sed -i "s/udp-workers: .*/udp-workers: $1/" "$work/knot.conf"
  if [ "$1" = 1 ]; then pin="taskset -c 0"; else pin=""; fi
  GOMAXPROCS=$1 $pin "$work/farmdns" -config "$work/farmdns.yaml" & pids+=($!); farm_pid=$!
  $pin knotd -c "$work/knot.conf" & pids+=($!); knot_pid=$!
  for port in $port_farm $port_knot; do
    for _ in $(seq 50); do dig +short +time=1 +tries=1 @127.0.0.1 -p $port host1.bench.example A >/dev/null 2>&1 && break; sleep 0.2; done
  done
  for _ in $(seq 50); do dig +short @127.0.0.1 -p $port_farm pool.bench.example A | grep -q . && return; sleep 0.2; done
  echo "the pool did not fill from Consul" >&2; exit 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# run <server> <file> [max qps]: one dnsperf run; prints "qps cpu-µs-per-query lost".
run() {
  local port=$port_farm pid=$farm_pid
  [ "$1" = knot ] && port=$port_knot pid=$knot_pid
  local client=(dnsperf) rate=()
  [ -n "${3:-}" ] && rate=(-Q "$3")
  [ "$cores" = 1 ] && client=(taskset -c 1 dnsperf)
  local t0 t1 out
  t0=$(cpu_ticks $pid)
  out=$("${client[@]}" -s 127.0.0.1 -p $port -d "$work/$2" -l "$secs" -c 8 -q 200 -t 1 -S 0 "${rate[@]}" 2>&1)
  t1=$(cpu_ticks $pid)
  echo "$out" | awk -v ticks=$((t1 - t0)) -v hz="$hz" '
    /Queries completed/ { done = $3 } /Queries lost/ { lost = $3 } /Queries per second/ { qps = $4 }
    END { printf "%.0f %.2f %s\n", qps, done ? ticks / hz / done * 1e6 : 0, lost }'
}

# Every figure is the median of the rounds, with its range; the two servers
# take turns within each round, so a neighbour's load hits both alike.
declare -A res
record() { res[$1]="${res[$1]:-} $2"; }
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%s [%s-%s]", m, v[1], v[NR] }'; }

rates=${RATES-20000 50000 80000}
saturation=${SATURATION:-1} # 0: CPU per query only
cores=1
start 1
for r in $(seq "$rounds"); do
  for rate in $rates; do
    for s in farmdns knot farmdns-pool; do
      file=queries server=${s%-pool}
      [ "$s" = farmdns-pool ] && file=pool-queries
      read -r qps us lost < <(run "$server" "$file" "$rate")
      echo "round $r, $rate qps, $s: $qps qps, $us µs CPU per query, lost $lost" >&2
      record "cpu $rate $s" "$us"
    done
  done
  for s in farmdns knot farmdns-static farmdns-pool; do
    [ "$saturation" = 1 ] || break
    file=queries server=${s%-*}
    [ "$s" = farmdns-static ] && file=static-queries
    [ "$s" = farmdns-pool ] && file=pool-queries
    read -r qps us lost < <(run "$server" "$file")
    echo "round $r, saturation on 1 core, $s: $qps qps, lost $lost" >&2
    record "qps 1 $s" "$qps"
  done
done
cores=2
[ "$saturation" = 1 ] && start 2
for r in $(seq "$rounds"); do
  [ "$saturation" = 1 ] || break
  for s in farmdns knot farmdns-static farmdns-pool; do
    file=queries server=${s%-*}
    [ "$s" = farmdns-static ] && file=static-queries
    [ "$s" = farmdns-pool ] && file=pool-queries
    read -r qps us lost < <(run "$server" "$file")
    echo "round $r, saturation on 2 cores, $s: $qps qps, lost $lost" >&2
    record "qps 2 $s" "$qps"
  done
done

# 50,000 targets: a second pool, big.bench.example, with SRV records at
# _big._tcp.big.bench.example and a name per target, <node>.nodes.big.bench.example,
# in a farmdns of its own (GOMAXPROCS=1 on core 0, Knot stopped) that holds
# both pools, so that its static and 20-node figures are the baseline.
targets50k=${TARGETS50K:-1}
big=50000
if [ "$targets50k" = 1 ]; then
  kill "$farm_pid" "$knot_pid" && wait "$farm_pid" "$knot_pid" 2>/dev/null || true
  t=$(date +%s.%N)
  .ci/consul-pool.sh "127.0.0.1:$port_consul" big $big
  registered=$(awk -v t="$t" -v now="$(date +%s.%N)" 'BEGIN { printf "%.0f", now - t }')
  for _ in $(seq 100000); do echo "big.bench.example A"; done >"$work/big-a-queries"
  for _ in $(seq 100000); do echo "_big._tcp.big.bench.example SRV"; done >"$work/big-srv-queries"
  awk -v n=$big 'BEGIN { srand(1); for (q = 0; q < 100000; q++) printf "t%05d.nodes.big.bench.example A\n", int(rand() * n) }' >"$work/big-names-queries"
  port_http=25355
  sed "s/127.0.0.1:0/127.0.0.1:$port_http/" "$work/farmdns.yaml" >"$work/farmdns-50k.yaml"
  cat >>"$work/farmdns-50k.yaml" <<CONF
      - name: big
        service: big
        answers: 3
        srv: true
CONF
  cores=1
  # Time to the full pool: the last target's name answers (the service's
  # instances come in one read), then /metrics shows every target healthy
  # and the last one's load (a scrape of 150,000 series takes ~1 s of the core).
  t0=$(date +%s.%N)
  GOMAXPROCS=1 taskset -c 0 "$work/farmdns" -config "$work/farmdns-50k.yaml" & pids+=($!); farm_pid=$!
  since() { awk -v t="$t0" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - t }'; }
  last=$(printf 't%05d' $((big - 1)))
  for _ in $(seq 1200); do
    dig +short +time=1 +tries=1 @127.0.0.1 -p $port_farm "$last.nodes.big.bench.example" A 2>/dev/null | grep -q . && break
    sleep 0.1
  done
  names_at=$(since)
  full_at=
  for _ in $(seq 120); do
    curl -s --max-time 20 -o "$work/metrics" "127.0.0.1:$port_http/metrics" || true
    grep -qs "^farmdns_pool_targets{pool=\"big.bench.example.\",state=\"healthy\"} $big\$" "$work/metrics" &&
      grep -qs "^farmdns_target_connections{pool=\"big.bench.example.\",target=\"$last/big-$last\"} $(((big - 1) % 100 * 100))\$" "$work/metrics" &&
      full_at=$(since) && break
    sleep 0.5
  done
  [ -n "$full_at" ] || { echo "the $big-target pool did not fill from Consul in $(since)s (the last target's name answered at ${names_at}s)" >&2; exit 1; }
  echo "$big targets registered in ${registered}s; names answer ${names_at}s, /metrics full ${full_at}s after farmdns started" >&2
  # Consul compacts its log after the 150,000 writes, and farmdns has just
  # built the pool: the first run must not pay for them. Wait (30 s at
  # most) for a second in which both take under 5% of a core.
  for _ in $(seq 30); do
    a=$(($(cpu_ticks $consul_pid) + $(cpu_ticks $farm_pid)))
    sleep 1
    [ $(($(cpu_ticks $consul_pid) + $(cpu_ticks $farm_pid) - a)) -le $((hz / 20)) ] && break
  done
  echo "quiet at $(since)s" >&2
  for r in $(seq "$rounds"); do
    for s in static pool big-a big-srv big-names; do
      read -r qps us lost < <(run farmdns "$s-queries")
      echo "round $r, saturation on 1 core beside $big targets, $s: $qps qps, $us µs CPU per query, lost $lost" >&2
      record "qps 50k $s" "$qps"
      record "cpu 50k $s" "$us"
    done
  done
fi

ratio() { awk -v a="$(median "${res[$1]}" | cut -d' ' -f1)" -v b="$(median "${res[$2]}" | cut -d' ' -f1)" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "farmdns against Knot $(knotd -V 2>/dev/null | awk '{ print $NF }'), $rounds rounds of ${secs}s, median [min-max]; load average before: $load"
if [ -n "$rates" ]; then
  echo
  echo "| CPU per query (µs), one core each | farmdns (90/5/5 mix) | Knot (same mix) | knot/farmdns | farmdns pool name |"
  echo "|---|---|---|---|---|"
  for rate in $rates; do
    echo "| at $rate qps | $(median "${res[cpu $rate farmdns]}") | $(median "${res[cpu $rate knot]}") | $(ratio "cpu $rate knot" "cpu $rate farmdns") | $(median "${res[cpu $rate farmdns-pool]}") |"
  done
fi
if [ "$saturation" = 1 ]; then
  echo
  echo "| QPS at saturation | farmdns (mix) | Knot (mix) | farmdns/knot | farmdns static name | farmdns pool name | pool/static |"
  echo "|---|---|---|---|---|---|---|"
  for c in 1 2; do
    echo "| $c core$([ $c = 1 ] || echo s) | $(median "${res[qps $c farmdns]}") | $(median "${res[qps $c knot]}") | $(ratio "qps $c farmdns" "qps $c knot") | $(median "${res[qps $c farmdns-static]}") | $(median "${res[qps $c farmdns-pool]}") | $(ratio "qps $c farmdns-pool" "qps $c farmdns-static") |"
  done
fi
if [ "$targets50k" = 1 ]; then
  # dnsperf on one core can be the limit at saturation: the server's CPU
  # per query says what each answer costs it, and static over it is the
  # QPS one server core gives that answer against the static one.
  names=(static pool big-a big-srv big-names)
  echo
  echo "| 1 core, farmdns holding $big targets | static name | pool name (20 targets) | $big-target pool: A | its SRV | its target names |"
  echo "|---|---|---|---|---|---|"
  echo "| QPS at saturation |$(for n in "${names[@]}"; do printf ' %s |' "$(median "${res[qps 50k $n]}")"; done)"
  echo "| CPU per query (µs) |$(for n in "${names[@]}"; do printf ' %s |' "$(median "${res[cpu 50k $n]}")"; done)"
  echo "| QPS per core vs static (static's CPU per query over its) |$(for n in "${names[@]}"; do printf ' %s |' "$(ratio "cpu 50k static" "cpu 50k $n")"; done)"
fi
echo
[ "$saturation" = 1 ] && echo "Saturation: dnsperf runs on the other core (1 core) or shares both with the server (2 cores), so the client is often the limit."
if [ "$targets50k" = 1 ]; then
  echo "$big targets: one node each (SRV target names <node>.nodes.big.bench.example, queried at random), registered with their loads in ${registered}s; after farmdns started, the last target's name answered at ${names_at}s and /metrics showed all $big healthy with their loads at ${full_at}s."
fi
