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
	"strings"
	"syscall"
	"time"

	"github.com/farmdns/farmdns/dnsserver"
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
	if err := serve(ctx, *configPath, cfg, st, log); err != nil {
		log.Error("farmdns stopped", "err", err)
		return 1
	}
	return 0
}

// load reads the config and builds the state it describes.
func load(path string) (*Config, *dnsserver.State, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := buildState(cfg)
	if err != nil {
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

// serve runs the DNS and HTTP servers until ctx ends, reloading on SIGHUP.
func serve(ctx context.Context, path string, cfg *Config, st *dnsserver.State, log *slog.Logger) error {
	h := dnsserver.NewHandler(st, log)
	srv := &dnsserver.Server{
		Handler:        h,
		Addrs:          cfg.DNS.Listen,
		TCPIdleTimeout: cfg.DNS.TCPIdleTimeout,
		MaxTCPConns:    cfg.DNS.MaxTCPConnections,
		Log:            log,
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	hl, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		srv.Shutdown(context.Background())
		return fmt.Errorf("http listen: %w", err)
	}
	web := &http.Server{Handler: httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	go web.Serve(hl)
	log.Info("farmdns serving", "dns", srv.BoundAddrs(), "http", hl.Addr().String(), "zones", summary(st))

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			cfg = reload(path, cfg, h, log)
		case <-ctx.Done():
			log.Info("shutting down")
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			web.Shutdown(sctx)
			return srv.Shutdown(sctx)
		}
	}
}

// reload swaps in a new configuration only if all of it is valid; otherwise
// the running one keeps serving, untouched.
func reload(path string, running *Config, h *dnsserver.Handler, log *slog.Logger) *Config {
	cfg, st, err := load(path)
	if err != nil {
		log.Error("reload failed; still serving the previous configuration", "err", err)
		return running
	}
	if strings.Join(cfg.DNS.Listen, ",") != strings.Join(running.DNS.Listen, ",") || cfg.HTTP.Listen != running.HTTP.Listen {
		log.Warn("listen addresses changed; they take effect on restart")
	}
	h.Swap(st)
	log.Info("reloaded", "zones", summary(st))
	return cfg
}

func httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
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
