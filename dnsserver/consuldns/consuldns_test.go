package consuldns_test

import (
	"slices"
	"strconv"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
)

// testCatalog is a small hand-built view: three web instances on three
// nodes, and the Consul server.
func testCatalog() *health.Catalog {
	server := &health.CatalogNode{Name: "server1", Address: "10.0.0.100"}
	cat := &health.Catalog{
		Datacenter: "dc1",
		Index:      42,
		Nodes:      map[string]*health.CatalogNode{"server1": server},
		Services: map[string][]*health.CatalogInstance{
			"consul": {{Node: server, ID: "consul", Service: "consul", Port: 8300, Checks: []string{api.HealthPassing}}},
		},
	}
	for i, addr := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		n := &health.CatalogNode{Name: "n" + string(rune('1'+i)), Address: addr}
		cat.Nodes[n.Name] = n
		cat.Services["web"] = append(cat.Services["web"], &health.CatalogInstance{
			Node: n, ID: "web-" + n.Name, Service: "web", Port: 80, Checks: []string{api.HealthPassing},
		})
	}
	return cat
}

func ask(t *testing.T, r *consuldns.Resolver, cat *health.Catalog, name string, qtype uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	m := r.Answer(consuldns.Request{Msg: q, TCP: true}, cat)
	if _, err := m.Pack(); err != nil {
		t.Fatalf("%s: pack: %v", name, err)
	}
	return m
}

// TestAltDomainSOA: Consul names the alt domain's SOA after the primary
// domain when the question is the alt apex or not in lower case; the core
// answers with the alt domain's own SOA.
func TestAltDomainSOA(t *testing.T) {
	r, err := consuldns.New(consuldns.Config{Domain: "consul.", AltDomain: "Alt.Test."}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cat := testCatalog()
	for _, tc := range []struct {
		name  string
		qtype uint16
		owner string
	}{
		{"alt.test.", dns.TypeSOA, "alt.test."},
		{"ALT.TEST.", dns.TypeSOA, "alt.test."},
		{"Web.Service.ALT.test.", dns.TypeSOA, "alt.test."},
		{"nosuch.service.Alt.Test.", dns.TypeA, "alt.test."},
		{"web.service.alt.test.", dns.TypeMX, "alt.test."},
		{"nosuch.service.consul.", dns.TypeA, "consul."},
		{"CONSUL.", dns.TypeSOA, "consul."},
	} {
		m := ask(t, r, cat, tc.name, tc.qtype)
		var soa *dns.SOA
		for _, rr := range append(slices.Clone(m.Answer), m.Ns...) {
			if s, ok := rr.(*dns.SOA); ok {
				soa = s
			}
		}
		if soa == nil || soa.Hdr.Name != tc.owner || soa.Ns != "ns."+tc.owner || soa.Mbox != "hostmaster."+tc.owner {
			t.Errorf("%s %s: SOA %v, want one owned by %s", tc.name, dns.TypeToString[tc.qtype], soa, tc.owner)
		}
	}
}

// reversed is an Orderer that keeps the instances in catalog order, reversed,
// so a test can see the core follows it.
type reversed struct{ calls *int }

func (o reversed) Order(_ consuldns.OrderQuery, in []*health.CatalogInstance) consuldns.Ordered {
	*o.calls++
	out := slices.Clone(in)
	slices.Reverse(out)
	return consuldns.Ordered{In: out}
}

// TestOrdererChoosesAnswers: the Orderer's order is the answer order, and
// AnswerLimit keeps its first choices.
func TestOrdererChoosesAnswers(t *testing.T) {
	calls := 0
	r, err := consuldns.New(consuldns.Config{AnswerLimit: 2}, reversed{&calls})
	if err != nil {
		t.Fatal(err)
	}
	m := ask(t, r, testCatalog(), "web.service.consul.", dns.TypeA)
	var got []string
	for _, rr := range m.Answer {
		got = append(got, rr.(*dns.A).A.String())
	}
	if want := []string{"10.0.0.3", "10.0.0.2"}; !slices.Equal(got, want) || calls != 1 {
		t.Fatalf("answers %v after %d Order calls, want %v after 1", got, calls, want)
	}
	// SRV answers every instance: Consul's a_record_limit is for A/AAAA.
	if m := ask(t, r, testCatalog(), "web.service.consul.", dns.TypeSRV); len(m.Answer) != 3 {
		t.Fatalf("SRV answers %d records, want 3", len(m.Answer))
	}
}

// TestAnswerLeavesCatalogAlone: answers are built from copies; the shared
// catalog is the same after a question as before.
func TestAnswerLeavesCatalogAlone(t *testing.T) {
	r, err := consuldns.New(consuldns.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cat := testCatalog()
	before := slices.Clone(cat.Services["web"])
	for range 20 {
		ask(t, r, cat, "web.service.consul.", dns.TypeSRV)
	}
	if !slices.Equal(before, cat.Services["web"]) {
		t.Fatal("answering reordered the catalog's instances")
	}
}

func TestNoQuestionIsFormErr(t *testing.T) {
	r, err := consuldns.New(consuldns.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := r.Answer(consuldns.Request{Msg: new(dns.Msg)}, testCatalog())
	if m.Rcode != dns.RcodeFormatError {
		t.Fatalf("rcode %s, want FORMERR", dns.RcodeToString[m.Rcode])
	}
}

func TestNewRejectsBadDomains(t *testing.T) {
	for _, cfg := range []consuldns.Config{
		{Domain: "."},
		{Domain: "consul.", AltDomain: "CONSUL"},
		{Domain: "a..b"},
	} {
		if _, err := consuldns.New(cfg, nil); err == nil {
			t.Errorf("New(%+v) accepted it", cfg)
		}
	}
}

// BenchmarkAnswer measures one service answer over UDP without EDNS from a
// 50-instance service, packed as the server would.
func BenchmarkAnswer(b *testing.B) {
	cat := testCatalog()
	for i := range 50 {
		n := &health.CatalogNode{Name: "b" + strconv.Itoa(i), Address: "10.2.0." + strconv.Itoa(i+1)}
		cat.Nodes[n.Name] = n
		cat.Services["big"] = append(cat.Services["big"], &health.CatalogInstance{
			Node: n, ID: n.Name, Service: "big", Port: 80, Checks: []string{api.HealthPassing},
		})
	}
	r, err := consuldns.New(consuldns.Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, qt := range []uint16{dns.TypeA, dns.TypeSRV} {
		b.Run(dns.TypeToString[qt], func(b *testing.B) {
			q := new(dns.Msg)
			q.SetQuestion("big.service.consul.", qt)
			buf := make([]byte, 4096)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Answer(consuldns.Request{Msg: q}, cat).PackBuffer(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzAnswer: any question under the domain gets a reply that packs, over
// any transport, without a panic.
func FuzzAnswer(f *testing.F) {
	for _, s := range []string{"web.service.consul.", "_web._tcp.consul.", "n1.node.consul.", "0a000001.addr.consul.", "a.b.c.query.consul.", "consul."} {
		f.Add(s, uint16(dns.TypeA), uint16(0), false)
		f.Add(s, uint16(dns.TypeSRV), uint16(1232), true)
	}
	r, err := consuldns.New(consuldns.Config{AltDomain: "alt.test."}, nil)
	if err != nil {
		f.Fatal(err)
	}
	cat := testCatalog()
	f.Fuzz(func(t *testing.T, name string, qtype, edns uint16, tcp bool) {
		if _, ok := dns.IsDomainName(name); !ok {
			return
		}
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(name), qtype)
		if edns != 0 {
			q.SetEdns0(edns, false)
		}
		m := r.Answer(consuldns.Request{Msg: q, TCP: tcp}, cat)
		if _, err := m.Pack(); err != nil {
			t.Fatalf("%s %d: pack: %v\n%v", name, qtype, err, m)
		}
	})
}
