package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
)

// mainEnv makes the test binary behave as farmdns-agent itself, so that the
// drain tests send real signals to a real process.
const mainEnv = "FARMDNS_AGENT_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// syncBuffer collects a child's output for the failure message.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type process struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

// startProcess runs farmdns-agent with a configuration file and stops it at
// the end of the test if it is still running.
func startProcess(t *testing.T, config string) *process {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &process{out: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], "-config", path)
	p.cmd.Env = append(os.Environ(), mainEnv+"=1")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("farmdns-agent output:\n%s", p.out.String())
		}
	})
	return p
}

// wait returns the process's exit error, failing the test after waitBound.
func (p *process) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(waitBound):
		t.Fatalf("farmdns-agent still running after %v", waitBound)
		return nil
	}
}

func processConfig(consulAddr string, port int, grace time.Duration, listen string) string {
	return fmt.Sprintf(`consul: {address: %q}
service: {name: ws, port: %d, register: true}
count: {ports: [%d]}
report: {interval: 100ms, heartbeat: 2s}
drain: {grace: %s}
http: {listen: %q}
log: {level: debug}
`, consulAddr, port, port, grace, listen)
}

func registeredIn(consul *consultest.Agent, id string) bool {
	_, _, err := consul.Client.Agent().Service(id, nil)
	return err == nil
}

// TestProcessSIGTERM: SIGTERM puts the instance in maintenance, waits for
// the connections (here: until the grace period ends, as one stays open),
// deregisters, and exits 0.
func TestProcessSIGTERM(t *testing.T) {
	consul := consultest.Start(t)
	app := newTCPServer(t)
	app.dial(1)
	const grace = 1500 * time.Millisecond
	p := startProcess(t, processConfig(consul.Addr, app.port, grace, "off"))
	id := "ws-" + consul.NodeName
	waitFor(t, "registration", func() (bool, string) { return registeredIn(consul, id), "" })
	key := health.LoadKey(health.DefaultLoadPrefix, "ws", consul.NodeName, id)
	waitFor(t, "the first report", func() (bool, string) {
		kv, _, err := consul.Client.KV().Get(key, nil)
		return err == nil && kv != nil, ""
	})

	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "maintenance mode", func() (bool, string) {
		checks, err := consul.Client.Agent().Checks()
		if err != nil {
			return false, err.Error()
		}
		c := checks["_service_maintenance:"+id]
		return c != nil && c.Status == api.HealthCritical, ""
	})
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if took := time.Since(sent); took < grace {
		t.Errorf("exited %v after SIGTERM with a connection open, before the %v grace period", took, grace)
	}
	if registeredIn(consul, id) {
		t.Error("still registered after exit")
	}
	if kv, _, _ := consul.Client.KV().Get(key, nil); kv != nil {
		t.Error("load report left after exit")
	}
}

// TestProcessDrainCommand: "farmdns-agent drain" asks the running agent over
// HTTP and returns once it has exited.
func TestProcessDrainCommand(t *testing.T) {
	consul := consultest.Start(t)
	app := newTCPServer(t)
	listen := freeAddr(t)
	p := startProcess(t, processConfig(consul.Addr, app.port, 10*time.Second, listen))
	cfgPath := p.cmd.Args[2]
	id := "ws-" + consul.NodeName
	waitFor(t, "registration and HTTP", func() (bool, string) {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
		}
		return err == nil && registeredIn(consul, id), ""
	})
	var out, errb bytes.Buffer
	if code := run([]string{"drain", "-config", cfgPath, "-wait", waitBound.String()}, &out, &errb); code != 0 {
		t.Fatalf("drain: exit %d\n%s%s", code, out.String(), errb.String())
	}
	// A drain that no signal asked for ends with exitDrainedOnRequest, so
	// that systemd (RestartPreventExitStatus) leaves the node drained and
	// shows it.
	var exit *exec.ExitError
	if err := p.wait(t); !errors.As(err, &exit) || exit.ExitCode() != exitDrainedOnRequest {
		t.Fatalf("agent exit: %v, want exit status %d", err, exitDrainedOnRequest)
	}
	if registeredIn(consul, id) {
		t.Error("still registered after drain")
	}
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
}
