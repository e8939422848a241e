package zones

import (
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

const minimal = `$TTL 300
@ SOA ns1 hostmaster 1 7200 3600 1209600 300
@ NS ns1
ns1 A 192.0.2.53
`

func mustParse(t testing.TB, origin, text string) *Zone {
	t.Helper()
	z, err := Parse(origin, "test.zone", strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, text string
		want       string // the message, with file and line
	}{
		{"syntax", minimal + "www A 300.1.2.3\n", "test.zone:5: bad A A: \"300.1.2.3\""},
		{"no SOA", "@ NS ns1\nns1 A 192.0.2.1\n", "test.zone: no SOA record at the apex example.org."},
		{"no NS", "@ SOA ns1 hostmaster 1 2 3 4 5\n", "test.zone: no NS records at the apex example.org."},
		{"two SOA", minimal + "@ SOA ns2 hostmaster 2 2 3 4 5\n", "more than one SOA record at the apex"},
		{"SOA below apex", minimal + "x SOA ns2 hostmaster 2 2 3 4 5\n", "test.zone:5: x.example.org.: SOA is only allowed at the apex"},
		{"out of zone", minimal + "www.example.com. A 192.0.2.1\n", "test.zone:5: www.example.com.: out of zone example.org."},
		{"CNAME and data", minimal + "www CNAME ns1\nwww A 192.0.2.1\n", "test.zone:5: www.example.org.: CNAME and other data"},
		{"two CNAMEs", minimal + "www CNAME ns1\nwww CNAME ns2\n", "test.zone:5: www.example.org.: more than one CNAME"},
		{"CNAME at apex", minimal + "@ CNAME ns1\n", "CNAME and other data"},
		{"class", minimal + "www CH A 192.0.2.1\n", "test.zone:5: www.example.org.: class CH: only IN is served"},
		{"signed", minimal + "@ NSEC ns1 A NS SOA\n", "test.zone:5: example.org. NSEC: DNSSEC-signed zones are not supported"},
		{"include", minimal + "$INCLUDE /etc/passwd\n", "test.zone:5: $INCLUDE directive not allowed"},
		{"wildcard cut", minimal + "*.x NS ns1\n", "a wildcard cannot be a delegation"},
		{"multi-line record", minimal + "@ TXT (\n \"a\"\n \"b\" )\nwww CNAME ns1\nwww AAAA ::1\n", "test.zone:8: www.example.org.: CNAME and other data"},
		{"garbage", "\x00\x01\x02 not a zone\n", "test.zone:1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("example.org.", "test.zone", strings.NewReader(tt.text))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error:\n%v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParseNormalises(t *testing.T) {
	z := mustParse(t, "Example.ORG", minimal+"www 60 A 192.0.2.1\nwww 120 A 192.0.2.2\nwww 60 A 192.0.2.1\n")
	if z.Origin != "example.org." {
		t.Errorf("origin %q", z.Origin)
	}
	res := z.Lookup("www.example.org.", 1)
	if len(res.Answer) != 2 {
		t.Fatalf("duplicate kept: %v", res.Answer)
	}
	for _, rr := range res.Answer {
		if rr.Header().Ttl != 60 {
			t.Errorf("TTL %d: a set takes the TTL of its first record", rr.Header().Ttl)
		}
	}
	if z.Records() != 5 {
		t.Errorf("records %d, want 5", z.Records())
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("example.org.", "testdata/nonexistent.zone")
	if err == nil || !strings.Contains(err.Error(), "nonexistent.zone") {
		t.Fatalf("error %v should name the file", err)
	}
}

func TestAllIsStableAndStartsWithSOA(t *testing.T) {
	z := loadExample(t)
	all := z.All()
	if all[0] != z.SOA() {
		t.Fatal("first record is not the SOA")
	}
	if rrText(all) != rrText(z.All()) {
		t.Fatal("order changes between calls")
	}
	if len(all) != z.Records() {
		t.Errorf("All has %d records, zone has %d", len(all), z.Records())
	}
}

func TestBindings(t *testing.T) {
	ab := []uint16{dns.TypeA, dns.TypeAAAA}
	z, err := Parse("farm.example.", "test.zone", strings.NewReader(minimal+"alias CNAME @\nstatic A 192.0.2.9\n"),
		Binding{Name: "@", Types: ab, Pool: 1},
		Binding{Name: "eu.nodes", Types: ab, Pool: 2},
		Binding{Name: "_ws._tcp", Types: []uint16{dns.TypeSRV}, Pool: 3},
		Binding{Name: "targets", Children: true, Pool: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		qtype   uint16
		outcome Outcome
		pool    int
		chain   int
	}{
		{"farm.example.", dns.TypeA, Dynamic, 1, 0},
		{"farm.example.", dns.TypeAAAA, Dynamic, 1, 0},
		{"farm.example.", dns.TypeSOA, Success, 0, 0}, // the apex keeps its static records
		{"farm.example.", dns.TypeMX, NoData, 0, 0},
		{"alias.farm.example.", dns.TypeA, Dynamic, 1, 1}, // a CNAME leads into the pool
		{"eu.nodes.farm.example.", dns.TypeA, Dynamic, 2, 0},
		{"nodes.farm.example.", dns.TypeA, NoData, 0, 0}, // an empty non-terminal above the pool name
		{"eu.nodes.farm.example.", dns.TypeTXT, NoData, 0, 0},
		{"_ws._tcp.farm.example.", dns.TypeSRV, Dynamic, 3, 0},
		{"static.farm.example.", dns.TypeA, Success, 0, 0},
		{"web-1.targets.farm.example.", dns.TypeAAAA, Dynamic, 3, 0}, // an SRV target
		{"WEB-1.targets.farm.example.", dns.TypeMX, Dynamic, 3, 0},
		{"targets.farm.example.", dns.TypeA, NoData, 0, 0},
		{"x.web-1.targets.farm.example.", dns.TypeA, NameError, 0, 0},
	} {
		res := z.Lookup(tt.name, tt.qtype)
		if tt.pool == 3 && tt.qtype != dns.TypeSRV && res.Label != "web-1" {
			t.Errorf("%s: label %q", tt.name, res.Label)
		}
		if res.Outcome != tt.outcome || (tt.outcome == Dynamic && res.Pool != tt.pool) || len(res.Answer) < tt.chain {
			t.Errorf("%s %s: %v pool %d, want %v pool %d", tt.name, dns.Type(tt.qtype), res.Outcome, res.Pool, tt.outcome, tt.pool)
		}
	}
}

func TestBindingErrors(t *testing.T) {
	ab := []uint16{dns.TypeA, dns.TypeAAAA}
	zone := minimal + "static A 192.0.2.9\nalias CNAME @\nsub NS ns.example.net.\n"
	for _, tt := range []struct {
		b    Binding
		want string
	}{
		{Binding{Name: "static", Types: ab}, "test.zone:5: pool name static.example.org. clashes with the static A record"},
		{Binding{Name: "alias", Types: ab}, "clashes with the static CNAME record"},
		{Binding{Name: "x.sub", Types: ab}, "pool name x.sub.example.org. is at or below the delegation sub.example.org."},
		{Binding{Name: "*.any", Types: ab}, "a wildcard cannot be a pool"},
		{Binding{Name: "www.example.com.", Types: ab}, `pool name "www.example.com." is not in zone example.org.`},
		{Binding{Name: "ns1", Types: ab}, "clashes with the static A record"},
	} {
		_, err := Parse("example.org.", "test.zone", strings.NewReader(zone), tt.b)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want %q", tt.b, err, tt.want)
		}
	}
	if _, err := Parse("example.org.", "test.zone", strings.NewReader(minimal+"a.nodes A 192.0.2.1\n"),
		Binding{Name: "nodes", Children: true}); err == nil || !strings.Contains(err.Error(), "test.zone:5: a.nodes.example.org.: the names below nodes.example.org. belong to a pool") {
		t.Errorf("static name below a children binding: %v", err)
	}
	_, err := Parse("example.org.", "test.zone", strings.NewReader(minimal),
		Binding{Name: "@", Types: ab, Pool: 1}, Binding{Name: "example.org.", Types: []uint16{dns.TypeA}, Pool: 2})
	if err == nil || !strings.Contains(err.Error(), "A is bound to two pools") {
		t.Errorf("two pools on one name: %v", err)
	}
}

// TestSpellingsMeet writes an origin, a pool name and a question each its
// own way: all of them must reach the same names.
func TestSpellingsMeet(t *testing.T) {
	z, err := Parse(`F\065RM.example`, "test.zone", strings.NewReader(minimal+"web A 192.0.2.9\n"),
		Binding{Name: `\112ool`, Types: []uint16{dns.TypeA}, Pool: 1},
		Binding{Name: `t\.gts.farm.EXAMPLE.`, Children: true, Pool: 2})
	if err != nil {
		t.Fatal(err)
	}
	if z.Origin != "farm.example." {
		t.Errorf("origin %q", z.Origin)
	}
	s, err := NewSet(z)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"farm.example.", "WEB.FARM.EXAMPLE.", `\102arm.example.`, `pool.f\097rm.example.`} {
		if s.Find(name) != z {
			t.Errorf("Find(%s) = nil", name)
		}
	}
	if s.Find("farm\\.example.") != nil {
		t.Error(`farm\.example. is one label, not the zone`)
	}
	if res := z.Lookup("POOL.farm.example.", dns.TypeA); res.Outcome != Dynamic || res.Pool != 1 {
		t.Errorf("pool: %v %d", res.Outcome, res.Pool)
	}
	if res := z.Lookup(`Web-1.T\046GTS.farm.example.`, dns.TypeA); res.Outcome != Dynamic || res.Pool != 2 || res.Label != "web-1" {
		t.Errorf("pool child: %v %d %q", res.Outcome, res.Pool, res.Label)
	}
	if _, err := Parse("farm.example.", "test.zone", strings.NewReader(minimal+"p A 192.0.2.9\n"),
		Binding{Name: `\080`, Types: []uint16{dns.TypeA}, Pool: 1}); err == nil {
		t.Error(`pool \080 (P) was bound over the static A of p`)
	}
}

// TestAllCanonicalOrder transfers the names of RFC 4034 section 6.1's
// example in the order it gives: octets, not their escapes, are compared.
func TestAllCanonicalOrder(t *testing.T) {
	z := mustParse(t, "example.", `@ SOA ns.other. hostmaster 1 7200 3600 1209600 300
@ NS ns.other.
\200.z A 192.0.2.1
*.z A 192.0.2.1
\001.z A 192.0.2.1
z A 192.0.2.1
zABC.a.EXAMPLE. A 192.0.2.1
Z.a A 192.0.2.1
yljkjljk.a A 192.0.2.1
a A 192.0.2.1
`)
	var got []string
	for _, rr := range z.All() {
		if name, _ := CanonicalName(rr.Header().Name); len(got) == 0 || got[len(got)-1] != name {
			got = append(got, name)
		}
	}
	want := []string{"example.", "a.example.", "yljkjljk.a.example.", "z.a.example.", "zabc.a.example.",
		"z.example.", `\001.z.example.`, "*.z.example.", `\200.z.example.`}
	if !slices.Equal(got, want) {
		t.Errorf("order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
