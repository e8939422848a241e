package main

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
)

// TestConsulCluster runs farmdns (allow_stale) against a real three-server
// Consul cluster through a client agent, the production topology, and
// breaks the cluster under it: the Raft leader is killed, a health change
// is made once a new leader is elected, and the dead server is rebuilt from
// an empty data dir. Throughout, every pool query gets the full expected
// answer, every published snapshot holds exactly the expected targets with
// their load reports, and /readyz stays 200.
//
// It runs twice: with the client agent's defaults, where health reads are
// served from its streaming view, and with streaming off, where each
// blocking read is an RPC to one server and fails when that server dies.
func TestConsulCluster(t *testing.T) {
	t.Run("streaming", func(t *testing.T) { testConsulCluster(t) })
	t.Run("rpc", func(t *testing.T) { testConsulCluster(t, consultest.WithoutStreaming()) })
}

func testConsulCluster(t *testing.T, opts ...consultest.ClusterOption) {
	start := time.Now()
	c := consultest.StartCluster(t, opts...)
	t.Logf("cluster of three servers and a client agent up in %v", time.Since(start).Round(time.Millisecond))
	const nodes = 4
	for i := 1; i <= nodes; i++ {
		registerNode(t, c.Agent, i, int64(100*i))
	}
	path := writeConfig(t, fmt.Sprintf(`dns:
  listen: ["127.0.0.1:0"]
http:
  listen: "127.0.0.1:0"
consul:
  address: %q
  allow_stale: true
zones:
  - origin: farm.example.com.
    file: farm.zone
    pools:
      - name: "@"
        service: ws
        answers: %d
        slow_start: 0s
`, c.Agent.Addr, nodes), goodZone)
	srv, _ := runServer(t, path)
	f := &farm{consul: c.Agent, srv: srv, dns: srv.dns.BoundAddrs()[0].String()}

	all := []string{"127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"}
	healthy := all[1:] // once n1 is critical
	// answers: 4 puts every eligible target in every answer, so one query
	// shows the whole pool.
	eventually(t, 15*time.Second, "pool filled, every load known", func() bool {
		return slices.Equal(sorted(f.ask(t, 1)), all) && slices.Equal(knownTargets(srv.currentWatcher().Snapshot()), all)
	})

	m := startClusterMonitor(t, f, all)
	leader := c.WaitLeader(t, nil)
	usedBefore := serversUsed(t, c)
	leader.Kill()
	killed := time.Now()
	next := c.WaitLeader(t, leader)
	elected := time.Now()
	t.Logf("killed leader %s; %s elected after %v", leader.NodeName, next.NodeName, elected.Sub(killed).Round(time.Millisecond))

	// A health change once the new leader is there. The client agent may
	// still try the dead server first, so the write is retried, as any
	// writer (a farmdns-agent, Consul's own check sync) retries.
	m.allow(all, healthy)
	writeRetry(t, "n1 critical", func() error {
		return c.Agent.SetCheckErr("n1", "ws-n1", consultest.ServiceCheckID("ws-n1"), api.HealthCritical)
	})
	written := time.Now()
	eventually(t, 10*time.Second, "critical n1 left the answers", func() bool { return slices.Equal(sorted(f.ask(t, 2)), healthy) })
	seen := time.Now()
	m.allow(healthy)
	t.Logf("health change shown %v after the new leader (write committed after %v, then %v to the answers)",
		seen.Sub(elected).Round(time.Millisecond), written.Sub(elected).Round(time.Millisecond), seen.Sub(written).Round(time.Millisecond))
	if d := seen.Sub(elected); d > 5*time.Second {
		t.Errorf("the health change showed %v after the new leader, want within 5 s", d)
	}

	// A server's disk is lost: it is rebuilt from an empty data dir, rejoins,
	// catches up and becomes a voter again, while farmdns goes on. The
	// server lost is the one farmdns's reads went through, so that its
	// blocking queries break at least once in the test: the dead leader if
	// the client agent used it, else (once the leader is back from its own
	// data) the server the client agent uses now.
	victim := leader
	if !slices.Contains(usedBefore, leader) {
		restarted := time.Now()
		leader.Restart()
		c.WaitHealthy(t)
		t.Logf("restarted %s from its data: a voter again after %v", leader.NodeName, time.Since(restarted).Round(time.Millisecond))
		victim = serversUsed(t, c)[0]
		victim.Kill()
	}
	t.Logf("the client agent used %s before the leader died; rebuilding %s, the server it used last", names(usedBefore), victim.NodeName)
	victim.Wipe()
	rebuilt := time.Now()
	victim.Restart()
	c.WaitHealthy(t)
	t.Logf("rebuilt %s: a voter again after %v", victim.NodeName, time.Since(rebuilt).Round(time.Millisecond))

	// The rebuilt cluster still carries changes to farmdns.
	m.allow(healthy, all)
	writeRetry(t, "n1 passing", func() error {
		return c.Agent.SetCheckErr("n1", "ws-n1", consultest.ServiceCheckID("ws-n1"), api.HealthPassing)
	})
	eventually(t, 10*time.Second, "recovered n1 back in the answers", func() bool { return slices.Equal(sorted(f.ask(t, 3)), all) })
	m.allow(all)

	m.stop(t)
	for _, d := range srv.currentWatcher().Status().DataSets {
		t.Logf("consul reads failed during the test: %s %s: %d", d.Kind, d.Name, d.Errors)
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}

// serversUsed returns the servers the client agent is connected to, at
// least one.
func serversUsed(t *testing.T, c *consultest.Cluster) []*consultest.Agent {
	t.Helper()
	var used []*consultest.Agent
	eventually(t, 10*time.Second, "the client agent connected to a server", func() bool {
		var err error
		used, err = c.ServersUsed()
		if err != nil {
			t.Fatal(err)
		}
		return len(used) > 0
	})
	return used
}

func names(agents []*consultest.Agent) string {
	var n []string
	for _, a := range agents {
		n = append(n, a.NodeName)
	}
	return strings.Join(n, ", ")
}

// clusterMonitor asks farmdns for the pool without pause, follows every
// snapshot it publishes, and polls /readyz, from the moment it starts until
// stop; each answer and snapshot must hold one of the allowed target sets.
type clusterMonitor struct {
	allowed atomic.Pointer[[][]string]
	done    chan struct{}
	wg      sync.WaitGroup

	mu        sync.Mutex
	problems  []string
	queries   int
	snapshots int
	readyz    int
}

func startClusterMonitor(t *testing.T, f *farm, initial []string) *clusterMonitor {
	m := &clusterMonitor{done: make(chan struct{})}
	m.allow(initial)
	t.Cleanup(func() { m.halt() })
	// DNS: one query at a time from one resolver (an address f.ask never
	// uses), over UDP.
	m.wg.Go(func() {
		d := &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 9, 9, 1)}}
		cl := &dns.Client{Dialer: d, Timeout: time.Second}
		q := new(dns.Msg).SetQuestion("farm.example.com.", dns.TypeA)
		for !m.stopped() {
			want := m.allowedNow()
			r, _, err := cl.Exchange(q, f.dns)
			var got []string
			if err == nil {
				for _, rr := range r.Answer {
					if a, ok := rr.(*dns.A); ok {
						got = append(got, a.A.String())
					}
				}
			}
			m.record(func() string {
				m.queries++
				switch {
				case err != nil:
					return fmt.Sprintf("query failed: %v", err)
				case r.Rcode != dns.RcodeSuccess || len(got) == 0:
					return fmt.Sprintf("empty answer: %s, %d records", dns.RcodeToString[r.Rcode], len(got))
				case !oneOf(sorted(got), want):
					return fmt.Sprintf("answer %v, want one of %v", sorted(got), want)
				}
				return ""
			})
			time.Sleep(5 * time.Millisecond)
		}
	})
	// Snapshots: every one the watcher publishes.
	m.wg.Go(func() {
		w := f.srv.currentWatcher()
		for snap := w.Snapshot(); ; snap = w.Snapshot() {
			want := m.allowedNow()
			got := knownTargets(snap)
			m.record(func() string {
				m.snapshots++
				if !oneOf(got, want) {
					return fmt.Sprintf("snapshot %d: eligible with known loads %v, want one of %v", snap.Generation(), got, want)
				}
				return ""
			})
			select {
			case <-snap.Superseded():
			case <-m.done:
				return
			}
		}
	})
	// Readiness.
	m.wg.Go(func() {
		url := f.web() + "/readyz"
		hc := &http.Client{Timeout: 2 * time.Second}
		for !m.stopped() {
			resp, err := hc.Get(url)
			m.record(func() string {
				m.readyz++
				if err != nil {
					return fmt.Sprintf("/readyz: %v", err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Sprintf("/readyz: %d", resp.StatusCode)
				}
				return ""
			})
			time.Sleep(100 * time.Millisecond)
		}
	})
	return m
}

// allow sets the target sets an answer or snapshot may hold from now on
// (several while a change is on its way).
func (m *clusterMonitor) allow(sets ...[]string) { m.allowed.Store(&sets) }

func (m *clusterMonitor) allowedNow() [][]string { return *m.allowed.Load() }

func (m *clusterMonitor) stopped() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

func (m *clusterMonitor) record(check func() string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := check(); p != "" {
		m.problems = append(m.problems, time.Now().Format("15:04:05.000 ")+p)
	}
}

func (m *clusterMonitor) halt() {
	select {
	case <-m.done:
	default:
		close(m.done)
	}
	m.wg.Wait()
}

// stop ends the monitoring and fails the test with what it saw go wrong.
func (m *clusterMonitor) stop(t *testing.T) {
	t.Helper()
	m.halt()
	m.mu.Lock()
	defer m.mu.Unlock()
	t.Logf("monitored: %d pool queries, %d snapshots, %d /readyz", m.queries, m.snapshots, m.readyz)
	if m.queries == 0 || m.snapshots == 0 || m.readyz == 0 {
		t.Errorf("the monitor saw nothing")
	}
	if len(m.problems) > 0 {
		const show = 20
		t.Errorf("%d problems while the cluster changed, the first %d:\n%s",
			len(m.problems), min(show, len(m.problems)), strings.Join(m.problems[:min(show, len(m.problems))], "\n"))
	}
}

// knownTargets returns the sorted addresses of the pool's eligible targets
// whose load report is known: a lost report shows as a missing target.
func knownTargets(snap *health.Snapshot) []string {
	var out []string
	if p := snap.Pool("ws"); p != nil {
		for _, tg := range p.Targets() {
			if tg.Eligible() && tg.Load.Known() {
				out = append(out, tg.Address.String())
			}
		}
	}
	slices.Sort(out)
	return out
}

func oneOf(got []string, sets [][]string) bool {
	return slices.ContainsFunc(sets, func(s []string) bool { return slices.Equal(got, s) })
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// writeRetry retries a Consul write for up to 10 s.
func writeRetry(t *testing.T, what string, write func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := write()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("write %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
