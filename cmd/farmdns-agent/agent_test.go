package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/farmdns/farmdns/cmd/internal/adminhttp"
	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
)

// waitBound bounds every wait in these tests.
const waitBound = 15 * time.Second

// waitFor polls cond until it holds or waitBound passes. What it waits for
// is an observable state, never an amount of time.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitBound)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("after %v still waiting for %s; last state: %s", waitBound, what, last)
		}
		time.Sleep(20 * time.Millisecond) // polling period, not a correctness sleep
	}
}

// tcpServer is the "application": a loopback listener whose connections the
// test opens and closes one by one.
type tcpServer struct {
	t    *testing.T
	ln   net.Listener
	port int
	open []net.Conn // server-side ends
}

func newTCPServer(t *testing.T) *tcpServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{t: t, ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
	t.Cleanup(func() {
		ln.Close()
		s.closeN(len(s.open))
	})
	return s
}

// dial opens n connections and accepts them.
func (s *tcpServer) dial(n int) {
	s.t.Helper()
	for range n {
		c, err := net.Dial("tcp4", s.ln.Addr().String())
		if err != nil {
			s.t.Fatal(err)
		}
		s.t.Cleanup(func() { c.Close() })
		sc, err := s.ln.Accept()
		if err != nil {
			s.t.Fatal(err)
		}
		s.open = append(s.open, sc)
	}
}

// closeN closes n server-side ends; the kernel drops them from ESTABLISHED
// inside close(2).
func (s *tcpServer) closeN(n int) {
	for _, c := range s.open[:n] {
		c.Close()
	}
	s.open = s.open[n:]
}

// putLog is an http.RoundTripper in front of the agent's Consul client that
// records every successful load report write, so tests count writes from
// the wire, not from the agent's own bookkeeping.
type putLog struct {
	base   http.RoundTripper
	prefix string
	mu     sync.Mutex
	times  []time.Time
}

func (p *putLog) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := p.base.RoundTrip(r)
	if err == nil && r.Method == http.MethodPut && resp.StatusCode == http.StatusOK &&
		strings.HasPrefix(r.URL.Path, "/v1/kv/"+p.prefix+"/") {
		p.mu.Lock()
		p.times = append(p.times, time.Now())
		p.mu.Unlock()
	}
	return resp, err
}

func (p *putLog) writes() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.times...)
}

// harness runs one Agent against a real Consul.
type harness struct {
	t      *testing.T
	consul *consultest.Agent
	app    *tcpServer
	cfg    *settings
	agent  *Agent
	reg    *prometheus.Registry
	puts   *putLog
	cancel context.CancelFunc
	done   chan error
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// baseConfig is a fast-running configuration for tests; the default node
// name comes from the Consul agent.
func baseConfig(consulAddr string, port int) Config {
	return Config{
		Consul:  health.ConsulConfig{Address: consulAddr},
		Service: ServiceConfig{Name: "ws", Port: port, Capacity: 100, Register: true, Meta: map[string]string{"shard": "s1"}},
		Count:   CountConfig{Ports: []int{port}},
		Report:  ReportConfig{Interval: 100 * time.Millisecond, Heartbeat: 2 * time.Second, MinChange: "1", MinInterval: 100 * time.Millisecond},
		HTTP:    HTTPConfig{Listen: "off"},
	}
}

func newHarness(t *testing.T, consul *consultest.Agent, mutate func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, consul: consul, app: newTCPServer(t)}
	c := baseConfig(consul.Addr, h.app.port)
	if mutate != nil {
		mutate(&c)
	}
	cfg, err := c.validate()
	if err != nil {
		t.Fatal(err)
	}
	h.cfg = cfg
	apiCfg, err := cfg.consul.APIConfig()
	if err != nil {
		t.Fatal(err)
	}
	h.puts = &putLog{base: http.DefaultTransport.(*http.Transport).Clone(), prefix: cfg.prefix}
	apiCfg.HttpClient = &http.Client{Transport: h.puts}
	client, err := api.NewClient(apiCfg)
	if err != nil {
		t.Fatal(err)
	}
	h.reg = prometheus.NewRegistry()
	m, err := newMetrics(h.reg)
	if err != nil {
		t.Fatal(err)
	}
	src, err := newSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.close() })
	log := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.agent = newAgent(cfg, log, src, health.NewReporter(client, cfg.prefix), m)
	return h
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.agent.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(waitBound):
			h.t.Errorf("agent did not stop within %v", waitBound)
		}
	})
}

// identity is what the agent resolves at run time.
// waitDone waits for Run to return nil, and leaves that nil for the cleanup.
func (h *harness) waitDone(what string) {
	h.t.Helper()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Fatalf("%s: Run: %v", what, err)
		}
		h.done <- nil
	case <-time.After(waitBound):
		h.t.Fatal(what)
	}
}

func (h *harness) identity() (node, id string) {
	node = h.consul.NodeName
	return node, "ws-" + node
}

func (h *harness) key() string {
	node, id := h.identity()
	return health.LoadKey(h.cfg.prefix, "ws", node, id)
}

// report reads the agent's load report from Consul; ok is false if absent.
func (h *harness) report() (health.LoadReport, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, _, err := h.consul.Client.KV().Get(h.key(), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || kv == nil {
		return health.LoadReport{}, false
	}
	r, err := health.ParseLoadReport(kv.Value)
	if err != nil {
		h.t.Fatalf("stored report does not parse: %v", err)
	}
	return r, true
}

func (h *harness) waitReport(what string, cond func(health.LoadReport) bool) health.LoadReport {
	h.t.Helper()
	var got health.LoadReport
	waitFor(h.t, what, func() (bool, string) {
		r, ok := h.report()
		got = r
		return ok && cond(r), fmt.Sprintf("present=%v %+v", ok, r)
	})
	return got
}

// checks returns the agent-local checks of the instance, by check ID.
func (h *harness) checks() map[string]*api.AgentCheck {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cs, err := h.consul.Client.Agent().ChecksWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil
	}
	return cs
}

func (h *harness) registered() bool {
	_, id := h.identity()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _, err := h.consul.Client.Agent().Service(id, (&api.QueryOptions{}).WithContext(ctx))
	return err == nil
}

func TestAgentReportsConnections(t *testing.T) {
	consul := consultest.Start(t)
	h := newHarness(t, consul, func(c *Config) { c.Report.Interval = 200 * time.Millisecond; c.Report.MinInterval = 0 })
	h.app.dial(2)
	h.start()

	r := h.waitReport("the first report", func(r health.LoadReport) bool { return r.Connections == 2 })
	if r.Capacity != 100 || r.Accepted != 0 {
		t.Errorf("first report %+v: want capacity 100 and accepted 0 (the 2 open at start are the baseline)", r)
	}

	// Registered, with meta, and the TTL check passes.
	_, id := h.identity()
	waitFor(t, "a passing TTL check", func() (bool, string) {
		c := h.checks()[health.CheckID(id)]
		if c == nil {
			return false, "no check"
		}
		return c.Status == api.HealthPassing, c.Status
	})
	svc, _, err := consul.Client.Agent().Service(id, nil)
	if err != nil || svc.Meta["shard"] != "s1" || svc.Port != h.app.port {
		t.Fatalf("registered instance %+v, %v", svc, err)
	}

	// The value follows opens and closes within the reporting interval.
	for _, step := range []struct {
		open, close int
		want, acc   int64
	}{
		{open: 5, want: 7, acc: 5},
		{close: 4, want: 3, acc: 5},
		{open: 1, want: 4, acc: 6},
	} {
		h.app.dial(step.open)
		h.app.closeN(step.close)
		changed := time.Now()
		r := h.waitReport(fmt.Sprintf("connections=%d", step.want), func(r health.LoadReport) bool {
			return r.Connections == step.want
		})
		lag := time.Since(changed)
		t.Logf("KV showed %d connections %v after the change (interval %v)", step.want, lag.Round(time.Millisecond), h.cfg.interval)
		// One interval to count, one min_interval at most to write, and
		// generous room for a loaded CI machine.
		if limit := 2*h.cfg.interval + 2*time.Second; lag > limit {
			t.Errorf("report lagged %v, more than %v", lag, limit)
		}
		if r.Accepted != step.acc {
			t.Errorf("accepted %d, want %d", r.Accepted, step.acc)
		}
	}

	// The agent's own metrics agree with the wire.
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader("# HELP farmdns_agent_connections Connections open at the last successful count.\n# TYPE farmdns_agent_connections gauge\nfarmdns_agent_connections 4\n"), "farmdns_agent_connections"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(h.reg); err != nil || len(problems) > 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}
	if got, want := testutil.ToFloat64(h.agent.m.writes.WithLabelValues(reasonFirst))+
		testutil.ToFloat64(h.agent.m.writes.WithLabelValues(reasonChange))+
		testutil.ToFloat64(h.agent.m.writes.WithLabelValues(reasonHeartbeat)), float64(len(h.puts.writes())); got != want {
		t.Errorf("writes_total %v, but %v writes on the wire", got, want)
	}
}

// TestAgentDamping counts writes on the wire: a steady count is written only
// on heartbeats; a count that moves all the time is written at most once per
// min_interval.
func TestAgentDamping(t *testing.T) {
	consul := consultest.Start(t)
	const (
		heartbeat   = time.Second
		minInterval = 300 * time.Millisecond
		interval    = 100 * time.Millisecond
	)
	h := newHarness(t, consul, func(c *Config) {
		c.Report = ReportConfig{Interval: interval, Heartbeat: heartbeat, MinChange: "50%", MinInterval: minInterval}
		c.Service.Register = false
	})
	h.app.dial(10)
	h.start()

	// Steady: the first write, then one per heartbeat, nothing between.
	waitFor(t, "three writes of a steady count", func() (bool, string) {
		n := len(h.puts.writes())
		return n >= 3, strconv.Itoa(n)
	})
	w := h.puts.writes()
	for i := 1; i < 3; i++ {
		gap := w[i].Sub(w[i-1])
		if gap < heartbeat-interval || gap > heartbeat+time.Second {
			t.Errorf("steady write %d came %v after the previous one, want about the heartbeat %v", i, gap, heartbeat)
		}
	}

	// Small moves (below 50%) do not write early either.
	h.app.dial(3)
	h.app.closeN(2) // 11: +10%
	base := len(h.puts.writes())
	waitFor(t, "the next heartbeat", func() (bool, string) {
		n := len(h.puts.writes())
		return n > base, strconv.Itoa(n)
	})
	w = h.puts.writes()
	if gap := w[base].Sub(w[base-1]); gap < heartbeat-interval {
		t.Errorf("a 10%% move was written %v after the previous write, before the heartbeat", gap)
	}

	// Churn: the count swings 11 <-> 31 (far beyond 50%) on every count.
	stop := make(chan struct{})
	churned := make(chan struct{})
	go func() {
		defer close(churned)
		var extra []net.Conn
		for {
			select {
			case <-stop:
				for _, c := range extra {
					c.Close()
				}
				return
			default:
			}
			if len(extra) == 0 {
				for range 20 {
					c, err := net.Dial("tcp4", h.app.ln.Addr().String())
					if err != nil {
						return
					}
					extra = append(extra, c)
				}
			} else {
				// Closing the client end leaves the server end in CLOSE_WAIT
				// (not ESTABLISHED) once the FIN arrives.
				for _, c := range extra {
					c.Close()
				}
				extra = nil
			}
			time.Sleep(interval) // pacing the churn, not waiting for a result
		}
	}()
	// The churn's server ends are never accepted: they sit in the accept
	// queue, ESTABLISHED, which is what the kernel counts.
	base = len(h.puts.writes())
	waitFor(t, "six writes under churn", func() (bool, string) {
		n := len(h.puts.writes()) - base
		return n >= 6, strconv.Itoa(n)
	})
	close(stop)
	<-churned
	w = h.puts.writes()[base:]
	for i := 1; i < len(w); i++ {
		gap := w[i].Sub(w[i-1])
		// Request times jitter by a few ms around the agent's own clock, and
		// on a loaded machine one request can arrive late, shortening the
		// next gap: a gap is short only if the two around it are short too.
		short := gap < minInterval-20*time.Millisecond
		if i >= 2 && w[i].Sub(w[i-2]) >= 2*minInterval-20*time.Millisecond {
			short = false
		}
		if short {
			t.Errorf("write %d under churn came %v after the previous one, less than min_interval %v", i, gap, minInterval)
		}
		if gap > heartbeat {
			t.Errorf("write %d under churn came %v after the previous one: the churn did not trigger writes", i, gap)
		}
	}
	t.Logf("write gaps under churn: %v", gaps(w))
}

func gaps(w []time.Time) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(w); i++ {
		out = append(out, w[i].Sub(w[i-1]).Round(time.Millisecond))
	}
	return out
}

// TestAgentDrain: maintenance first, reports continue while connections bleed
// off, then deregistration and the report is removed; Run returns nil.
func TestAgentDrain(t *testing.T) {
	consul := consultest.Start(t)
	h := newHarness(t, consul, func(c *Config) {
		grace := 20 * time.Second
		c.Drain.Grace = &grace
	})
	h.app.dial(3)
	h.start()
	h.waitReport("the first report", func(r health.LoadReport) bool { return r.Connections == 3 })
	_, id := h.identity()
	waitFor(t, "registration", func() (bool, string) { return h.registered(), "" })

	h.agent.RequestDrain(false)
	waitFor(t, "maintenance mode", func() (bool, string) {
		c := h.checks()["_service_maintenance:"+id]
		return c != nil && c.Status == api.HealthCritical, fmt.Sprintf("%+v", c)
	})
	if !h.registered() {
		t.Fatal("deregistered before the connections bled off")
	}
	h.app.closeN(2)
	h.waitReport("reports to go on while draining", func(r health.LoadReport) bool { return r.Connections == 1 })
	select {
	case err := <-h.done:
		t.Fatalf("agent returned (%v) with a connection still open", err)
	default:
	}
	h.app.closeN(1)
	h.waitDone("agent did not finish draining")
	if h.registered() {
		t.Error("still registered after the drain")
	}
	if r, ok := h.report(); ok {
		t.Errorf("load report still there after the drain: %+v", r)
	}
}

// TestAgentConsulDownAndBack: Consul is down when the agent starts and again
// later; the agent keeps counting, never stops, registers when Consul comes
// back and writes the latest count.
func TestAgentConsulDownAndBack(t *testing.T) {
	consul := consultest.Start(t)
	h := newHarness(t, consul, func(c *Config) { c.Report.Heartbeat = time.Second })
	consul.Stop()
	h.app.dial(2)
	h.start()

	waitFor(t, "counting while Consul is down", func() (bool, string) {
		s := h.agent.latest.Load()
		return s != nil && s.conns == 2 && testutil.ToFloat64(h.agent.m.consulErrors.WithLabelValues(opNode)) > 0, ""
	})
	consul.Restart()
	h.waitReport("the report once Consul is up", func(r health.LoadReport) bool { return r.Connections == 2 })
	waitFor(t, "registration once Consul is up", func() (bool, string) { return h.registered(), "" })

	// Down again: the count moves meanwhile; the agent fails writes, keeps
	// counting, and writes the latest count after the restart (which also
	// lost the registration, as a dev agent keeps no state).
	consul.Stop()
	h.app.dial(5)
	waitFor(t, "a failed write and the new count", func() (bool, string) {
		s := h.agent.latest.Load()
		return s.conns == 7 && testutil.ToFloat64(h.agent.m.writeErrors) > 0, fmt.Sprintf("conns %d", s.conns)
	})
	select {
	case err := <-h.done:
		t.Fatalf("agent stopped while Consul was down: %v", err)
	default:
	}
	if got := testutil.ToFloat64(h.agent.m.consulUp); got != 0 {
		t.Errorf("consul_up %v while down", got)
	}
	consul.Restart()
	h.waitReport("the latest count after the outage", func(r health.LoadReport) bool { return r.Connections == 7 && r.Accepted == 5 })
	waitFor(t, "re-registration after the outage", func() (bool, string) { return h.registered(), "" })
	if got := testutil.ToFloat64(h.agent.m.consulUp); got != 1 {
		t.Errorf("consul_up %v after recovery", got)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	consul := consultest.Start(t)
	h := newHarness(t, consul, func(c *Config) { c.Service.Register = false })
	srv := &http.Server{Handler: h.agent.handler(h.reg)}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz before the first count: %d %s", code, body)
	}
	h.app.dial(1)
	h.start()
	waitFor(t, "a healthy /healthz", func() (bool, string) {
		code, body := get("/healthz")
		return code == http.StatusOK && strings.Contains(body, `"connections": 1`), body
	})
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "farmdns_agent_connections 1") {
		t.Errorf("/metrics: %d %s", code, body)
	}
	// The names deploy/prometheus and deploy/grafana are written against.
	waitFor(t, "a report written", func() (bool, string) {
		_, body := get("/metrics")
		return strings.Contains(body, "farmdns_agent_last_success_timestamp_seconds "), body
	})
	_, body := get("/metrics")
	for _, name := range []string{"farmdns_agent_connections", "farmdns_agent_writes_total", "farmdns_agent_write_errors_total", "farmdns_agent_last_success_timestamp_seconds"} {
		if !strings.Contains(body, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	// Refused without the admin header (a form post from any web page).
	resp, err := http.Post(base+"/drain", "application/x-www-form-urlencoded", strings.NewReader("x=1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /drain without the admin header: %s", resp.Status)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/drain", nil)
	adminhttp.Token{}.Authorize(req)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("POST /drain: %s", resp.Status)
	}
	// Not registered by us and unknown to the agent: no maintenance to set;
	// the drain waits for the last connection.
	h.app.closeN(1)
	h.waitDone("drain via POST /drain did not finish")
	if _, ok := h.report(); ok {
		t.Error("load report left after the drain")
	}
}

// TestAgentDrainWhileConsulDown: a drain requested before Consul ever
// answered still ends, after the grace period (a connection stays open).
func TestAgentDrainWhileConsulDown(t *testing.T) {
	consul := consultest.Start(t)
	h := newHarness(t, consul, func(c *Config) {
		grace := 300 * time.Millisecond
		c.Drain.Grace = &grace
	})
	consul.Stop()
	h.app.dial(1)
	h.start()
	waitFor(t, "a count", func() (bool, string) { return h.agent.latest.Load() != nil, "" })
	asked := time.Now()
	h.agent.RequestDrain(false)
	h.waitDone("drain with Consul down did not end")
	if took := time.Since(asked); took < h.cfg.grace {
		t.Errorf("drain ended after %v, before the grace period %v", took, h.cfg.grace)
	}
}

// TestAgentLimitedToken: a token that may only write load reports (no
// agent:read, so no node name and no checks) still gets reports written,
// under the hostname.
func TestAgentLimitedToken(t *testing.T) {
	consul := consultest.Start(t, consultest.WithACL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wo := (&api.WriteOptions{}).WithContext(ctx)
	pol, _, err := consul.Client.ACL().PolicyCreate(&api.ACLPolicy{
		Name:  "load-writer",
		Rules: `key_prefix "farmdns/load/" { policy = "write" }`,
	}, wo)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := consul.Client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, wo)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok.SecretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, consul, func(c *Config) {
		c.Consul.TokenFile = tokenFile
		c.Service.Register = false
	})
	h.app.dial(3)
	h.start()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	key := health.LoadKey(h.cfg.prefix, "ws", host, "ws-"+host)
	waitFor(t, "a report under the hostname", func() (bool, string) {
		kv, _, err := consul.Client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil || kv == nil {
			return false, fmt.Sprint(err)
		}
		r, err := health.ParseLoadReport(kv.Value)
		return err == nil && r.Connections == 3, string(kv.Value)
	})
}
