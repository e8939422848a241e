// Command farmdns-agent runs beside each server of a farm and reports the
// server's live connection count to Consul KV, where farmdns reads it. It
// counts established TCP connections from the kernel (or reads a number the
// application exposes), so applications need no change.
//
// Usage:
//
//	farmdns-agent -config /etc/farmdns/agent.yaml          run
//	farmdns-agent -config /etc/farmdns/agent.yaml -check   validate the file and exit
//	farmdns-agent drain -config /etc/farmdns/agent.yaml    make the running agent drain
//
// SIGTERM or SIGINT drains: maintenance mode on, keep reporting while
// connections bleed off (drain.grace at most), deregister, exit 0. A second
// signal skips the wait. A drain asked over HTTP ("farmdns-agent drain")
// ends with exit status 10 instead, so that the service manager leaves the
// node drained, and shows it. See README-agent.md.
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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/farmdns/farmdns/cmd/internal/adminhttp"
	"github.com/farmdns/farmdns/health"
)

const defaultConfigPath = "/etc/farmdns/agent.yaml"

// exitDrainedOnRequest is the exit status after a drain that was asked over
// HTTP, not by a signal: the node is out of the pool on purpose, and
// farmdns-agent.service (RestartPreventExitStatus) must not undo that by
// restarting the agent, which would register the node again.
const exitDrainedOnRequest = 10

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process exit, for tests. Exit codes: 0 done
// (drained on a signal), 1 runtime failure, 2 bad usage or configuration,
// exitDrainedOnRequest drained on request over HTTP.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "drain" {
		return runDrain(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("farmdns-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfigPath, "configuration `file` (YAML)")
	check := fs.Bool("check", false, "validate the configuration and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "farmdns-agent: unexpected argument %q (the only command is \"drain\")\n", fs.Arg(0))
		return 2
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "farmdns-agent: %v\n", err)
		return 2
	}
	if *check {
		fmt.Fprintf(stdout, "%s: OK\n", *configPath)
		return 0
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	asked, err := serve(context.Background(), cfg, log, sigs)
	if err != nil {
		log.Error("farmdns-agent stopped", "err", err)
		return 1
	}
	if asked {
		log.Info("drained on request; the node stays out of the pool until the agent is started again", "exit", exitDrainedOnRequest)
		return exitDrainedOnRequest
	}
	return 0
}

// serve wires the agent and runs it until it has drained. Each signal on
// sigs requests a drain; the second one finishes it without waiting. asked
// reports a drain that was asked over HTTP and by no signal.
func serve(ctx context.Context, cfg *settings, log *slog.Logger, sigs <-chan os.Signal) (asked bool, err error) {
	client, err := cfg.consul.Client()
	if err != nil {
		return false, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := newMetrics(reg)
	if err != nil {
		return false, err
	}
	src, err := newSource(cfg)
	if err != nil {
		return false, err
	}
	defer src.close()
	agent := newAgent(cfg, log, src, health.NewReporter(client, cfg.prefix), m)

	var srv *http.Server
	httpDone := make(chan error, 1)
	if cfg.listen != "" {
		ln, err := net.Listen("tcp", cfg.listen)
		if err != nil {
			return false, fmt.Errorf("http.listen: %w", err)
		}
		srv = adminhttp.NewServer(agent.handler(reg), cfg.httpIdle, log)
		go func() { httpDone <- srv.Serve(ln) }()
		log.Info("serving /metrics, /healthz and POST /drain", "addr", ln.Addr().String())
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigDone := make(chan struct{})
	n := 0 // signals received; read after sigDone
	go func() {
		defer close(sigDone)
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				n++
				log.Info("signal received", "signal", s.String(), "finish_now", n > 1)
				agent.RequestDrain(n > 1)
			}
		}
	}()

	errc := make(chan error, 1)
	go func() { errc <- agent.Run(ctx) }()
	select {
	case err = <-errc:
	case herr := <-httpDone:
		err = fmt.Errorf("http server: %w", herr)
		cancel()
		<-errc
	}
	cancel()
	<-sigDone
	if srv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
	}
	return err == nil && n == 0 && agent.asked.Load(), err
}

// runDrain implements "farmdns-agent drain": ask the agent configured in the
// file (through its HTTP endpoint) to drain, and wait until it has exited.
func runDrain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("farmdns-agent drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfigPath, "configuration `file` of the running agent")
	wait := fs.Duration("wait", 0, "how long to wait for the agent to exit (default: drain.grace + 30s; 0s with -no-wait)")
	noWait := fs.Bool("no-wait", false, "return once the agent has accepted the request")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "farmdns-agent drain: %v\n", err)
		return 2
	}
	if cfg.listen == "" {
		fmt.Fprintln(stderr, `farmdns-agent drain: http.listen is "off"; send SIGTERM to the agent instead`)
		return 2
	}
	base := "http://" + dialable(cfg.listen)
	client := &http.Client{Timeout: 5 * time.Second}
	req, err := http.NewRequest(http.MethodPost, base+"/drain", nil)
	if err != nil {
		fmt.Fprintf(stderr, "farmdns-agent drain: %v\n", err)
		return 2
	}
	// What the agent's guard asks of a local client, and the token if the
	// config names one (the same file the agent read).
	cfg.httpToken.Authorize(req)
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "farmdns-agent drain: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		fmt.Fprintf(stderr, "farmdns-agent drain: %s answered %s\n", base, resp.Status)
		return 1
	}
	fmt.Fprintf(stdout, "draining (grace %v)\n", cfg.grace)
	if *noWait {
		return 0
	}
	limit := *wait
	if limit == 0 {
		limit = cfg.grace + 30*time.Second
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		resp, err := client.Get(base + "/healthz")
		if err != nil {
			var op *net.OpError
			if errors.As(err, &op) && op.Op == "dial" {
				fmt.Fprintln(stdout, "drained: the agent has exited")
				return 0
			}
			continue
		}
		resp.Body.Close()
	}
	fmt.Fprintf(stderr, "farmdns-agent drain: the agent still runs after %v\n", limit)
	return 1
}

// dialable turns a listen address into one to connect to: an unspecified
// host (":9154", "0.0.0.0:9154", "[::]:9154") becomes loopback.
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if ip != nil && ip.To4() == nil {
			host = "::1"
		} else {
			host = "127.0.0.1"
		}
	}
	return net.JoinHostPort(strings.Trim(host, "[]"), port)
}
