package dnsserver

import (
	"maps"
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

// TestFastPathEqualsSlowPath sends the differential corpus through a handler
// with ready-made replies and one without: every reply must be the same.
func TestFastPathEqualsSlowPath(t *testing.T) {
	st := testState(t)
	fast := NewHandler(st, testLogger(t))
	slow := NewHandler(&State{Zones: st.Zones, Options: st.Options}, testLogger(t))
	fastHits := 0
	for _, p := range corpus(t) {
		for _, variant := range []func(*dns.Msg){func(*dns.Msg) {}, withOption(&dns.EDNS0_NSID{Code: dns.EDNS0NSID})} {
			q := p.msg.Copy()
			if q.IsEdns0() != nil {
				variant(q)
			}
			tcp := p.net == "tcp"
			f, s := serveMsg(t, fast, q, tcp), serveMsg(t, slow, q, tcp)
			if (f == nil) != (s == nil) {
				t.Fatalf("%v: fast replied %v, slow %v", p, f != nil, s != nil)
			}
			if f == nil {
				continue
			}
			if fs, ss := strings.ToLower(f.String()), strings.ToLower(s.String()); fs != ss {
				t.Errorf("%v:\nfast:\n%s\nslow:\n%s", p, fs, ss)
			}
			if _, _, ok := fastAnswer(st, make([]byte, 65535), request{wire: mustPack(t, q), tcp: tcp}); ok {
				fastHits++
			}
		}
	}
	if fastHits == 0 {
		t.Fatal("no query took the fast path")
	}
	t.Logf("%d replies came from the fast path", fastHits)
}

func mustPack(t *testing.T, m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseFastRejectsUnusual(t *testing.T) {
	var key [255]byte
	good := mustPack(t, query("Www.Example.org.", dns.TypeA))
	q, ok := parseFast(good, &key)
	if !ok || string(q.key) != "\x03www\x07example\x03org\x00" || !q.edns || q.udpSize != 1232 {
		t.Fatalf("plain query not parsed: %+v %v", q, ok)
	}
	for name, m := range map[string]*dns.Msg{
		"class CH":   query("example.org.", dns.TypeA, withClass(dns.ClassCHAOS)),
		"edns v1":    query("example.org.", dns.TypeA, func(m *dns.Msg) { m.IsEdns0().SetVersion(1) }),
		"opcode":     query("example.org.", dns.TypeA, withOpcode(dns.OpcodeStatus)),
		"response":   query("example.org.", dns.TypeA, func(m *dns.Msg) { m.Response = true }),
		"truncated":  query("example.org.", dns.TypeA, func(m *dns.Msg) { m.Truncated = true }),
		"2 question": query("example.org.", dns.TypeA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }),
	} {
		if _, ok := parseFast(mustPack(t, m), &key); ok {
			t.Errorf("%s: taken by the fast path", name)
		}
	}
	for name, b := range map[string][]byte{
		"trailing byte": append(append([]byte{}, good...), 0),
		"cut":           good[:len(good)-1],
		"compressed":    append(append([]byte{}, good[:12]...), 0xc0, 12, 0, 1, 0, 1),
	} {
		if _, ok := parseFast(b, &key); ok {
			t.Errorf("%s: taken by the fast path", name)
		}
	}
}

func BenchmarkServe(b *testing.B) {
	st := testState(b)
	opts := st.Options
	opts.ECS = true
	withECS := NewState(st.Zones, opts)
	for _, bc := range []struct {
		name string
		q    *dns.Msg
		st   *State
	}{
		{"fast/A", query("ns1.example.org.", dns.TypeA), st},
		{"fast/A-noedns", query("mail.example.org.", dns.TypeA, noEDNS), st},
		{"fast/A-ecs", query("ns1.example.org.", dns.TypeA, withOption(ecsOpt(1, 24, 0, 192, 0, 2))), withECS},
		{"fast/nxdomain", query("nothere.example.org.", dns.TypeA), st},
		{"fast/nodata", query("mail.example.org.", dns.TypeMX), st},
		{"slow/wildcard", query("x.wild.example.org.", dns.TypeA), st},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := NewHandler(bc.st, testLogger(b))
			wire, _ := bc.q.Pack()
			buf := make([]byte, 65535)
			w := discard{}
			req := request{wire: wire}
			b.ReportAllocs()
			for b.Loop() {
				h.serve(w, buf, req)
			}
		})
	}
}

type discard struct{}

func (discard) write([]byte) error { return nil }

// optionVariants are EDNS options a query may carry, well-formed and not:
// the slow path unpacks each (miekg/dns rejects some malformed ones, which
// is FORMERR), so the fast path must agree on every one.
func optionVariants() map[string]dns.EDNS0 {
	local := func(code uint16, data ...byte) dns.EDNS0 { return &dns.EDNS0_LOCAL{Code: code, Data: data} }
	return map[string]dns.EDNS0{
		"nsid":                 &dns.EDNS0_NSID{Code: dns.EDNS0NSID},
		"ecs":                  local(dns.EDNS0SUBNET, 0, 1, 24, 0, 192, 0, 2),
		"ecs family 256":       local(dns.EDNS0SUBNET, 1, 0, 24, 0, 192, 0, 2),
		"ecs bad netmask":      local(dns.EDNS0SUBNET, 0, 1, 33, 0, 192, 0, 2, 0, 1),
		"ecs short":            local(dns.EDNS0SUBNET, 0),
		"cookie":               &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
		"cookie odd length":    local(dns.EDNS0COOKIE, 1, 2, 3),
		"padding":              &dns.EDNS0_PADDING{Padding: make([]byte, 7)},
		"keepalive bad length": local(dns.EDNS0TCPKEEPALIVE, 1),
		"expire bad length":    local(dns.EDNS0EXPIRE, 1, 2),
		"ede short":            local(dns.EDNS0EDE, 1),
		"llq short":            local(dns.EDNS0LLQ, 1),
		"ul short":             local(dns.EDNS0UL, 1),
		"zoneversion short":    local(dns.EDNS0ZONEVERSION),
		"report-channel bad":   local(dns.EDNS0REPORTING, 0xc0),
		"unknown code":         local(20, 1, 2, 3),
		"local":                local(65001, 1, 2),
	}
}

// TestFastPathEqualsSlowPathOptions: a query with an option the fast path
// does not check must get the slow path's answer, FORMERR included.
func TestFastPathEqualsSlowPathOptions(t *testing.T) {
	st := testState(t)
	fast := NewHandler(st, testLogger(t))
	slow := NewHandler(&State{Zones: st.Zones, Options: st.Options}, testLogger(t))
	for name, o := range optionVariants() {
		for _, q := range []*dns.Msg{query("example.org.", dns.TypeA, withOption(o)), query("mail.example.org.", dns.TypeMX, withOption(o))} {
			f, s := serveMsg(t, fast, q, false), serveMsg(t, slow, q, false)
			if fs, ss := strings.ToLower(f.String()), strings.ToLower(s.String()); fs != ss {
				t.Errorf("%s, %s:\nfast:\n%s\nslow:\n%s", name, q.Question[0].Name, fs, ss)
			}
		}
	}
	// What resolvers commonly send stays on the fast path.
	for _, name := range []string{"nsid", "cookie", "padding"} {
		wire := mustPack(t, query("example.org.", dns.TypeA, withOption(optionVariants()[name])))
		if _, _, ok := fastAnswer(st, make([]byte, 65535), request{wire: wire}); !ok {
			t.Errorf("%s: not taken by the fast path", name)
		}
	}
}

// farm serves farm.example. as farmHandler does, with opts, each pool's
// policy edited by edit (nil: as is), fed with services. Without fast, the
// State has no ready-made replies: every query takes the slow path.
func farm(t testing.TB, opts Options, edit func(*policy.Config), services map[string][]health.Target, fast bool) *Handler {
	t.Helper()
	ab := []uint16{dns.TypeA, dns.TypeAAAA}
	z, err := zones.Parse("farm.example.", "farm.zone", strings.NewReader(farmZone+farmExtra),
		zones.Binding{Name: "@", Types: ab, Pool: 0}, zones.Binding{Name: "lb", Types: ab, Pool: 1},
		zones.Binding{Name: "_ws._tcp", Types: []uint16{dns.TypeSRV}, Pool: 0},
		zones.Binding{Name: "nodes", Children: true, Pool: 0},
		zones.Binding{Name: longPool, Types: ab, Pool: 0},
		zones.Binding{Name: longSRV, Types: []uint16{dns.TypeSRV}, Pool: 0})
	if err != nil {
		t.Fatal(err)
	}
	set, err := zones.NewSet(z)
	if err != nil {
		t.Fatal(err)
	}
	nodes := policy.DefaultConfig()
	nodes.Answers = 2
	shards := policy.DefaultConfig()
	shards.Mode, shards.ShardMeta, shards.Answers = policy.Shards, "shard", 2
	if edit != nil {
		edit(&nodes)
		edit(&shards)
	}
	if opts.MaxUDPSize == 0 {
		opts.MaxUDPSize = DefaultMaxUDPSize
	}
	if opts.StatusFrom == nil {
		opts.StatusFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}
	st := NewState(set, opts,
		PoolSpec{Name: "farm.example.", Zone: "farm.example.", Service: "ws", Policy: nodes},
		PoolSpec{Name: "lb.farm.example.", Zone: "farm.example.", Service: "ws", LBService: "ws-lb", Policy: shards})
	if !fast {
		st.prepared = nil
	}
	h := NewHandler(st, testLogger(t))
	h.pools.update(&h.state, services, time.Now())
	return h
}

// farmExtra adds to farmZone what a pool's neighbours may hold: static
// records beside a pool, a chain into it, a name of the status page's.
var farmExtra = `@ MX 10 mail
@ TXT "static text at a pool's name"
mail A 192.0.2.25
chain CNAME www
_status TXT "the zone's own _status"
` + longChain + ` CNAME ` + longPool + `
` + longerChain + ` CNAME ` + longPool + `
`

// Long names leave a small reply little room for a pool's records: 252, 35
// and 99 octets, the chains' CNAMEs adding 252 more.
var (
	longPool    = strings.Repeat("x", 63) + "." + strings.Repeat("y", 63) + "." + strings.Repeat("z", 63) + "." + strings.Repeat("w", 45) + ".farm.example."
	longChain   = strings.Repeat("s", 20) + ".farm.example."
	longerChain = strings.Repeat("q", 63) + "." + strings.Repeat("r", 20) + ".farm.example."
	// An SRV name of 216 octets: in 512 octets, with an NSID, one SRV
	// record and its address fit, not the three asked for.
	longSRV = "_ws._tcp." + strings.Repeat("v", 63) + "." + strings.Repeat("u", 63) + "." + strings.Repeat("t", 63) + ".farm.example."
)

// hashedServices is farmServices with targets whose SRV target names are
// hashed labels (see targetLabel): a node name that is no host name, and a
// node running two targets of the pool.
func hashedServices() (services map[string][]health.Target, names []string) {
	services = farmServices()
	oddName := target("Web_1", "192.0.2.31", 100, map[string]string{"shard": "a"})
	shared1 := target("n7", "192.0.2.37", 100, map[string]string{"shard": "b"})
	shared2 := target("n7", "2001:db8::37", 100, map[string]string{"shard": "b"})
	shared1.ServiceID, shared2.ServiceID = "ws-7a", "ws-7b"
	services["ws"] = append(services["ws"], oddName, shared1, shared2)
	for _, t := range []health.Target{oddName, shared1, shared2} {
		names = append(names, targetLabel(t.Node, t.ServiceID, t.Node == "n7")+".nodes.farm.example.")
	}
	return services, names
}

// TestFastPathEqualsSlowPathPools sends pool questions (addresses, shards,
// SRV, the SRV targets' names, _status, chains into pools, static records
// beside them) to a handler with ready-made replies and to one without,
// in lockstep, so that both pools see the same questions in the same order.
// Round robin and an unjittered TTL make each choice depend on that order
// alone, and every asker is new, so the replies must be the same to the
// octet: records, their order, TTLs, counts, flags, OPT.
func TestFastPathEqualsSlowPathPools(t *testing.T) {
	services, hashed := hashedServices()
	critical, _ := hashedServices()
	for i := range critical["ws"] {
		critical["ws"][i].Health = health.HealthCritical
		critical["ws"][i].Load.Connections = int64(100 + 10*i) // fail-open ranks them, without ties
	}
	names := []string{"farm.example.", "FaRm.Example.", "lb.farm.example.", "_ws._tcp.farm.example.", "_WS._tcp.farm.example.",
		"n1.nodes.farm.example.", "N6.nodes.farm.example.", "n9.nodes.farm.example.", "x.n1.nodes.farm.example.", "nodes.farm.example.",
		"_status.farm.example.", "_STATUS.farm.example.", "www.farm.example.", "chain.farm.example.", "mail.farm.example.",
		"nothere.farm.example.", longPool, longChain, longerChain, longSRV, strings.ToUpper(longSRV)}
	names = append(names, hashed...)
	names = append(names, strings.ToUpper(hashed[0]), strings.ToUpper(hashed[2]), "x"+hashed[0])
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypeMX, dns.TypeANY, dns.TypeSOA, dns.TypeNS}
	variants := map[string]func(*dns.Msg){
		"edns": func(*dns.Msg) {}, "noedns": noEDNS, "do": withDO, "rd": withRD, "nsid": withOption(optionVariants()["nsid"]),
		"small nsid": func(m *dns.Msg) { small(m); withOption(optionVariants()["nsid"])(m) },
		"cookie":     withOption(optionVariants()["cookie"]), "bad ecs": withOption(optionVariants()["ecs family 256"]),
		"ecs /0": withOption(ecsOpt(1, 0, 0)), "ecs family 0": withOption(ecsOpt(0, 0, 0)),
		"small ecs nsid": func(m *dns.Msg) {
			small(m)
			withOption(optionVariants()["nsid"])(m)
			withOption(ecsOpt(2, 128, 0, 0x20, 1, 0xd, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12))(m)
		},
	}
	for what, edit := range malformedECS() {
		variants["malformed ecs "+what] = edit
	}
	// ECS whose client networks are new for every question, as the
	// queriers are (see below).
	ecsVariants := map[string]func(i int) func(*dns.Msg){
		"ecs v4/24": func(i int) func(*dns.Msg) { return withOption(ecsOpt(1, 24, 0, 10, byte(i>>8), byte(i))) },
		"ecs v4/32": func(i int) func(*dns.Msg) { return withOption(ecsOpt(1, 32, 0, 10, byte(i>>8), byte(i), 7)) },
		"ecs v4/20": func(i int) func(*dns.Msg) { return withOption(ecsOpt(1, 20, 0, byte(i>>8), byte(i), 0x30)) },
		"ecs v6/64": func(i int) func(*dns.Msg) {
			return withOption(ecsOpt(2, 64, 0, 0x20, 1, 0xd, 0xb8, byte(i>>8), byte(i), 0, 1))
		},
	}
	for _, c := range []struct {
		name     string
		onEmpty  policy.OnEmpty
		services map[string][]health.Target
		ecsOff   bool
	}{
		{"answers", policy.EmptyFailOpen, services, false},
		{"answers, ecs off", policy.EmptyFailOpen, services, true},
		{"fail-open", policy.EmptyFailOpen, critical, false},
		{"nodata", policy.EmptyNoData, critical, false},
		{"servfail", policy.EmptyServFail, critical, false},
		{"no snapshot yet", policy.EmptyFailOpen, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			edit := func(p *policy.Config) {
				p.Policy, p.Answers, p.OnEmpty = policy.RoundRobin, 3, c.onEmpty
				p.TTL, p.TTLJitter = 7*time.Second, 0
			}
			opts := Options{NSID: strings.Repeat("n", MaxNSID), ECS: !c.ecsOff}
			fast, slow := farm(t, opts, edit, c.services, true), farm(t, opts, edit, c.services, false)
			i, fastPool, fastECS := 0, 0, 0
			// Fast SRV answers (with records, and with fewer records than
			// asked for), and fast answers for target names (hashed ones).
			fastSRV, fastFewer, fastSRVECS, fastTarget, fastHashed := 0, 0, 0, 0, 0
			for _, name := range names {
				for _, qt := range types {
					for _, vname := range slices.Concat(slices.Collect(maps.Keys(variants)), slices.Collect(maps.Keys(ecsVariants))) {
						for _, tcp := range []bool{false, true} {
							i++
							v := variants[vname]
							if ev := ecsVariants[vname]; ev != nil {
								v = ev(i)
							}
							// Every asker new; odd ones may not see _status.
							remote := netip.AddrFrom4([4]byte{127, byte(i >> 8), byte(i), 1})
							if i%2 == 1 {
								remote = netip.AddrFrom4([4]byte{198, byte(i >> 8), byte(i), 1})
							}
							wire := mustPack(t, query(name, qt, v))
							fw, fi := respondWire(t, fast, wire, tcp, remote)
							sw, _ := respondWire(t, slow, wire, tcp, remote)
							f, s := unpack(t, fw), unpack(t, sw)
							if fs, ss := strings.ToLower(f.String()), strings.ToLower(s.String()); fs != ss {
								t.Fatalf("%s %s %s tcp=%v from %v:\nfast:\n%s\nslow:\n%s", name, dns.Type(qt), vname, tcp, remote, fs, ss)
							}
							srvName := strings.HasPrefix(strings.ToLower(name), "_ws._tcp.")
							targetName := strings.Contains(strings.ToLower(name), ".nodes.")
							// The SRV and target answers are the same to the
							// octet, in any case; their NODATA too, in lower
							// case (see TestFastPathNegative).
							octets := len(f.Answer) > 0 || name == strings.ToLower(name)
							if (srvName && qt == dns.TypeSRV || targetName) && octets && string(fw) != string(sw) {
								t.Fatalf("%s %s %s tcp=%v: same message, other octets:\nfast %x\nslow %x", name, dns.Type(qt), vname, tcp, fw, sw)
							}
							if fi.fast && len(f.Answer) > 0 {
								switch {
								case srvName && qt == dns.TypeSRV:
									fastSRV++
									if len(f.Answer) < 3 {
										fastFewer++
									}
									if e := replyECS(t, f); e != nil && e.SourceScope > 0 {
										fastSRVECS++
									}
								case targetName:
									fastTarget++
									if slices.Contains(hashed, strings.ToLower(name)) {
										fastHashed++
									}
								}
							}
							if fi.fast && len(addrs(f)) > 0 {
								fastPool++
								if e := replyECS(t, f); e != nil && e.SourceScope > 0 {
									fastECS++
								}
							}
						}
					}
				}
			}
			if c.name == "answers" && (fastPool == 0 || fastECS == 0) {
				t.Errorf("%d pool answers came from the fast path, %d with an ECS scope", fastPool, fastECS)
			}
			if c.name == "answers" && (fastSRV == 0 || fastFewer == 0 || fastSRVECS == 0 || fastTarget == 0 || fastHashed == 0) {
				t.Errorf("from the fast path: %d SRV answers (%d with fewer records, %d with an ECS scope), %d target names (%d hashed)",
					fastSRV, fastFewer, fastSRVECS, fastTarget, fastHashed)
			}
			t.Logf("%d questions, %d pool answers from the fast path, %d with an ECS scope; %d SRV (%d fewer, %d ECS), %d target (%d hashed)",
				i, fastPool, fastECS, fastSRV, fastFewer, fastSRVECS, fastTarget, fastHashed)
		})
	}
}

// respondMsg runs wire through h and returns the reply, and what the
// handler says of it.
func respondMsg(t *testing.T, h *Handler, wire []byte, tcp bool, remote netip.Addr) (*dns.Msg, replyInfo) {
	t.Helper()
	out, info := respondWire(t, h, wire, tcp, remote)
	return unpack(t, out), info
}

// respondWire is respondMsg with the reply as sent.
func respondWire(t *testing.T, h *Handler, wire []byte, tcp bool, remote netip.Addr) ([]byte, replyInfo) {
	t.Helper()
	var rec recorder
	return h.respond(&rec, make([]byte, 65535), request{wire: wire, tcp: tcp, remote: remote})
}

func unpack(t *testing.T, wire []byte) *dns.Msg {
	t.Helper()
	r := new(dns.Msg)
	if err := r.Unpack(wire); err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return r
}

// NXDOMAIN and NODATA replies are prepared like positive ones, for names of
// any length and case below an existing name, and agree with the slow path
// (byte for byte when the name is in lower case: miekg/dns compresses names
// only against the same spelling); names where a wildcard, a delegation or a CNAME decides
// are left to the slow path.
func TestFastPathNegative(t *testing.T) {
	st := testState(t)
	slow := &State{Zones: st.Zones, Options: st.Options}
	for _, c := range []struct {
		name  string
		qtype uint16
		fast  bool
	}{
		{"nothere.example.org.", dns.TypeA, true},
		{"A.Much.Longer.Name.That.Is.Not.There.Example.ORG.", dns.TypeMX, true},
		{"x.www.example.org.", dns.TypeAAAA, true},
		{"mail.example.org.", dns.TypeMX, true},   // NODATA
		{"www.example.org.", dns.TypeMX, false},   // a CNAME
		{"mail.example.org.", dns.TypeSRV, true},  // NODATA
		{"example.org.", dns.TypeCAA, true},       // NODATA at the apex
		{"x.wild.example.org.", dns.TypeA, false}, // the wildcard
		{"x.deleg.example.org.", dns.TypeA, false},
		{"nothere.example.org.", dns.TypeDS, false},
		{"nothere.example.org.", dns.TypeANY, false},
		{"_status.example.org.", dns.TypeTXT, false},
	} {
		for _, opts := range [][]func(*dns.Msg){nil, {noEDNS}, {withOption(&dns.EDNS0_NSID{Code: dns.EDNS0NSID})}} {
			wire := mustPack(t, query(c.name, c.qtype, opts...))
			f, _, ok := fastAnswer(st, make([]byte, 65535), request{wire: wire})
			if ok != c.fast {
				t.Errorf("%s %s: fast path %v, want %v", c.name, dns.TypeToString[c.qtype], ok, c.fast)
				continue
			}
			if !ok {
				continue
			}
			s, _ := NewHandler(slow, testLogger(t)).respond(discard{}, make([]byte, 65535), request{wire: wire})
			fm, sm := new(dns.Msg), new(dns.Msg)
			if err := fm.Unpack(f); err != nil {
				t.Fatalf("%s %s: %v", c.name, dns.TypeToString[c.qtype], err)
			}
			sm.Unpack(s)
			if strings.ToLower(fm.String()) != strings.ToLower(sm.String()) ||
				c.name == strings.ToLower(c.name) && string(f) != string(s) {
				t.Errorf("%s %s: fast %x\nslow %x", c.name, dns.TypeToString[c.qtype], f, s)
			}
		}
	}
}

// TestAppendSRVPacksAsMiekg: the SRV records and addresses fastSRV writes
// are what miekg/dns packs for answerSRV's message, for any picks, a target
// picked twice included, IPv6 targets and hashed labels among them.
func TestAppendSRVPacksAsMiekg(t *testing.T) {
	services, _ := hashedServices()
	h := srvHandler(t, 3, services["ws"])
	p := h.state.Load().pools[0].cur.Load()
	for _, picked := range [][]int{{0}, {4, 5, 6, 7}, {6, 0, 6}, {7, 7}} {
		for _, qname := range []string{"_ws._tcp.farm.example.", "_WS._Tcp.FARM.example."} {
			c := choice{picked: picked, ttl: 9, pool: p}
			q := query(qname, dns.TypeSRV, noEDNS)
			r := reply(q)
			r.Authoritative = true
			for _, i := range picked {
				r.Answer = append(r.Answer, &dns.SRV{
					Hdr:    dns.RR_Header{Name: qname, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: c.ttl},
					Weight: p.Weight(i, time.Now().UnixNano()), Port: p.Records()[i].Port, Target: p.targets.names[i],
				})
				r.Extra = append(r.Extra, c.addressRR(p.targets.names[i], i))
			}
			want := mustPack(t, r)
			var key [255]byte
			fq, ok := parseFast(mustPack(t, q), &key)
			if !ok {
				t.Fatal("query not parsed")
			}
			n := uint16(len(picked))
			got := c.appendSRV(appendHeader(nil, mustPack(t, q), fq, 1<<10, n, 0, n))
			if string(got) != string(want) {
				t.Errorf("%s %v:\nfast %x\nslow %x", qname, picked, got, want)
			}
		}
	}
}
