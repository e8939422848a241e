package consultest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"testing"
)

// Ports handed out are taken from [portLow, portHigh), below the kernel's
// ephemeral range: a port found free there can still be taken by a client's
// outgoing connection before the server binds it, and an established
// connection on the port fails the bind even with SO_REUSEADDR. The range
// also stays below the fixed ports .ci's scripts use (25353 and up).
const portLow, portHigh = 10000, 25000

// FreePort returns a loopback port free for both TCP and UDP just now, for a
// server (knotd, unbound) that cannot be told to pick one and say which.
func FreePort(t testing.TB) int {
	t.Helper()
	ports, err := freePorts(1)
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	return ports[0]
}

// freePorts returns n distinct loopback ports that were free for both TCP
// and UDP (Serf uses both) at the time of the call.
func freePorts(n int) ([]int, error) {
	low, high := portLow, portHigh
	if lo, _, err := ephemeralRange(); err == nil && lo < high {
		high = lo
	}
	if high-low < 1000 {
		return nil, fmt.Errorf("ephemeral ports start at %d: no room below them for test servers", high)
	}
	var ports []int
	var held []func()
	defer func() {
		for _, c := range held {
			c()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 200 {
			return nil, errors.New("no free loopback ports")
		}
		port := low + rand.IntN(high-low)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			l.Close()
			continue
		}
		held = append(held, func() { l.Close(); u.Close() })
		ports = append(ports, port)
	}
	return ports, nil
}

// ephemeralRange is Linux's range for ports the kernel picks.
func ephemeralRange() (lo, hi int, err error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return 0, 0, fmt.Errorf("ip_local_port_range %q: %w", b, err)
	}
	return lo, hi, nil
}
