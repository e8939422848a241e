package health_test

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// TestFigurePropagationLatency measures the time from a Consul write (a
// health check update or a KV load put) to the snapshot that shows it, and
// checks the figure README.md and MEASURED.md quote (p50 1.3 ms, p99 7.4 ms
// over 200 changes on a quiet machine): the p50 within ten times, the p99,
// which on a shared machine is its scheduling delay, within twenty (under
// -race with a load average of 17 on 2 cores it reached 63 ms). It runs 60
// changes by default and 200 with FARMDNS_MEASURE=1, which is how the
// quoted figures are made. It does not run in parallel with the package's
// other tests, whose Consul agents would otherwise share the CPU with it.
func TestFigurePropagationLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	changes := 60
	if os.Getenv("FARMDNS_MEASURE") == "1" {
		changes = 200
	}
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "lat-n1", NodeAddress: "127.0.0.111", Service: "lat", ID: "lat-1", Port: 80})
	w := startWatcher(t, a.Client, health.WatcherConfig{Services: []health.ServiceConfig{{Name: "lat"}}})
	waitSnapshot(t, w, "instance present", targetIs("lat", "lat-1", func(*health.Target) bool { return true }))

	var healthLat, kvLat []time.Duration
	critical := false
	for i := range changes {
		// A random pause, 50-150 ms: two changes of one data set are at least
		// MinInterval apart, so each finds its loop waiting in a blocking
		// query, as on a quiet service (the rate limit's delay under churn
		// is the scale test's lag).
		time.Sleep(50*time.Millisecond + rand.N(100*time.Millisecond))
		start := time.Now()
		if i%2 == 0 {
			critical = !critical
			status, want := api.HealthPassing, health.HealthPassing
			if critical {
				status, want = api.HealthCritical, health.HealthCritical
			}
			a.SetCheck(t, "lat-n1", "lat-1", consultest.ServiceCheckID("lat-1"), status)
			waitSnapshot(t, w, "health change", targetIs("lat", "lat-1", func(t *health.Target) bool { return t.Health == want }))
			healthLat = append(healthLat, time.Since(start))
		} else {
			conns := int64(i)
			putReport(t, a, health.DefaultLoadPrefix, "lat", "lat-n1", "lat-1", conns, conns, 0, time.Now())
			waitSnapshot(t, w, "load change", targetIs("lat", "lat-1", func(t *health.Target) bool { return t.Load.Connections == conns }))
			kvLat = append(kvLat, time.Since(start))
		}
	}
	all := append(slices.Clone(healthLat), kvLat...)
	t.Logf("propagation, Consul write to snapshot, %d changes:", changes)
	t.Logf("  health check: %s", percentiles(healthLat))
	t.Logf("  KV load put:  %s", percentiles(kvLat))
	t.Logf("  all:          %s", percentiles(all))
	if p50, p99 := quantile(all, 0.5), quantile(all, 0.99); p50 > propagationP50Bound || p99 > propagationP99Bound {
		t.Errorf("propagation p50 %v, p99 %v; bounds %v, %v (MEASURED.md: p50 1.3 ms, p99 7.4 ms on a quiet machine)", p50, p99, propagationP50Bound, propagationP99Bound)
	}
}

// Bounds of TestFigurePropagationLatency.
const (
	propagationP50Bound = 13 * time.Millisecond
	propagationP99Bound = 150 * time.Millisecond
)

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func percentiles(d []time.Duration) string {
	return fmt.Sprintf("n=%d p50=%v p90=%v p99=%v max=%v", len(d),
		quantile(d, 0.5).Round(100*time.Microsecond), quantile(d, 0.9).Round(100*time.Microsecond),
		quantile(d, 0.99).Round(100*time.Microsecond), quantile(d, 1).Round(100*time.Microsecond))
}

// Scale test parameters.
const (
	scalePerNode = 5
	scaleService = "big"
	scalePeriod  = 2 * time.Second // every load changes this often
	scaleSlices  = 20              // writes per period, each a slice of the keys
)

func scaleKey(i int) (node, id string) {
	return fmt.Sprintf("big-n%04d", i/scalePerNode), fmt.Sprintf("big-%05d", i)
}

// TestFigureWatcherCPU checks the watcher's cost at scale that MEASURED.md
// quotes, at the scale it quotes for CI: 1,000 instances on 200 nodes, every
// load rewritten every 2 s, the default MinInterval (at most 10 KV reads a
// second), 6 s measured. The figure is the CPU per KV read times the 10
// reads/s of the default rate, so that a starved machine (fewer reads, less
// CPU granted) does not hide a slower watcher. The race detector (CI runs
// with -race) multiplies it by about ten; each mode has its own figure, and
// each bound is five times it. Consul's answers, on the wire, are bounded
// at five times the quoted 0.2 MB/s. It runs alone (not in parallel): its
// CPU figure is the whole test process's.
func TestFigureWatcherCPU(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	r := runScale(t, 1000, 6*time.Second, 0, false)
	quoted := watcherCPUQuoted
	if raceEnabled {
		quoted = watcherCPUQuotedRace
	}
	if cpu := r.perRead.Seconds() * 10; r.perRead == 0 || cpu > 5*quoted {
		t.Errorf("watcher CPU at 10 reads/s of 1,000 instances: %.1f%% of a core; bound %.0f%% (MEASURED.md: %.0f%%, race detector %v)",
			100*cpu, 500*quoted, 100*quoted, raceEnabled)
	}
	if r.wireMBps > 5*watcherWireQuoted {
		t.Errorf("read %.2f MB/s from Consul at 1,000 instances; bound %.2f MB/s (MEASURED.md: %.2f MB/s)", r.wireMBps, 5*watcherWireQuoted, watcherWireQuoted)
	}
}

// Figures TestFigureWatcherCPU checks, 1,000 instances (MEASURED.md).
const (
	watcherCPUQuoted     = 0.15 // of one core at 10 KV reads/s
	watcherCPUQuotedRace = 1.5  // the same with the race detector
	watcherWireQuoted    = 0.2  // MB/s read from Consul, on the wire
)

// registerScale registers instances on catalog nodes, scalePerNode each,
// each with a tag, a meta key and a passing service check, a few nodes per
// transaction: far quicker than one Raft write per instance.
func registerScale(t *testing.T, a *consultest.Agent, instances int) {
	t.Helper()
	var ops api.TxnOps
	flush := func() {
		if ok, resp, _, err := a.Client.Txn().Txn(ops, nil); err != nil || !ok {
			t.Fatalf("register: %v %v", err, resp)
		}
		ops = ops[:0]
	}
	for i := range instances {
		node, id := scaleKey(i)
		n := i / scalePerNode
		if i%scalePerNode == 0 {
			if len(ops)+1+2*scalePerNode > 64 {
				flush()
			}
			ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{
				Node: node, Address: fmt.Sprintf("127.1.%d.%d", n/250, n%250+1)}}})
		}
		ops = append(ops,
			&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node, Service: api.AgentService{
				ID: id, Service: scaleService, Port: 10000 + i%scalePerNode,
				Tags: []string{"farm"}, Meta: map[string]string{"rack": strconv.Itoa(n % 40)}}}},
			&api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
				Node: node, CheckID: consultest.ServiceCheckID(id), Name: "service " + id,
				Status: api.HealthPassing, ServiceID: id}}})
	}
	flush()
}

// minScaleReads is the fewest KV reads runScale measures over.
const minScaleReads = 10

// scaleResult is what runScale measured.
type scaleResult struct {
	cpu      float64       // the test process's CPU, cores
	perRead  time.Duration // the test process's CPU per KV read
	wireMBps float64       // read from Consul, on the wire
}

// runScale registers instances (scalePerNode per catalog node) with load
// reports, has a separate process rewrite every report every scalePeriod,
// and measures the watcher over window after a warm-up. With flips it also
// times health changes under the load churn.
func runScale(t *testing.T, instances int, window, minInterval time.Duration, flips bool) scaleResult {
	a := consultest.Start(t)

	start := time.Now()
	registerScale(t, a, instances)
	reports := map[string][]byte{}
	for i := range instances {
		node, id := scaleKey(i)
		reports[health.LoadKey(health.DefaultLoadPrefix, scaleService, node, id)] = reportJSON(int64(i%1000), int64(i), 20000, time.Now())
	}
	if err := a.PutKVBatch(reports); err != nil {
		t.Fatal(err)
	}
	t.Logf("registered %d instances on %d nodes and their reports in %v", instances, instances/scalePerNode, time.Since(start).Round(time.Millisecond))

	// A client that counts bytes on the wire and after decompression.
	var wire, body, reads atomic.Int64
	cfg, err := health.ConsulConfig{Address: a.Addr}.APIConfig()
	if err != nil {
		t.Fatal(err)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		MaxIdleConnsPerHost: 8,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: c, n: &wire}, nil
		},
	}
	cfg.HttpClient = &http.Client{Transport: countingTransport{tr, &body, &reads}}
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}

	wcfg := health.WatcherConfig{Services: []health.ServiceConfig{{Name: scaleService}}, MinInterval: minInterval}
	w := startWatcher(t, client, wcfg)
	start = time.Now()
	waitSnapshot(t, w, "all instances with known loads", func(s *health.Snapshot) bool {
		return s.Pool(scaleService).Counts().LoadKnown == instances
	})
	t.Logf("first full snapshot after %v", time.Since(start).Round(time.Millisecond))

	// The writer runs in its own process so that its CPU is not ours.
	ctx, cancel := context.WithTimeout(context.Background(), window+30*time.Second)
	defer cancel()
	writer := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	writer.Env = append(os.Environ(),
		"FARMDNS_LOADWRITER_ADDR="+a.Addr,
		"FARMDNS_LOADWRITER_INSTANCES="+strconv.Itoa(instances),
		"FARMDNS_LOADWRITER_SECONDS="+strconv.Itoa(int(window/time.Second)+4+10))
	writer.Stdout, writer.Stderr = os.Stderr, os.Stderr
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel() // done measuring: the writer may stop
		_ = writer.Wait()
	}()

	// Warm up for two periods so every report is being rewritten, then measure.
	time.Sleep(2 * scalePeriod)
	var lags []time.Duration
	seen := map[string]time.Time{}
	ru0, wire0, body0, reads0 := rusage(t), wire.Load(), body.Load(), reads.Load()
	consul0 := procCPU(a.PID())
	st0 := w.Status()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	t0 := time.Now()
	// At least minScaleReads reads, however starved the machine (up to five windows).
	measuring := func() bool {
		d := time.Since(t0)
		return d < window || (reads.Load()-reads0 < minScaleReads && d < 5*window)
	}
	for s := w.Snapshot(); measuring(); s = w.Snapshot() {
		// Freshness: for 100 targets spread over all the writer's slices, the
		// time from the report's own stamp (taken just before the write) to
		// the snapshot holding it.
		targets := s.Pool(scaleService).Targets()
		for i := 0; i < len(targets); i += len(targets) / 100 {
			tg := targets[i]
			if prev, ok := seen[tg.ServiceID]; !ok || !prev.Equal(tg.Load.Updated) {
				if ok {
					lags = append(lags, s.Built().Sub(tg.Load.Updated))
				}
				seen[tg.ServiceID] = tg.Load.Updated
			}
		}
		select {
		case <-s.Superseded():
		case <-time.After(max(time.Until(t0.Add(window)), 100*time.Millisecond)):
		}
	}
	elapsed := time.Since(t0)
	ru1, wire1, body1, reads1 := rusage(t), wire.Load(), body.Load(), reads.Load()
	consul1 := procCPU(a.PID())
	st1 := w.Status()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)

	sec := elapsed.Seconds()
	r := scaleResult{cpu: (ru1 - ru0).Seconds() / sec, wireMBps: float64(wire1-wire0) / sec / 1e6}
	if n := reads1 - reads0; n > 0 {
		r.perRead = (ru1 - ru0) / time.Duration(n)
	}
	c := w.Snapshot().Pool(scaleService).Counts()
	t.Logf("scale: %d instances, every load rewritten every %v, min interval %v, race detector %v, measured over %v:",
		instances, scalePeriod, cmp.Or(wcfg.MinInterval, health.DefaultMinInterval), raceEnabled, elapsed.Round(time.Millisecond))
	t.Logf("  watcher process CPU: %v = %.1f%% of one core; %.1f KV reads/s, %v per read", (ru1 - ru0).Round(time.Millisecond), 100*r.cpu,
		float64(reads1-reads0)/sec, r.perRead.Round(100*time.Microsecond))
	t.Logf("  read from Consul: %.2f MB/s on the wire, %.2f MB/s decoded", r.wireMBps, float64(body1-body0)/sec/1e6)
	t.Logf("  snapshots published: %.1f/s", float64(st1.Publishes-st0.Publishes)/sec)
	t.Logf("  report-to-snapshot lag (100 sampled targets): %s", percentiles(lags))
	t.Logf("  Consul agent CPU: %.1f%% of one core", 100*(consul1-consul0).Seconds()/sec)
	t.Logf("  Go heap in use: %.1f MB; allocated %.1f MB/s", float64(ms1.HeapInuse)/1e6, float64(ms1.TotalAlloc-ms0.TotalAlloc)/sec/1e6)
	t.Logf("  final pool: %+v", c)
	if c.Targets != instances || c.LoadKnown+c.LoadStale != instances {
		t.Errorf("pool lost targets or loads: %+v", c)
	}
	if !flips {
		return r
	}

	// Health changes while the loads keep churning: each one makes Consul
	// send the whole service again.
	var times []time.Duration
	for i := range 20 {
		node, id := scaleKey(i * 97 % instances)
		status, want := api.HealthCritical, health.HealthCritical
		if i%2 == 1 {
			node, id = scaleKey((i - 1) * 97 % instances)
			status, want = api.HealthPassing, health.HealthPassing
		}
		start := time.Now()
		a.SetCheck(t, node, id, consultest.ServiceCheckID(id), status)
		waitSnapshot(t, w, "health flip at scale", targetIs(scaleService, id, func(t *health.Target) bool { return t.Health == want }))
		times = append(times, time.Since(start))
	}
	t.Logf("  health check write to snapshot, under the load churn: %s", percentiles(times))
	return r
}

// TestMain makes the test binary runScale's load writer when started as its
// child process.
func TestMain(m *testing.M) {
	if addr := os.Getenv("FARMDNS_LOADWRITER_ADDR"); addr != "" {
		secs, _ := strconv.Atoi(os.Getenv("FARMDNS_LOADWRITER_SECONDS"))
		instances, _ := strconv.Atoi(os.Getenv("FARMDNS_LOADWRITER_INSTANCES"))
		if err := writeLoads(addr, instances, time.Duration(secs)*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "load writer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// writeLoads rewrites every load report of instances every scalePeriod, a
// slice at a time, for d.
func writeLoads(addr string, instances int, d time.Duration) error {
	client, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		return err
	}
	tick := time.NewTicker(scalePeriod / scaleSlices)
	defer tick.Stop()
	end := time.Now().Add(d)
	per := instances / scaleSlices
	writes := 0
	for round := 0; time.Now().Before(end); round++ {
		<-tick.C
		slice := round % scaleSlices
		ops := make(api.TxnOps, 0, 64)
		for i := slice * per; i < (slice+1)*per; i++ {
			node, id := scaleKey(i)
			v := reportJSON(int64((i+round)%1000), int64(i+round*10), 20000, time.Now())
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: health.LoadKey(health.DefaultLoadPrefix, scaleService, node, id), Value: v}})
			if len(ops) == cap(ops) || i == (slice+1)*per-1 {
				if ok, resp, _, err := client.Txn().Txn(ops, nil); err != nil || !ok {
					return fmt.Errorf("txn: %v %v", err, resp)
				}
				ops = ops[:0]
				writes++
			}
		}
	}
	fmt.Fprintf(os.Stderr, "load writer: %d transactions\n", writes)
	return nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

type countingTransport struct {
	http.RoundTripper
	n     *atomic.Int64 // bytes of bodies
	reads *atomic.Int64 // KV reads
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.URL.Path, "/v1/kv/") {
		t.reads.Add(1)
	}
	resp, err := t.RoundTripper.RoundTrip(r)
	if err == nil {
		resp.Body = countingBody{resp.Body, t.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// rusage returns this process's user+system CPU time.
func rusage(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU returns a process's user+system CPU time from /proc, 0 if unknown.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start at ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}
