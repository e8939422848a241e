//go:build scale

package health_test

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// Scale test parameters.
const (
	scaleInstances = 5000
	scalePerNode   = 5
	scaleService   = "big"
	scalePeriod    = 2 * time.Second // every load changes this often
	scaleSlices    = 20              // writes per period, each a slice of the keys
)

func scaleKey(i int) (node, id string) {
	return fmt.Sprintf("big-n%04d", i/scalePerNode), fmt.Sprintf("big-%05d", i)
}

// TestScale registers 5,000 instances on 1,000 catalog nodes, has a separate
// process rewrite every load report every 2 s, and reports the watcher's CPU
// time and the bytes it reads from Consul. It is a measurement, not a check
// for every run, so it is built only with the scale tag:
//
//	go test -tags scale -run TestScale -v ./health/
//
// FARMDNS_SCALE_SECONDS sets the measured window (default 30) and
// FARMDNS_SCALE_MIN_INTERVAL the watcher's MinInterval (default 100ms).
func TestScale(t *testing.T) {
	window := 30 * time.Second
	if s, err := strconv.Atoi(os.Getenv("FARMDNS_SCALE_SECONDS")); err == nil && s > 0 {
		window = time.Duration(s) * time.Second
	}
	a := consultest.Start(t)

	// Register in parallel; each is one Raft write.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, scaleInstances)
	next := atomic.Int64{}
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < scaleInstances; i = int(next.Add(1) - 1) {
				node, id := scaleKey(i)
				n := i / scalePerNode
				errs <- a.RegisterErr(consultest.Instance{
					Node: node, NodeAddress: fmt.Sprintf("127.1.%d.%d", n/250, n%250+1),
					Service: scaleService, ID: id, Port: 10000 + i%scalePerNode,
					Tags: []string{"farm"}, Meta: map[string]string{"rack": strconv.Itoa(n % 40)},
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	reports := map[string][]byte{}
	for i := range scaleInstances {
		node, id := scaleKey(i)
		reports[health.LoadKey(health.DefaultLoadPrefix, scaleService, node, id)] = reportJSON(int64(i%1000), int64(i), 20000, time.Now())
	}
	if err := a.PutKVBatch(reports); err != nil {
		t.Fatal(err)
	}
	t.Logf("registered %d instances on %d nodes and their reports in %v", scaleInstances, scaleInstances/scalePerNode, time.Since(start).Round(time.Millisecond))

	// A client that counts bytes on the wire and after decompression.
	var wire, body atomic.Int64
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
	cfg.HttpClient = &http.Client{Transport: countingTransport{tr, &body}}
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}

	wcfg := health.WatcherConfig{Services: []health.ServiceConfig{{Name: scaleService}}}
	if d, err := time.ParseDuration(os.Getenv("FARMDNS_SCALE_MIN_INTERVAL")); err == nil {
		wcfg.MinInterval = d
	}
	w := startWatcher(t, client, wcfg)
	start = time.Now()
	waitSnapshot(t, w, "all instances with known loads", func(s *health.Snapshot) bool {
		return s.Pool(scaleService).Counts().LoadKnown == scaleInstances
	})
	t.Logf("first full snapshot after %v", time.Since(start).Round(time.Millisecond))

	// The writer runs in its own process so that its CPU is not ours.
	ctx, cancel := context.WithTimeout(context.Background(), window+30*time.Second)
	defer cancel()
	writer := exec.CommandContext(ctx, os.Args[0])
	writer.Env = append(os.Environ(),
		"FARMDNS_LOADWRITER_ADDR="+a.Addr,
		"FARMDNS_LOADWRITER_SECONDS="+strconv.Itoa(int(window/time.Second)+4+10))
	writer.Stdout, writer.Stderr = os.Stderr, os.Stderr
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = writer.Wait() }()

	// Warm up for two periods so every report is being rewritten, then measure.
	time.Sleep(2 * scalePeriod)
	var lags []time.Duration
	seen := map[string]time.Time{}
	ru0, wire0, body0 := rusage(t), wire.Load(), body.Load()
	consul0 := procCPU(a.PID())
	st0 := w.Status()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	t0 := time.Now()
	for s := w.Snapshot(); time.Since(t0) < window; s = w.Snapshot() {
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
		case <-time.After(time.Until(t0.Add(window))):
		}
	}
	elapsed := time.Since(t0)
	ru1, wire1, body1 := rusage(t), wire.Load(), body.Load()
	consul1 := procCPU(a.PID())
	st1 := w.Status()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)

	cpu := ru1 - ru0
	sec := elapsed.Seconds()
	s := w.Snapshot()
	c := s.Pool(scaleService).Counts()
	t.Logf("scale: %d instances, every load rewritten every %v, min interval %v, measured over %v:",
		scaleInstances, scalePeriod, cmp.Or(wcfg.MinInterval, health.DefaultMinInterval), elapsed.Round(time.Millisecond))
	t.Logf("  watcher process CPU: %v = %.1f%% of one core", cpu.Round(time.Millisecond), 100*cpu.Seconds()/sec)
	t.Logf("  read from Consul: %.2f MB/s on the wire, %.2f MB/s decoded", float64(wire1-wire0)/sec/1e6, float64(body1-body0)/sec/1e6)
	t.Logf("  snapshots published: %.1f/s", float64(st1.Publishes-st0.Publishes)/sec)
	t.Logf("  report-to-snapshot lag (100 sampled targets): %s", percentiles(lags))
	t.Logf("  Consul agent CPU: %.1f%% of one core", 100*(consul1-consul0).Seconds()/sec)
	t.Logf("  Go heap in use: %.1f MB; allocated %.1f MB/s", float64(ms1.HeapInuse)/1e6, float64(ms1.TotalAlloc-ms0.TotalAlloc)/sec/1e6)
	t.Logf("  final pool: %+v", c)

	// Health changes while the loads keep churning: each one makes Consul
	// send the whole 5,000-entry service again.
	var flips []time.Duration
	for i := range 20 {
		node, id := scaleKey(i * 97)
		status, want := api.HealthCritical, health.HealthCritical
		if i%2 == 1 {
			node, id = scaleKey((i - 1) * 97)
			status, want = api.HealthPassing, health.HealthPassing
		}
		start := time.Now()
		a.SetCheck(t, node, id, consultest.ServiceCheckID(id), status)
		waitSnapshot(t, w, "health flip at scale", targetIs(scaleService, id, func(t *health.Target) bool { return t.Health == want }))
		flips = append(flips, time.Since(start))
	}
	t.Logf("  health check write to snapshot, under the load churn: %s", percentiles(flips))
	if c.Targets != scaleInstances || c.LoadKnown+c.LoadStale != scaleInstances {
		t.Errorf("pool lost targets or loads: %+v", c)
	}
}

// TestMain makes the test binary TestScale's load writer when started as
// its child process.
func TestMain(m *testing.M) {
	if addr := os.Getenv("FARMDNS_LOADWRITER_ADDR"); addr != "" {
		secs, _ := strconv.Atoi(os.Getenv("FARMDNS_LOADWRITER_SECONDS"))
		if err := writeLoads(addr, time.Duration(secs)*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "load writer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// writeLoads rewrites every load report of TestScale every scalePeriod, a
// slice at a time, for d.
func writeLoads(addr string, d time.Duration) error {
	client, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		return err
	}
	tick := time.NewTicker(scalePeriod / scaleSlices)
	defer tick.Stop()
	end := time.Now().Add(d)
	per := scaleInstances / scaleSlices
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
	n *atomic.Int64
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
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
