package dnsserver

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health/consultest"
)

func writeTCP(t *testing.T, c net.Conn, msgs ...*dns.Msg) {
	t.Helper()
	var buf []byte
	for _, m := range msgs {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(b)))
		buf = append(buf, b...)
	}
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
}

func readTCP(t *testing.T, c net.Conn) *dns.Msg {
	t.Helper()
	m, err := readTCPErr(c)
	if err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	return m
}

// closedByServer reports whether the server closes c within a few seconds:
// the read ends with EOF or a reset, not with our deadline.
// waitAllWaiting waits until no connection of srv is answering a query.
func waitAllWaiting(t *testing.T, srv *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		srv.mu.Lock()
		busy := 0
		for tc := range srv.conns {
			if tc.state == connAnswering {
				busy++
			}
		}
		srv.mu.Unlock()
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still answering after 5s", busy)
		}
		time.Sleep(time.Millisecond)
	}
}

func closedByServer(c net.Conn) bool {
	return closedWithin(c, 3*time.Second)
}

func TestTCPPipelined(t *testing.T) {
	_, addr := startServer(t, testState(t))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	qs := []*dns.Msg{query("example.org.", dns.TypeA), query("nope.example.org.", dns.TypeA), query("big.example.org.", dns.TypeTXT)}
	writeTCP(t, c, qs...) // all three before reading any reply
	for _, q := range qs {
		r := readTCP(t, c)
		if r.Id != q.Id {
			t.Fatalf("reply %d, want the reply to %d: answers come in query order", r.Id, q.Id)
		}
	}
}

func TestTCPIdleTimeout(t *testing.T) {
	srv := &Server{Handler: NewHandler(testState(t), testLogger(t)), Addrs: []string{"127.0.0.1:0"}, TCPIdleTimeout: 200 * time.Millisecond}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	c, err := net.Dial("tcp", srv.BoundAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeTCP(t, c, query("example.org.", dns.TypeA))
	readTCP(t, c)
	if !closedByServer(c) {
		t.Fatal("an idle connection was not closed")
	}
}

func TestUDPTruncatedThenTCP(t *testing.T) {
	_, addr := startServer(t, testState(t))
	r := exchange(t, "udp", addr, query("big.example.org.", dns.TypeTXT, noEDNS))
	if !r.Truncated || len(r.Answer) != 0 {
		t.Fatalf("UDP: tc=%v with %d records, want TC and no partial set", r.Truncated, len(r.Answer))
	}
	r = exchange(t, "tcp", addr, query("big.example.org.", dns.TypeTXT, noEDNS))
	if r.Truncated || len(r.Answer) != 24 {
		t.Fatalf("TCP: tc=%v with %d records, want all 24", r.Truncated, len(r.Answer))
	}
}

func TestShutdownAnswersQueryInHand(t *testing.T) {
	srv := &Server{Handler: NewHandler(testState(t), testLogger(t)), Addrs: []string{"127.0.0.1:0"}}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := srv.BoundAddrs()[0].String()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeTCP(t, c, query("example.org.", dns.TypeA))
	readTCP(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an idle connection open: %v", err)
	}
	if !closedByServer(c) {
		t.Error("connection left open after shutdown")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("still accepting after shutdown")
	}
}

func TestIPv6Loopback(t *testing.T) {
	srv := &Server{Handler: NewHandler(testState(t), testLogger(t)), Addrs: []string{"[::1]:0"}}
	if err := srv.Start(context.Background()); err != nil {
		consultest.Skipf(t, "no IPv6 loopback here: %v", err)
	}
	defer srv.Shutdown(context.Background())
	addr := srv.BoundAddrs()[0].String()
	for _, network := range []string{"udp", "tcp"} {
		if r := exchange(t, network, addr, query("example.org.", dns.TypeAAAA)); len(r.Answer) != 1 {
			t.Errorf("%s over IPv6: %v", network, r)
		}
	}
}

// dialFrom connects to addr over TCP from the loopback address local, so a
// test can play clients in different /24 networks.
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 3 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startTCP runs a Server with the given TCP limits until the test ends.
func startTCP(t *testing.T, idle time.Duration, maxConns int) (*Server, string) {
	t.Helper()
	srv := &Server{Handler: NewHandler(testState(t), testLogger(t)), Addrs: []string{"127.0.0.1:0"}, TCPIdleTimeout: idle, MaxTCPConns: maxConns}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv, srv.BoundAddrs()[0].String()
}

// A client that sends a query one octet at a time, slower than any real
// client, is closed once the query has taken the message timeout, however
// long the idle timeout.
func TestTCPDribblerClosed(t *testing.T) {
	_, addr := startTCP(t, time.Minute, 0)
	c := dialFrom(t, "127.0.0.1", addr)
	b, _ := query("example.org.", dns.TypeA).Pack()
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(b)))
	msg = append(msg, b...)
	// A few octets a second: the whole query would take about 20 s, and
	// each octet arrives well inside the one-minute idle timeout.
	for i, o := range msg {
		if _, err := c.Write([]byte{o}); err != nil {
			return // closed by the server, as it should be
		}
		if i > 0 && closedWithin(c, 400*time.Millisecond) {
			return
		}
	}
	t.Fatalf("a client sending %d octets one by one over %d s kept its connection", len(msg), len(msg)*400/1000)
}

// closedWithin reports whether the server closes c within d (a short wait
// that is also the test's pacing, not a threshold).
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	c.SetReadDeadline(time.Time{})
	return err != nil && !isTimeout(err)
}

// A client that keeps sending queries and never reads the replies is
// closed once a reply cannot be written for the idle timeout, instead of
// holding its slot while the server waits on each reply in turn.
func TestTCPStalledReaderClosed(t *testing.T) {
	_, addr := startTCP(t, time.Second, 0)
	c := dialFrom(t, "127.0.0.1", addr)
	b, _ := query("big.example.org.", dns.TypeTXT).Pack()
	one := binary.BigEndian.AppendUint16(nil, uint16(len(b)))
	one = append(one, b...)
	var burst []byte
	for range 100 {
		burst = append(burst, one...)
	}
	// Writing fills the replies' path first, then the queries' path; then
	// our write blocks. The server must give up on us within its idle
	// timeout and close, which ends our write with an error that is not
	// our own deadline. The 30 s bound is only for a broken server.
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	for {
		_, err := c.Write(burst)
		if err == nil {
			continue
		}
		if isTimeout(err) {
			t.Fatal("the server kept a connection that never reads its replies")
		}
		return
	}
}

// A client that sends a query just inside every idle timeout is closed
// once the connection has lived its maximum lifetime.
func TestTCPLifetime(t *testing.T) {
	idle := 300 * time.Millisecond
	_, addr := startTCP(t, idle, 0)
	c := dialFrom(t, "127.0.0.1", addr)
	// 100 rounds of idle/3 is 10 idle timeouts past the lifetime; the
	// server must close before then.
	for range 100 {
		if err := writeTCPErr(c, query("example.org.", dns.TypeA)); err != nil {
			return
		}
		if _, err := readTCPErr(c); err != nil {
			if isTimeout(err) {
				t.Fatal("no reply")
			}
			return // closed by the server
		}
		time.Sleep(idle / 3) // the pace of the client under test
	}
	t.Fatal("a connection that is never idle for long was kept forever")
}

func writeTCPErr(c net.Conn, m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...))
	return err
}

func readTCPErr(c net.Conn) (*dns.Msg, error) {
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	return m, m.Unpack(b)
}

// At the connection limit a new client is served and the connection idle
// the longest is closed to make room, so clients that open connections and
// sit on them cannot lock everyone else out.
func TestTCPEvictsLongestIdle(t *testing.T) {
	srv, addr := startTCP(t, time.Minute, 2)
	// Two clients in different /24 networks fill the two slots.
	old := dialFrom(t, "127.0.1.1", addr)
	writeTCP(t, old, query("example.org.", dns.TypeA))
	readTCP(t, old)
	recent := dialFrom(t, "127.0.2.1", addr)
	writeTCP(t, recent, query("example.org.", dns.TypeA))
	readTCP(t, recent)
	waitAllWaiting(t, srv) // recent's idle time starts before old's next query
	writeTCP(t, old, query("example.org.", dns.TypeA))
	readTCP(t, old)
	waitAllWaiting(t, srv) // now recent has been idle the longest
	// A third is served, and recent makes room for it.
	extra := dialFrom(t, "127.0.3.1", addr)
	writeTCP(t, extra, query("example.org.", dns.TypeA))
	if _, err := readTCPErr(extra); err != nil {
		t.Fatalf("a new client at the limit got no answer: %v", err)
	}
	if !closedByServer(recent) {
		t.Fatal("the longest-idle connection was not closed at the limit")
	}
	writeTCP(t, old, query("example.org.", dns.TypeA))
	readTCP(t, old) // the busier one is untouched
}

// One client network may hold only its share of the connections: its
// further connections take the place of its own idle ones, never another
// network's.
func TestTCPPerPrefixShare(t *testing.T) {
	srv, addr := startTCP(t, time.Minute, 16) // a share of 16/8 = 2 per network
	other := dialFrom(t, "127.0.1.1", addr)
	writeTCP(t, other, query("example.org.", dns.TypeA))
	readTCP(t, other)
	var mine []net.Conn
	for i := range 4 {
		c := dialFrom(t, fmt.Sprintf("127.0.2.%d", i+1), addr) // one /24
		writeTCP(t, c, query("example.org.", dns.TypeA))
		if _, err := readTCPErr(c); err != nil {
			t.Fatalf("connection %d of one network got no answer: %v", i, err)
		}
		// The reply can reach the client before the server marks the
		// connection idle again; until then it is not evictable.
		waitAllWaiting(t, srv)
		mine = append(mine, c)
	}
	for i, c := range mine[:2] {
		if !closedByServer(c) {
			t.Fatalf("connection %d of a network over its share was kept", i)
		}
	}
	for _, c := range append(mine[2:], other) {
		writeTCP(t, c, query("example.org.", dns.TypeA))
		readTCP(t, c)
	}
}

// SetTCPLimits applies while serving: a reload can lower the cap and the
// idle timeout without a restart.
func TestSetTCPLimitsWhileServing(t *testing.T) {
	srv, addr := startTCP(t, time.Minute, 16)
	var open []net.Conn
	for _, from := range []string{"127.0.1.1", "127.0.2.1"} {
		c := dialFrom(t, from, addr)
		writeTCP(t, c, query("example.org.", dns.TypeA))
		readTCP(t, c)
		open = append(open, c)
	}
	waitAllWaiting(t, srv) // see TestTCPPerPrefixShare
	srv.SetTCPLimits(time.Minute, 1)
	c := dialFrom(t, "127.0.3.1", addr)
	writeTCP(t, c, query("example.org.", dns.TypeA))
	readTCP(t, c)
	for i, o := range open {
		if !closedByServer(o) {
			t.Fatalf("connection %d kept after the cap was lowered to 1", i)
		}
	}
	srv.SetTCPLimits(300*time.Millisecond, 1)
	writeTCP(t, c, query("example.org.", dns.TypeA)) // its next wait has the new timeout
	readTCP(t, c)
	if !closedByServer(c) {
		t.Fatal("the idle timeout lowered to 300ms did not apply")
	}
}

func TestClientPrefix(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.77":         "192.0.2.0/24",
		"::ffff:192.0.2.77":  "192.0.2.0/24",
		"2001:db8:1:2ff::53": "2001:db8:1:200::/56",
		"fe80::1%eth0":       "fe80::/56",
	} {
		if got := clientPrefix(netip.MustParseAddr(addr)); got.String() != want {
			t.Errorf("clientPrefix(%s) = %s, want %s", addr, got, want)
		}
	}
}

// BenchmarkTCPExchange is one query and reply on an open TCP connection,
// server and client together; the server's buffers come from pools, so a
// query allocates nothing.
func BenchmarkTCPExchange(b *testing.B) {
	// An hour's idle timeout: the connection's lifetime outlasts any -benchtime.
	srv := &Server{Handler: NewHandler(testState(b), testLogger(b)), Addrs: []string{"127.0.0.1:0"}, TCPIdleTimeout: time.Hour}
	if err := srv.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	c, err := net.Dial("tcp", srv.BoundAddrs()[0].String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	q, _ := query("example.org.", dns.TypeA).Pack()
	msg := append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)
	buf := make([]byte, 65535)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:2]); err != nil {
			b.Fatal(err)
		}
		io.ReadFull(c, buf[:binary.BigEndian.Uint16(buf)])
	}
}
