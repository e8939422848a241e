package dnsserver

import (
	"net/netip"
	"testing"
)

// TestAllowedIPv4Mapped: an IPv4 client matches an allow-list entry however
// either is written, as a plain IPv4 address or IPv4-mapped (::ffff:a.b.c.d),
// which is how a client arrives on a dual-stack socket.
func TestAllowedIPv4Mapped(t *testing.T) {
	for _, tt := range []struct {
		entry, client string
		want          bool
	}{
		{"192.0.2.1/32", "192.0.2.1", true},
		{"192.0.2.1/32", "::ffff:192.0.2.1", true},
		{"::ffff:192.0.2.1/128", "192.0.2.1", true},
		{"::ffff:192.0.2.1/128", "::ffff:192.0.2.1", true},
		{"::ffff:192.0.2.0/120", "192.0.2.77", true},
		{"::ffff:192.0.2.0/120", "::ffff:192.0.2.77", true},
		{"::ffff:0.0.0.0/96", "198.51.100.1", true},
		{"192.0.2.0/24", "::ffff:192.0.2.200", true},
		{"::ffff:192.0.2.1/128", "192.0.2.2", false},
		{"::ffff:192.0.2.0/120", "192.0.3.1", false},
		{"::ffff:192.0.2.1/128", "::1", false},
		{"2001:db8::/32", "2001:db8::1", true},
		{"2001:db8::/32", "192.0.2.1", false},
		{"::1/128", "::1", true},
		{"::1/128", "127.0.0.1", false},
	} {
		from := []netip.Prefix{netip.MustParsePrefix(tt.entry)}
		if got := allowed(from, netip.MustParseAddr(tt.client)); got != tt.want {
			t.Errorf("entry %s, client %s: allowed %v, want %v", tt.entry, tt.client, got, tt.want)
		}
	}
}
