package dnsserver

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health/consultest"
	"github.com/farmdns/farmdns/zones"
)

const exampleZone = "../zones/testdata/example.org.zone"

func ptr[T any](v T) *T { return &v }

// testState serves the example zone with the same identity Knot gets in the
// differential test.
func testState(t testing.TB) *State {
	t.Helper()
	z, err := zones.Load("example.org.", exampleZone)
	if err != nil {
		t.Fatal(err)
	}
	set, err := zones.NewSet(z)
	if err != nil {
		t.Fatal(err)
	}
	return NewState(set, Options{
		NSID:         "ns-test",
		Identity:     ptr("id-test"),
		Version:      ptr("v-test"),
		MaxUDPSize:   DefaultMaxUDPSize,
		TransferFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
	})
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// startServer runs a Server for st on a free loopback port until the test ends.
func startServer(t testing.TB, st *State) (*Server, string) {
	t.Helper()
	srv := &Server{Handler: NewHandler(st, testLogger(t)), Addrs: []string{"127.0.0.1:0"}, TCPIdleTimeout: 2 * time.Second}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return srv, srv.BoundAddrs()[0].String()
}

// exchange sends m to addr over net ("udp" or "tcp") and returns the reply.
func exchange(t testing.TB, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 2 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %v: %v", network, m.Question, err)
	}
	return r
}

// requireTool finds an external program the test needs. Outside CI a missing
// tool skips the test; in CI it fails it (consultest.Skipf), so a broken install
// never passes as green.
func requireTool(t testing.TB, name string, dirs ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range dirs {
		if p := d + "/" + name; fileExists(p) {
			return p
		}
	}
	consultest.Skipf(t, "%s is not installed (make test-deps installs it)", name)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Queries that reached the server before Shutdown are answered, over UDP
// and TCP alike, before the sockets close: a restart must not drop them.
func TestShutdownAnswersQueriesInFlight(t *testing.T) {
	srv := &Server{Handler: NewHandler(testState(t), testLogger(t)), Addrs: []string{"127.0.0.1:0"}}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := srv.BoundAddrs()[0].String()
	tc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.(*net.TCPConn).SetReadBuffer(32 << 10) // replies back up soon: the server is still busy at Shutdown
	writeTCP(t, tc, query("example.org.", dns.TypeA))
	readTCP(t, tc) // accepted and being served
	var tcpQs []*dns.Msg
	for range 500 {
		tcpQs = append(tcpQs, query("big.example.org.", dns.TypeTXT))
	}
	writeTCP(t, tc, tcpQs...)
	type udpQuery struct {
		c  *net.UDPConn
		id uint16
	}
	var udpQs []udpQuery
	for range 4 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range 50 {
			q := query("example.org.", dns.TypeA)
			q.Id = uint16(len(udpQs) + 1) // distinct: two random IDs on one socket would collide 1 run in 15
			b, _ := q.Pack()
			if _, err := c.WriteTo(b, net.UDPAddrFromAddrPort(srv.BoundAddrs()[0])); err != nil {
				t.Fatal(err)
			}
			udpQs = append(udpQs, udpQuery{c, q.Id})
		}
	}
	// On loopback a write has reached the server's socket when it returns:
	// every query above is in flight now.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Shutdown(ctx) }()
	for i, q := range tcpQs {
		r, err := readTCPErr(tc)
		if err != nil {
			t.Fatalf("TCP query %d of %d sent before Shutdown: no answer: %v", i+1, len(tcpQs), err)
		}
		if r.Id != q.Id {
			t.Fatalf("TCP reply %d, want %d", r.Id, q.Id)
		}
	}
	got := 0
	for _, c := range []*net.UDPConn{udpQs[0].c, udpQs[50].c, udpQs[100].c, udpQs[150].c} {
		want := map[uint16]bool{}
		for _, q := range udpQs {
			if q.c == c {
				want[q.id] = true
			}
		}
		buf := make([]byte, 65535)
		for len(want) > 0 {
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("UDP: %d of %d queries sent before Shutdown answered: %v", got, len(udpQs), err)
			}
			r := new(dns.Msg)
			if err := r.Unpack(buf[:n]); err != nil || !want[r.Id] {
				t.Fatalf("UDP: unexpected reply %v (%v)", r.Id, err)
			}
			delete(want, r.Id)
			got++
		}
	}
	if err := <-stopped; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if !closedByServer(tc) {
		t.Error("connection left open after shutdown")
	}
}

// With a wildcard listen address, a reply leaves from the address its query
// was sent to: resolvers drop replies from any other address. Loopback has
// the whole of 127.0.0.0/8, so querying 127.0.0.2 shows it.
func TestWildcardReplySource(t *testing.T) {
	for _, listen := range []string{"0.0.0.0:0", "[::]:0", ":0"} {
		t.Run(listen, func(t *testing.T) {
			srv := &Server{Handler: NewHandler(testState(t), testLogger(t)), Addrs: []string{listen}}
			if err := srv.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer srv.Shutdown(context.Background())
			port := srv.BoundAddrs()[0].Port()
			dsts := []string{"127.0.0.2", "127.0.0.3", "127.0.0.1"}
			if listen != "0.0.0.0:0" {
				dsts = append(dsts, "::1") // the IPv6 control message is well formed
			}
			for _, dst := range dsts {
				to := netip.AddrPortFrom(netip.MustParseAddr(dst), port)
				c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if to.Addr().Is6() {
					c, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6loopback})
				}
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				q := query("example.org.", dns.TypeA)
				b, _ := q.Pack()
				if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 65535)
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatalf("query to %s: %v", to, err)
				}
				if from.Addr().Unmap() != to.Addr() || from.Port() != port {
					t.Errorf("query to %s answered from %s", to, from)
				}
				r := new(dns.Msg)
				if err := r.Unpack(buf[:n]); err != nil || r.Id != q.Id || len(r.Answer) != 1 {
					t.Errorf("query to %s: reply %v (%v)", to, r, err)
				}
			}
		})
	}
}

// BenchmarkUDPExchange is one query and reply over loopback, server and
// client together: the bound address against a wildcard one (which reads
// and writes a control message with each datagram).
func BenchmarkUDPExchange(b *testing.B) {
	for _, listen := range []string{"127.0.0.1:0", "0.0.0.0:0"} {
		b.Run(listen, func(b *testing.B) {
			srv := &Server{Handler: NewHandler(testState(b), testLogger(b)), Addrs: []string{listen}}
			if err := srv.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer srv.Shutdown(context.Background())
			to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.BoundAddrs()[0].Port())
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			q, _ := query("example.org.", dns.TypeA).Pack()
			buf := make([]byte, 65535)
			c.SetReadDeadline(time.Now().Add(time.Minute))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(q); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
