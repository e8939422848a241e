package zones

import (
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func loadExample(t testing.TB) *Zone {
	t.Helper()
	z, err := Load("example.org.", "testdata/example.org.zone")
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func parseRRs(t testing.TB, texts []string) []dns.RR {
	t.Helper()
	rrs := make([]dns.RR, len(texts))
	for i, text := range texts {
		rr, err := dns.NewRR(text)
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		rrs[i] = rr
	}
	return rrs
}

// rrText renders records as zone text, one per line, lower case, for comparing.
func rrText(rrs []dns.RR) string {
	lines := make([]string, len(rrs))
	for i, rr := range rrs {
		lines[i] = strings.ToLower(strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return strings.Join(lines, "\n")
}

func TestLookup(t *testing.T) {
	z := loadExample(t)
	tests := []struct {
		qname   string
		qtype   uint16
		outcome Outcome
		answer  []string
		ns      []string
		extra   []string
	}{
		{qname: "example.org.", qtype: dns.TypeA, outcome: Success,
			answer: []string{"example.org. 3600 IN A 192.0.2.1"}},
		{qname: "EXAMPLE.org.", qtype: dns.TypeSOA, outcome: Success,
			answer: []string{"example.org. 3600 IN SOA ns1.example.org. hostmaster.example.org. 2026112301 7200 3600 1209600 300"}},
		{qname: "example.org.", qtype: dns.TypeNS, outcome: Success,
			answer: []string{"example.org. 3600 IN NS ns1.example.org.", "example.org. 3600 IN NS ns2.example.net."},
			extra:  []string{"ns1.example.org. 3600 IN A 192.0.2.53", "ns1.example.org. 3600 IN AAAA 2001:db8::53"}},
		{qname: "example.org.", qtype: dns.TypeMX, outcome: Success,
			answer: []string{"example.org. 3600 IN MX 10 mail.example.org."},
			extra:  []string{"mail.example.org. 3600 IN A 192.0.2.25", "mail.example.org. 3600 IN AAAA 2001:db8::25"}},
		{qname: "mail.example.org.", qtype: dns.TypeTXT, outcome: NoData},
		{qname: "nothere.example.org.", qtype: dns.TypeA, outcome: NameError},
		{qname: "b.c.example.org.", qtype: dns.TypeA, outcome: NoData}, // empty non-terminal
		{qname: "c.example.org.", qtype: dns.TypeA, outcome: NoData},   // empty non-terminal
		{qname: "x.a.b.c.example.org.", qtype: dns.TypeA, outcome: NameError},
		{qname: "alias.example.org.", qtype: dns.TypeA, outcome: Success, answer: []string{
			"alias.example.org. 3600 IN CNAME www.example.org.",
			"www.example.org. 3600 IN CNAME example.org.",
			"example.org. 3600 IN A 192.0.2.1"}},
		{qname: "alias.example.org.", qtype: dns.TypeCNAME, outcome: Success, answer: []string{
			"alias.example.org. 3600 IN CNAME www.example.org."}},
		{qname: "ext.example.org.", qtype: dns.TypeA, outcome: Success, answer: []string{
			"ext.example.org. 3600 IN CNAME www.example.net."}},
		{qname: "dangling.example.org.", qtype: dns.TypeA, outcome: NameError, answer: []string{
			"dangling.example.org. 3600 IN CNAME nothere.example.org."}},
		{qname: "loop1.example.org.", qtype: dns.TypeA, outcome: Success},
		{qname: "x.wild.example.org.", qtype: dns.TypeA, outcome: Success,
			answer: []string{"x.wild.example.org. 3600 IN A 192.0.2.99"}},
		{qname: "y.x.wild.example.org.", qtype: dns.TypeTXT, outcome: Success,
			answer: []string{`y.x.wild.example.org. 3600 IN TXT "from the wildcard"`}},
		{qname: "x.wild.example.org.", qtype: dns.TypeMX, outcome: NoData},
		{qname: "wild.example.org.", qtype: dns.TypeA, outcome: NoData},
		// The closest encloser sub.wild exists, so *.wild does not apply (RFC 4592 section 2.2.1).
		{qname: "x.sub.wild.example.org.", qtype: dns.TypeA, outcome: NameError},
		{qname: "*.wild.example.org.", qtype: dns.TypeA, outcome: Success,
			answer: []string{"*.wild.example.org. 3600 IN A 192.0.2.99"}},
		{qname: "q.cwild.example.org.", qtype: dns.TypeA, outcome: Success, answer: []string{
			"q.cwild.example.org. 3600 IN CNAME mail.example.org.",
			"mail.example.org. 3600 IN A 192.0.2.25"}},
		{qname: "deleg.example.org.", qtype: dns.TypeA, outcome: Delegation,
			ns:    []string{"deleg.example.org. 3600 IN NS ns1.deleg.example.org.", "deleg.example.org. 3600 IN NS ns.example.net."},
			extra: []string{"ns1.deleg.example.org. 3600 IN A 192.0.2.60", "ns1.deleg.example.org. 3600 IN AAAA 2001:db8::60"}},
		{qname: "www.deleg.example.org.", qtype: dns.TypeA, outcome: Delegation,
			ns:    []string{"deleg.example.org. 3600 IN NS ns1.deleg.example.org.", "deleg.example.org. 3600 IN NS ns.example.net."},
			extra: []string{"ns1.deleg.example.org. 3600 IN A 192.0.2.60", "ns1.deleg.example.org. 3600 IN AAAA 2001:db8::60"}},
		{qname: "ns1.deleg.example.org.", qtype: dns.TypeA, outcome: Delegation,
			ns:    []string{"deleg.example.org. 3600 IN NS ns1.deleg.example.org.", "deleg.example.org. 3600 IN NS ns.example.net."},
			extra: []string{"ns1.deleg.example.org. 3600 IN A 192.0.2.60", "ns1.deleg.example.org. 3600 IN AAAA 2001:db8::60"}},
		// DS is answered by the parent side of the cut.
		{qname: "deleg.example.org.", qtype: dns.TypeDS, outcome: NoData},
		{qname: "secure.example.org.", qtype: dns.TypeDS, outcome: Success, answer: []string{
			"secure.example.org. 3600 IN DS 12345 13 2 3e55a2b3c5d0b1f3af2d5b9d1e4d8c2a6b7e9f0a1c3d5e7f9a1b2c3d4e5f6a7b"}},
		{qname: "to-deleg.example.org.", qtype: dns.TypeA, outcome: Delegation,
			answer: []string{"to-deleg.example.org. 3600 IN CNAME host.deleg.example.org."},
			ns:     []string{"deleg.example.org. 3600 IN NS ns1.deleg.example.org.", "deleg.example.org. 3600 IN NS ns.example.net."},
			extra:  []string{"ns1.deleg.example.org. 3600 IN A 192.0.2.60", "ns1.deleg.example.org. 3600 IN AAAA 2001:db8::60"}},
		{qname: "a.dn.example.org.", qtype: dns.TypeA, outcome: Success, answer: []string{
			"dn.example.org. 3600 IN DNAME b.c.example.org.",
			"a.dn.example.org. 3600 IN CNAME a.b.c.example.org.",
			"a.b.c.example.org. 3600 IN A 192.0.2.10"}},
		{qname: "dn.example.org.", qtype: dns.TypeDNAME, outcome: Success, answer: []string{
			"dn.example.org. 3600 IN DNAME b.c.example.org."}},
		{qname: "dn.example.org.", qtype: dns.TypeA, outcome: NoData},
		{qname: "mixed.example.org.", qtype: dns.TypeA, outcome: Success,
			answer: []string{"mixed.example.org. 3600 IN A 192.0.2.7"}},
		{qname: "_sip._tcp.example.org.", qtype: dns.TypeSRV, outcome: Success,
			answer: []string{"_sip._tcp.example.org. 3600 IN SRV 0 5 5060 mail.example.org."},
			extra:  []string{"mail.example.org. 3600 IN A 192.0.2.25", "mail.example.org. 3600 IN AAAA 2001:db8::25"}},
	}
	for _, tt := range tests {
		t.Run(tt.qname+"/"+dns.TypeToString[tt.qtype], func(t *testing.T) {
			res := z.Lookup(tt.qname, tt.qtype)
			if res.Outcome != tt.outcome {
				t.Errorf("outcome %v, want %v", res.Outcome, tt.outcome)
			}
			if tt.qname == "loop1.example.org." {
				if len(res.Answer) != 2 {
					t.Errorf("loop: %d records, want the chain cut where it repeats", len(res.Answer))
				}
				return
			}
			for _, sec := range []struct {
				name      string
				got, want []string
			}{
				{"answer", strings.Split(rrText(res.Answer), "\n"), tt.answer},
				{"authority", strings.Split(rrText(res.Ns), "\n"), tt.ns},
				{"additional", strings.Split(rrText(res.Extra), "\n"), tt.extra},
			} {
				want := strings.Split(rrText(parseRRs(t, sec.want)), "\n")
				if !slices.Equal(sec.got, want) {
					t.Errorf("%s:\n%s\nwant:\n%s", sec.name, strings.Join(sec.got, "\n"), strings.Join(sec.want, "\n"))
				}
			}
		})
	}
}

func TestLookupDoesNotModifyZone(t *testing.T) {
	z := loadExample(t)
	before := rrText(z.All())
	z.Lookup("x.wild.example.org.", dns.TypeA)
	z.Lookup("a.dn.example.org.", dns.TypeA)
	if after := rrText(z.All()); after != before {
		t.Fatal("a lookup changed the zone")
	}
}

func TestNegativeSOA(t *testing.T) {
	z := loadExample(t)
	if ttl := z.NegativeSOA().Hdr.Ttl; ttl != 300 {
		t.Errorf("negative SOA TTL %d, want min(3600, 300)", ttl)
	}
	if z.SOA().Hdr.Ttl != 3600 {
		t.Error("NegativeSOA changed the zone's SOA")
	}
}

func TestSetFind(t *testing.T) {
	parent, child := mustParse(t, "example.org.", minimal), mustParse(t, "sub.example.org.", minimal)
	s, err := NewSet(parent, child)
	if err != nil {
		t.Fatal(err)
	}
	for qname, want := range map[string]*Zone{
		"example.org.":         parent,
		"www.example.org.":     parent,
		"sub.example.org.":     child,
		"a.b.sub.example.org.": child,
		"example.com.":         nil,
		"org.":                 nil,
	} {
		if got := s.Find(qname); got != want {
			t.Errorf("Find(%s) = %v, want %v", qname, got, want)
		}
	}
	if _, err := NewSet(parent, parent); err == nil {
		t.Error("a zone configured twice was accepted")
	}
}

// wireText renders records as rrText does, after a trip through wire form:
// `\097bc` and `abc` are one name, and so read the same.
func wireText(t testing.TB, rrs []dns.RR) string {
	t.Helper()
	out := make([]dns.RR, len(rrs))
	buf := make([]byte, dns.MaxMsgSize)
	for i, rr := range rrs {
		n, err := dns.PackRR(rr, buf, 0, nil, false)
		if err != nil {
			t.Fatalf("%v: %v", rr, err)
		}
		if out[i], _, err = dns.UnpackRR(buf[:n], 0); err != nil {
			t.Fatalf("%v: %v", rr, err)
		}
	}
	return rrText(out)
}

// TestLookupEscapedNames asks for names written with escapes, in the zone
// file and in the question, in every spelling: one name on the wire is one
// name, whichever way it is written (RFC 1035 section 5.1), and only ASCII
// letters compare without case (RFC 4343).
func TestLookupEscapedNames(t *testing.T) {
	z, err := Load("escaped.example.", "testdata/escaped.example.zone")
	if err != nil {
		t.Fatal(err)
	}
	const o = ".escaped.example."
	high60 := strings.Repeat(`\200`, 60)
	tests := []struct {
		qname    string
		qtype    uint16
		outcome  Outcome
		wildcard bool
		answer   []string
		extra    []string
	}{
		{qname: "abc" + o, qtype: dns.TypeA, outcome: Success, answer: []string{"abc" + o + " 3600 IN A 192.0.2.1"}},
		{qname: "abc" + o, qtype: dns.TypeTXT, outcome: NoData},
		{qname: `\097bc` + o, qtype: dns.TypeTXT, outcome: NoData},
		{qname: `\097bc` + o, qtype: dns.TypeA, outcome: Success, answer: []string{"abc" + o + " 3600 IN A 192.0.2.1"}},
		{qname: `\065BC` + o, qtype: dns.TypeA, outcome: Success, answer: []string{"abc" + o + " 3600 IN A 192.0.2.1"}},
		{qname: "aBc.ESCAPED.example.", qtype: dns.TypeA, outcome: Success, answer: []string{"abc" + o + " 3600 IN A 192.0.2.1"}},

		{qname: `esc\.dot` + o, qtype: dns.TypeA, outcome: Success, answer: []string{`esc\.dot` + o + " 3600 IN A 192.0.2.2"}},
		{qname: `ESC\046dot` + o, qtype: dns.TypeTXT, outcome: Success, answer: []string{`esc\.dot` + o + ` 3600 IN TXT "one label"`}},
		{qname: `esc\.dot` + o, qtype: dns.TypeMX, outcome: NoData},
		// Two labels, not the one above.
		{qname: "esc.dot" + o, qtype: dns.TypeA, outcome: Success, answer: []string{"esc.dot" + o + " 3600 IN A 192.0.2.9"}},
		{qname: "esc.dot" + o, qtype: dns.TypeTXT, outcome: NoData},
		{qname: "dot" + o, qtype: dns.TypeA, outcome: NoData}, // empty non-terminal
		{qname: "x.esc.dot" + o, qtype: dns.TypeA, outcome: NameError},
		// The wildcard under the escaped label.
		{qname: `x.esc\.dot` + o, qtype: dns.TypeA, outcome: Success, wildcard: true, answer: []string{`x.esc\.dot` + o + " 3600 IN A 192.0.2.3"}},
		{qname: `Y.z.ESC\046DOT` + o, qtype: dns.TypeA, outcome: Success, wildcard: true, answer: []string{`y.z.esc\.dot` + o + " 3600 IN A 192.0.2.3"}},
		{qname: `x.esc\.dot` + o, qtype: dns.TypeTXT, outcome: NoData, wildcard: true},
		{qname: `x.W\.ILD` + o, qtype: dns.TypeA, outcome: Success, wildcard: true, answer: []string{`x.w\.ild` + o + " 3600 IN A 192.0.2.11"}},
		{qname: `*.esc\.dot` + o, qtype: dns.TypeA, outcome: Success, answer: []string{`*.esc\.dot` + o + " 3600 IN A 192.0.2.3"}},

		{qname: `sp\032ace` + o, qtype: dns.TypeA, outcome: Success, answer: []string{`sp\ ace` + o + " 3600 IN A 192.0.2.4"}},
		{qname: `SP\ ACE` + o, qtype: dns.TypeTXT, outcome: Success, answer: []string{`sp\ ace` + o + ` 3600 IN TXT "space"`}},
		{qname: "space" + o, qtype: dns.TypeA, outcome: NameError},

		// \200 is no letter: it is neither lowered nor mangled, however written.
		{qname: `hi\200bit` + o, qtype: dns.TypeA, outcome: Success, answer: []string{`hi\200bit` + o + " 3600 IN A 192.0.2.5"}},
		{qname: `HI\200BIT` + o, qtype: dns.TypeTXT, outcome: Success, answer: []string{`hi\200bit` + o + ` 3600 IN TXT "high bit"`}},
		{qname: "hi\xc8bit" + o, qtype: dns.TypeA, outcome: Success, answer: []string{`hi\200bit` + o + " 3600 IN A 192.0.2.5"}},
		{qname: `hi\201bit` + o, qtype: dns.TypeA, outcome: NameError},
		{qname: `hi\232bit` + o, qtype: dns.TypeA, outcome: NameError}, // \200 + 32: "lowered" as if Latin-1
		{qname: "hi\uFFFDbit" + o, qtype: dns.TypeA, outcome: NameError},

		{qname: "mixed" + o, qtype: dns.TypeA, outcome: Success, answer: []string{"mixed" + o + " 3600 IN A 192.0.2.6"}},
		{qname: `back\\slash` + o, qtype: dns.TypeA, outcome: Success, answer: []string{`back\\slash` + o + " 3600 IN A 192.0.2.7"}},
		{qname: `back\092SLASH` + o, qtype: dns.TypeA, outcome: Success, answer: []string{`back\\slash` + o + " 3600 IN A 192.0.2.7"}},

		// Chains whose targets are written with escapes.
		{qname: `at\@sign` + o, qtype: dns.TypeA, outcome: Success, answer: []string{
			`at\@sign` + o + ` 3600 IN CNAME esc\.dot` + o,
			`esc\.dot` + o + " 3600 IN A 192.0.2.2"}},
		{qname: "to-abc" + o, qtype: dns.TypeA, outcome: Success, answer: []string{
			"to-abc" + o + " 3600 IN CNAME abc" + o,
			"abc" + o + " 3600 IN A 192.0.2.1"}},
		{qname: `x.d\046name` + o, qtype: dns.TypeA, outcome: Success, wildcard: true, answer: []string{
			`d\.name` + o + ` 3600 IN DNAME esc\.dot` + o,
			`x.d\.name` + o + ` 3600 IN CNAME x.esc\.dot` + o,
			`x.esc\.dot` + o + " 3600 IN A 192.0.2.3"}},
		// 60 octets written in 240 characters: the substituted name is
		// longer than 255 characters but not than 255 octets.
		{qname: high60 + `.d\.name` + o, qtype: dns.TypeA, outcome: Success, wildcard: true, answer: []string{
			`d\.name` + o + ` 3600 IN DNAME esc\.dot` + o,
			high60 + `.d\.name` + o + " 3600 IN CNAME " + high60 + `.esc\.dot` + o,
			high60 + `.esc\.dot` + o + " 3600 IN A 192.0.2.3"}},
		// 255 octets, and esc.dot is one longer than d.name: YXDOMAIN.
		{qname: high60 + "." + high60 + "." + high60 + "." + strings.Repeat("a", 47) + `.d\.name` + o, qtype: dns.TypeA,
			outcome: NameTooLong, answer: []string{`d\.name` + o + ` 3600 IN DNAME esc\.dot` + o}},
		{qname: "escaped.example.", qtype: dns.TypeMX, outcome: Success,
			answer: []string{"escaped.example. 3600 IN MX 10 mail" + o},
			extra:  []string{"mail" + o + " 3600 IN A 192.0.2.25"}},
	}
	for _, tt := range tests {
		t.Run(tt.qname+"/"+dns.TypeToString[tt.qtype], func(t *testing.T) {
			res := z.Lookup(tt.qname, tt.qtype)
			if res.Outcome != tt.outcome || res.Wildcard != tt.wildcard {
				t.Errorf("outcome %v wildcard %v, want %v wildcard %v", res.Outcome, res.Wildcard, tt.outcome, tt.wildcard)
			}
			if got, want := wireText(t, res.Answer), wireText(t, parseRRs(t, tt.answer)); got != want {
				t.Errorf("answer:\n%s\nwant:\n%s", got, want)
			}
			if got, want := wireText(t, res.Extra), wireText(t, parseRRs(t, tt.extra)); got != want {
				t.Errorf("additional:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}
