package zones

import (
	"strings"
	"testing"
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
