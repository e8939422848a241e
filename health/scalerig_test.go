package health_test

import (
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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// The scale rig: one service of n instances on scaleNodes catalog nodes,
// each with a load report, rewritten by a separate process at a given
// share of the reports per second. TestScale (tag scale) and
// TestScaleFigures (every run) use it.
const (
	scaleService = "big"
	scaleNodes   = 1000
	scaleTick    = 100 * time.Millisecond // the writer writes a slice per tick
)

func scaleKey(i int) (node, id string) {
	return fmt.Sprintf("big-n%04d", i%scaleNodes), fmt.Sprintf("big-%05d", i)
}

func scaleLoadKey(i int) string {
	node, id := scaleKey(i)
	return health.LoadKey(health.DefaultLoadPrefix, scaleService, node, id)
}

// scaleSetup registers n instances (addresses 127.1.x.y, a tag, a meta key
// and a service check each) and their load reports.
func scaleSetup(t testing.TB, a *consultest.Agent, n int) {
	t.Helper()
	start := time.Now()
	ins := make([]consultest.Instance, n)
	for i := range ins {
		node, id := scaleKey(i)
		nd := i % scaleNodes
		ins[i] = consultest.Instance{
			Node: node, NodeAddress: fmt.Sprintf("127.1.%d.%d", nd/250, nd%250+1),
			Service: scaleService, ID: id, Port: 10000 + i/scaleNodes,
			Tags: []string{"farm"}, Meta: map[string]string{"rack": strconv.Itoa(nd % 40)},
		}
	}
	if err := a.RegisterBatch(ins); err != nil {
		t.Fatal(err)
	}
	reports := make(map[string][]byte, n)
	for i := range n {
		reports[scaleLoadKey(i)] = reportJSON(int64(i%1000), int64(i), 20000, time.Now())
	}
	if err := a.PutKVBatchParallel(reports); err != nil {
		t.Fatal(err)
	}
	t.Logf("registered %d instances on %d nodes and their reports in %v", n, scaleNodes, time.Since(start).Round(time.Millisecond))
}

// startLoadWriter re-runs the test binary as the load writer, so that its
// CPU is not counted as the watcher's: it rewrites perSec reports a second,
// in turn, for d.
func startLoadWriter(t testing.TB, a *consultest.Agent, n, perSec int, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	writer := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	writer.Env = append(os.Environ(),
		"FARMDNS_LOADWRITER_ADDR="+a.Addr,
		"FARMDNS_LOADWRITER_N="+strconv.Itoa(n),
		"FARMDNS_LOADWRITER_PERSEC="+strconv.Itoa(perSec),
		"FARMDNS_LOADWRITER_MS="+strconv.Itoa(int(d/time.Millisecond)))
	writer.Stdout, writer.Stderr = os.Stderr, os.Stderr
	if err := writer.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = writer.Wait()
	})
}

// TestMain makes the test binary the scale rig's load writer when started
// as its child process.
func TestMain(m *testing.M) {
	if addr := os.Getenv("FARMDNS_LOADWRITER_ADDR"); addr != "" {
		n, _ := strconv.Atoi(os.Getenv("FARMDNS_LOADWRITER_N"))
		perSec, _ := strconv.Atoi(os.Getenv("FARMDNS_LOADWRITER_PERSEC"))
		ms, _ := strconv.Atoi(os.Getenv("FARMDNS_LOADWRITER_MS"))
		if err := writeLoads(addr, n, perSec, time.Duration(ms)*time.Millisecond); err != nil {
			fmt.Fprintln(os.Stderr, "load writer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// writeLoads rewrites perSec of the n load reports a second, a slice per
// tick in transactions of 64, going round the keys, for d.
func writeLoads(addr string, n, perSec int, d time.Duration) error {
	client, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		return err
	}
	tick := time.NewTicker(scaleTick)
	defer tick.Stop()
	end := time.Now().Add(d)
	per := max(1, perSec*int(scaleTick)/int(time.Second))
	writes, next := 0, 0
	for round := 0; time.Now().Before(end); round++ {
		<-tick.C
		ops := make(api.TxnOps, 0, 64)
		for k := range per {
			i := (next + k) % n
			v := reportJSON(int64((i+round)%1000), int64(i+round*10), 20000, time.Now())
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: scaleLoadKey(i), Value: v}})
			if len(ops) == cap(ops) || k == per-1 {
				if ok, resp, _, err := client.Txn().Txn(ops, nil); err != nil || !ok {
					return fmt.Errorf("txn: %v %v", err, resp)
				}
				ops = ops[:0]
				writes++
			}
		}
		next = (next + per) % n
	}
	fmt.Fprintf(os.Stderr, "load writer: %d transactions\n", writes)
	return nil
}

// waitFull waits for the watcher's pool to hold n targets with their loads
// and returns the time since start; it fails the test after limit.
func waitFull(t testing.TB, w *health.Watcher, n int, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	// Stale counts: setting up many instances can take longer than
	// max_report_age after the reports were stamped.
	for s := w.Snapshot(); !full(s.Pool(scaleService).Counts(), n); s = w.Snapshot() {
		select {
		case <-s.Superseded():
		case <-deadline.C:
			t.Fatalf("after %v the pool is not full: %+v", time.Since(start), s.Pool(scaleService).Counts())
		}
	}
	return time.Since(start)
}

func full(c health.PoolCounts, n int) bool { return c.Targets == n && c.LoadKnown+c.LoadStale == n }

// scaleFigures is what one measured window of the rig shows.
type scaleFigures struct {
	elapsed    time.Duration
	cpu        time.Duration // process CPU time in the window
	wire, body int64         // bytes from Consul: on the wire, decoded
	publishes  uint64
	lags       []time.Duration
	consulCPU  time.Duration
	heapInuse  uint64
	allocated  uint64
}

func (f scaleFigures) cpuShare() float64 { return f.cpu.Seconds() / f.elapsed.Seconds() }

// countingClient returns a Consul client for a that counts the bytes it
// reads on the wire and after decompression.
func countingClient(t testing.TB, a *consultest.Agent, wire, body *atomic.Int64) *api.Client {
	t.Helper()
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
			return &countingConn{Conn: c, n: wire}, nil
		},
	}
	cfg.HttpClient = &http.Client{Transport: countingTransport{tr, body}}
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// measureScale watches w for window and returns the figures. The process's
// CPU time stands for the watcher's: nothing else in it does work.
func measureScale(t testing.TB, a *consultest.Agent, w *health.Watcher, wire, body *atomic.Int64, window time.Duration) scaleFigures {
	t.Helper()
	seen := map[string]time.Time{}
	var f scaleFigures
	ru0, wire0, body0 := rusage(t), wire.Load(), body.Load()
	consul0 := procCPU(a.PID())
	st0 := w.Status()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	t0 := time.Now()
	for s := w.Snapshot(); time.Since(t0) < window; s = w.Snapshot() {
		// Freshness: for 100 targets spread over the key space, the time
		// from the report's own stamp (taken just before the write) to the
		// snapshot holding it.
		targets := s.Pool(scaleService).Targets()
		for i := 0; i < len(targets); i += max(1, len(targets)/100) {
			tg := targets[i]
			if prev, ok := seen[tg.ServiceID]; !ok || !prev.Equal(tg.Load.Updated) {
				if ok {
					f.lags = append(f.lags, s.Built().Sub(tg.Load.Updated))
				}
				seen[tg.ServiceID] = tg.Load.Updated
			}
		}
		select {
		case <-s.Superseded():
		case <-time.After(time.Until(t0.Add(window))):
		}
	}
	f.elapsed = time.Since(t0)
	f.cpu = rusage(t) - ru0
	f.wire, f.body = wire.Load()-wire0, body.Load()-body0
	f.consulCPU = procCPU(a.PID()) - consul0
	f.publishes = w.Status().Publishes - st0.Publishes
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	f.heapInuse, f.allocated = ms1.HeapInuse, ms1.TotalAlloc-ms0.TotalAlloc
	return f
}

func (f scaleFigures) log(t testing.TB) {
	sec := f.elapsed.Seconds()
	t.Logf("  watcher process CPU: %v = %.1f%% of one core", f.cpu.Round(time.Millisecond), 100*f.cpuShare())
	t.Logf("  read from Consul: %.2f MB/s on the wire, %.2f MB/s decoded", float64(f.wire)/sec/1e6, float64(f.body)/sec/1e6)
	t.Logf("  snapshots published: %.1f/s", float64(f.publishes)/sec)
	t.Logf("  report-to-snapshot lag (100 sampled targets): %s", percentiles(f.lags))
	t.Logf("  Consul agent CPU: %.1f%% of one core", 100*f.consulCPU.Seconds()/sec)
	t.Logf("  Go heap in use: %.1f MB; allocated %.1f MB/s; peak RSS %.0f MB", float64(f.heapInuse)/1e6, float64(f.allocated)/sec/1e6, float64(peakRSS())/1e6)
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

// peakRSS returns this process's peak resident set size in bytes, 0 if unknown.
func peakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss * 1024 // kilobytes on Linux
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
