package dnsserver

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
)

type staticCatalog struct{ cat *health.Catalog }

func (s staticCatalog) Catalog() *health.Catalog { return s.cat }

// TestConsulDNSDispatch: with a ConsulDNS in the state, names under its
// domain are answered by it over UDP and TCP, in any case, while the zones
// keep their names.
func TestConsulDNSDispatch(t *testing.T) {
	n := &health.CatalogNode{Name: "n1", Address: "10.0.0.1", Meta: map[string]string{"rack": "r1"}}
	cat := &health.Catalog{
		Datacenter: "dc1",
		Nodes:      map[string]*health.CatalogNode{"n1": n},
		Services: map[string][]*health.CatalogInstance{
			"web": {{Node: n, ID: "web-1", Service: "web", Port: 80, Checks: []string{api.HealthPassing}}},
		},
	}
	r, err := consuldns.New(consuldns.Config{Domain: "consul."}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := testState(t)
	st.ConsulDNS = consuldns.NewServer(r, staticCatalog{cat})
	_, addr := startServer(t, st)
	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto, Timeout: 5 * time.Second}
		for _, tc := range []struct {
			name  string
			qtype uint16
			rcode int
			first string // the first answer's text, "" for none
		}{
			{"web.service.consul.", dns.TypeA, dns.RcodeSuccess, "web.service.consul.\t0\tIN\tA\t10.0.0.1"},
			{"WEB.Service.CONSUL.", dns.TypeSRV, dns.RcodeSuccess, "WEB.Service.CONSUL.\t0\tIN\tSRV\t1 1 80 n1.node.dc1.CONSUL."},
			{"nosuch.service.consul.", dns.TypeA, dns.RcodeNameError, ""},
			{"n1.node.consul.", dns.TypeTXT, dns.RcodeSuccess, "n1.node.consul.\t0\tIN\tTXT\t\"rack=r1\""},
			{"example.org.", dns.TypeSOA, dns.RcodeSuccess, ""},
		} {
			q := new(dns.Msg)
			q.SetQuestion(tc.name, tc.qtype)
			in, _, err := c.Exchange(q, addr)
			if err != nil {
				t.Fatalf("%s %s: %v", proto, tc.name, err)
			}
			if in.Rcode != tc.rcode || !in.Authoritative {
				t.Errorf("%s %s: rcode %s AA %v, want %s AA", proto, tc.name, dns.RcodeToString[in.Rcode], in.Authoritative, dns.RcodeToString[tc.rcode])
			}
			if tc.first != "" && (len(in.Answer) == 0 || in.Answer[0].String() != tc.first) {
				t.Errorf("%s %s: answer %v, want first %q", proto, tc.name, in.Answer, tc.first)
			}
			if tc.name == "example.org." && (len(in.Answer) != 1 || in.Answer[0].Header().Name != "example.org.") {
				t.Errorf("%s example.org. SOA: the zone no longer answers: %v", proto, in)
			}
		}
	}
}

// TestConsulDNSNotSynced: before the first catalog read the domain answers
// SERVFAIL, not an NXDOMAIN resolvers would cache.
func TestConsulDNSNotSynced(t *testing.T) {
	r, err := consuldns.New(consuldns.Config{Domain: "consul."}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := testState(t)
	st.ConsulDNS = consuldns.NewServer(r, staticCatalog{})
	_, addr := startServer(t, st)
	q := new(dns.Msg)
	q.SetQuestion("web.service.consul.", dns.TypeA)
	in, err := dns.Exchange(q, addr)
	if err != nil {
		t.Fatal(err)
	}
	if in.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[in.Rcode])
	}
}
