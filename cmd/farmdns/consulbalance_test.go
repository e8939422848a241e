package main

import (
	"cmp"
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/farmdns/farmdns/dnsserver"
	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
)

// TestClosedLoopConsulDNSBalance is TestClosedLoopBalance for the Consul
// DNS name: the same farm, resolvers and clients, but the clients resolve
// ws.service.consul, answered with consul_dns answers: 3. They must spread
// within the pool test's bounds. Consul's own order (answers: 0, every
// instance shuffled; FARMDNS_CONSULDNS_BALANCE=shuffle) and round-robin
// must fail them, which shows the bounds tell load-aware answers apart.
func TestClosedLoopConsulDNSBalance(t *testing.T) {
	if testing.Short() {
		t.Skip("a 25 s real-time run")
	}
	const (
		nodes      = 5
		resolvers  = 30
		arrivals   = 200.0 // clients per second
		lifetime   = 60.0  // mean seconds a client stays
		run        = 25 * time.Second
		warmUp     = 8 * time.Second
		reportEach = time.Second
		name       = "ws.service.consul."
	)
	capacity := func(i int) int { return 1000 * (1 + i/nodes) } // node 5 is the big one
	mode := cmp.Or(os.Getenv("FARMDNS_CONSULDNS_BALANCE"), "least-loaded")
	block := "consul_dns:\n  service_ttl: 1s\n  answers: 3\n  policy: " + mode + "\n"
	if mode == "shuffle" {
		block = "consul_dns:\n  service_ttl: 1s\n" // answers: 0, Consul's order
	}
	// The pool block is startFarm's; the test asks only the Consul DNS name.
	f := startFarm(t, 0, "        answers: 3\n"+block, false)
	for i := 1; i <= nodes; i++ {
		registerNode(t, f.consul, i, 0)
	}
	// Ask only once the view holds every node: a node that joins a pool
	// already asked for starts a slow start, which would last the run.
	eventually(t, 10*time.Second, "all nodes in the catalog view", func() bool {
		f.srv.catalogs.Ask("ws") // the view holds only services asked for
		c := f.srv.catalogs.Catalog()
		return c != nil && len(c.Services["ws"]) == nodes
	})
	eventually(t, 10*time.Second, "all nodes in the Consul DNS answers", func() bool {
		seen := map[string]bool{}
		for i := range 40 {
			r := &resolver{addr: net.IPv4(127, 1, byte(i), 1)}
			addrs, err := r.resolve(f.dns, name, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range addrs {
				seen[a] = true
			}
		}
		return len(seen) == nodes
	})

	rng := rand.New(rand.NewPCG(1, 2))
	zipf := rand.NewZipf(rand.New(rand.NewPCG(3, 4)), 1.1, 1, resolvers-1)
	rs := make([]*resolver, resolvers)
	for i := range rs {
		rs[i] = &resolver{addr: net.IPv4(127, byte(50+i/250), byte(i%250), 1), reorder: i%5 == 4}
	}
	conns := map[string]int{}
	accepted := map[string]int{}
	var leaving departures
	var ratios []float64
	start := time.Now()
	nextReport := start
	nextArrival := start
	for now := start; now.Sub(start) < run; now = time.Now() {
		for len(leaving) > 0 && leaving[0].at.Before(now) {
			conns[heap.Pop(&leaving).(departure).node]--
		}
		for ; nextArrival.Before(now); nextArrival = nextArrival.Add(time.Duration(rng.ExpFloat64() / arrivals * float64(time.Second))) {
			addrs, err := rs[zipf.Uint64()].resolve(f.dns, name, now)
			if err != nil {
				t.Fatal(err)
			}
			if len(addrs) == 0 {
				t.Fatal("an empty answer")
			}
			conns[addrs[0]]++ // most clients take the first record
			accepted[addrs[0]]++
			heap.Push(&leaving, departure{at: now.Add(time.Duration(rng.ExpFloat64() * lifetime * float64(time.Second))), node: addrs[0]})
		}
		if now.After(nextReport) {
			nextReport = nextReport.Add(reportEach)
			report := map[string][]byte{}
			var sum, capSum, most float64
			for i := 1; i <= nodes; i++ {
				addr := fmt.Sprintf("127.0.0.%d", 10+i)
				node := fmt.Sprintf("n%d", i)
				report[health.LoadKey(health.DefaultLoadPrefix, "ws", node, "ws-"+node)] = fmt.Appendf(nil,
					`{"connections":%d,"accepted":%d,"capacity":%d,"updated":%q}`, conns[addr], accepted[addr], capacity(i), now.UTC().Format(time.RFC3339Nano))
				sum += float64(conns[addr])
				capSum += float64(capacity(i))
				most = math.Max(most, float64(conns[addr])/float64(capacity(i)))
			}
			if err := f.consul.PutKVBatch(report); err != nil {
				t.Fatal(err)
			}
			if now.Sub(start) > warmUp && sum > 0 {
				ratios = append(ratios, most/(sum/capSum)) // the most utilised over the mean
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	slices.Sort(ratios)
	p50, p90, max := ratios[len(ratios)/2], ratios[len(ratios)*9/10], ratios[len(ratios)-1]
	t.Logf("closed loop on %s, consul_dns %s, %d nodes (one of twice the capacity), %d resolvers, %.0f clients/s, TTL 1 s: max/mean over %d samples after %v: p50 %.3f, p90 %.3f, max %.3f; final %v",
		name, mode, nodes, resolvers, arrivals, len(ratios), warmUp, p50, p90, max, conns)
	// The pool test's bounds: Consul DNS answers must spread as pool
	// answers do.
	if p50 > 1.10 || max > 1.25 {
		t.Errorf("max/mean utilisation p50 %.3f (bound 1.10), max %.3f (bound 1.25): consul_dns %s does not balance", p50, max, mode)
	}
}

// TestConsulDNSLedgerKeptOnReload: a reload that keeps policy and answers
// keeps the Balanced, and with it the ledgers; one that changes them starts
// afresh.
func TestConsulDNSLedgerKeptOnReload(t *testing.T) {
	slot := &catalogSlot{}
	attach := func(block string) *consuldns.Balanced {
		t.Helper()
		cfg, err := parseConfig([]byte("consul:\n  address: 127.0.0.1:8500\n" + block))
		if err != nil {
			t.Fatal(err)
		}
		attachConsulDNS(&dnsserver.State{}, cfg, slot)
		return slot.balanced
	}
	first := attach("consul_dns:\n  answers: 3\n")
	if first == nil {
		t.Fatal("answers: 3 built no Balanced")
	}
	if again := attach("consul_dns:\n  answers: 3\n  node_ttl: 5s\n"); again != first {
		t.Fatal("a reload keeping policy and answers dropped the ledgers")
	}
	if other := attach("consul_dns:\n  answers: 2\n"); other == first {
		t.Fatal("a reload changing answers kept the old Balanced")
	}
}
