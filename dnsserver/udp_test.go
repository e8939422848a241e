package dnsserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/policy"
)

// Every reader has a socket of its own on the shared port, and the kernel
// spreads clients over them: queries from many client ports are all
// answered, and each reader counts into its own metrics shard.
func TestUDPReadersShareThePort(t *testing.T) {
	h := NewHandler(testState(t), testLogger(t))
	readers := max(2, len(h.metrics.shards)) // a shard per reader
	srv := &Server{Handler: h, Addrs: []string{"127.0.0.1:0"}, readers: readers}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	if len(srv.udp) != readers {
		t.Fatalf("%d UDP sockets, want one per reader (%d)", len(srv.udp), readers)
	}
	addr := srv.BoundAddrs()[0].String()
	for range 64 {
		exchange(t, "udp", addr, query("www.example.org.", dns.TypeA))
	}
	if len(h.metrics.shards) < readers {
		return // GOMAXPROCS=1: one shard for both
	}
	zc := (*h.metrics.zones.Load())["example.org."]
	for i := range readers {
		if zc[i].n[0][qtypeIndex(dns.TypeA)][dns.RcodeSuccess].Load() == 0 {
			t.Errorf("reader %d answered none of 64 clients", i)
		}
	}
}

// A second server cannot take a port a first one serves: the first socket
// binds without SO_REUSEPORT, so a mistaken second instance fails instead
// of quietly getting half the queries.
func TestUDPPortNotShared(t *testing.T) {
	_, addr := startServer(t, testState(t))
	srv := &Server{Handler: NewHandler(testState(t), testLogger(t)), Addrs: []string{addr}}
	if err := srv.Start(context.Background()); err == nil {
		srv.Shutdown(context.Background())
		t.Fatalf("a second server bound %s", addr)
	}
}

// BenchmarkUDPServeParallel: queries and replies over loopback, one client
// socket per P against a server with one reader (and socket) per P. Run
// with -cpu 1,2,4: what stops scaling shows up as ns/op growing with the
// readers (on a machine with that many cores).
func BenchmarkUDPServeParallel(b *testing.B) {
	procs := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(procs) // Start adds a P (spareP)
	srv := &Server{Handler: NewHandler(testState(b), testLogger(b)), Addrs: []string{"127.0.0.1:0"}, readers: procs}
	if err := srv.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	to := net.UDPAddrFromAddrPort(srv.BoundAddrs()[0])
	q, _ := query("www.example.org.", dns.TypeA).Pack()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.DialUDP("udp", nil, to)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		buf := make([]byte, 65535)
		c.SetDeadline(time.Now().Add(time.Minute))
		for pb.Next() {
			if _, err := c.Write(q); err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Read(buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkServeParallel is the query path without sockets, one goroutine
// per P, each with its own metrics shard as a reader has, against all in
// one shard: a counter cache line shared by the cores shows as the second
// slowing with -cpu 2,4 while the first keeps its ns/op per core.
func BenchmarkServeParallel(b *testing.B) {
	for _, bc := range []struct {
		name   string
		q      *dns.Msg
		shared bool
	}{
		{"A/own-shard", query("www.example.org.", dns.TypeA), false},
		{"A/shared-shard", query("www.example.org.", dns.TypeA), true},
		{"nxdomain/own-shard", query("nothere.example.org.", dns.TypeA), false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := NewHandler(testState(b), testLogger(b))
			wire, _ := bc.q.Pack()
			var next atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				shard := 0
				if !bc.shared {
					shard = int(next.Add(1))
				}
				buf := make([]byte, 65535)
				for pb.Next() {
					h.serve(discard{}, buf, request{wire: wire, shard: shard})
				}
			})
		})
	}
}

// BenchmarkServePoolParallel is a pool's answer, chosen afresh for each
// query (askers from many /24s), one goroutine per P: the choice counts
// into per-target ledgers that all cores share by design (see policy), and
// the outcome counter of the pool.
func BenchmarkServePoolParallel(b *testing.B) {
	services := farmServices()
	for i := range 1000 {
		services["ws"] = append(services["ws"], target(fmt.Sprintf("m%d", i), fmt.Sprintf("10.0.%d.%d", i/256, i%256), int64(i), nil))
	}
	h := farmHandler(b, policy.EmptyFailOpen, services)
	wire, _ := query("farm.example.", dns.TypeA).Pack()
	var clients [4096]netip.Addr
	for i := range clients {
		clients[i] = netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		shard := int(next.Add(1))
		buf := make([]byte, 65535)
		i := shard * 997
		for pb.Next() {
			h.serve(discard{}, buf, request{wire: wire, remote: clients[i%len(clients)], shard: shard})
			i++
		}
	})
}
