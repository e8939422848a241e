# farmdns: `make test` installs what the tests need and runs them all.
GO ?= go
APT_PACKAGES := knot dnsutils dnsperf prometheus chromium unbound

.PHONY: test test-deps check build run bench fuzz demo

test: test-deps check
	$(GO) test -race -count=1 -timeout 15m ./...

# External peers the tests run for real: Knot DNS (differential test), dig,
# unbound (a caching resolver in front of farmdns: TTL 0, ECS),
# dnsperf (benchmarks) from Debian, and a pinned Consul built from the Go
# module proxy into ~/.cache/farmdns (Debian has no Consul package).
test-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@.ci/consul.sh >/dev/null

# gofmt walks the tree itself (no git needed: a tarball is checked too), and
# a file it cannot parse fails the check instead of passing silently.
check:
	@out=$$(gofmt -l .) || { echo "gofmt failed (see above)"; exit 1; }; \
	if [ -n "$$out" ]; then echo "$$out"; echo "gofmt: files above need formatting"; exit 1; fi
	$(GO) vet ./...

build:
	$(GO) build -o . ./cmd/...

run:
	$(GO) run ./cmd/farmdns -config deploy/example/farmdns.yaml

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
	.ci/dnsperf.sh 5 3
	.ci/rrl-bench.sh 10 2
	.ci/consuldns-bench.sh 10 3

# FuzzServe: the example zone and a farm of pools, fast path against slow.
# make fuzz FUZZTIME=10m runs it longer.
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzServe -fuzztime $(FUZZTIME) ./dnsserver

# A whole farm on this machine: Consul, four nodes with agents, farmdns, clients.
demo: test-deps
	deploy/demo/demo.sh
