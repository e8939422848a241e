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

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
)

// TestClosedLoopBalance runs the whole loop for real, in real time: nodes
// report their connection counts to a real Consul, farmdns reads them and
// answers over UDP, resolvers cache its answers for the TTL, and clients
// connect to the first record and stay. One node has twice the others'
// capacity, as in a farm of mixed hardware. The spread of utilisation
// (connections over capacity) across the nodes must stay within bounds
// looser than the simulator's (the run is short, with few connections, and
// starts cold), and tight enough that round-robin fails each of them: it
// hands a popular resolver's cached burst to one node, never corrects, and
// gives the big node no more than the others. The figures are logged.
func TestClosedLoopBalance(t *testing.T) {
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
	)
	capacity := func(i int) int { // node 5 is the big one
		return 1000 * (1 + i/nodes)
	}
	// FARMDNS_BALANCE_POLICY runs it with another policy, to see that the
	// bounds tell the default from round-robin (which must fail them).
	policy := cmp.Or(os.Getenv("FARMDNS_BALANCE_POLICY"), "least-loaded")
	// The nodes join one by one as the test registers them: without slow
	// start off, the later ones would ramp up for its whole length.
	f := startFarm(t, 0, "        answers: 3\n        ttl: 1s\n        slow_start: 0s\n        policy: "+policy+"\n", false)
	for i := 1; i <= nodes; i++ {
		registerNode(t, f.consul, i, 0)
	}
	eventually(t, 5*time.Second, "all nodes in the pool", func() bool { return len(f.answered(t, 40)) == nodes })

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
			r := rs[zipf.Uint64()]
			addrs, err := r.resolve(f.dns, now)
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
	t.Logf("closed loop, %s, %d nodes (one of twice the capacity), %d resolvers, %.0f clients/s, TTL 1 s, 3 records, reports every %v: max/mean over %d samples after %v: p50 %.3f, p90 %.3f, max %.3f; final %v",
		policy, nodes, resolvers, arrivals, reportEach, len(ratios), warmUp, p50, p90, max, conns)
	// With about 700 connections per small node, counting noise alone
	// moves a node by a few percent; the bounds leave room for it and for a
	// busy machine, and round-robin fails each of them. Measured with -race
	// on the shared 2-core machine (load average 12-20), four runs each:
	// least-loaded p50 1.020-1.044, max 1.081-1.167; round-robin p50
	// 1.279-1.412, max 1.393-1.607.
	if p50 > 1.10 || max > 1.25 {
		t.Errorf("max/mean utilisation p50 %.3f (bound 1.10), max %.3f (bound 1.25): %s does not balance", p50, max, policy)
	}
}

// resolver caches farmdns's answer for its TTL, as a recursive resolver does;
// some reorder the records.
type resolver struct {
	addr    net.IP
	reorder bool
	until   time.Time
	addrs   []string
	turn    int
}

func (r *resolver) resolve(server string, now time.Time) ([]string, error) {
	if now.Before(r.until) {
		if r.reorder && len(r.addrs) > 1 {
			r.turn++
			i := r.turn % len(r.addrs)
			return append(slices.Clone(r.addrs[i:]), r.addrs[:i]...), nil
		}
		return r.addrs, nil
	}
	c := &dns.Client{Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: r.addr}, Timeout: 2 * time.Second}}
	m, _, err := c.Exchange(new(dns.Msg).SetQuestion("farm.example.com.", dns.TypeA), server)
	if err != nil {
		return nil, err
	}
	r.addrs = r.addrs[:0]
	ttl := uint32(1)
	for _, rr := range m.Answer {
		r.addrs = append(r.addrs, rr.(*dns.A).A.String())
		ttl = rr.Header().Ttl
	}
	r.until = now.Add(time.Duration(ttl) * time.Second)
	return r.addrs, nil
}

type departure struct {
	at   time.Time
	node string
}

// departures is a min-heap of when clients leave.
type departures []departure

func (d departures) Len() int           { return len(d) }
func (d departures) Less(i, j int) bool { return d[i].at.Before(d[j].at) }
func (d departures) Swap(i, j int)      { d[i], d[j] = d[j], d[i] }
func (d *departures) Push(x any)        { *d = append(*d, x.(departure)) }
func (d *departures) Pop() any {
	old := *d
	x := old[len(old)-1]
	*d = old[:len(old)-1]
	return x
}
