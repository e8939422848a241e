package dnsserver

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/policy"
)

// recorder keeps what the handler writes.
type recorder struct{ msgs [][]byte }

func (r *recorder) write(msg []byte) error {
	r.msgs = append(r.msgs, slices.Clone(msg))
	return nil
}

// serveMsg runs q through h as it would arrive over UDP or TCP and returns the
// single reply, or nil.
func serveMsg(t *testing.T, h *Handler, q *dns.Msg, tcp bool) *dns.Msg {
	t.Helper()
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	h.serve(&rec, make([]byte, 65535), request{wire: wire, tcp: tcp, remote: netip.MustParseAddr("127.0.0.1")})
	switch len(rec.msgs) {
	case 0:
		return nil
	case 1:
		r := new(dns.Msg)
		if err := r.Unpack(rec.msgs[0]); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		return r
	}
	t.Fatalf("%d replies to one query", len(rec.msgs))
	return nil
}

func section(rrs []dns.RR) string {
	var lines []string
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			lines = append(lines, strings.ReplaceAll(rr.String(), "\t", " "))
		}
	}
	return strings.Join(lines, "\n")
}

func zoneText(t *testing.T, texts ...string) string {
	t.Helper()
	var rrs []dns.RR
	for _, s := range texts {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		rrs = append(rrs, rr)
	}
	return section(rrs)
}

func TestServe(t *testing.T) {
	h := NewHandler(testState(t), testLogger(t))
	soa := "example.org. 300 IN SOA ns1.example.org. hostmaster.example.org. 2026112301 7200 3600 1209600 300"
	tests := []struct {
		name   string
		q      *dns.Msg
		tcp    bool
		rcode  int
		aa, tc bool
		count  int // answer records, where listing them is too long
		answer []string
		ns     []string
	}{
		{name: "answer", q: query("www.example.org.", dns.TypeA), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"www.example.org. 3600 IN CNAME example.org.", "example.org. 3600 IN A 192.0.2.1"}},
		{name: "nxdomain has SOA with minimum TTL", q: query("nope.example.org.", dns.TypeA), rcode: dns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "nodata has SOA", q: query("mail.example.org.", dns.TypeMX), rcode: dns.RcodeSuccess, aa: true, ns: []string{soa}},
		{name: "referral is not authoritative", q: query("x.deleg.example.org.", dns.TypeA), rcode: dns.RcodeSuccess,
			ns: []string{"deleg.example.org. 3600 IN NS ns1.deleg.example.org.", "deleg.example.org. 3600 IN NS ns.example.net."}},
		{name: "not our zone", q: query("example.com.", dns.TypeA), rcode: dns.RcodeRefused},
		{name: "opcode", q: query("example.org.", dns.TypeA, withOpcode(dns.OpcodeStatus)), rcode: dns.RcodeNotImplemented},
		{name: "two questions", q: query("example.org.", dns.TypeA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), rcode: dns.RcodeFormatError},
		{name: "badvers", q: query("example.org.", dns.TypeA, func(m *dns.Msg) { m.IsEdns0().SetVersion(1) }), rcode: dns.RcodeBadVers},
		{name: "too big for 512", q: query("big.example.org.", dns.TypeTXT, noEDNS), rcode: dns.RcodeSuccess, aa: true, tc: true},
		{name: "too big for 1232", q: query("big.example.org.", dns.TypeTXT), rcode: dns.RcodeSuccess, aa: true, tc: true},
		{name: "big over TCP", q: query("big.example.org.", dns.TypeTXT, noEDNS), tcp: true, rcode: dns.RcodeSuccess, aa: true, count: 24},
		{name: "chaos version", q: query("version.bind.", dns.TypeTXT, withClass(dns.ClassCHAOS)), rcode: dns.RcodeSuccess,
			answer: []string{`version.bind. 0 CH TXT "v-test"`}},
		{name: "axfr from a stranger", q: query("example.org.", dns.TypeAXFR), tcp: true, rcode: dns.RcodeRefused},
		{name: "axfr over udp", q: query("example.org.", dns.TypeAXFR), rcode: dns.RcodeRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := serveMsg(t, h, tt.q, tt.tcp)
			if r == nil {
				t.Fatal("no reply")
			}
			if r.Rcode != tt.rcode || r.Authoritative != tt.aa || r.Truncated != tt.tc {
				t.Errorf("rcode %s aa %v tc %v, want %s %v %v", dns.RcodeToString[r.Rcode], r.Authoritative, r.Truncated,
					dns.RcodeToString[tt.rcode], tt.aa, tt.tc)
			}
			if r.Id != tt.q.Id || !r.Response || len(r.Question) != len(tt.q.Question) {
				t.Errorf("header or question not echoed: %v", r.MsgHdr)
			}
			if (r.IsEdns0() != nil) != (tt.q.IsEdns0() != nil) {
				t.Error("OPT in the reply iff in the query (RFC 6891 section 7)")
			}
			if tt.count > 0 {
				if len(r.Answer) != tt.count {
					t.Errorf("%d answer records, want %d", len(r.Answer), tt.count)
				}
			} else if got, want := section(r.Answer), zoneText(t, tt.answer...); !tt.tc && got != want {
				t.Errorf("answer:\n%s\nwant:\n%s", got, want)
			}
			if got, want := section(r.Ns), zoneText(t, tt.ns...); !tt.tc && got != want {
				t.Errorf("authority:\n%s\nwant:\n%s", got, want)
			}
			if tt.tc && len(r.Answer)+len(r.Ns) > 0 {
				t.Error("a truncated reply carries a partial answer")
			}
		})
	}
}

func TestServeOptions(t *testing.T) {
	base := testState(t)
	opts := base.Options
	opts.Version = nil
	opts.MaxUDPSize = 1400
	h := NewHandler(NewState(base.Zones, opts), testLogger(t))

	r := serveMsg(t, h, query("version.bind.", dns.TypeTXT, withClass(dns.ClassCHAOS)), false)
	if r.Rcode != dns.RcodeRefused {
		t.Errorf("version.bind with no version configured: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	r = serveMsg(t, h, query("example.org.", dns.TypeA, withDO, withOption(&dns.EDNS0_NSID{Code: dns.EDNS0NSID})), false)
	opt := r.IsEdns0()
	if !opt.Do() || opt.UDPSize() != 1400 || nsid(opt) != "6e732d74657374" {
		t.Errorf("OPT %v: want DO echoed, our size 1400, NSID ns-test", opt)
	}
	r = serveMsg(t, h, query("example.org.", dns.TypeA), false)
	if nsid(r.IsEdns0()) != "" {
		t.Error("NSID sent without being asked for")
	}
	// A client may ask for more than our cap: it gets what fits our cap.
	r = serveMsg(t, h, query("big.example.org.", dns.TypeTXT, func(m *dns.Msg) { m.IsEdns0().SetUDPSize(4096) }), false)
	if !r.Truncated {
		t.Error("reply over the 1400-octet cap was not truncated")
	}
}

func TestServeIgnoresResponsesAndRunts(t *testing.T) {
	h := NewHandler(testState(t), testLogger(t))
	q := query("example.org.", dns.TypeA)
	q.Response = true
	if r := serveMsg(t, h, q, false); r != nil {
		t.Error("answered a response: two servers could loop")
	}
	var rec recorder
	h.serve(&rec, make([]byte, 512), request{wire: []byte{1, 2, 3}})
	if len(rec.msgs) != 0 {
		t.Error("answered a packet shorter than a header")
	}
}

func TestServePanicIsServfail(t *testing.T) {
	h := NewHandler(&State{}, testLogger(t)) // no zones: the lookup dereferences nil
	q := query("example.org.", dns.TypeA)
	r := serveMsg(t, h, q, false)
	if r == nil || r.Rcode != dns.RcodeServerFailure || r.Id != q.Id {
		t.Fatalf("reply %v, want SERVFAIL with the query's ID", r)
	}
	if h.Panics() != 1 {
		t.Errorf("panics %d, want 1", h.Panics())
	}
}

func TestTransferAllowed(t *testing.T) {
	h := NewHandler(testState(t), testLogger(t))
	wire, _ := query("example.org.", dns.TypeAXFR).Pack()
	var rec recorder
	h.serve(&rec, make([]byte, 65535), request{wire: wire, tcp: true, remote: netip.MustParseAddr("127.0.0.2")})
	var n int
	for i, b := range rec.msgs {
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatal(err)
		}
		if m.Rcode != dns.RcodeSuccess || !m.Authoritative || (i == 0) != (len(m.Question) == 1) {
			t.Errorf("message %d: %v", i, m.MsgHdr)
		}
		n += len(m.Answer)
	}
	if want := h.State().Zones.Find("example.org.").Records() + 1; n != want {
		t.Errorf("%d records transferred, want %d (the zone and the closing SOA)", n, want)
	}
}

// FuzzServe sends whatever it is given to the example zone and to a farm
// of pools (addresses, shards, SRV, target names, _status, chains), each
// served twice: with the fast path and without. Nothing may panic, every
// reply must parse, carry the query's ID and fit its transport, and the two
// paths must give the same reply. The farm's handlers answer in lockstep,
// with round robin, no TTL jitter and a new asker each time, so that their
// choices depend only on the order of the questions; a third farm handler,
// with the default policy, is only checked for sanity.
func FuzzServe(f *testing.F) {
	ecs := optionVariants()
	for _, q := range []*dns.Msg{query("www.example.org.", dns.TypeA), query("x.wild.example.org.", dns.TypeTXT, withDO),
		query("big.example.org.", dns.TypeTXT, noEDNS), query("version.bind.", dns.TypeTXT, withClass(dns.ClassCHAOS)),
		query("example.org.", dns.TypeA, withOption(ecs["ecs family 256"])),
		query("farm.example.", dns.TypeA), query("FARM.example.", dns.TypeAAAA, noEDNS), query("lb.farm.example.", dns.TypeA),
		query("_ws._tcp.farm.example.", dns.TypeSRV), query("n1.nodes.farm.example.", dns.TypeA),
		query("n6.nodes.farm.example.", dns.TypeAAAA, withDO), query("n9.nodes.farm.example.", dns.TypeTXT),
		query("_status.farm.example.", dns.TypeTXT), query("www.farm.example.", dns.TypeA, small),
		query(longChain, dns.TypeA, small, withOption(ecs["nsid"])), query(longPool, dns.TypeAAAA, withOption(ecs["cookie"])),
		query("farm.example.", dns.TypeA, withOption(ecs["ecs"]), withOption(ecs["nsid"])),
		query("farm.example.", dns.TypeA, withOption(ecs["ecs family 256"])),
		query("_ws._tcp.farm.example.", dns.TypeSRV, withOption(ecs["ecs bad netmask"])),
		query("farm.example.", dns.TypeAAAA, withOption(ecs["keepalive bad length"])),
		query("farm.example.", dns.TypeAAAA, withOption(ecsOpt(2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 1))),
		query("mail.farm.example.", dns.TypeA, withOption(ecsOpt(1, 0, 0)), withOption(ecs["nsid"])),
		query("farm.example.", dns.TypeA, withOption(ecsOpt(1, 24, 0, 10, 0, 0)), withOption(ecsOpt(1, 24, 0, 10, 0, 1))),
	} {
		b, _ := q.Pack()
		f.Add(b, false)
		f.Add(b, true)
	}
	st := testState(f)
	static, staticSlow := NewHandler(st, testLogger(f)), NewHandler(&State{Zones: st.Zones, Options: st.Options}, testLogger(f))
	// ECS subnets repeat from one input to the next, unlike the askers
	// below: no sticky window, whose expiry could fall between the two.
	lockstep := func(p *policy.Config) { p.Policy, p.TTLJitter, p.StickyWindow = policy.RoundRobin, 0, 0 }
	opts := Options{NSID: "ns-fuzz", StatusFrom: []netip.Prefix{netip.MustParsePrefix("fd00::/16")}, ECS: true}
	farmFast, farmSlow := farm(f, opts, lockstep, farmServices(), true), farm(f, opts, lockstep, farmServices(), false)
	farmDefault := farm(f, opts, nil, farmServices(), true)
	var askers atomic.Uint32
	f.Fuzz(func(t *testing.T, wire []byte, tcp bool) {
		// Every asker in a /56 of its own; one in four may see _status.
		a := askers.Add(1)
		b := [16]byte{0x20, 0x01, 0, byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}
		if a%4 == 0 {
			b[0], b[1] = 0xfd, 0
		}
		remote := netip.AddrFrom16(b)
		for _, pair := range [][2]*Handler{{static, staticSlow}, {farmFast, farmSlow}, {farmDefault, nil}} {
			fast := fuzzServe(t, pair[0], wire, tcp, remote)
			if pair[1] == nil {
				continue
			}
			slow := fuzzServe(t, pair[1], wire, tcp, remote)
			if (fast == nil) != (slow == nil) {
				t.Fatalf("fast replied %v, slow %v", fast != nil, slow != nil)
			}
			if fast == nil {
				continue
			}
			if fs, ss := strings.ToLower(fast.String()), strings.ToLower(slow.String()); fs != ss {
				t.Fatalf("fast:\n%s\nslow:\n%s", fs, ss)
			}
		}
	})
}

// fuzzServe runs wire through h, checks the reply, and returns it parsed.
func fuzzServe(t *testing.T, h *Handler, wire []byte, tcp bool, remote netip.Addr) *dns.Msg {
	t.Helper()
	var rec recorder
	h.serve(&rec, make([]byte, 65535), request{wire: wire, tcp: tcp, remote: remote})
	if h.Panics() != 0 {
		t.Fatal("the handler panicked")
	}
	if len(rec.msgs) > 1 && !tcp {
		t.Fatalf("%d replies over UDP", len(rec.msgs))
	}
	var r *dns.Msg
	for _, out := range rec.msgs {
		if len(out) < headerLen || binary.BigEndian.Uint16(out) != binary.BigEndian.Uint16(wire) || out[2]&0x80 == 0 {
			t.Fatalf("reply is not a response with the query's ID")
		}
		if !tcp && len(out) > DefaultMaxUDPSize {
			t.Fatalf("UDP reply of %d octets", len(out))
		}
		r = new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
	}
	return r
}

// ledgerTotal is how many records the pools' ledgers have counted.
func ledgerTotal(h *Handler) uint64 {
	var n uint64
	for _, s := range h.State().pools {
		for _, ts := range s.cur.Load().Stats(time.Now()) {
			n += ts.Answers
		}
	}
	return n
}

// TestLedgerCountsRecordsSent: the ledger predicts each target's load from
// the answers that named it, so it must count the records actually sent,
// once: not those left out to fit a small reply, nor a choice made twice.
func TestLedgerCountsRecordsSent(t *testing.T) {
	services := farmServices()
	for i := range 6 {
		services["ws"] = append(services["ws"], target(fmt.Sprintf("m%d", i), fmt.Sprintf("192.0.2.%d", 30+i), 100, nil))
	}
	eight := func(c *policy.Config) { c.Answers = 8 }
	nsidQ := withOption(&dns.EDNS0_NSID{Code: dns.EDNS0NSID})
	for _, tt := range []struct {
		name string
		q    *dns.Msg
		tcp  bool
		per  int // records in each reply; -1: any
	}{
		{"fast path", query("farm.example.", dns.TypeA), false, 8},
		{"fast path, no EDNS", query("farm.example.", dns.TypeA, noEDNS), false, 8},
		{"fast path, TCP", query("farm.example.", dns.TypeAAAA), true, 1},
		{"slow path, CNAME", query("www.farm.example.", dns.TypeA), false, 8},
		{"fast path, 6 of 8 fit", query(longPool, dns.TypeA, small, nsidQ), false, 6},
		{"slow path, 4 of 8 fit after a CNAME", query(longChain, dns.TypeA, small, nsidQ), false, 4},
		{"slow path, none fits after a CNAME", query(longerChain, dns.TypeA, small, nsidQ), false, 0},
		{"shards", query("lb.farm.example.", dns.TypeA, small, nsidQ), false, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := farm(t, Options{NSID: strings.Repeat("n", MaxNSID)}, eight, services, true)
			sent := 0
			for i := range 20 {
				var rec recorder
				h.serve(&rec, make([]byte, 65535), request{wire: mustPack(t, tt.q), tcp: tt.tcp, remote: netip.AddrFrom4([4]byte{198, 51, byte(i), 1})})
				r := new(dns.Msg)
				if len(rec.msgs) != 1 || r.Unpack(rec.msgs[0]) != nil {
					t.Fatalf("%d replies", len(rec.msgs))
				}
				if n := len(addrs(r)); tt.per >= 0 && (n != tt.per || r.Truncated != (n == 0)) {
					t.Fatalf("%d records, TC %v; want %d", n, r.Truncated, tt.per)
				}
				sent += len(addrs(r))
			}
			if got := ledgerTotal(h); got != uint64(sent) {
				t.Errorf("ledger counts %d records, %d were sent", got, sent)
			}
		})
	}
}

// TestNSIDTooLongIsNotSent: an NSID longer than an option can carry must
// not overflow its length field; the configuration rejects it, and the
// server, given one anyway, leaves it out on both paths.
func TestNSIDTooLongIsNotSent(t *testing.T) {
	base := testState(t)
	opts := base.Options
	opts.NSID = strings.Repeat("n", 70000)
	fast := NewHandler(NewState(base.Zones, opts), testLogger(t))
	slow := NewHandler(&State{Zones: base.Zones, Options: opts}, testLogger(t))
	for _, h := range []*Handler{fast, slow} {
		r := serveMsg(t, h, query("example.org.", dns.TypeA, withOption(&dns.EDNS0_NSID{Code: dns.EDNS0NSID})), true)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || nsid(r.IsEdns0()) != "" {
			t.Errorf("fast %v: %v", h == fast, r)
		}
	}
}

// statusText returns the _status records' text, one line per record.
func statusText(r *dns.Msg) []string {
	var lines []string
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			lines = append(lines, strings.Join(txt.Txt, ""))
		}
	}
	return lines
}

// TestStatusTXTLongAndMany: a line longer than a TXT string (255 octets)
// is split over several strings of its record, and a farm too big for one
// reply gets as many lines as fit and a last one saying where the rest is.
func TestStatusTXTLongAndMany(t *testing.T) {
	services := farmServices()
	long, odd := strings.Repeat("n", 300), `back\slash"quote`
	services["ws"] = append(services["ws"], target(long, "192.0.2.98", 1, nil), target(odd, "192.0.2.99", 1, nil))
	r := serveMsg(t, farm(t, Options{}, nil, services, true), query("_status.farm.example.", dns.TypeTXT), true)
	text := strings.Join(statusText(r), "\n")
	escaped := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(odd) // as miekg/dns unpacks a string
	if r.Rcode != dns.RcodeSuccess || !strings.Contains(text, "node="+long+"/ws-"+long+" addr=192.0.2.98") || !strings.Contains(text, "node="+escaped+"/ws-"+escaped+" ") {
		t.Errorf("long and odd node names: %s\n%s", dns.RcodeToString[r.Rcode], text)
	}

	for i := range 3000 {
		services["ws"] = append(services["ws"], target(fmt.Sprintf("node-%04d-%s", i, strings.Repeat("x", 40)), fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), 1, nil))
	}
	r = serveMsg(t, farm(t, Options{}, nil, services, true), query("_status.farm.example.", dns.TypeTXT), true)
	lines := statusText(r)
	if r.Rcode != dns.RcodeSuccess || len(lines) < 100 {
		t.Fatalf("big farm: %s, %d lines", dns.RcodeToString[r.Rcode], len(lines))
	}
	if last := lines[len(lines)-1]; !strings.Contains(last, "more lines") || !strings.Contains(last, "/status") {
		t.Errorf("big farm: the last line does not say where the rest is: %q", last)
	}
	if r := serveMsg(t, farm(t, Options{}, nil, services, true), query("_status.farm.example.", dns.TypeTXT), false); !r.Truncated {
		t.Error("big farm over UDP: not truncated")
	}
}

// TestLedgerCountsSRVSent: an SRV answer cut to fit a small reply must not
// count the SRV records it left out.
func TestLedgerCountsSRVSent(t *testing.T) {
	services := farmServices()
	for i := range 6 {
		services["ws"] = append(services["ws"], target(fmt.Sprintf("m%d", i), fmt.Sprintf("192.0.2.%d", 30+i), 100, nil))
	}
	eight := func(c *policy.Config) { c.Answers = 8 }
	for _, tt := range []struct {
		name string
		q    *dns.Msg
		tcp  bool
	}{
		{"no EDNS", query("_ws._tcp.farm.example.", dns.TypeSRV, noEDNS), false},
		{"512", query("_ws._tcp.farm.example.", dns.TypeSRV), false},
		{"TCP", query("_ws._tcp.farm.example.", dns.TypeSRV), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := farm(t, Options{MaxUDPSize: 512}, eight, services, true)
			sent := 0
			for i := range 20 {
				var rec recorder
				h.serve(&rec, make([]byte, 65535), request{wire: mustPack(t, tt.q), tcp: tt.tcp, remote: netip.AddrFrom4([4]byte{198, 51, byte(i), 1})})
				r := new(dns.Msg)
				if len(rec.msgs) != 1 || r.Unpack(rec.msgs[0]) != nil {
					t.Fatalf("%d replies", len(rec.msgs))
				}
				if len(r.Answer) == 0 {
					t.Fatalf("no SRV record: %v", r)
				}
				sent += len(r.Answer)
			}
			if got := ledgerTotal(h); got != uint64(sent) {
				t.Errorf("ledger counts %d records, %d SRV records were sent", got, sent)
			}
		})
	}
}
