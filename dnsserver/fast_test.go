package dnsserver

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
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
	for _, bc := range []struct {
		name string
		q    *dns.Msg
	}{
		{"fast/A", query("ns1.example.org.", dns.TypeA)},
		{"fast/A-noedns", query("mail.example.org.", dns.TypeA, noEDNS)},
		{"slow/nxdomain", query("nothere.example.org.", dns.TypeA)},
		{"slow/wildcard", query("x.wild.example.org.", dns.TypeA)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := NewHandler(st, testLogger(b))
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
