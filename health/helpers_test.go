package health_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// waitTimeout bounds every wait for the watcher to show a change. The watcher
// promises a change within a second; the slack covers a loaded CI machine.
const waitTimeout = 10 * time.Second

// testLogger logs through t at debug level when -v is set, so a failing test
// shows what the watcher saw.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b[:len(b)-1]))
	return len(b), nil
}

// startWatcher runs a watcher until the test ends.
func startWatcher(t testing.TB, client *api.Client, cfg health.WatcherConfig) *health.Watcher {
	t.Helper()
	w, err := health.NewWatcher(cfg, client, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Error("Run did not return after its context was cancelled")
		}
	})
	return w
}

// waitSnapshot waits, without polling, until cond holds for a published
// snapshot, and fails the test after waitTimeout.
func waitSnapshot(t testing.TB, w *health.Watcher, what string, cond func(*health.Snapshot) bool) *health.Snapshot {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for s := w.Snapshot(); ; s = w.Snapshot() {
		if cond(s) {
			return s
		}
		select {
		case <-s.Superseded():
		case <-deadline.C:
			t.Fatalf("after %v: %s; last snapshot (generation %d):\n%s", waitTimeout, what, s.Generation(), dump(s))
		}
	}
}

// waitStatus polls the status (it changes without a new snapshot) until cond holds.
func waitStatus(t testing.TB, w *health.Watcher, what string, cond func(*health.Status) bool) *health.Status {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		st := w.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s; status: %+v", waitTimeout, what, st.DataSets)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dump(s *health.Snapshot) string {
	out := ""
	for _, p := range s.Pools() {
		out += fmt.Sprintf("  pool %s synced=%v %+v\n", p.Name(), p.Synced(), p.Counts())
		for _, t := range p.Targets() {
			out += fmt.Sprintf("    %s/%s %v:%d %v draining=%v load=%+v\n", t.Node, t.ServiceID, t.Address, t.Port, t.Health, t.Draining, t.Load)
		}
	}
	return out
}

// target finds a target by service ID, nil if absent.
func target(s *health.Snapshot, service, id string) *health.Target {
	p := s.Pool(service)
	if p == nil {
		return nil
	}
	for i := range p.Targets() {
		if p.Targets()[i].ServiceID == id {
			return &p.Targets()[i]
		}
	}
	return nil
}

// targetIs returns a snapshot condition on one target, false while it is absent.
func targetIs(service, id string, cond func(*health.Target) bool) func(*health.Snapshot) bool {
	return func(s *health.Snapshot) bool {
		t := target(s, service, id)
		return t != nil && cond(t)
	}
}

func reportJSON(conns, accepted, capacity int64, updated time.Time) []byte {
	return fmt.Appendf(nil, `{"connections":%d,"accepted":%d,"capacity":%d,"updated":%q}`,
		conns, accepted, capacity, updated.UTC().Format(time.RFC3339Nano))
}

func putReport(t testing.TB, a *consultest.Agent, prefix, service, node, id string, conns, accepted, capacity int64, updated time.Time) {
	t.Helper()
	a.PutKV(t, health.LoadKey(prefix, service, node, id), reportJSON(conns, accepted, capacity, updated))
}

func writeToken(t testing.TB, token string) string {
	t.Helper()
	p := t.TempDir() + "/token"
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
