package consultest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Cluster is a real Consul cluster on 127.0.0.1: three server agents that
// elect a leader through Raft and keep their state on disk, and one client
// agent beside the application, as production runs it. Every agent has its
// own random ports (HTTP, Serf LAN, and for servers the server RPC port).
type Cluster struct {
	// Servers are the three server agents. Their Addr answers the HTTP API
	// too, but the application should talk to Agent.
	Servers []*Agent
	// Agent is the client agent (not a Raft member): the application's
	// Consul address is Agent.Addr.
	Agent *Agent

	noStream bool
}

// ClusterOption changes how StartCluster runs the cluster.
type ClusterOption func(*Cluster)

// WithoutStreaming turns off the client agent's streaming backend
// (use_streaming_backend = false). By default a client agent answers a
// blocking /v1/health/service read from a view it keeps up to date through
// a subscription to one server, and moves that subscription to another
// server on its own when the server dies; without streaming each blocking
// read is forwarded to a server as an RPC, and fails if that server dies.
func WithoutStreaming() ClusterOption { return func(c *Cluster) { c.noStream = true } }

// clusterServers is the cluster size: the smallest that survives losing one.
const clusterServers = 3

// StartCluster starts the three servers (bootstrap_expect = 3, retry_join of
// each other) and the client agent, waits until the servers have elected a
// leader and every agent reads the catalog through it, and kills them all
// when the test ends. Without a binary it skips, or fails under CI=true.
func StartCluster(t testing.TB, opts ...ClusterOption) *Cluster {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		Skipf(t, "consultest: no Consul binary: %v", err)
	}
	c := &Cluster{}
	for _, opt := range opts {
		opt(c)
	}
	prefix := "consultest-" + randomHex(3)
	root := t.TempDir()
	for i := range clusterServers + 1 {
		name := fmt.Sprintf("%s-s%d", prefix, i+1)
		if i == clusterServers {
			name = prefix + "-client"
		}
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatalf("consultest: %v", err)
		}
		a := &Agent{t: t, bin: bin, dir: dir, logPath: filepath.Join(dir, "consul.log"), NodeName: name, dataDir: filepath.Join(dir, "data")}
		if i < clusterServers {
			c.Servers = append(c.Servers, a)
		} else {
			c.Agent = a
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range c.all() {
				t.Logf("consultest: %s log tail:\n%s", a.NodeName, a.logTail())
			}
		}
		c.killAll()
	})
	// A port probed free can be taken before an agent binds it; such an
	// agent exits at once, and the whole cluster is tried again on new ports.
	for attempt := 1; ; attempt++ {
		err := c.start()
		if err == nil {
			return c
		}
		c.killAll()
		if attempt == 3 {
			t.Fatalf("consultest: start cluster: %v", err)
		}
		t.Logf("consultest: start cluster (attempt %d): %v; retrying on other ports", attempt, err)
	}
}

func (c *Cluster) all() []*Agent { return append(slices.Clone(c.Servers), c.Agent) }

// start writes every agent's config on fresh ports, launches all four at
// once (the servers wait for each other to bootstrap), and waits for each.
func (c *Cluster) start() error {
	agents := c.all()
	ports, err := freePorts(3 * len(agents))
	if err != nil {
		return err
	}
	var serfs []string
	for i, a := range agents {
		a.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3*i]))
		a.serfAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3*i+1]))
		if i < clusterServers {
			a.ServerAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3*i+2]))
			serfs = append(serfs, a.serfAddr)
		}
		a.Client = nil
		if err := os.RemoveAll(a.dataDir); err != nil {
			return fmt.Errorf("clear %s: %w", a.dataDir, err)
		}
	}
	for i, a := range agents {
		var join []string
		for _, s := range serfs {
			if s != a.serfAddr {
				join = append(join, s)
			}
		}
		if err := a.writeClusterConfig(join, ports[3*i+2], c.noStream); err != nil {
			return err
		}
	}
	done := make([]<-chan struct{}, len(agents))
	for i, a := range agents {
		if done[i], err = a.launch(); err != nil {
			return fmt.Errorf("%s: %w", a.NodeName, err)
		}
	}
	for i, a := range agents {
		if err := a.waitReady(done[i]); err != nil {
			return fmt.Errorf("%s: %w\n%s", a.NodeName, err, a.logTail())
		}
	}
	return nil
}

// writeClusterConfig writes a server's or the client agent's config. The
// timings are the fastest Consul allows outside dev mode (dev mode cannot
// form a multi-server cluster): Raft at raft_multiplier 1 (1 s heartbeat and
// election timeouts), gossip probing every 500 ms, a retry_join every 200 ms,
// and autopilot promoting a new server after 1 s instead of 10 s.
//
// A client agent never listens on serverPort, but Consul insists on a valid one.
func (a *Agent) writeClusterConfig(join []string, serverPort int, noStream bool) error {
	_, http, _ := net.SplitHostPort(a.Addr)
	_, serf, _ := net.SplitHostPort(a.serfAddr)
	role := fmt.Sprintf("server = false\nuse_streaming_backend = %v\n", !noStream)
	if a.ServerAddr != "" {
		role = fmt.Sprintf(`server = true
bootstrap_expect = %d
autopilot {
  cleanup_dead_servers = true
  server_stabilization_time = "1s"
}
`, clusterServers)
	}
	quoted := make([]string, len(join))
	for i, j := range join {
		quoted[i] = strconv.Quote(j)
	}
	// The host-based node ID would give all four agents the same ID; a
	// random one is kept in the data dir, so a wiped server comes back as a
	// new node with its old name and address. WAN gossip, DNS and gRPC are
	// off: fewer ports, and the tests use the HTTP API only.
	cfg := fmt.Sprintf(`node_name = %q
datacenter = "dc1"
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
disable_host_node_id = true
disable_update_check = true
log_level = "INFO"
retry_join = [%s]
retry_interval = "200ms"
%sperformance { raft_multiplier = 1 }
gossip_lan {
  gossip_interval = "100ms"
  probe_interval = "200ms"
  probe_timeout = "100ms"
  suspicion_mult = 3
}
ports {
  http = %s
  serf_lan = %s
  server = %d
  dns = -1
  grpc = -1
  grpc_tls = -1
  serf_wan = -1
}
`, a.NodeName, a.dataDir, strings.Join(quoted, ", "), role, http, serf, serverPort)
	p := filepath.Join(a.dir, "agent.hcl")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write agent config: %w", err)
	}
	a.args = []string{"agent", "-config-file", p}
	return nil
}

// Leader returns the server the live servers agree is the Raft leader. It
// fails while they have none, disagree, or name a server that is not running.
func (c *Cluster) Leader() (*Agent, error) {
	var leader string
	for _, s := range c.Servers {
		if s.PID() == 0 {
			continue
		}
		got, err := s.Client.Status().Leader()
		switch {
		case err != nil:
			return nil, fmt.Errorf("%s: %w", s.NodeName, err)
		case got == "":
			return nil, fmt.Errorf("%s knows no leader", s.NodeName)
		case leader != "" && got != leader:
			return nil, fmt.Errorf("servers disagree on the leader: %s and %s", leader, got)
		}
		leader = got
	}
	for _, s := range c.Servers {
		if s.ServerAddr == leader && s.PID() != 0 {
			return s, nil
		}
	}
	return nil, fmt.Errorf("leader %q is not a running server", leader)
}

// WaitLeader polls until the live servers agree on a running leader other
// than not (nil: any), and returns it.
func (c *Cluster) WaitLeader(t testing.TB, not *Agent) *Agent {
	t.Helper()
	deadline := time.Now().Add(StartTimeout)
	for {
		l, err := c.Leader()
		if err == nil && l != not {
			return l
		}
		if err == nil {
			err = fmt.Errorf("%s is still the leader", l.NodeName)
		}
		if time.Now().After(deadline) {
			t.Fatalf("consultest: no new leader after %v: %v", StartTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitHealthy polls until autopilot, asked through the client agent, reports
// the cluster healthy with exactly the three running servers, by name and
// current node ID, each a voter: a
// restarted or wiped server has rejoined, caught up and been promoted, and
// no dead peer is left in the Raft configuration.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(StartTimeout)
	for {
		err := c.healthy()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consultest: cluster not healthy after %v: %v", StartTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) healthy() error {
	h, err := c.Agent.Client.Operator().AutopilotServerHealth(nil)
	if err != nil {
		return err
	}
	if !h.Healthy {
		return errors.New("autopilot: unhealthy")
	}
	// A rebuilt server has a new node ID under its old name: until autopilot
	// reports that ID, it is still looking at the dead one.
	var got, want []string
	for _, s := range h.Servers {
		if !s.Healthy || !s.Voter {
			return fmt.Errorf("autopilot: %s (%s) healthy %v, voter %v", s.Name, s.ID, s.Healthy, s.Voter)
		}
		got = append(got, s.Name+"/"+s.ID)
	}
	for _, s := range c.Servers {
		if s.PID() == 0 {
			return fmt.Errorf("%s is not running", s.NodeName)
		}
		self, err := s.Client.Agent().Self()
		if err != nil {
			return fmt.Errorf("%s: %w", s.NodeName, err)
		}
		id, _ := self["Config"]["NodeID"].(string)
		want = append(want, s.NodeName+"/"+id)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("autopilot: servers %v, want %v", got, want)
	}
	return nil
}

// Kill kills the agent with SIGKILL, as a crash or a power cut would: no
// leave, no snapshot, and a server's Raft peers are not told.
func (a *Agent) Kill() {
	a.mu.Lock()
	cmd, done := a.proc, a.done
	a.proc, a.done = nil, nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Wipe kills a cluster agent if it runs and deletes its data dir: Raft log,
// snapshots and node ID. Restart then brings it back as a new node under its
// old name and ports, as an operator rebuilding a lost server would, and it
// rejoins through retry_join.
func (a *Agent) Wipe() {
	a.t.Helper()
	if a.dataDir == "" {
		a.t.Fatal("consultest: Wipe: a dev agent has no data dir")
	}
	a.Kill()
	if err := os.RemoveAll(a.dataDir); err != nil {
		a.t.Fatalf("consultest: wipe %s: %v", a.NodeName, err)
	}
}

func (c *Cluster) killAll() {
	var wg sync.WaitGroup
	for _, a := range c.all() {
		wg.Go(a.Kill)
	}
	wg.Wait()
}

// ServersUsed returns the running servers the client agent holds
// established TCP connections to, on their server RPC ports: the servers
// its reads and writes go through (it keeps to one until that one fails).
// Read from /proc, so Linux only.
func (c *Cluster) ServersUsed() ([]*Agent, error) {
	pid := c.Agent.PID()
	if pid == 0 {
		return nil, errors.New("the client agent is not running")
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, fmt.Errorf("list the client agent's files: %w", err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return nil, fmt.Errorf("read the client agent's TCP table: %w", err)
	}
	remotes := map[string]bool{} // hex "0100007F:PORT" as /proc writes it
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		// sl local remote st ... inode is the tenth field; 01 is ESTABLISHED.
		if len(f) >= 10 && f[3] == "01" && inodes[f[9]] {
			remotes[f[2]] = true
		}
	}
	var used []*Agent
	for _, s := range c.Servers {
		_, port, _ := net.SplitHostPort(s.ServerAddr)
		p, _ := strconv.Atoi(port)
		if s.PID() != 0 && remotes[fmt.Sprintf("0100007F:%04X", p)] {
			used = append(used, s)
		}
	}
	return used, nil
}
