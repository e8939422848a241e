package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/farmdns/farmdns/health"
)

// watch is a running Consul watcher feeding the handler's pools.
type watch struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// watchKey says what a watcher is started for; a reload that changes it
// needs a new watcher.
func watchKey(c *Config) string {
	if !c.hasPools() {
		return ""
	}
	b, _ := json.Marshal(struct {
		C health.ConsulConfig
		W health.WatcherConfig
	}{c.Consul.ConsulConfig, c.watcherConfig()})
	return string(b)
}

// startWatch starts watching Consul for cfg's pools; without pools, Consul is
// not needed and nothing starts. It does not wait for Consul: the pools fill
// as soon as it answers, and static records are served meanwhile.
func (s *server) startWatch(cfg *Config) error {
	if !cfg.hasPools() {
		return nil
	}
	client, err := cfg.Consul.Client()
	if err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	w, err := health.NewWatcher(cfg.watcherConfig(), client, s.log)
	if err != nil {
		return err
	}
	// Serve the first snapshot (from the state file, if any) before the
	// first query can arrive.
	s.handler.UpdatePools(w.Snapshot())
	ctx, cancel := context.WithCancel(s.ctx)
	wt := &watch{cancel: cancel, done: make(chan struct{})}
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		w.Run(ctx)
	}()
	go func() {
		defer close(wt.done)
		defer func() { <-ran }()
		for {
			snap := w.Snapshot()
			s.handler.UpdatePools(snap)
			select {
			case <-snap.Superseded():
			case <-ctx.Done():
				return
			}
		}
	}()
	s.watch = wt
	s.watcher.Store(w)
	return nil
}

func (s *server) stopWatch() {
	if s.watch != nil {
		s.watch.cancel()
		<-s.watch.done
		s.watch = nil
		s.watcher.Store(nil)
	}
}

// watcherCollector exposes the current watcher's metrics, whichever it is.
type watcherCollector struct{ s *server }

// Describe sends nothing: the set of series depends on the watcher running,
// so the collector is an unchecked one.
func (watcherCollector) Describe(chan<- *prometheus.Desc) {}

func (c watcherCollector) Collect(ch chan<- prometheus.Metric) {
	if w := c.s.watcher.Load(); w != nil {
		w.Collector().Collect(ch)
	}
}
