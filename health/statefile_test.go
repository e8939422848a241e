package health_test

import (
	"context"

	"bytes"
	"github.com/prometheus/client_golang/prometheus"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// A farmdns restarted while Consul is down starts from the state file the
// previous run saved: full pools at once, marked as served from the file, and
// Consul's data takes over as soon as it answers.
func TestStateFileColdStart(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "s-n1", NodeAddress: "127.0.0.91", Service: "web", ID: "web-1", Port: 80})
	a.Register(t, consultest.Instance{Node: "s-n2", NodeAddress: "127.0.0.92", Service: "web", ID: "web-2", Port: 80})
	putReport(t, a, health.DefaultLoadPrefix, "web", "s-n1", "web-1", 7, 1, 0, time.Now())
	file := filepath.Join(t.TempDir(), "consul-state")
	cfg := health.WatcherConfig{Services: []health.ServiceConfig{{Name: "web"}}, StateFile: file}

	first, stopFirst := runWatcher(t, a.Client, cfg, nil)
	// The instances and the loads come in separate reads: wait for both,
	// or the file may be saved (on stop) without the report.
	waitSnapshot(t, first, "two targets, web-1 with its report", func(s *health.Snapshot) bool {
		tg := target(s, "web", "web-1")
		return len(s.Pool("web").Targets()) == 2 && tg != nil && tg.Load.Connections == 7
	})
	waitFor(t, "the state file saved", func() bool { return !first.StateFile().LastSave.IsZero() })
	if ws := first.Status(); ws.ServingSaved() {
		t.Error("a watcher that started without a file says it serves saved data")
	}
	stopFirst()
	a.Stop()

	// Restart with Consul down: the pools are there before any Consul answer.
	second, _ := runWatcher(t, a.Client, cfg, nil)
	snap := waitSnapshot(t, second, "the saved targets", func(s *health.Snapshot) bool { return len(s.Pool("web").Targets()) == 2 })
	if tg := target(snap, "web", "web-1"); tg == nil || tg.Load.Connections != 7 {
		t.Errorf("restored web-1: %+v, want its saved report of 7 connections", tg)
	}
	if !snap.Pool("web").Synced() {
		t.Error("a restored pool is not marked synced: the policy would treat it as empty")
	}
	st := second.Status()
	if !st.ServingSaved() || st.Restored.IsZero() {
		t.Errorf("status does not say the data comes from the state file: %+v", st)
	}
	if v := gaugeValue(t, second, "farmdns_consul_state_restored"); v != 1 {
		t.Errorf("farmdns_consul_state_restored = %v while serving the file, want 1", v)
	}

	// Consul comes back (a dev agent restarts empty) with one instance: its
	// data replaces the file's.
	a.Restart()
	a.Register(t, consultest.Instance{Node: "s-n1", NodeAddress: "127.0.0.91", Service: "web", ID: "web-1", Port: 80})
	waitSnapshot(t, second, "Consul's data", func(s *health.Snapshot) bool { return len(s.Pool("web").Targets()) == 1 })
	waitStatus(t, second, "synced and no longer serving the file", func(s *health.Status) bool { return !s.ServingSaved() })
	if v := gaugeValue(t, second, "farmdns_consul_state_restored"); v != 0 {
		t.Errorf("farmdns_consul_state_restored = %v after Consul answered, want 0", v)
	}
}

// A corrupt or foreign state file is ignored with a log line that says why;
// the watcher starts empty, as without a file.
func TestStateFileUntrusted(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "u-n1", NodeAddress: "127.0.0.93", Service: "web", ID: "web-1", Port: 80})
	file := filepath.Join(t.TempDir(), "consul-state")
	cfg := health.WatcherConfig{Services: []health.ServiceConfig{{Name: "web"}}, StateFile: file}
	w, stop := runWatcher(t, a.Client, cfg, nil)
	waitFor(t, "the state file saved", func() bool { return !w.StateFile().LastSave.IsZero() })
	stop()
	a.Stop()
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)-3] ^= 0x20
	for _, c := range []struct {
		name string
		b    []byte
		dc   string
		want string
	}{
		{"corrupt", corrupt, "", "checksum"},
		{"foreign", good, "elsewhere", "another farm"},
	} {
		if err := os.WriteFile(file, c.b, 0o600); err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		cfg := cfg
		cfg.Datacenter = c.dc
		w, stop := runWatcher(t, a.Client, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		waitStatus(t, w, "every data set failing", allFailing)
		if n := len(w.Snapshot().Pool("web").Targets()); n != 0 {
			t.Errorf("%s file: %d targets restored, want none", c.name, n)
		}
		if w.Status().ServingSaved() {
			t.Errorf("%s file: status says the file is served", c.name)
		}
		stop()
		if !strings.Contains(logs.String(), "ignoring the Consul state file") || !strings.Contains(logs.String(), c.want) {
			t.Errorf("%s file: log does not say it was ignored and why (%q):\n%s", c.name, c.want, logs.String())
		}
	}
}

// runWatcher runs a watcher until stop is called or the test ends.
func runWatcher(t *testing.T, client *api.Client, cfg health.WatcherConfig, log *slog.Logger) (*health.Watcher, func()) {
	t.Helper()
	if log == nil {
		log = testLogger(t)
	}
	w, err := health.NewWatcher(cfg, client, log)
	if err != nil {
		t.Fatal(err)
	}
	stop := startRun(t, w)
	return w, stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRun runs w; the returned stop (also called when the test ends) cancels
// Run and waits for it, so a stopped watcher has written its last state.
func startRun(t *testing.T, w *health.Watcher) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
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
	}
	t.Cleanup(stop)
	return stop
}

// gaugeValue reads one unlabelled gauge from the watcher's collector.
func gaugeValue(t *testing.T, w *health.Watcher, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(w.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not collected", name)
	return 0
}
