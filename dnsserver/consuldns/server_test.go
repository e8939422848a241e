package consuldns_test

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
)

// partialSource is a Loader whose view already holds every service.
type partialSource struct{ cat *health.Catalog }

func (p partialSource) Catalog() *health.Catalog       { return p.cat }
func (partialSource) Ask(string)                       {}
func (p partialSource) Await([]string) *health.Catalog { return p.cat }

// BenchmarkServer measures a question through Server, as the DNS server
// asks it, from a partial view: a 5-instance service, over UDP without
// EDNS, packed.
func BenchmarkServer(b *testing.B) {
	cat := testCatalog()
	cat.Partial, cat.Listed = true, map[string]struct{}{"svc": {}, "web": {}}
	for i := range 5 {
		n := &health.CatalogNode{Name: "s" + strconv.Itoa(i), Address: "10.3.0." + strconv.Itoa(i+1), Meta: map[string]string{"rack": "r1"}}
		cat.Nodes[n.Name] = n
		cat.Services["svc"] = append(cat.Services["svc"], &health.CatalogInstance{
			Node: n, ID: n.Name, Service: "svc", Port: 80, Tags: []string{"t0"}, Checks: []string{api.HealthPassing},
		})
	}
	r, err := consuldns.New(consuldns.Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	cat.ParseIPs()
	s := consuldns.NewServer(r, partialSource{cat})
	for _, qt := range []uint16{dns.TypeA, dns.TypeSRV} {
		b.Run(dns.TypeToString[qt], func(b *testing.B) {
			q := new(dns.Msg)
			q.SetQuestion("svc.service.consul.", qt)
			buf := make([]byte, 4096)
			b.ReportAllocs()
			for b.Loop() {
				m, _, _ := s.Answer(q, false, netip.MustParseAddr("127.0.0.1"))
				if _, err := m.PackBuffer(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
