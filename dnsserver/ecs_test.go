package dnsserver

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/farmdns/farmdns/policy"
)

// ecsOpt is an ECS option with exactly these octets, well-formed or not.
func ecsOpt(family uint16, source, scope uint8, addr ...byte) dns.EDNS0 {
	return &dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: append([]byte{byte(family >> 8), byte(family), source, scope}, addr...)}
}

// replyECS returns the ECS option of a reply, nil if none.
func replyECS(t *testing.T, r *dns.Msg) *dns.EDNS0_SUBNET {
	t.Helper()
	var found *dns.EDNS0_SUBNET
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_SUBNET); ok {
				if found != nil {
					t.Fatalf("two ECS options in %v", r)
				}
				found = e
			}
		}
	}
	return found
}

// stickyRR makes a pool's choice deterministic (round robin: each fresh
// asker gets the next target first) and sticky for the whole test.
func stickyRR(p *policy.Config) {
	p.Policy, p.Answers = policy.RoundRobin, 1
	p.TTL, p.TTLJitter, p.StickyWindow = 300*time.Second, 0, 299*time.Second
}

// TestECSAskersPerSubnet: through one resolver, each client network is an
// asker of its own, with a fresh choice counted in the ledger; two clients
// of one network (a /32 and a /25 inside the same /24) are one asker. With
// ECS off, the resolver is the asker whatever subnet it sends.
func TestECSAskersPerSubnet(t *testing.T) {
	resolver := netip.MustParseAddr("198.51.100.7")
	for _, fast := range []bool{true, false} {
		for _, on := range []bool{true, false} {
			t.Run(fmt.Sprintf("fast=%v ecs=%v", fast, on), func(t *testing.T) {
				h := farm(t, Options{ECS: on}, stickyRR, farmServices(), fast)
				firsts := map[string]bool{}
				var first0 string
				sent := 0
				for i := range 6 {
					q := query("farm.example.", dns.TypeA, withOption(ecsOpt(1, 24, 0, 10, 0, byte(i))))
					r, _ := respondMsg(t, h, mustPack(t, q), false, resolver)
					a := addrs(r)
					if len(a) != 1 {
						t.Fatalf("subnet %d: answer %v", i, a)
					}
					sent++
					firsts[a[0]] = true
					if i == 0 {
						first0 = a[0]
					}
				}
				// Two more clients of 10.0.0.0/24: the same asker as the first.
				for _, o := range []dns.EDNS0{ecsOpt(1, 32, 0, 10, 0, 0, 9), ecsOpt(1, 25, 0, 10, 0, 0, 128)} {
					r, _ := respondMsg(t, h, mustPack(t, query("farm.example.", dns.TypeA, withOption(o))), false, resolver)
					sent++
					if a := addrs(r); len(a) != 1 || a[0] != first0 {
						t.Errorf("another client of 10.0.0.0/24 (%v) got %v, the first %s", o, a, first0)
					}
				}
				switch {
				case on && len(firsts) != 3:
					t.Errorf("6 client networks through one resolver got %d distinct choices of 3 targets, want each network its own choice", len(firsts))
				case !on && len(firsts) != 1:
					t.Errorf("ECS off: one resolver got %d distinct answers, want the resolver's one sticky choice", len(firsts))
				}
				counted := uint64(0)
				for _, s := range h.State().pools[0].cur.Load().Stats(time.Now()) {
					counted += s.Answers
				}
				if counted != uint64(sent) {
					t.Errorf("ledger counted %d answers, %d sent", counted, sent)
				}
			})
		}
	}
}

// TestECSScope: a reply echoes the query's family, source prefix and
// address, with the scope its answer depended on: the capped prefix for a
// pool's chosen records, 0 for everything else. With ECS off, no option
// comes back. Valid ECS queries stay on the fast path.
func TestECSScope(t *testing.T) {
	v4 := func(source uint8, addr ...byte) dns.EDNS0 { return ecsOpt(1, source, 0, addr...) }
	v6 := func(source uint8, addr ...byte) dns.EDNS0 { return ecsOpt(2, source, 0, addr...) }
	for _, c := range []struct {
		name  string
		qtype uint16
		opt   dns.EDNS0
		scope uint8
		fast  bool // answered on the fast path when it has ready-made replies
	}{
		{"farm.example.", dns.TypeA, v4(24, 10, 1, 2), 24, true},
		{"farm.example.", dns.TypeA, v4(32, 10, 1, 2, 3), 24, true}, // capped
		{"farm.example.", dns.TypeA, v4(16, 10, 1), 16, true},
		{"farm.example.", dns.TypeA, v4(0), 0, true}, // no client information: the resolver's answer
		{"farm.example.", dns.TypeA, ecsOpt(0, 0, 0), 0, true},
		{"farm.example.", dns.TypeAAAA, v6(64, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 1), 56, true},
		{"farm.example.", dns.TypeAAAA, v6(48, 0x20, 1, 0xd, 0xb8, 0, 0), 48, true},
		{"farm.example.", dns.TypeA, v6(56, 0x20, 1, 0xd, 0xb8, 0, 0, 0), 56, true}, // an IPv6 client asks for A
		{"lb.farm.example.", dns.TypeA, v4(24, 10, 1, 2), 24, true},
		{"_ws._tcp.farm.example.", dns.TypeSRV, v4(24, 10, 1, 2), 24, true},
		{"www.farm.example.", dns.TypeA, v4(24, 10, 1, 2), 24, false}, // a chain into the pool
		{"farm.example.", dns.TypeMX, v4(24, 10, 1, 2), 0, true},      // static beside the pool
		{"mail.farm.example.", dns.TypeA, v4(24, 10, 1, 2), 0, true},
		{"n1.nodes.farm.example.", dns.TypeA, v4(24, 10, 1, 2), 0, true},     // a target's name: not chosen
		{"n1.nodes.farm.example.", dns.TypeAAAA, v4(24, 10, 1, 2), 0, false}, // NODATA
		{"nothere.farm.example.", dns.TypeA, v4(24, 10, 1, 2), 0, true},      // a prepared NXDOMAIN
		{"elsewhere.example.", dns.TypeA, v4(24, 10, 1, 2), 0, false},        // REFUSED
		{"_status.farm.example.", dns.TypeTXT, v4(24, 10, 1, 2), 0, false},
	} {
		for _, fast := range []bool{true, false} {
			for _, on := range []bool{true, false} {
				h := farm(t, Options{ECS: on}, nil, farmServices(), fast)
				q := query(c.name, c.qtype, withOption(c.opt))
				sent := q.IsEdns0().Option[0].(*dns.EDNS0_LOCAL).Data
				r, info := respondMsg(t, h, mustPack(t, q), false, netip.MustParseAddr("127.0.0.1"))
				where := fmt.Sprintf("%s %s ECS %x fast=%v ecs=%v", c.name, dns.Type(c.qtype), sent, fast, on)
				if r.Rcode == dns.RcodeFormatError || r.Rcode == dns.RcodeServerFailure {
					t.Errorf("%s: %s", where, dns.RcodeToString[r.Rcode])
				}
				if info.fast != (fast && c.fast) {
					t.Errorf("%s: fast path %v, want %v", where, info.fast, fast && c.fast)
				}
				e := replyECS(t, r)
				if !on {
					if e != nil {
						t.Errorf("%s: ECS off, reply has %v", where, e)
					}
					continue
				}
				if e == nil {
					t.Errorf("%s: no ECS in the reply", where)
					continue
				}
				want := slices.Clone(sent)
				want[3] = c.scope
				if got := replyECSData(t, r); string(got) != string(want) {
					t.Errorf("%s: reply ECS %x, want %x (scope %d)", where, got, want, c.scope)
				}
			}
		}
	}
}

// replyECSData is the data of a reply's ECS option as it was on the wire
// (miekg/dns unpacked the address into 4 or 16 octets).
func replyECSData(t *testing.T, r *dns.Msg) []byte {
	t.Helper()
	e := replyECS(t, r)
	addr := []byte(e.Address.To16())
	if e.Family == 1 {
		addr = e.Address.To4()
	}
	n := (int(e.SourceNetmask) + 7) / 8
	if e.Family == 0 {
		addr, n = nil, 0
	}
	return append([]byte{byte(e.Family >> 8), byte(e.Family), e.SourceNetmask, e.SourceScope}, addr[:n]...)
}

// malformedECS are ECS options RFC 7871 section 6 has a server reject.
func malformedECS() map[string]func(*dns.Msg) {
	one := func(o dns.EDNS0) func(*dns.Msg) { return withOption(o) }
	return map[string]func(*dns.Msg){
		"family 3":               one(ecsOpt(3, 0, 0)),
		"family 0 with a prefix": one(ecsOpt(0, 8, 0, 10)),
		"v4 source 33":           one(ecsOpt(1, 33, 0, 10, 0, 0, 0, 0)),
		"v6 source 129":          one(ecsOpt(2, 129, 0, make([]byte, 17)...)),
		"scope set":              one(ecsOpt(1, 24, 24, 10, 0, 0)),
		"address too long":       one(ecsOpt(1, 24, 0, 10, 0, 0, 0)),
		"address too short":      one(ecsOpt(1, 24, 0, 10, 0)),
		"bits beyond the prefix": one(ecsOpt(1, 23, 0, 10, 0, 1)),
		"v6 bits beyond":         one(ecsOpt(2, 12, 0, 0x20, 0x0f)),
		"3 octets":               one(&dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: []byte{0, 1, 0}}),
		"two options":            func(m *dns.Msg) { one(ecsOpt(1, 24, 0, 10, 0, 0))(m); one(ecsOpt(1, 24, 0, 10, 0, 1))(m) },
	}
}

// TestECSMalformedFormerr: a malformed ECS option is FORMERR, with no ECS
// echoed, on the fast path and the slow one, over UDP and TCP, for pools,
// static names and the status records, whether ECS is on or not.
func TestECSMalformedFormerr(t *testing.T) {
	names := []struct {
		name  string
		qtype uint16
	}{{"farm.example.", dns.TypeA}, {"farm.example.", dns.TypeAAAA}, {"mail.farm.example.", dns.TypeA},
		{"_ws._tcp.farm.example.", dns.TypeSRV}, {"nothere.farm.example.", dns.TypeA}, {"_status.farm.example.", dns.TypeTXT}}
	for _, fast := range []bool{true, false} {
		for _, on := range []bool{true, false} {
			h := farm(t, Options{ECS: on}, nil, farmServices(), fast)
			for what, edit := range malformedECS() {
				for _, n := range names {
					for _, tcp := range []bool{false, true} {
						r, _ := respondMsg(t, h, mustPack(t, query(n.name, n.qtype, edit)), tcp, netip.MustParseAddr("127.0.0.1"))
						if r.Rcode != dns.RcodeFormatError || len(r.Answer) > 0 || replyECS(t, r) != nil {
							t.Errorf("%s %s, ECS %s, fast=%v ecs=%v tcp=%v: %s, want FORMERR without ECS:\n%v",
								n.name, dns.Type(n.qtype), what, fast, on, tcp, dns.RcodeToString[r.Rcode], r)
						}
					}
				}
			}
		}
	}
}

// TestParseECS checks the parser against the wire forms it must accept.
func TestParseECS(t *testing.T) {
	for _, c := range []struct {
		data []byte
		want netip.Prefix // the asker; invalid: no client information
	}{
		{[]byte{0, 1, 24, 0, 192, 0, 2}, netip.MustParsePrefix("192.0.2.0/24")},
		{[]byte{0, 1, 32, 0, 192, 0, 2, 9}, netip.MustParsePrefix("192.0.2.0/24")},
		{[]byte{0, 1, 9, 0, 10, 128}, netip.MustParsePrefix("10.128.0.0/9")},
		{[]byte{0, 2, 128, 0, 0x20, 1, 0xd, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, netip.MustParsePrefix("2001:db8:102:300::/56")},
		{[]byte{0, 1, 0, 0}, netip.Prefix{}},
		{[]byte{0, 0, 0, 0}, netip.Prefix{}},
	} {
		s, ok := parseECS(c.data)
		if !ok {
			t.Errorf("%x: rejected", c.data)
			continue
		}
		if p, _ := s.capped(); p != c.want {
			t.Errorf("%x: asker %v, want %v", c.data, p, c.want)
		}
		if got := appendECS(nil, s); string(got[4:]) != string(c.data) {
			t.Errorf("%x: echoed as %x", c.data, got[4:])
		}
	}
	if got := asker(netip.MustParseAddr("198.51.100.7"), subnet{}); got != netip.MustParsePrefix("198.51.100.0/24") {
		t.Errorf("without ECS the asker is %v, not the querier's /24", got)
	}
}

// TestECSSubnetNotLogged: with the query log on, and through the metrics,
// the client subnets of ECS queries appear nowhere; the resolver's own
// address is what the query log names.
func TestECSSubnetNotLogged(t *testing.T) {
	var logs strings.Builder
	h := farm(t, Options{ECS: true}, nil, farmServices(), true)
	h.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.SetQueryLog(1)
	for _, fast := range []bool{true, false} {
		for _, q := range []*dns.Msg{
			query("farm.example.", dns.TypeA, withOption(ecsOpt(1, 24, 0, 203, 0, 113))),
			query("_ws._tcp.farm.example.", dns.TypeSRV, withOption(ecsOpt(1, 24, 0, 203, 0, 113))),
			query("mail.farm.example.", dns.TypeA, withOption(ecsOpt(2, 48, 0, 0x20, 1, 0xd, 0xb8, 0xec, 0x50))),
			query("farm.example.", dns.TypeA, withOption(ecsOpt(1, 24, 0, 203, 0, 113)), func(m *dns.Msg) { m.Opcode = 9 }),
		} {
			if !fast {
				h.State().prepared = nil
			}
			var rec recorder
			h.serve(&rec, make([]byte, 65535), request{wire: mustPack(t, q), remote: netip.MustParseAddr("198.51.100.7")})
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.Collector(), h.PoolCollector())
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	metrics := fmt.Sprint(families)
	if !strings.Contains(logs.String(), "198.51.100.7") {
		t.Fatalf("the query log did not log the queries:\n%s", logs.String())
	}
	for _, subnet := range []string{"203.0.113", "2001:db8:ec50"} {
		if strings.Contains(logs.String(), subnet) {
			t.Errorf("the log names the client subnet %s:\n%s", subnet, logs.String())
		}
		if strings.Contains(metrics, subnet) {
			t.Errorf("the metrics name the client subnet %s", subnet)
		}
	}
}

// BenchmarkServePoolECS is BenchmarkServePool through one resolver whose
// queries carry the subnets of many client networks.
func BenchmarkServePoolECS(b *testing.B) {
	services := farmServices()
	for i := range 1000 {
		services["ws"] = append(services["ws"], target(fmt.Sprintf("m%d", i), fmt.Sprintf("10.0.%d.%d", i/256, i%256), int64(i), nil))
	}
	h := farm(b, Options{ECS: true}, nil, services, true)
	var wires [4096][]byte
	for i := range wires {
		wires[i], _ = query("farm.example.", dns.TypeA, withOption(ecsOpt(1, 24, 0, 10, byte(i>>8), byte(i)))).Pack()
	}
	buf := make([]byte, 65535)
	resolver := netip.MustParseAddr("198.51.100.7")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		h.serve(discard{}, buf, request{wire: wires[i%len(wires)], remote: resolver})
		i++
	}
}
