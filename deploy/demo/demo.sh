#!/usr/bin/env bash
# make demo: a whole farm on this machine. A Consul dev agent; four stand-in
# WebSocket nodes on 127.0.0.11-14, each with a farmdns-agent that registers
# it and reports its connections; farmdns serving farm.example.com on
# 127.0.0.1:5380; then clients that look the farm up and connect.
# Watch http://127.0.0.1:9153/status fill up, and try
#   dig @127.0.0.1 -p 5380 farm.example.com
#   dig @127.0.0.1 -p 5380 _ws._tcp.farm.example.com SRV
#   dig @127.0.0.1 -p 5380 _status.farm.example.com TXT +tcp
# Stops on Ctrl-C, or after DEMO_SECONDS if set.
set -euo pipefail
cd "$(dirname "$0")/../.."
nodes=${DEMO_NODES:-4}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

go build -o "$work/bin/" ./cmd/farmdns ./cmd/farmdns-agent ./cmd/farmdns-demo
consul=$(.ci/consul.sh)
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port 18500 -dns-port -1 -grpc-port -1 \
  -serf-lan-port 18301 -serf-wan-port 18302 -server-port 18300 >"$work/consul.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf 127.0.0.1:18500/v1/status/leader | grep -q : && break; sleep 0.2; done
echo "consul: http://127.0.0.1:18500 (log: $work/consul.log)"

for i in $(seq 1 "$nodes"); do
  addr=127.0.0.$((10 + i)) port=$((8080 + i))
  "$work/bin/farmdns-demo" node -listen "$addr:$port" & pids+=($!)
  cat >"$work/agent$i.yaml" <<CONF
consul:
  address: "127.0.0.1:18500"
service:
  name: ws
  id: ws-$i
  address: "$addr"
  port: $port
  capacity: 200
  register: true
count:
  ports: [$port]
report:
  interval: 500ms
  heartbeat: 5s
http:
  listen: "127.0.0.1:$((9160 + i))"
CONF
  "$work/bin/farmdns-agent" -config "$work/agent$i.yaml" 2>"$work/agent$i.log" & pids+=($!)
done
echo "nodes: 127.0.0.11-$((10 + nodes)) with their agents (logs: $work/agent*.log)"

cp deploy/example/farm.example.com.zone "$work/"
cat >"$work/farmdns.yaml" <<CONF
dns:
  listen: ["127.0.0.1:5380"]
  nsid: demo
http:
  listen: "127.0.0.1:9153"
consul:
  address: "127.0.0.1:18500"
zones:
  - origin: farm.example.com.
    file: farm.example.com.zone
    pools:
      - name: "@"
        service: ws
        answers: 2
        ttl: 1s
        capacity: 200
        srv: true
CONF
"$work/bin/farmdns" -config "$work/farmdns.yaml" 2>"$work/farmdns.log" & pids+=($!)
for _ in $(seq 50); do dig +short @127.0.0.1 -p 5380 farm.example.com A | grep -q . && break; sleep 0.2; done
echo "farmdns: dns 127.0.0.1:5380, status http://127.0.0.1:9153/status (log: $work/farmdns.log)"
echo
echo '$ dig @127.0.0.1 -p 5380 farm.example.com +noall +answer'
dig @127.0.0.1 -p 5380 farm.example.com +noall +answer
echo
"$work/bin/farmdns-demo" clients -dns 127.0.0.1:5380 -name _ws._tcp.farm.example.com -rate 20 -count $((nodes * 100)) & pids+=($!)
if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
  echo
  echo '$ dig @127.0.0.1 -p 5380 _status.farm.example.com TXT +tcp +short'
  dig @127.0.0.1 -p 5380 _status.farm.example.com TXT +tcp +short
else
  echo "clients connecting; Ctrl-C stops the demo"
  wait
fi
