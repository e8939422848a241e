package policy

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/farmdns/farmdns/health"
)

// t0 is the tests' clock origin.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// at returns t0 plus d in Unix nanoseconds, as Choose takes it.
func at(d time.Duration) int64 { return t0.Add(d).UnixNano() }

// target returns a passing IPv4 target node<i> with a known load.
func target(i int, conns, capacity int64) health.Target {
	return health.Target{
		Node: fmt.Sprintf("node%05d", i), ServiceID: "ws",
		Address: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), Port: 443,
		Health: health.HealthPassing,
		Load: health.Load{State: health.LoadKnown, Source: health.SourceKV, Connections: conns,
			Accepted: conns, Capacity: capacity, Updated: t0},
	}
}

// v6 returns t moved to an IPv6 address with service ID ws6.
func v6(t health.Target, i int) health.Target {
	t.ServiceID = "ws6"
	t.Address = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
	return t
}

// targets returns n targets with equal loads and capacities.
func targets(n int) []health.Target {
	ts := make([]health.Target, n)
	for i := range ts {
		ts[i] = target(i, 5000, 10000)
	}
	return ts
}

func testConfig() Config {
	c := DefaultConfig()
	c.Seed = 1
	return c
}
