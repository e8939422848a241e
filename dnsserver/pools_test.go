package dnsserver

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
	"github.com/farmdns/farmdns/zones"
)

const farmZone = `$TTL 300
@ SOA ns1 hostmaster 1 7200 3600 1209600 30
@ NS ns1
ns1 A 192.0.2.53
www CNAME @
`

func target(node, addr string, conns int64, meta map[string]string) health.Target {
	return health.Target{
		Node: node, ServiceID: "ws-" + node, Address: netip.MustParseAddr(addr), Port: 8080, Meta: meta,
		Health: health.HealthPassing,
		Load:   health.Load{State: health.LoadKnown, Source: health.SourceKV, Connections: conns, Capacity: 1000, Updated: time.Now()},
	}
}

// farmHandler serves farm.example. with a nodes pool at the apex and a shards
// pool at lb, fed with targets.
func farmHandler(t testing.TB, onEmpty policy.OnEmpty, services map[string][]health.Target) *Handler {
	t.Helper()
	ab := []uint16{dns.TypeA, dns.TypeAAAA}
	z, err := zones.Parse("farm.example.", "farm.zone", strings.NewReader(farmZone),
		zones.Binding{Name: "@", Types: ab, Pool: 0}, zones.Binding{Name: "lb", Types: ab, Pool: 1},
		zones.Binding{Name: "_ws._tcp", Types: []uint16{dns.TypeSRV}, Pool: 0},
		zones.Binding{Name: "nodes", Children: true, Pool: 0})
	if err != nil {
		t.Fatal(err)
	}
	set, _ := zones.NewSet(z)
	nodes := policy.DefaultConfig()
	nodes.Answers = 2
	nodes.OnEmpty = onEmpty
	shards := policy.DefaultConfig()
	shards.Mode = policy.Shards
	shards.ShardMeta = "shard"
	shards.Answers = 2
	st := NewState(set, Options{MaxUDPSize: DefaultMaxUDPSize, StatusFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
		PoolSpec{Name: "farm.example.", Zone: "farm.example.", Service: "ws", Policy: nodes},
		PoolSpec{Name: "lb.farm.example.", Zone: "farm.example.", Service: "ws", LBService: "ws-lb", Policy: shards})
	h := NewHandler(st, testLogger(t))
	h.pools.update(&h.state, services, time.Now())
	return h
}

func farmServices() map[string][]health.Target {
	drained := target("n4", "192.0.2.14", 0, map[string]string{"shard": "b"})
	drained.Draining = true
	return map[string][]health.Target{
		"ws": {
			target("n1", "192.0.2.11", 100, map[string]string{"shard": "a"}),
			target("n2", "192.0.2.12", 100, map[string]string{"shard": "a"}),
			target("n3", "192.0.2.13", 100, map[string]string{"shard": "b"}),
			drained,
			target("n6", "2001:db8::16", 100, map[string]string{"shard": "b"}),
		},
		"ws-lb": {
			target("lb-a1", "192.0.2.101", 0, map[string]string{"shard": "a"}),
			target("lb-a2", "192.0.2.102", 0, map[string]string{"shard": "a"}),
			target("lb-b1", "192.0.2.111", 0, map[string]string{"shard": "b"}),
		},
	}
}

// serveFrom runs q through h as a UDP query from client.
func serveFrom(t *testing.T, h *Handler, q *dns.Msg, client string) *dns.Msg {
	t.Helper()
	var rec recorder
	h.serve(&rec, make([]byte, 65535), request{wire: mustPack(t, q), remote: netip.MustParseAddr(client)})
	r := new(dns.Msg)
	if len(rec.msgs) != 1 || r.Unpack(rec.msgs[0]) != nil {
		t.Fatalf("%d replies", len(rec.msgs))
	}
	return r
}

func TestPoolSticksPerClient(t *testing.T) {
	h := farmHandler(t, policy.EmptyFailOpen, farmServices())
	a := addrs(serveFrom(t, h, query("farm.example.", dns.TypeA), "198.51.100.7"))
	b := addrs(serveFrom(t, h, query("farm.example.", dns.TypeA), "198.51.100.8")) // same /24
	if strings.Join(a, ",") != strings.Join(b, ",") {
		t.Errorf("one subnet got %v then %v: its A and AAAA answers would differ", a, b)
	}
}

func addrs(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	return out
}

func TestPoolAnswers(t *testing.T) {
	h := farmHandler(t, policy.EmptyFailOpen, farmServices())
	seen := map[string]int{}
	for i := range 200 {
		q := query("FARM.example.", dns.TypeA)
		if i%2 == 1 {
			q = query("farm.example.", dns.TypeA, noEDNS)
		}
		// Many resolvers: one resolver's repeated questions stick to the
		// same nodes for a moment (its A and AAAA must agree).
		r := serveFrom(t, h, q, fmt.Sprintf("198.51.%d.1", i))
		if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 2 {
			t.Fatalf("reply %v", r)
		}
		for _, rr := range r.Answer {
			ttl := rr.Header().Ttl
			if rr.Header().Name != q.Question[0].Name || ttl != 1 {
				t.Fatalf("record %v: owner must echo the question, TTL the default 1 s (no jitter under 10 s)", rr)
			}
		}
		for _, a := range addrs(r) {
			seen[a]++
		}
	}
	if seen["192.0.2.14"] > 0 {
		t.Error("a draining target was handed out")
	}
	for _, a := range []string{"192.0.2.11", "192.0.2.12", "192.0.2.13"} {
		if seen[a] == 0 {
			t.Errorf("%s never handed out among equals: %v", a, seen)
		}
	}
	r := serveMsg(t, h, query("farm.example.", dns.TypeAAAA), false)
	if got := addrs(r); len(got) != 1 || got[0] != "2001:db8::16" {
		t.Errorf("AAAA: %v", got)
	}
	// A CNAME into the pool takes the slow path: the chain, then the choice.
	r = serveMsg(t, h, query("www.farm.example.", dns.TypeA), false)
	if len(r.Answer) != 3 || r.Answer[0].Header().Rrtype != dns.TypeCNAME || r.Answer[1].Header().Name != "farm.example." {
		t.Errorf("CNAME into the pool: %v", r.Answer)
	}
	// Static records of the apex stay static.
	if r := serveMsg(t, h, query("farm.example.", dns.TypeSOA), false); len(r.Answer) != 1 {
		t.Errorf("SOA at a pool name: %v", r)
	}
}

func TestPoolShards(t *testing.T) {
	h := farmHandler(t, policy.EmptyFailOpen, farmServices())
	shardOf := map[string]string{"192.0.2.101": "a", "192.0.2.102": "a", "192.0.2.111": "b"}
	firsts := map[string]int{}
	for i := range 100 {
		r := serveFrom(t, h, query("lb.farm.example.", dns.TypeA), fmt.Sprintf("198.51.%d.1", i))
		got := addrs(r)
		if len(got) == 0 {
			t.Fatalf("no LBs: %v", r)
		}
		for _, a := range got {
			if shardOf[a] != shardOf[got[0]] {
				t.Fatalf("shards mixed in one answer: %v", got)
			}
		}
		firsts[got[0]]++
	}
	if firsts["192.0.2.101"] == 0 || firsts["192.0.2.102"] == 0 {
		t.Errorf("shard a's LBs do not rotate: first records %v", firsts)
	}
}

func TestPoolEmpty(t *testing.T) {
	for _, tt := range []struct {
		onEmpty policy.OnEmpty
		rcode   int
	}{{policy.EmptyNoData, dns.RcodeSuccess}, {policy.EmptyServFail, dns.RcodeServerFailure}} {
		critical := farmServices()["ws"]
		for i := range critical {
			critical[i].Health = health.HealthCritical
		}
		h := farmHandler(t, tt.onEmpty, map[string][]health.Target{"ws": critical})
		for _, q := range []*dns.Msg{query("farm.example.", dns.TypeA), query("www.farm.example.", dns.TypeA)} {
			r := serveMsg(t, h, q, false)
			if r.Rcode != tt.rcode || len(addrs(r)) != 0 {
				t.Errorf("on_empty %v, %s: %v", tt.onEmpty, q.Question[0].Name, r)
			}
			if tt.rcode == dns.RcodeSuccess && (len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA) {
				t.Errorf("on_empty nodata: no SOA in authority: %v", r)
			}
		}
	}
	// Before Consul ever answered, a pool has nothing: NODATA, not an error.
	h := farmHandler(t, policy.EmptyFailOpen, nil)
	if r := serveMsg(t, h, query("farm.example.", dns.TypeA), false); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("no snapshot yet: %v", r)
	}
}

func TestPoolLedgerSurvivesReload(t *testing.T) {
	h := farmHandler(t, policy.EmptyFailOpen, farmServices())
	for range 10 {
		serveMsg(t, h, query("farm.example.", dns.TypeA), false)
	}
	answers := func() uint64 {
		var n uint64
		for _, s := range h.State().pools[0].cur.Load().Stats(time.Now()) {
			n += s.Answers
		}
		return n
	}
	if answers() != 20 {
		t.Fatalf("ledger %d, want 20 records counted", answers())
	}
	old := h.State()
	h.Swap(NewState(old.Zones, old.Options, old.pools[0].spec, old.pools[1].spec))
	if answers() != 20 {
		t.Errorf("ledger %d after a reload, want it carried over", answers())
	}
	if r := serveMsg(t, h, query("farm.example.", dns.TypeA), false); len(addrs(r)) != 2 {
		t.Errorf("after reload: %v", r)
	}
}

func TestPackDropsPoolRecordsBeforeTruncating(t *testing.T) {
	r := new(dns.Msg)
	r.SetQuestion("farm.example.", dns.TypeA)
	r.Compress = true
	for i := range 8 {
		rr, _ := dns.NewRR(fmt.Sprintf("farm.example. 5 IN A 192.0.2.%d", i+1))
		r.Answer = append(r.Answer, rr)
	}
	out, err := pack(r, make([]byte, 512), 12+18+3*16, 8)
	if err != nil || len(r.Answer) != 3 || r.Truncated || len(out) > 12+18+3*16 {
		t.Errorf("%d records, tc %v, %d octets: want 3 that fit, no TC", len(r.Answer), r.Truncated, len(out))
	}
}

func BenchmarkServePool(b *testing.B) {
	services := farmServices()
	for i := range 1000 {
		services["ws"] = append(services["ws"], target(fmt.Sprintf("m%d", i), fmt.Sprintf("10.0.%d.%d", i/256, i%256), int64(i), nil))
	}
	h := farmHandler(b, policy.EmptyFailOpen, services)
	wire, _ := query("farm.example.", dns.TypeA).Pack()
	buf := make([]byte, 65535)
	// Askers from many /24s: each query is a fresh choice, not a sticky one.
	var clients [4096]netip.Addr
	for i := range clients {
		clients[i] = netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		h.serve(discard{}, buf, request{wire: wire, remote: clients[i%len(clients)]})
		i++
	}
}

func TestPoolMetrics(t *testing.T) {
	services := farmServices()
	services["ws"][2].Health = health.HealthWarning
	services["ws"][4].Load.State = health.LoadStale
	h := farmHandler(t, policy.EmptyFailOpen, services)
	for i := range 5 {
		serveFrom(t, h, query("farm.example.", dns.TypeA), fmt.Sprintf("198.51.%d.1", i))
	}
	want := `
# HELP farmdns_pool_targets Targets of the pool by state: healthy (may be answered: passing or warning, not draining), warning, draining, critical, stale (load report too old).
# TYPE farmdns_pool_targets gauge
farmdns_pool_targets{pool="farm.example.",state="critical"} 0
farmdns_pool_targets{pool="farm.example.",state="draining"} 1
farmdns_pool_targets{pool="farm.example.",state="healthy"} 4
farmdns_pool_targets{pool="farm.example.",state="stale"} 1
farmdns_pool_targets{pool="farm.example.",state="warning"} 1
farmdns_pool_targets{pool="lb.farm.example.",state="critical"} 0
farmdns_pool_targets{pool="lb.farm.example.",state="draining"} 1
farmdns_pool_targets{pool="lb.farm.example.",state="healthy"} 4
farmdns_pool_targets{pool="lb.farm.example.",state="stale"} 1
farmdns_pool_targets{pool="lb.farm.example.",state="warning"} 1
`
	c := h.PoolCollector()
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "farmdns_pool_targets"); err != nil {
		t.Error(err)
	}
	var total float64
	for _, n := range []string{"n1", "n2", "n3", "n6"} {
		total += testutil.ToFloat64(constMetric(t, c, "farmdns_pool_answers_total", `pool="farm.example.",target="`+n+`/ws-`+n+`"`))
	}
	if total != 10 {
		t.Errorf("%v answers counted over the targets, want 10 (5 answers of 2)", total)
	}
	// Readers count outcomes in shards of their own; a scrape adds them up.
	wire := mustPack(t, query("farm.example.", dns.TypeA))
	for shard := range 7 {
		h.serve(discard{}, make([]byte, 65535), request{wire: wire, remote: netip.MustParseAddr("198.51.100.1"), shard: shard})
	}
	if n := testutil.ToFloat64(constMetric(t, c, "farmdns_pool_outcomes_total", `outcome="answer",pool="farm.example."`)); n != 12 {
		t.Errorf("farmdns_pool_outcomes_total{outcome=answer}: %v, want 12 (5 answers, then 7 from 7 reader shards)", n)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}

// constMetric finds one series of a collector by name and label text.
func constMetric(t *testing.T, c prometheus.Collector, name, labels string) prometheus.Collector {
	t.Helper()
	ch := make(chan prometheus.Metric, 1000)
	c.Collect(ch)
	close(ch)
	for m := range ch {
		var d dto.Metric
		m.Write(&d)
		text := ""
		for _, l := range d.Label {
			if text != "" {
				text += ","
			}
			text += l.GetName() + `="` + l.GetValue() + `"`
		}
		if strings.Contains(m.Desc().String(), `"`+name+`"`) && text == labels {
			return constCollector{m}
		}
	}
	t.Fatalf("no %s{%s}", name, labels)
	return nil
}

type constCollector struct{ m prometheus.Metric }

func (c constCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.Desc() }
func (c constCollector) Collect(ch chan<- prometheus.Metric) { ch <- c.m }

func TestStatusTXT(t *testing.T) {
	h := farmHandler(t, policy.EmptyFailOpen, farmServices())
	serveFrom(t, h, query("farm.example.", dns.TypeA), "198.51.1.1")
	r := serveMsg(t, h, query("_STATUS.farm.example.", dns.TypeTXT), true) // from 127.0.0.1
	var lines []string
	for _, rr := range r.Answer {
		lines = append(lines, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	text := strings.Join(lines, "\n")
	for _, want := range []string{
		"pool=farm.example. service=ws mode=nodes policy=least-loaded targets=5 answer=1",
		"pool=farm.example. node=n4/ws-n4 addr=192.0.2.14 health=passing draining=true eligible=false conns=0 cap=1000",
		"pool=lb.farm.example. lb=lb-b1/ws-lb-b1 addr=192.0.2.111",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("_status lacks %q:\n%s", want, text)
		}
	}
	if !r.Authoritative || r.Rcode != dns.RcodeSuccess {
		t.Errorf("_status reply %v", r.MsgHdr)
	}
	// Anyone else sees the zone as it is: no such name.
	if r := serveFrom(t, h, query("_status.farm.example.", dns.TypeTXT), "198.51.2.1"); r.Rcode != dns.RcodeNameError {
		t.Errorf("_status for a stranger: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
}

func TestPoolSRV(t *testing.T) {
	h := farmHandler(t, policy.EmptyFailOpen, farmServices())
	r := serveMsg(t, h, query("_ws._tcp.farm.example.", dns.TypeSRV), false)
	if len(r.Answer) != 2 || !r.Authoritative {
		t.Fatalf("SRV: %v", r)
	}
	extra := map[string]bool{}
	for _, rr := range r.Extra {
		extra[rr.Header().Name] = true
	}
	for _, rr := range r.Answer {
		srv := rr.(*dns.SRV)
		if srv.Port != 8080 || srv.Weight == 0 || !strings.HasSuffix(srv.Target, ".nodes.farm.example.") || !extra[srv.Target] {
			t.Errorf("SRV record %v: want port 8080, a headroom weight, a target name with its address in additional", srv)
		}
		if srv.Target == "n4.nodes.farm.example." {
			t.Error("SRV named a draining target")
		}
	}
	for _, tt := range []struct {
		name  string
		qtype uint16
		rcode int
		addr  string
	}{
		{"n1.nodes.farm.example.", dns.TypeA, dns.RcodeSuccess, "192.0.2.11"},
		{"N6.nodes.farm.example.", dns.TypeAAAA, dns.RcodeSuccess, "2001:db8::16"},
		{"n1.nodes.farm.example.", dns.TypeAAAA, dns.RcodeSuccess, ""}, // NODATA
		{"n1.nodes.farm.example.", dns.TypeTXT, dns.RcodeSuccess, ""},
		{"n9.nodes.farm.example.", dns.TypeA, dns.RcodeNameError, ""},
	} {
		r := serveMsg(t, h, query(tt.name, tt.qtype), false)
		got := addrs(r)
		if r.Rcode != tt.rcode || (tt.addr == "" && len(got) != 0) || (tt.addr != "" && (len(got) != 1 || got[0] != tt.addr)) {
			t.Errorf("%s %s: %s %v", tt.name, dns.Type(tt.qtype), dns.RcodeToString[r.Rcode], got)
		}
		if tt.addr == "" && (len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA) {
			t.Errorf("%s %s: negative answer without SOA", tt.name, dns.Type(tt.qtype))
		}
	}
}
