package consuldns

import (
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// TestRFC1464: meta keys and values are quoted as Consul writes them,
// plain ones (the fast path) and ones needing quoting alike.
func TestRFC1464(t *testing.T) {
	for _, c := range []struct{ key, value, want string }{
		{"rack", "r1", "rack=r1"},
		{"", "v", "=v"},
		{"", "a`b", "=a``b"},
		{"k", "a`b", "k=a``b"},
		{"a=b", "v", "a`=b=v"},
		{"a`b", "v", "a``b=v"},
		{" k ", "v", "` k` =v"},
		{"  k", "v=w", "` ` k=v=w"},
	} {
		if got := rfc1464(c.key, c.value); got != c.want {
			t.Errorf("rfc1464(%q, %q) = %q, want %q", c.key, c.value, got, c.want)
		}
	}
}

// TestSplitLabels: the fast split gives dns.SplitDomainName's labels.
func TestSplitLabels(t *testing.T) {
	for _, name := range []string{"", ".", "a", "a.", "svc.service.", "t.svc.service.dc1.", "a..b.", ".a.", `a\.b.c.`, "a.b", "a.b.c.d.e.f.g.h.i.j."} {
		got, want := splitLabels(name, nil), dns.SplitDomainName(name)
		if !slices.Equal(got, want) {
			t.Errorf("splitLabels(%q) = %q, want %q", name, got, want)
		}
	}
}
