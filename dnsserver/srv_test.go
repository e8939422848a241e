package dnsserver

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
	"github.com/farmdns/farmdns/zones"
)

// srvZone is farmZone with CNAMEs into a pool's SRV name and one of its
// target names.
const srvZone = farmZone + `svc CNAME _ws._tcp
web1 CNAME n1.nodes
`

// srvHandler serves srvZone with one nodes pool at the apex, its SRV records
// at _ws._tcp and its target names under nodes, choosing answers records out
// of targets.
func srvHandler(t testing.TB, answers int, targets []health.Target) *Handler {
	t.Helper()
	z, err := zones.Parse("farm.example.", "srv.zone", strings.NewReader(srvZone),
		zones.Binding{Name: "@", Types: []uint16{dns.TypeA, dns.TypeAAAA}, Pool: 0},
		zones.Binding{Name: "_ws._tcp", Types: []uint16{dns.TypeSRV}, Pool: 0},
		zones.Binding{Name: "nodes", Children: true, Pool: 0})
	if err != nil {
		t.Fatal(err)
	}
	set, _ := zones.NewSet(z)
	cfg := policy.DefaultConfig()
	cfg.Answers = answers
	st := NewState(set, Options{MaxUDPSize: DefaultMaxUDPSize},
		PoolSpec{Name: "farm.example.", Zone: "farm.example.", Service: "ws", Policy: cfg})
	h := NewHandler(st, testLogger(t))
	h.pools.update(&h.state, map[string][]health.Target{"ws": targets}, time.Now())
	return h
}

// A CNAME into the pool's SRV name or a target name answers the records of
// the chain's end, owned by it, as a CNAME into the pool's name does: a name
// with a CNAME holds no other data (RFC 1034 section 3.6.2).
func TestSRVBehindCNAME(t *testing.T) {
	h := srvHandler(t, 2, farmServices()["ws"])
	for _, tt := range []struct {
		name, end string
		qtype     uint16
	}{
		{"svc.farm.example.", "_ws._tcp.farm.example.", dns.TypeSRV},
		{"SVC.farm.example.", "_ws._tcp.farm.example.", dns.TypeSRV},
		{"web1.farm.example.", "n1.nodes.farm.example.", dns.TypeA},
		{"www.farm.example.", "farm.example.", dns.TypeA},
	} {
		r := serveMsg(t, h, query(tt.name, tt.qtype), false)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) < 2 {
			t.Errorf("%s %s: %v", tt.name, dns.Type(tt.qtype), r)
			continue
		}
		if c, ok := r.Answer[0].(*dns.CNAME); !ok || !strings.EqualFold(c.Hdr.Name, tt.name) || c.Target != tt.end {
			t.Errorf("%s: answer starts with %v, want the CNAME to %s", tt.name, r.Answer[0], tt.end)
		}
		for _, rr := range r.Answer[1:] {
			if rr.Header().Rrtype != tt.qtype || rr.Header().Name != tt.end {
				t.Errorf("%s: record %v, want %s owned by the chain's end %s", tt.name, rr, dns.Type(tt.qtype), tt.end)
			}
		}
	}
}

// longTargets returns n targets whose names make their SRV records long.
func longTargets(n int) []health.Target {
	var ts []health.Target
	for i := range n {
		node := fmt.Sprintf("%s%02d", strings.Repeat("n", 28), i)
		ts = append(ts, target(node, fmt.Sprintf("192.0.2.%d", i+1), 100, nil))
	}
	return ts
}

// An SRV answer cut to fit the client's buffer keeps the addresses of the
// targets it still names, and only those.
func TestSRVTruncatedKeepsItsAddresses(t *testing.T) {
	h := srvHandler(t, policy.MaxAnswers, longTargets(policy.MaxAnswers))
	r := serveMsg(t, h, query("_ws._tcp.farm.example.", dns.TypeSRV, noEDNS), false) // 512 octets
	if r.Truncated || len(r.Answer) == 0 || len(r.Answer) == policy.MaxAnswers {
		t.Fatalf("want some SRV records dropped, none truncated: %d records, tc %v", len(r.Answer), r.Truncated)
	}
	named := map[string]bool{}
	for _, rr := range r.Answer {
		named[rr.(*dns.SRV).Target] = true
	}
	addressed := map[string]bool{}
	for _, rr := range r.Extra {
		owner := rr.Header().Name
		addressed[owner] = true
		if !named[owner] {
			t.Errorf("additional %v: no SRV record kept names it", rr)
		}
	}
	for name := range named {
		if !addressed[name] {
			t.Errorf("SRV target %s kept without its address", name)
		}
	}
}
