package consultest

import (
	"net"
	"strconv"
	"testing"
)

// TestFreePortsBelowEphemeral: a port handed to a server that binds it later
// must not be one a client's outgoing connection can take meanwhile (the
// kernel gives those from the ephemeral range, and an established connection
// on the port makes the server's bind fail: unbound did, in CI).
func TestFreePortsBelowEphemeral(t *testing.T) {
	lo, hi, err := ephemeralRange()
	if err != nil {
		t.Skipf("no ephemeral range to compare with: %v", err)
	}
	ports, err := freePorts(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p >= lo && p <= hi {
			t.Errorf("port %d is in the ephemeral range %d-%d", p, lo, hi)
		}
		if seen[p] {
			t.Errorf("port %d given twice", p)
		}
		seen[p] = true
		for _, network := range []string{"tcp", "udp"} {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
			var c interface{ Close() error }
			var err error
			if network == "tcp" {
				c, err = net.Listen(network, addr)
			} else {
				c, err = net.ListenPacket(network, addr)
			}
			if err != nil {
				t.Errorf("port %d not free on %s: %v", p, network, err)
				continue
			}
			c.Close()
		}
	}
}
