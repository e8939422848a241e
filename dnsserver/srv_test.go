package dnsserver

import (
	"fmt"
	"net/netip"
	"slices"
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

// Node names that make the same label when cut or cleaned up get distinct
// labels, so that each SRV target name resolves to the node the policy chose.
func TestSRVTargetNamesDistinct(t *testing.T) {
	long := strings.Repeat("x", 70)
	nodes := []string{"web_1", "web.1", "WEB_1", "web-1", long + "a", long + "b"}
	var ts []health.Target
	for i, n := range nodes {
		ts = append(ts, target(n, fmt.Sprintf("192.0.2.%d", i+1), 100, nil))
	}
	h := srvHandler(t, policy.MaxAnswers, ts)
	r := serveMsg(t, h, query("_ws._tcp.farm.example.", dns.TypeSRV), false)
	if len(r.Answer) != len(nodes) {
		t.Fatalf("want every target named: %v", r)
	}
	addrOf := map[string]string{}
	for _, rr := range r.Extra {
		if a, ok := rr.(*dns.A); ok {
			addrOf[a.Hdr.Name] = a.A.String()
		}
	}
	seen := map[string]bool{}
	for _, rr := range r.Answer {
		target := rr.(*dns.SRV).Target
		label := strings.TrimSuffix(target, ".nodes.farm.example.")
		if seen[target] {
			t.Errorf("two SRV records name %s", target)
		}
		seen[target] = true
		if len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") || strings.Trim(label, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			t.Errorf("target label %q is not a host name label", label)
		}
		got := addrs(serveMsg(t, h, query(target, dns.TypeA), false))
		if len(got) != 1 || got[0] != addrOf[target] {
			t.Errorf("%s resolves to %v; the SRV answer chose %s", target, got, addrOf[target])
		}
	}
}

// BenchmarkSRV50k answers SRV and target name queries from a pool of 50,000
// targets.
func BenchmarkSRV50k(b *testing.B) {
	const n = 50000
	ts := make([]health.Target, n)
	for i := range ts {
		ts[i] = target(fmt.Sprintf("node-%05d", i), fmt.Sprintf("10.%d.%d.1", i/256, i%256), int64(i%500), nil)
	}
	h := srvHandler(b, 3, ts)
	for _, bc := range []struct {
		name, qname string
		qtype       uint16
	}{
		{"a", "farm.example.", dns.TypeA}, // the same choice, without names
		{"srv", "_ws._tcp.farm.example.", dns.TypeSRV},
		{"target", "node-25000.nodes.farm.example.", dns.TypeA},
	} {
		b.Run(bc.name, func(b *testing.B) {
			wire, _ := query(bc.qname, bc.qtype).Pack()
			buf := make([]byte, 65535)
			var rec recorder
			h.serve(&rec, buf, request{wire: wire})
			if r := new(dns.Msg); r.Unpack(rec.msgs[0]) != nil || len(r.Answer) == 0 {
				b.Fatalf("no answer: %v", r)
			}
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
		})
	}
}

func TestTargetLabel(t *testing.T) {
	hashed := func(prefix string) func(string) bool {
		return func(l string) bool {
			return strings.HasPrefix(l, prefix+"-") && len(l) == len(prefix)+1+hashLen && hashedLabel(l)
		}
	}
	for _, tt := range []struct {
		node, id string
		shared   bool
		ok       func(string) bool
	}{
		{"n3", "ws-n3", false, func(l string) bool { return l == "n3" }},
		{"web-7", "ws", false, func(l string) bool { return l == "web-7" }},
		{"Node_1.ec2.internal", "ws", false, hashed("node-1-ec2-internal")},
		{"WEB-7", "ws", false, hashed("web-7")},
		{"vm", "ws-2", true, hashed("vm-ws-2")},
		{strings.Repeat("a", 70), "ws", false, hashed(strings.Repeat("a", 63-1-hashLen))},
		{"_", "ws", false, hashed("x")},
		{"-web-", "ws", false, hashed("web")},
		{"a__b..c", "ws", false, hashed("a-b-c")},
		// Shaped like a hashed label: hashed too, so it cannot be another's.
		{"web-1-abcdefghijklm", "ws", false, hashed("web-1-abcdefghijklm")},
	} {
		if got := targetLabel(tt.node, tt.id, tt.shared); !tt.ok(got) {
			t.Errorf("targetLabel(%q, %q, %v) = %q", tt.node, tt.id, tt.shared, got)
		}
	}
}

// A target's label comes from its own name: it stays the same when targets
// whose names clean up the same way come and go.
func TestTargetLabelsStable(t *testing.T) {
	label := func(ts []health.Target, node string) string {
		n := newTargetNames(ts, "nodes.farm.example.", nil, nil)
		for i, t := range ts {
			if t.Node == node {
				return strings.TrimSuffix(n.names[i], ".nodes.farm.example.")
			}
		}
		return ""
	}
	alone := []health.Target{target("web_1", "192.0.2.1", 0, nil), target("web-1", "192.0.2.2", 0, nil)}
	crowd := append(slices.Clone(alone), target("WEB_1", "192.0.2.3", 0, nil), target("web.1", "192.0.2.4", 0, nil))
	for _, node := range []string{"web_1", "web-1"} {
		if a, c := label(alone, node), label(crowd, node); a != c {
			t.Errorf("%s: label %q, then %q once more look-alikes came", node, a, c)
		}
	}
}

// The label index finds every target a scan of the labels finds, and
// nothing else.
func TestTargetNamesIndex(t *testing.T) {
	var ts []health.Target
	for i := range 3000 {
		node := []string{"web-%d", "web_%d", "WEB.%d", strings.Repeat("z", 60) + "%d"}[i%4]
		ts = append(ts, target(fmt.Sprintf(node, i/4), "192.0.2.1", 0, nil))
		if i%10 == 0 { // a node with several targets
			two := ts[len(ts)-1]
			two.ServiceID += "-2"
			ts = append(ts, two)
		}
	}
	n := newTargetNames(ts, "nodes.farm.example.", nil, nil)
	scan := func(label string) int {
		for i, name := range n.names {
			if name == label+".nodes.farm.example." {
				return i
			}
		}
		return -1
	}
	seen := map[string]bool{}
	for i, name := range n.names {
		label, ok := strings.CutSuffix(name, ".nodes.farm.example.")
		if !ok || seen[label] {
			t.Fatalf("target %d: name %q repeated or not under the pool", i, name)
		}
		seen[label] = true
		if got := n.find(label); got != i || got != scan(label) {
			t.Errorf("%s: index finds %d, a scan %d, want %d", label, got, scan(label), i)
		}
	}
	for _, label := range []string{"web-9999", "web-1-", "", "nodes"} {
		if got := n.find(label); got != -1 || scan(label) != -1 {
			t.Errorf("%q: found %d", label, got)
		}
	}
	// Built once: a build with the same targets keeps the names.
	if again := newTargetNames(slices.Clone(ts), "nodes.farm.example.", n, ts); again != n {
		t.Error("same targets, names built again")
	}
	if again := newTargetNames(ts[1:], "nodes.farm.example.", n, ts); again == n {
		t.Error("other targets, names kept")
	}
}

// BenchmarkTargetNames50k builds the names of 50,000 targets, as a build
// whose targets changed does; half of the names need a hash.
func BenchmarkTargetNames50k(b *testing.B) {
	ts := make([]health.Target, 50000)
	for i := range ts {
		ts[i] = target([]string{"node-%05d", "Node_%05d"}[i%2], "10.0.0.1", 0, nil)
		ts[i].Node = fmt.Sprintf(ts[i].Node, i)
	}
	b.ReportAllocs()
	for b.Loop() {
		newTargetNames(ts, "nodes.farm.example.", nil, nil)
	}
}
