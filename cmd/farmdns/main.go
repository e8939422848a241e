// Command farmdns is a load-aware authoritative DNS server.
//
//	farmdns -config farmdns.yaml          serve
//	farmdns -check -config farmdns.yaml   validate the config and every zone, then exit
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/farmdns/farmdns/cmd/internal/adminhttp"
	"github.com/farmdns/farmdns/dnsserver"
	"github.com/farmdns/farmdns/health"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("farmdns", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "farmdns.yaml", "configuration file (YAML)")
	check := fs.Bool("check", false, "validate the configuration and every zone file, then exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "farmdns: unexpected argument %q\n", fs.Arg(0))
		return 2
	}

	cfg, st, err := load(*configPath)
	if *check {
		if err != nil {
			fmt.Fprintln(stderr, err)
			fmt.Fprintf(stderr, "farmdns: %s: check failed\n", *configPath)
			return 1
		}
		fmt.Fprintf(stdout, "farmdns: %s: ok: %s\n", *configPath, summary(st))
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	level, _ := logLevel(cfg.Log.Level)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := newServer(*configPath, cfg, st, log)
	if err := srv.start(ctx); err != nil {
		log.Error("farmdns did not start", "err", err)
		return 1
	}
	if err := srv.run(ctx); err != nil {
		log.Error("farmdns stopped", "err", err)
		return 1
	}
	return 0
}

// load reads the config and builds everything it describes, so that -check
// fails on whatever would fail to run: the zones and the state to serve, and
// with pools the Consul client and watcher (built, not started).
func load(path string) (*Config, *dnsserver.State, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, nil, err
	}
	st, stErr := buildState(cfg)
	// A silent check: the watcher that runs is built again, to log.
	_, _, wErr := newWatcher(cfg, slog.New(slog.DiscardHandler))
	if err := errors.Join(stErr, wErr); err != nil {
		return nil, nil, err
	}
	return cfg, st, nil
}

func summary(st *dnsserver.State) string {
	zs := st.Zones.Zones()
	records := 0
	for _, z := range zs {
		records += z.Records()
	}
	return fmt.Sprintf("%d zones, %d records", len(zs), records)
}

// server is the running farmdns: DNS, HTTP, and the configuration behind them.
type server struct {
	path    string
	cfg     atomic.Pointer[Config] // read by HTTP handlers while a reload replaces it
	log     *slog.Logger
	handler *dnsserver.Handler
	dns     *dnsserver.Server
	web     *http.Server
	webLn   net.Listener
	guard   *adminhttp.Guard // in front of the HTTP requests that change state
	reg     *prometheus.Registry

	reloadOK   prometheus.Gauge
	reloadTime prometheus.Gauge

	history history // the pools' balance, sampled for /status

	recent     recentAnswers
	mu         sync.Mutex // guards lastReload
	lastReload reloadStatus

	ctx   context.Context       // the server's lifetime, for watchers started on reload
	watch atomic.Pointer[watch] // nil without pools
	// catalogs feeds the Consul DNS domains; catalogWatch runs it.
	catalogs     *catalogSlot
	catalogWatch *catalogWatch
	// reloaded, if set, is told the outcome of every reload.
	reloaded chan<- error
}

func newServer(path string, cfg *Config, st *dnsserver.State, log *slog.Logger) *server {
	catalogs := &catalogSlot{}
	attachConsulDNS(st, cfg, catalogs)
	h := dnsserver.NewHandler(st, log)
	s := &server{
		path:    path,
		log:     log,
		handler: h,
		dns: &dnsserver.Server{
			Handler:        h,
			Addrs:          cfg.DNS.Listen,
			TCPIdleTimeout: cfg.DNS.TCPIdleTimeout,
			MaxTCPConns:    cfg.DNS.MaxTCPConnections,
			Log:            log,
		},
		reg: prometheus.NewRegistry(),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "farmdns_config_last_reload_successful",
			Help: "1 if the last configuration reload succeeded (or none was tried), 0 if it failed and the previous configuration is still served.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "farmdns_config_last_reload_timestamp_seconds",
			Help: "When the configuration was last loaded successfully, start-up included.",
		}),
	}
	s.cfg.Store(cfg)
	s.catalogs = catalogs
	s.reloadOK.Set(1)
	s.reloadTime.SetToCurrentTime()
	s.lastReload = reloadStatus{OK: true, At: time.Now()}
	s.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		h.Collector(), h.PoolCollector(), s.dns.RRLCollector(), s.reloadOK, s.reloadTime, watcherCollector{s}, consulDNSCollector{s},
	)
	s.guard = adminhttp.NewGuard(cfg.HTTP.token, log)
	s.web = adminhttp.NewServer(s.httpHandler(), cfg.HTTP.idleTimeout, log)
	return s
}

// start binds every socket; nothing is served unless all of them bind.
func (s *server) start(ctx context.Context) error {
	s.ctx = ctx
	cfg := s.cfg.Load()
	if err := s.setRRL(cfg); err != nil {
		return err
	}
	w, key, err := newWatcher(cfg, s.log)
	if err != nil {
		return err
	}
	s.startWatch(w, key)
	if err := s.startCatalogWatch(cfg); err != nil {
		s.stopWatch()
		return err
	}
	if err := s.dns.Start(ctx); err != nil {
		s.stopWatch()
		s.stopCatalogWatch()
		return err
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		s.dns.Shutdown(context.Background())
		s.stopWatch()
		s.stopCatalogWatch()
		return fmt.Errorf("http listen: %w", err)
	}
	s.webLn = ln
	go s.web.Serve(ln)
	go s.history.run(ctx, s.handler.PoolsStatus)
	s.log.Info("farmdns serving", "dns", s.dns.BoundAddrs(), "http", ln.Addr().String(), "zones", summary(s.handler.State()))
	return nil
}

// run serves until ctx ends, reloading on SIGHUP, then shuts down gracefully.
func (s *server) run(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	for {
		select {
		case <-usr1:
			s.toggleQueryLog()
		case <-hup:
			err := s.reload()
			if s.reloaded != nil {
				s.reloaded <- err
			}
		case <-ctx.Done():
			s.log.Info("shutting down")
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s.web.Shutdown(sctx)
			err := s.dns.Shutdown(sctx)
			s.stopWatch()
			s.stopCatalogWatch()
			return err
		}
	}
}

// reload swaps in a new configuration only if all of it is valid and built,
// its Consul watcher included; otherwise the running one keeps serving,
// untouched.
func (s *server) reload() error {
	cfg, st, err := load(s.path)
	var (
		w       *health.Watcher
		key     string
		replace bool
	)
	if err == nil {
		// Other services, Consul settings or credentials, or a watcher
		// that stopped: a new watcher, built before anything changes.
		wt := s.watch.Load()
		key = watchKey(cfg)
		if replace = wt == nil || wt.key != key || !wt.running(); replace {
			w, key, err = newWatcher(cfg, s.log)
		}
	}
	if err != nil {
		s.reloadOK.Set(0)
		s.mu.Lock()
		s.lastReload = reloadStatus{OK: false, At: time.Now(), Last: err.Error()}
		s.mu.Unlock()
		s.log.Error("reload failed; still serving the previous configuration", "err", err)
		return err
	}
	s.reloadOK.Set(1)
	s.reloadTime.SetToCurrentTime()
	s.mu.Lock()
	s.lastReload = reloadStatus{OK: true, At: time.Now()}
	s.mu.Unlock()
	old := s.cfg.Load()
	if strings.Join(cfg.DNS.Listen, ",") != strings.Join(old.DNS.Listen, ",") || cfg.HTTP.Listen != old.HTTP.Listen {
		s.log.Warn("listen addresses changed; they take effect on restart")
	}
	if replace {
		// The new watcher starts, then the old one stops.
		s.startWatch(w, key)
	}
	if cfg.DNS.RRL.key() != old.DNS.RRL.key() {
		if err := s.setRRL(cfg); err != nil {
			s.log.Error("rate limiting unchanged", "err", err)
		}
	}
	if catalogKey(cfg) != catalogKey(old) {
		s.stopCatalogWatch()
		if err := s.startCatalogWatch(cfg); err != nil {
			s.log.Error("Consul catalog watcher not restarted", "err", err)
		}
	}
	attachConsulDNS(st, cfg, s.catalogs)
	s.cfg.Store(cfg)
	s.guard.SetToken(cfg.HTTP.token)
	s.dns.SetTCPLimits(cfg.DNS.TCPIdleTimeout, cfg.DNS.MaxTCPConnections)
	s.handler.Swap(st)
	s.log.Info("reloaded", "zones", summary(st))
	return nil
}

// setRRL swaps in the rate limiter cfg describes (nil: none). The new one
// starts with no prefix in debt.
func (s *server) setRRL(cfg *Config) error {
	l, err := cfg.DNS.RRL.limiter(s.log)
	if err != nil {
		return err
	}
	s.dns.SetRRL(l)
	if l != nil {
		r := cfg.DNS.RRL
		s.log.Info("response rate limiting on", "responses_per_second", r.ResponsesPerSecond, "slip", *r.Slip,
			"ipv4_prefix", r.IPv4Prefix, "ipv6_prefix", r.IPv6Prefix, "window", r.Window, "log_only", r.LogOnly)
	}
	return nil
}

// toggleQueryLog switches the query log off if on, on if off.
func (s *server) toggleQueryLog() {
	every := uint32(0)
	if s.handler.QueryLog() == 0 {
		every = s.cfg.Load().Log.QuerySample
	}
	s.handler.SetQueryLog(every)
	s.log.Info("query log", "on", every > 0, "one_in", every)
}

// queryLogGet shows the query log's sampling: one query in N, 0 for off.
func (s *server) queryLogGet(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "every %d\n", s.handler.QueryLog())
}

// queryLogSet sets the query log's sampling (every=N, 0 for off). It sits
// behind the guard: query logs fill disks and show who asks what.
func (s *server) queryLogSet(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	every, err := strconv.ParseUint(r.FormValue("every"), 10, 32)
	if err != nil {
		http.Error(w, "every: want a whole number, 0 for off", http.StatusBadRequest)
		return
	}
	s.handler.SetQueryLog(uint32(every))
	s.log.Info("query log", "on", every > 0, "one_in", every)
	s.queryLogGet(w, r)
}

func (s *server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	// Only requests that change state are guarded; the rest are read-only.
	mux.HandleFunc("GET /debug/querylog", s.queryLogGet)
	mux.Handle("POST /debug/querylog", s.guard.Protect(http.HandlerFunc(s.queryLogSet)))
	mux.HandleFunc("GET /status", s.statusHTML)
	mux.HandleFunc("GET /status.json", s.statusJSON)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError)}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		wt := s.watch.Load()
		if s.cfg.Load().hasPools() && (wt == nil || !wt.running()) {
			// The pools are frozen: nothing will ever update them.
			http.Error(w, "not ready: pools configured but no Consul watcher running", http.StatusServiceUnavailable)
			return
		}
		if ok, why := s.catalogReady(); !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		if wt != nil {
			if ok, why := wt.w.Ready(); !ok {
				// Still answering from the last good data, but a load
				// balancer in front should prefer an instance that is not.
				http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
				return
			}
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}

func logLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, errors.New("want debug, info, warn or error")
	}
	return l, nil
}
