// Package consultest runs a real Consul agent (`consul agent -dev`) for tests.
//
// The binary comes from FARMDNS_CONSUL, else from the repository's
// .ci/consul.sh, which builds a pinned Consul from the Go module proxy once and
// caches it outside the repository. Without a binary a test is skipped, except
// when CI=true, where a missing Consul is a failure.
package consultest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// StartTimeout bounds how long Start and Restart wait for the agent to elect
// itself leader.
const StartTimeout = 30 * time.Second

// Option changes how Start runs the agent.
type Option func(*options)

type options struct {
	acl   bool
	dns   bool
	extra string
}

// WithACL enables ACLs with default policy deny. The agent's initial
// management token is in Agent.Token, and Agent.Client uses it.
func WithACL() Option { return func(o *options) { o.acl = true } }

// WithDNS enables the agent's DNS interface on a free loopback port (UDP and
// TCP); its address is in Agent.DNSAddr.
func WithDNS() Option { return func(o *options) { o.dns = true } }

// WithConfig appends HCL to the agent's configuration, for settings such as
// dns_config that no other option covers.
func WithConfig(hcl string) Option { return func(o *options) { o.extra += hcl + "\n" } }

// Agent is a running dev-mode Consul agent bound to 127.0.0.1. Its exported
// fields do not change after Start; Restart keeps the same ports and token.
type Agent struct {
	// Addr is the HTTP API address, 127.0.0.1:port.
	Addr string
	// Client talks to Addr, with the management token when ACLs are on.
	Client *api.Client
	// Token is the initial management token; empty without ACLs.
	Token string
	// NodeName is the agent's own node name.
	NodeName string
	// DNSAddr is the DNS interface's address, 127.0.0.1:port, with WithDNS;
	// empty otherwise.
	DNSAddr string
	// ServerAddr is a cluster server's RPC and Raft address, as
	// /v1/status/leader names it; empty for the dev and the client agent.
	ServerAddr string

	t        testing.TB
	bin      string
	dir      string
	args     []string
	logPath  string
	dataDir  string // a cluster agent's state; empty for a dev agent
	serfAddr string // a cluster agent's Serf LAN address

	mu   sync.Mutex // guards proc and done
	proc *exec.Cmd
	done chan struct{} // closed when proc has exited
}

// Start starts a dev agent on free loopback ports, waits for it to be leader,
// and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Agent {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := Binary()
	if err != nil {
		Skipf(t, "consultest: no Consul binary: %v", err)
	}
	dir := t.TempDir()
	a := &Agent{t: t, bin: bin, dir: dir, logPath: filepath.Join(dir, "consul.log")}
	a.NodeName = "consultest-" + randomHex(4)
	if o.acl {
		a.Token = randomUUID()
	}
	// A free port can be taken by someone else between our probe and the
	// agent's bind; try a few sets before giving up.
	for attempt := 1; ; attempt++ {
		nports := 3
		if o.dns {
			nports = 4
		}
		ports, err := freePorts(nports)
		if err != nil {
			t.Fatalf("consultest: %v", err)
		}
		if err := a.writeConfig(ports, o); err != nil {
			t.Fatalf("consultest: %v", err)
		}
		a.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		if o.dns {
			a.DNSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3]))
		}
		a.Client = nil // made again for the new address
		err = a.start()
		if err == nil {
			break
		}
		a.kill()
		if attempt == 3 {
			t.Fatalf("consultest: start consul: %v\n%s", err, a.logTail())
		}
		t.Logf("consultest: start consul (attempt %d): %v; retrying on other ports", attempt, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("consultest: consul log tail:\n%s", a.logTail())
		}
		a.kill()
	})
	return a
}

// Binary returns the path of a Consul binary: FARMDNS_CONSUL if set, else the
// output of the repository's .ci/consul.sh (which may build it, once).
func Binary() (string, error) {
	if p := os.Getenv("FARMDNS_CONSUL"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("FARMDNS_CONSUL: %w", err)
		}
		return p, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, ".ci", "consul.sh")
	cmd := exec.Command("bash", script)
	cmd.Stderr = os.Stderr // a first build takes minutes; show why
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	p := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(p, '\n'); i >= 0 {
		p = p[i+1:]
	}
	if p == "" {
		return "", fmt.Errorf("%s printed no path", script)
	}
	return p, nil
}

// moduleRoot finds the directory holding go.mod and .ci/consul.sh, first from
// the working directory (go test runs in the package directory), then from
// this source file's location.
func moduleRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if fileExists(filepath.Join(d, "go.mod")) && fileExists(filepath.Join(d, ".ci", "consul.sh")) {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("cannot find the module root holding .ci/consul.sh")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func (a *Agent) writeConfig(ports []int, o options) error {
	acl := ""
	if o.acl {
		acl = fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  tokens { initial_management = %q }
}
`, a.Token)
	}
	// DNS (unless asked for), gRPC and WAN gossip are off: fewer ports to
	// collide on, and most tests use the HTTP API only.
	dns := -1
	if o.dns {
		dns = ports[3]
	}
	cfg := fmt.Sprintf(`node_name = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
disable_update_check = true
log_level = "INFO"
ports {
  http = %d
  serf_lan = %d
  server = %d
  dns = %d
  grpc = -1
  grpc_tls = -1
  serf_wan = -1
}
%s%s`, a.NodeName, ports[0], ports[1], ports[2], dns, acl, o.extra)
	p := filepath.Join(a.dir, "agent.hcl")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write agent config: %w", err)
	}
	a.args = []string{"agent", "-dev", "-disable-host-node-id", "-config-file", p}
	return nil
}

// start launches the process and waits until it knows a leader and answers.
func (a *Agent) start() error {
	done, err := a.launch()
	if err != nil {
		return err
	}
	return a.waitReady(done)
}

// launch starts the process without waiting for it; the returned channel is
// closed when it exits.
func (a *Agent) launch() (<-chan struct{}, error) {
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(a.bin, a.args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("exec %s: %w", a.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	a.mu.Lock()
	a.proc, a.done = cmd, done
	a.mu.Unlock()

	// The address and token never change, so one client serves every run
	// (and callers may keep using it across a restart).
	if a.Client == nil {
		cfg := api.DefaultConfig()
		cfg.Address = a.Addr
		cfg.Token = a.Token
		client, err := api.NewClient(cfg)
		if err != nil {
			return nil, fmt.Errorf("consul client: %w", err)
		}
		a.Client = client
	}
	return done, nil
}

func (a *Agent) waitReady(done <-chan struct{}) error {
	deadline := time.Now().Add(StartTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("consul exited during start-up")
		case <-time.After(50 * time.Millisecond):
		}
		leader, err := a.Client.Status().Leader()
		if err != nil || leader == "" {
			last = fmt.Errorf("no leader yet (%v)", err)
			continue
		}
		// A catalog read proves the state store answers (and, with ACLs,
		// that the management token has been bootstrapped).
		if _, _, err := a.Client.Catalog().Nodes(nil); err != nil {
			last = err
			continue
		}
		return nil
	}
	return fmt.Errorf("not ready after %v: %v", StartTimeout, last)
}

// Stop stops the agent and waits for it to exit. A dev agent keeps its state
// in memory, so everything registered is lost.
func (a *Agent) Stop() {
	a.t.Helper()
	a.kill()
}

// Restart starts the agent again on the same ports after Stop. The state is
// empty: tests must register their services again.
func (a *Agent) Restart() {
	a.t.Helper()
	a.kill()
	deadline := time.Now().Add(StartTimeout)
	for {
		err := a.start()
		if err == nil {
			return
		}
		a.kill()
		// The old process's ports may linger for a moment.
		if time.Now().After(deadline) {
			a.t.Fatalf("consultest: restart consul: %v\n%s", err, a.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// PID returns the agent's process ID, or 0 when it is not running.
func (a *Agent) PID() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc == nil || a.proc.Process == nil {
		return 0
	}
	return a.proc.Process.Pid
}

// kill interrupts the agent, escalating to SIGKILL after 10 s, and waits.
func (a *Agent) kill() {
	a.mu.Lock()
	cmd, done := a.proc, a.done
	a.proc, a.done = nil, nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
		return
	case <-time.After(10 * time.Second):
	}
	_ = cmd.Process.Kill()
	<-done
}

func (a *Agent) logTail() string {
	b, err := os.ReadFile(a.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(bytes.TrimSpace(b))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// context-free helpers below use a bounded timeout so a wedged agent fails
// the test instead of hanging it.
const opTimeout = 10 * time.Second

func (a *Agent) writeOpts() (*api.WriteOptions, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	return (&api.WriteOptions{}).WithContext(ctx), cancel
}
