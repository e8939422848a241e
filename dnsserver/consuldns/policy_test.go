package consuldns_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
)

// staticLoads is a LoadSource that never changes.
type staticLoads struct{ l *health.CatalogLoads }

func (s staticLoads) Loads() *health.CatalogLoads { return s.l }

// loadedCatalog has web instances n1..n6 at 10.0.0.1..6 holding 600, 100,
// 500, 200, 300 and 400 connections of 1000, all passing, and two idle
// ones that must never answer: n7 with a critical check and n8 in
// maintenance (a critical check to Consul's health filter). n2, n4 and n6
// carry the tag "canary".
func loadedCatalog(now time.Time) (*health.Catalog, *health.CatalogLoads) {
	cat := &health.Catalog{Datacenter: "dc1", Index: 7, Nodes: map[string]*health.CatalogNode{}, Services: map[string][]*health.CatalogInstance{}}
	conns := []int{600, 100, 500, 200, 300, 400, 0, 0}
	values := map[string][]byte{}
	for i, c := range conns {
		n := &health.CatalogNode{Name: fmt.Sprintf("n%d", i+1), Address: fmt.Sprintf("10.0.0.%d", i+1)}
		cat.Nodes[n.Name] = n
		in := &health.CatalogInstance{Node: n, ID: "web-" + n.Name, Service: "web", Port: 80, Checks: []string{api.HealthPassing}}
		switch i {
		case 1, 3, 5:
			in.Tags = []string{"canary"}
		case 6:
			in.Checks = append(in.Checks, api.HealthCritical)
		case 7:
			in.Checks = append(in.Checks, api.HealthMaint)
		}
		cat.Services["web"] = append(cat.Services["web"], in)
		values[health.LoadKey(health.DefaultLoadPrefix, "web", n.Name, in.ID)] = fmt.Appendf(nil,
			`{"connections":%d,"accepted":%d,"capacity":1000,"updated":%q}`, c, c, now.UTC().Format(time.RFC3339Nano))
	}
	return cat, health.NewCatalogLoads(health.DefaultLoadPrefix, 0, values, now)
}

func balanced(t *testing.T, kind policy.Kind, answers int, loads *health.CatalogLoads) (*consuldns.Resolver, *consuldns.Balanced) {
	t.Helper()
	cfg := policy.DefaultConfig()
	cfg.Policy, cfg.Answers = kind, answers
	b, err := consuldns.NewBalanced(cfg, staticLoads{loads})
	if err != nil {
		t.Fatal(err)
	}
	r, err := consuldns.New(consuldns.Config{AnswerLimit: answers}, b)
	if err != nil {
		t.Fatal(err)
	}
	return r, b
}

func askFrom(t *testing.T, r *consuldns.Resolver, cat *health.Catalog, client string, tcp bool, name string, qtype uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	m := r.Answer(consuldns.Request{Msg: q, TCP: tcp, Client: netip.MustParseAddr(client)}, cat)
	if _, err := m.Pack(); err != nil {
		t.Fatalf("%s: pack: %v", name, err)
	}
	return m
}

func addrs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

// TestBalancedLeastLoaded: answers: 3 with least-loaded names the three
// least loaded healthy instances, least loaded first, and counts them in
// the ledger; round-robin does not follow load.
func TestBalancedLeastLoaded(t *testing.T) {
	now := time.Now()
	cat, loads := loadedCatalog(now)
	r, b := balanced(t, policy.LeastLoaded, 3, loads)
	m := askFrom(t, r, cat, "192.0.2.1", true, "web.service.consul.", dns.TypeA)
	if got, want := addrs(m), []string{"10.0.0.2", "10.0.0.4", "10.0.0.5"}; !slices.Equal(got, want) {
		t.Fatalf("least-loaded answered %v, want %v", got, want)
	}
	counted := map[string]uint64{}
	for _, s := range b.Stats("web", "", now) {
		counted[s.Node] = s.Answers
	}
	if want := map[string]uint64{"n1": 0, "n2": 1, "n3": 0, "n4": 1, "n5": 1, "n6": 0}; !mapsEqual(counted, want) {
		t.Fatalf("ledger counts %v, want %v (the critical and maintenance nodes not even in the pool)", counted, want)
	}

	// Round-robin rotates regardless of load: over a few answers it names
	// the loaded nodes first too.
	rr, _ := balanced(t, policy.RoundRobin, 3, loads)
	firsts := map[string]bool{}
	for i := range 12 {
		m := askFrom(t, rr, cat, fmt.Sprintf("198.51.%d.1", i), true, "web.service.consul.", dns.TypeA)
		if len(m.Answer) != 3 {
			t.Fatalf("round-robin answered %d records, want 3", len(m.Answer))
		}
		firsts[addrs(m)[0]] = true
	}
	if !firsts["10.0.0.1"] || !firsts["10.0.0.3"] {
		t.Fatalf("round-robin's first records %v never named the loaded n1 and n3", firsts)
	}
}

// TestBalancedExcludesUnhealthy: critical and maintenance instances never
// answer, whatever their load, in any of many answers, for A and SRV.
func TestBalancedExcludesUnhealthy(t *testing.T) {
	cat, loads := loadedCatalog(time.Now())
	for _, kind := range []policy.Kind{policy.LeastLoaded, policy.Weighted, policy.RoundRobin} {
		r, _ := balanced(t, kind, 8, loads)
		for i := range 50 {
			client := fmt.Sprintf("203.0.%d.1", i)
			for _, m := range []*dns.Msg{
				askFrom(t, r, cat, client, true, "web.service.consul.", dns.TypeA),
				askFrom(t, r, cat, client, true, "web.service.consul.", dns.TypeSRV),
			} {
				for _, rr := range append(slices.Clone(m.Answer), m.Extra...) {
					if s := rr.String(); slicesContainsAny(s, "10.0.0.7", "10.0.0.8", "n7.node", "n8.node") {
						t.Fatalf("%s: answered an unhealthy instance: %s", kind, s)
					}
				}
				if len(m.Answer) != 6 {
					t.Fatalf("%s: %d answers, want the 6 healthy instances", kind, len(m.Answer))
				}
			}
		}
	}
}

// TestBalancedTagSRVRoom: a tag filter chooses among the tagged instances
// only; SRV answers carry headroom weights; over UDP without EDNS only the
// three records Consul keeps are chosen and counted.
func TestBalancedTagSRVRoom(t *testing.T) {
	now := time.Now()
	cat, loads := loadedCatalog(now)
	r, _ := balanced(t, policy.LeastLoaded, 2, loads)
	m := askFrom(t, r, cat, "192.0.2.1", true, "canary.web.service.consul.", dns.TypeA)
	if got, want := addrs(m), []string{"10.0.0.2", "10.0.0.4"}; !slices.Equal(got, want) {
		t.Fatalf("canary answered %v, want %v", got, want)
	}
	m = askFrom(t, r, cat, "192.0.2.1", true, "_web._tcp.service.consul.", dns.TypeSRV)
	if len(m.Answer) != 2 {
		t.Fatalf("SRV answered %d records, want 2", len(m.Answer))
	}
	w0, w1 := m.Answer[0].(*dns.SRV).Weight, m.Answer[1].(*dns.SRV).Weight
	if !(w0 > w1 && w1 > 1) {
		t.Fatalf("SRV weights %d, %d: want headroom weights, the least loaded heaviest", w0, w1)
	}

	r8, b8 := balanced(t, policy.LeastLoaded, 8, loads)
	m = askFrom(t, r8, cat, "192.0.2.1", false, "web.service.consul.", dns.TypeA)
	if len(m.Answer) != 3 {
		t.Fatalf("UDP without EDNS: %d answers, want Consul's 3", len(m.Answer))
	}
	var total uint64
	for _, s := range b8.Stats("web", "", now) {
		total += s.Answers
	}
	if total != 3 {
		t.Fatalf("ledger counted %d records for a 3-record reply", total)
	}
}

// TestBalancedFollowsCatalog: a new catalog view rebuilds the pool with the
// ledger carried over, and an instance gone critical stops answering.
func TestBalancedFollowsCatalog(t *testing.T) {
	now := time.Now()
	cat, loads := loadedCatalog(now)
	r, b := balanced(t, policy.LeastLoaded, 3, loads)
	askFrom(t, r, cat, "192.0.2.1", true, "web.service.consul.", dns.TypeA)
	next := *cat
	next.Services = map[string][]*health.CatalogInstance{"web": slices.Clone(cat.Services["web"])}
	down := *next.Services["web"][1] // n2, the least loaded
	down.Checks = []string{api.HealthCritical}
	next.Services["web"][1] = &down
	m := askFrom(t, r, &next, "192.0.2.9", true, "web.service.consul.", dns.TypeA)
	if got, want := addrs(m), []string{"10.0.0.4", "10.0.0.5", "10.0.0.6"}; !slices.Equal(got, want) {
		t.Fatalf("after n2 went critical: %v, want %v", got, want)
	}
	counted := map[string]uint64{}
	for _, s := range b.Stats("web", "", now) {
		counted[s.Node] = s.Answers
	}
	if counted["n4"] != 2 || counted["n5"] != 2 || counted["n6"] != 1 {
		t.Fatalf("ledger %v: the first answer's counts did not carry over", counted)
	}
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func slicesContainsAny(s string, subs ...string) bool {
	return slices.ContainsFunc(subs, func(x string) bool { return strings.Contains(s, x) })
}

// TestBalancedConcurrent: questions from many goroutines while the catalog
// view changes under them (run with -race): every answer names three
// healthy instances.
func TestBalancedConcurrent(t *testing.T) {
	now := time.Now()
	cat, loads := loadedCatalog(now)
	r, _ := balanced(t, policy.LeastLoaded, 3, loads)
	views := []*health.Catalog{cat}
	for range 4 {
		next := *cat
		views = append(views, &next) // a new view of the same content
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				q := new(dns.Msg)
				q.SetQuestion("web.service.consul.", dns.TypeA)
				m := r.Answer(consuldns.Request{Msg: q, TCP: true, Client: netip.AddrFrom4([4]byte{10, byte(g), byte(i), 1})}, views[i%len(views)])
				if got := addrs(m); len(got) != 3 || slicesContainsAny(strings.Join(got, " "), "10.0.0.7", "10.0.0.8") {
					errs <- fmt.Sprintf("answer %v", got)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
