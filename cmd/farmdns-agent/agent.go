package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/farmdns/farmdns/cmd/internal/adminhttp"
	"github.com/farmdns/farmdns/health"
)

// consulTimeout bounds every Consul request, so that a black-holed Consul
// delays the next write but never wedges the agent.
const consulTimeout = 5 * time.Second

// finalTimeout bounds the last requests of a drain (deregister, delete).
const finalTimeout = 10 * time.Second

// sample is one successful count.
type sample struct {
	conns, accepted int64
	at              time.Time
}

// reportStatus is what the reporting side last knew, for /healthz.
type reportStatus struct {
	// Node and ServiceID are the resolved identity ("" until Consul answers).
	Node string `json:"node,omitempty"`
	// ServiceID is the instance whose load is reported.
	ServiceID string `json:"service_id,omitempty"`
	// Consul is unknown, ok or failing.
	Consul string `json:"consul"`
	// LastWrite is when the last load report was written.
	LastWrite time.Time `json:"last_write,omitzero"`
	// Draining is true once a drain has been requested.
	Draining bool `json:"draining"`
}

// Agent counts connections and reports them to Consul. Create it with
// newAgent and call Run once.
type Agent struct {
	cfg *settings
	log *slog.Logger
	src source
	rep *health.Reporter
	m   *metrics

	latest    atomic.Pointer[sample]       // last successful count
	countErr  atomic.Pointer[string]       // last count error, nil after a success
	status    atomic.Pointer[reportStatus] // reporting side's state
	counted   chan struct{}                // a new sample is in latest (capacity 1)
	drainReqs chan bool                    // true: finish the drain now
	guard     *adminhttp.Guard             // in front of POST /drain
	asked     atomic.Bool                  // a drain was requested over HTTP
}

// newAgent wires an agent; it starts nothing.
func newAgent(cfg *settings, log *slog.Logger, src source, rep *health.Reporter, m *metrics) *Agent {
	a := &Agent{
		cfg: cfg, log: log, src: src, rep: rep, m: m,
		counted:   make(chan struct{}, 1),
		drainReqs: make(chan bool, 4),
		guard:     adminhttp.NewGuard(cfg.httpToken, log),
	}
	a.status.Store(&reportStatus{Consul: "unknown", ServiceID: cfg.serviceID, Node: cfg.node})
	m.info.WithLabelValues(cfg.service, src.name()).Set(1)
	return a
}

// RequestDrain asks a running agent to drain: put the instance in
// maintenance, keep reporting while connections bleed off, deregister, and
// make Run return nil. With now, an ongoing drain stops waiting for
// connections and finishes at once. It never blocks.
func (a *Agent) RequestDrain(now bool) {
	select {
	case a.drainReqs <- now:
	default: // plenty already queued
	}
}

// Run counts and reports until ctx is cancelled (returning at once, without
// draining) or a requested drain has finished (returning nil).
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.countLoop(ctx)
	}()
	err := a.reportLoop(ctx)
	cancel()
	wg.Wait()
	return err
}

// countLoop counts every interval. It never touches Consul, so an outage
// never delays counting.
func (a *Agent) countLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.interval)
	defer t.Stop()
	failing := false
	for {
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, a.cfg.interval+countTimeoutSlack(a.cfg))
		conns, acc, err := a.src.count(cctx)
		cancel()
		a.m.countDuration.Observe(time.Since(start).Seconds())
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			a.m.countErrors.Inc()
			msg := err.Error()
			a.countErr.Store(&msg)
			if !failing {
				a.log.Warn("counting failed; keeping the last count", "source", a.src.name(), "err", err)
			} else {
				a.log.Debug("counting still failing", "err", err)
			}
			failing = true
		default:
			if failing {
				a.log.Info("counting works again", "source", a.src.name(), "connections", conns)
			}
			failing = false
			a.countErr.Store(nil)
			a.latest.Store(&sample{conns: conns, accepted: acc, at: start})
			a.m.connections.Set(float64(conns))
			a.m.accepted.Store(acc)
			select {
			case a.counted <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// countTimeoutSlack lets an HTTP scrape use its own timeout when it is longer
// than the interval (the ticker then simply skips beats).
func countTimeoutSlack(cfg *settings) time.Duration {
	if cfg.httpSrc != nil && cfg.httpSrc.Timeout > cfg.interval {
		return cfg.httpSrc.Timeout - cfg.interval
	}
	return 0
}

// reporter is the reporting side's state, owned by reportLoop.
type reporter struct {
	node, id   string // resolved identity; id == "" until then
	startedUp  bool   // our stale maintenance (if any) lifted, instance registered
	registered bool
	nextRegChk time.Time
	nextTTL    time.Time

	draining      bool
	finishNow     bool
	drainDeadline time.Time
	maintenance   bool // maintenance mode on (or not applicable)

	failures int
	retryAt  time.Time
	damper   damper
	lastPut  time.Time
}

func (a *Agent) reportLoop(ctx context.Context) error {
	st := &reporter{damper: damper{policy: a.cfg.damping}, node: a.cfg.node}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.counted:
		case <-timer.C:
		case now := <-a.drainReqs:
			a.startDrain(st, now)
		}
		now := time.Now()
		if done := a.step(ctx, st, now); done {
			a.finishDrain(ctx, st)
			return nil
		}
		a.publish(st)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(a.nextWake(st, time.Now()))
	}
}

func (a *Agent) startDrain(st *reporter, now bool) {
	if !st.draining {
		st.draining = true
		st.drainDeadline = time.Now().Add(a.cfg.grace)
		a.m.draining.Set(1)
		a.log.Info("draining: maintenance mode on, then waiting for connections to bleed off",
			"grace", a.cfg.grace, "until", a.cfg.drainUntil)
	}
	if now && !st.finishNow {
		st.finishNow = true
		a.log.Info("draining: finishing now without waiting for connections")
	}
}

// step does whatever Consul work is due at now, in order: identity, start-up
// (registration), TTL check, maintenance, load report. It reports whether a
// drain is complete. After a failure everything waits for the backoff.
func (a *Agent) step(ctx context.Context, st *reporter, now time.Time) (drained bool) {
	if st.draining && a.drainComplete(st, now) {
		return true
	}
	if st.failures > 0 && now.Before(st.retryAt) {
		return false
	}
	if st.id == "" {
		if err := a.resolveIdentity(ctx, st); err != nil {
			a.fail(st, now, opNode, err)
			return false
		}
	}
	// A drain requested before Consul ever answered must not register the
	// instance first.
	if !st.startedUp && !st.draining {
		if err := a.startUp(ctx, st, now); err != nil {
			return false
		}
	}
	if a.cfg.register && !st.draining && now.After(st.nextRegChk) {
		if err := a.checkRegistration(ctx, st, now); err != nil {
			return false
		}
	}
	if a.cfg.register && a.cfg.ttl > 0 && st.registered && !now.Before(st.nextTTL) {
		if err := a.passTTL(ctx, st, now); err != nil {
			return false
		}
	}
	if st.draining && !st.maintenance {
		if err := a.enableMaintenance(ctx, st, now); err != nil {
			return false
		}
	}
	if s := a.latest.Load(); s != nil {
		if reason, ok := st.damper.due(now, s.conns); ok {
			if err := a.put(ctx, st, now, s, reason); err != nil {
				return false
			}
		}
	}
	return st.draining && a.drainComplete(st, now)
}

// drainComplete: maintenance is on and the connections are gone, or the
// grace period is over (even if Consul never answered), or we were told so.
func (a *Agent) drainComplete(st *reporter, now time.Time) bool {
	if st.finishNow || !now.Before(st.drainDeadline) {
		return true
	}
	s := a.latest.Load()
	return st.maintenance && s != nil && s.conns <= a.cfg.drainUntil
}

func (a *Agent) resolveIdentity(ctx context.Context, st *reporter) error {
	if st.node == "" {
		cctx, cancel := context.WithTimeout(ctx, consulTimeout)
		node, err := a.rep.NodeName(cctx)
		cancel()
		switch {
		case errors.Is(err, health.ErrDenied):
			h, herr := os.Hostname()
			if herr != nil {
				return fmt.Errorf("service.node: Consul denies reading the agent's node name (%v) and the hostname is unknown: %w", err, herr)
			}
			a.log.Warn("Consul denies reading the agent's node name; using the hostname (set service.node to silence this)", "node", h)
			node = h
		case err != nil:
			return err
		}
		st.node = node
	}
	st.id = a.cfg.serviceID
	if st.id == "" {
		st.id = a.cfg.service + "-" + st.node
	}
	a.log.Info("reporting", "service", a.cfg.service, "service_id", st.id, "node", st.node,
		"key", health.LoadKey(a.cfg.prefix, a.cfg.service, st.node, st.id), "source", a.src.name())
	return nil
}

// startUp registers the instance (when asked to) and lifts a maintenance
// mode left by an earlier drain of ours that did not finish.
func (a *Agent) startUp(ctx context.Context, st *reporter, now time.Time) error {
	if a.cfg.register {
		if err := a.register(ctx, st, now); err != nil {
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, consulTimeout)
	lifted, err := a.rep.DisableOwnMaintenance(cctx, st.id)
	cancel()
	switch {
	case errors.Is(err, health.ErrDenied):
		// A token limited to writing load reports may not read the
		// agent's checks; reporting matters more than this tidy-up.
		a.log.Warn("cannot check for a maintenance mode left by an earlier drain", "err", err)
	case err != nil:
		a.fail(st, now, opMaintenance, err)
		return err
	case lifted:
		a.log.Info("lifted the maintenance mode left by an earlier drain", "service_id", st.id)
	}
	a.succeed(st, now)
	st.startedUp = true
	return nil
}

func (a *Agent) register(ctx context.Context, st *reporter, now time.Time) error {
	in := health.Instance{
		Service: a.cfg.service, ID: st.id, Address: a.cfg.address, Port: a.cfg.port,
		Tags: a.cfg.tags, Meta: a.cfg.meta, Check: a.cfg.check,
	}
	cctx, cancel := context.WithTimeout(ctx, consulTimeout)
	err := a.rep.Register(cctx, in)
	cancel()
	if err != nil {
		a.fail(st, now, opRegister, err)
		return err
	}
	a.succeed(st, now)
	a.log.Info("registered the service instance", "service_id", st.id)
	st.registered = true
	st.nextRegChk = now.Add(a.cfg.damping.heartbeat)
	st.nextTTL = now // pass the new (critical) TTL check at once
	return nil
}

// checkRegistration re-registers the instance if the Consul agent lost it
// (an agent restarted without its data directory, say).
func (a *Agent) checkRegistration(ctx context.Context, st *reporter, now time.Time) error {
	if st.registered {
		cctx, cancel := context.WithTimeout(ctx, consulTimeout)
		ok, err := a.rep.Registered(cctx, st.id)
		cancel()
		if err != nil {
			a.fail(st, now, opRegister, err)
			return err
		}
		st.nextRegChk = now.Add(a.cfg.damping.heartbeat)
		if ok {
			return nil
		}
		a.log.Warn("the Consul agent lost the service instance; registering it again", "service_id", st.id)
		st.registered = false
	}
	return a.register(ctx, st, now)
}

// passTTL keeps the TTL check passing while counting works, and turns it
// critical when counting has failed for three intervals.
func (a *Agent) passTTL(ctx context.Context, st *reporter, now time.Time) error {
	ok, note := true, "farmdns-agent is counting"
	if s := a.latest.Load(); s == nil || now.Sub(s.at) > 3*a.cfg.interval {
		ok, note = false, "farmdns-agent cannot count connections"
		if e := a.countErr.Load(); e != nil {
			note += ": " + *e
		}
	}
	cctx, cancel := context.WithTimeout(ctx, consulTimeout)
	err := a.rep.SetTTL(cctx, st.id, ok, note)
	cancel()
	if errors.Is(err, health.ErrNotRegistered) {
		// Consul answers but lost the instance: not an outage. Register
		// again (unless draining), and pass the new check after that.
		a.succeed(st, now)
		st.registered = false
		st.nextRegChk = time.Time{}
		return nil
	}
	if err != nil {
		a.fail(st, now, opTTL, err)
		return err
	}
	a.succeed(st, now)
	st.nextTTL = now.Add(a.cfg.ttl / 3)
	return nil
}

func (a *Agent) enableMaintenance(ctx context.Context, st *reporter, now time.Time) error {
	cctx, cancel := context.WithTimeout(ctx, consulTimeout)
	err := a.rep.EnableMaintenance(cctx, st.id, "draining")
	cancel()
	if errors.Is(err, health.ErrNotRegistered) {
		// Nothing to take out of rotation on this agent (register is false
		// and the instance lives elsewhere); just report while draining.
		a.log.Warn("draining: the local Consul agent does not know the instance; no maintenance mode", "service_id", st.id)
		st.maintenance = true
		return nil
	}
	if err != nil {
		a.fail(st, now, opMaintenance, err)
		return err
	}
	a.succeed(st, now)
	a.log.Info("draining: instance in maintenance mode", "service_id", st.id)
	st.maintenance = true
	return nil
}

func (a *Agent) put(ctx context.Context, st *reporter, now time.Time, s *sample, reason string) error {
	rep := health.LoadReport{Connections: s.conns, Accepted: s.accepted, Capacity: a.cfg.capacity, Updated: s.at.UTC()}
	cctx, cancel := context.WithTimeout(ctx, consulTimeout)
	err := a.rep.PutLoad(cctx, a.cfg.service, st.node, st.id, rep)
	cancel()
	if err != nil {
		a.m.writeErrors.Inc()
		a.fail(st, now, opPut, err)
		return err
	}
	a.succeed(st, now)
	st.damper.wrote(now, s.conns)
	st.lastPut = now
	a.m.writes.WithLabelValues(reason).Inc()
	a.m.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
	a.log.Debug("load report written", "reason", reason, "connections", s.conns, "accepted", s.accepted)
	return nil
}

// finishDrain deregisters the instance (when the agent registered it) and
// removes its load report. Failures are logged, not returned: the instance
// is already out of rotation, and its check removes it if we could not.
func (a *Agent) finishDrain(ctx context.Context, st *reporter) {
	if st.id == "" {
		a.log.Warn("drain finished before Consul ever answered; nothing to deregister")
		return
	}
	// The parent context may be cancelled by now (a second signal): the
	// final requests get their own bound.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalTimeout)
	defer cancel()
	if a.cfg.register {
		if err := a.rep.Deregister(ctx, st.id); err != nil {
			a.m.consulErrors.WithLabelValues(opDeregister).Inc()
			a.log.Error("draining: deregistration failed; the health check will remove the instance", "service_id", st.id, "err", err)
		} else {
			a.log.Info("draining: instance deregistered", "service_id", st.id)
		}
	} else if st.maintenance {
		a.log.Info("draining: instance left in maintenance mode (service.register is false); the next start of the agent lifts it", "service_id", st.id)
	}
	if err := a.rep.DeleteLoad(ctx, a.cfg.service, st.node, st.id); err != nil {
		a.m.consulErrors.WithLabelValues(opDelete).Inc()
		a.log.Error("draining: could not delete the load report", "err", err)
	}
	a.log.Info("drained")
}

// fail records a failed Consul request and schedules the retry, with
// exponential backoff and jitter so that a fleet does not retry in step.
func (a *Agent) fail(st *reporter, now time.Time, op string, err error) {
	st.failures++
	st.retryAt = now.Add(backoff(st.failures, a.cfg.damping.heartbeat))
	a.m.consulErrors.WithLabelValues(op).Inc()
	a.m.consulUp.Set(0)
	if st.failures == 1 {
		a.log.Warn("Consul request failed; counting goes on, retrying with backoff", "op", op, "err", err)
	} else {
		a.log.Debug("Consul request failed again", "op", op, "failures", st.failures, "err", err)
	}
}

func (a *Agent) succeed(st *reporter, now time.Time) {
	if st.failures > 0 {
		a.log.Info("Consul answers again", "after_failures", st.failures)
		// The agent may have restarted and lost the registration.
		st.nextRegChk = time.Time{}
	}
	st.failures = 0
	a.m.consulUp.Set(1)
}

// backoff returns the wait after the n-th consecutive failure: 500ms doubling
// up to min(heartbeat, 30s), each with +-20% jitter.
func backoff(n int, heartbeat time.Duration) time.Duration {
	limit := min(heartbeat, 30*time.Second)
	d := 500 * time.Millisecond
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// nextWake is when reportLoop must look again without a new count: the
// retry, heartbeat, TTL or drain deadline, whichever is first, and at least
// every interval.
func (a *Agent) nextWake(st *reporter, now time.Time) time.Duration {
	next := now.Add(a.cfg.interval)
	earlier := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	if st.failures > 0 {
		earlier(st.retryAt)
	} else {
		if s := a.latest.Load(); s != nil {
			earlier(st.damper.next(s.conns))
		}
		if a.cfg.register && a.cfg.ttl > 0 && st.registered {
			earlier(st.nextTTL)
		}
	}
	if st.draining {
		earlier(st.drainDeadline)
	}
	return max(next.Sub(now), time.Millisecond)
}

func (a *Agent) publish(st *reporter) {
	s := &reportStatus{Node: st.node, ServiceID: st.id, Draining: st.draining, LastWrite: st.lastPut, Consul: "ok"}
	switch {
	case st.failures > 0:
		s.Consul = "failing"
	case st.lastPut.IsZero() && !st.startedUp:
		s.Consul = "unknown"
	}
	a.status.Store(s)
}
