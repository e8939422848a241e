package dnsserver

import (
	"context"
	"encoding/binary"
	"io"
	"net"
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
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	return m
}

// closedByServer reports whether the server closes c within a few seconds:
// the read ends with EOF or a reset, not with our deadline.
func closedByServer(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !isTimeout(err)
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

func TestTCPConnectionLimit(t *testing.T) {
	srv := &Server{Handler: NewHandler(testState(t), testLogger(t)), Addrs: []string{"127.0.0.1:0"}, MaxTCPConns: 2}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	addr := srv.BoundAddrs()[0].String()
	var conns []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		writeTCP(t, c, query("example.org.", dns.TypeA))
		readTCP(t, c) // the server has taken it
		conns = append(conns, c)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !closedByServer(extra) {
		t.Fatal("a connection over the limit was kept")
	}
	writeTCP(t, conns[0], query("example.org.", dns.TypeA))
	readTCP(t, conns[0]) // the ones under the limit still work
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
