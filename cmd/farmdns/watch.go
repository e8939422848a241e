package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/farmdns/farmdns/health"
)

// watch is a running Consul watcher feeding the handler's pools.
type watch struct {
	w      *health.Watcher
	key    string // watchKey of the config it was built for
	cancel context.CancelFunc
	done   chan struct{} // closed once the watcher and its feed have stopped
}

// running reports whether the watcher still feeds the pools.
func (wt *watch) running() bool {
	select {
	case <-wt.done:
		return false
	default:
		return true
	}
}

func (wt *watch) stop() {
	wt.cancel()
	<-wt.done
}

// watchKey says what a watcher is built for: what it watches and how it
// reaches Consul, with the token and TLS files by content, so that a token or
// certificate rotated in place is picked up by a reload. A reload that
// changes it needs a new watcher.
func watchKey(c *Config) string {
	if !c.hasPools() {
		return ""
	}
	h := sha256.New()
	json.NewEncoder(h).Encode(struct {
		C health.ConsulConfig
		W health.WatcherConfig
	}{c.Consul.ConsulConfig, c.watcherConfig()})
	for _, f := range []string{c.Consul.TokenFile, c.Consul.TLS.CAFile, c.Consul.TLS.CertFile, c.Consul.TLS.KeyFile} {
		if f != "" {
			b, _ := os.ReadFile(f) // unreadable files fail the build that follows
			fmt.Fprintf(h, "%d:", len(b))
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// newWatcher builds, without starting it or contacting Consul, the watcher
// cfg's pools need, and returns it with its watchKey; without pools, nil.
func newWatcher(cfg *Config, log *slog.Logger) (*health.Watcher, string, error) {
	if !cfg.hasPools() {
		return nil, "", nil
	}
	// The key is taken before the client reads the files: a file rotated in
	// between shows as a change at the next reload instead of going unseen.
	key := watchKey(cfg)
	client, err := cfg.Consul.Client()
	if err != nil {
		return nil, "", fmt.Errorf("consul: %w", err)
	}
	w, err := health.NewWatcher(cfg.watcherConfig(), client, log)
	if err != nil {
		return nil, "", fmt.Errorf("consul: %w", err)
	}
	return w, key, nil
}

// startWatch starts w feeding the pools, then stops the watcher it replaces;
// a nil w just stops the current one. It does not wait for Consul: the pools
// keep their targets until the new watcher has synced, and static records are
// served meanwhile.
func (s *server) startWatch(w *health.Watcher, key string) {
	old := s.watch.Load()
	if w == nil {
		if old != nil {
			old.stop()
			s.watch.Store(nil)
		}
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	wt := &watch{w: w, key: key, cancel: cancel, done: make(chan struct{})}
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		if err := w.Run(ctx); err != nil {
			s.log.Error("Consul watcher stopped", "err", err)
		}
	}()
	s.watch.Store(wt)
	// The old feed stops before the new one starts, so that no snapshot of
	// the old watcher lands after one of the new.
	if old != nil {
		old.stop()
	}
	// Serve the first snapshot (from the state file, if any) before the
	// first query can arrive.
	s.handler.UpdatePools(w.Snapshot())
	go func() {
		defer close(wt.done)
		defer func() { cancel(); <-ran }()
		for {
			snap := w.Snapshot()
			s.handler.UpdatePools(snap)
			select {
			case <-snap.Superseded():
			case <-ran:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
}

func (s *server) stopWatch() { s.startWatch(nil, "") }

// currentWatcher returns the current Consul watcher, nil without pools.
func (s *server) currentWatcher() *health.Watcher {
	if wt := s.watch.Load(); wt != nil {
		return wt.w
	}
	return nil
}

// watcherCollector exposes the current watcher's metrics, whichever it is.
type watcherCollector struct{ s *server }

// Describe sends nothing: the set of series depends on the watcher running,
// so the collector is an unchecked one.
func (watcherCollector) Describe(chan<- *prometheus.Desc) {}

func (c watcherCollector) Collect(ch chan<- prometheus.Metric) {
	if w := c.s.currentWatcher(); w != nil {
		w.Collector().Collect(ch)
	}
}
