package main

import (
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health/consultest"
)

// A farmdns restarted while Consul is down answers its pools from the state
// file the previous run saved, and says so on /status and in the metrics.
func TestColdStartFromStateFile(t *testing.T) {
	a := consultest.Start(t)
	for i := 1; i <= 3; i++ {
		registerNode(t, a, i, 100)
	}
	path := writeConfig(t, fmt.Sprintf(`dns:
  listen: ["127.0.0.1:0"]
http:
  listen: "127.0.0.1:0"
consul:
  address: %q
  state_file: consul-state
zones:
  - origin: farm.example.com.
    file: farm.zone
    pools:
      - name: "@"
        service: ws
        slow_start: 0s
`, a.Addr), goodZone)
	state := filepath.Join(filepath.Dir(path), "consul-state")

	first, stopFirst := runServer(t, path)
	f := &farm{consul: a, srv: first, dns: first.dns.BoundAddrs()[0].String()}
	eventually(t, 15*time.Second, "pool filled from Consul", func() bool { return len(f.ask(t, 1)) > 0 })
	eventually(t, 15*time.Second, "state file written", func() bool { _, err := os.Stat(state); return err == nil })
	stopFirst()
	a.Stop()

	second, _ := runServer(t, path)
	f = &farm{consul: a, srv: second, dns: second.dns.BoundAddrs()[0].String()}
	if got := f.ask(t, 2); len(got) == 0 {
		t.Fatal("restarted without Consul: the pool is empty although the state file holds its targets")
	}
	page := serveGet(t, second, "/status.json")
	if !strings.Contains(page, `"serving_saved_state": true`) {
		t.Errorf("/status.json does not say the pools come from the state file:\n%s", page)
	}
	if m := serveGet(t, second, "/metrics"); !strings.Contains(m, "farmdns_consul_state_restored 1") {
		t.Errorf("metrics lack farmdns_consul_state_restored 1:\n%s", m)
	}
}

// serveGet serves one GET through the server's HTTP handler.
func serveGet(t *testing.T, s *server, path string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.httpHandler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Body.String()
}
