package dnsserver

import (
	"context"
	"log/slog"
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
