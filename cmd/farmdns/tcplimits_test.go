package main

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// A reload applies dns.max_tcp_connections and dns.tcp_idle_timeout to the
// running server: lowering the cap closes connections beyond it.
func TestReloadAppliesTCPLimits(t *testing.T) {
	config := func(maxConns int) string {
		return strings.Replace(baseConfig, "dns:\n", "dns:\n  tcp_idle_timeout: 1m\n  max_tcp_connections: "+strconv.Itoa(maxConns)+"\n", 1)
	}
	path := writeConfig(t, config(16), goodZone)
	cfg, st, err := load(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(path, cfg, st, slog.New(slog.DiscardHandler))
	if err := srv.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.web.Close()
		srv.dns.Shutdown(context.Background())
	}()
	addr := srv.dns.BoundAddrs()[0].String()
	ask := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		b, _ := new(dns.Msg).SetQuestion("www.farm.example.com.", dns.TypeA).Pack()
		c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...))
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("no answer over TCP from %s: %v", from, err)
		}
		io.ReadFull(c, make([]byte, binary.BigEndian.Uint16(l[:])))
		return c
	}
	// Different /24 networks, so only the overall cap matters.
	first, second := ask("127.0.1.1"), ask("127.0.2.1")
	if err := os.WriteFile(path, []byte(config(1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.reload(); err != nil {
		t.Fatal(err)
	}
	ask("127.0.3.1")
	for i, c := range []net.Conn{first, second} {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Fatalf("connection %d kept after max_tcp_connections was reloaded as 1", i+1)
		}
	}
}

func TestTCPConfigErrors(t *testing.T) {
	dnsKey := func(line string) string { return strings.Replace(baseConfig, "dns:\n", "dns:\n  "+line+"\n", 1) }
	for config, want := range map[string]string{
		dnsKey("tcp_idle_timeout: -1s"):        "dns.tcp_idle_timeout: -1s is not between 1s and 10m0s",
		dnsKey("tcp_idle_timeout: 10ms"):       "dns.tcp_idle_timeout: 10ms is not between 1s and 10m0s",
		dnsKey("tcp_idle_timeout: 1h"):         "dns.tcp_idle_timeout: 1h0m0s is not between 1s and 10m0s",
		dnsKey("max_tcp_connections: -5"):      "dns.max_tcp_connections: -5 is not between 1 and 1000000",
		dnsKey("max_tcp_connections: 2000000"): "dns.max_tcp_connections: 2000000 is not between 1 and 1000000",
		dnsKey("tcp_idle_timeout: 1s"):         "",
		dnsKey("max_tcp_connections: 1"):       "",
	} {
		_, err := loadConfig(writeConfig(t, config, goodZone))
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%q: error %v, want %q", config[:strings.Index(config, "\nhttp")], err, want)
		}
	}
}
