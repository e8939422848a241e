package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health/consultest"
)

// TestUnbound puts Debian's unbound, a real caching resolver, in front of
// farmdns (with a real Consul) and shows two things from the clients' side.
//
// A pool with ttl: 0s is not cached: every client query reaches farmdns and
// is a choice of its own, while the same clients asking a pool with a TTL
// are answered from unbound's cache. (unbound's subnet cache keeps a TTL 0
// answer to the end of the second it came in, so through it "every query"
// is at most one a second per client subnet; its plain cache keeps nothing.)
//
// Clients in different /24s get separate answers through one unbound: it
// sends each client's subnet (ECS), farmdns chooses for that network and
// answers with scope /24, and unbound caches the answer for that /24 only.
func TestUnbound(t *testing.T) {
	bin := unboundBinary(t)
	f := startFarm(t, 3, `        policy: round-robin
        answers: 1
        ttl: 60s
      - name: zero
        service: ws
        answers: 1
        ttl: 0s
`, false)
	eventually(t, 10*time.Second, "the pools have their targets", func() bool { return len(f.ask(t, 1)) == 1 })
	plain := startUnbound(t, bin, f.dns, false)
	ecs := startUnbound(t, bin, f.dns, true)
	answered := func(name string) uint64 { return poolOutcome(t, f, name, "answer") }

	// ask asks ub for the zero pool and the cached pool n times as one
	// client, and returns how many of those questions farmdns answered.
	ask := func(t *testing.T, ub string, n int, spaced bool) (zero, cached uint64) {
		zero0, cached0 := answered("zero.farm.example.com."), answered("farm.example.com.")
		for i := range n {
			if spaced {
				// Into the next second: see unbound's subnet cache above.
				time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 20*time.Millisecond)))
			}
			r := ubAsk(t, ub, "zero.farm.example.com.", 200, 1)
			if len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 0 {
				t.Fatalf("query %d through unbound: %v, want one record with TTL 0", i, r.Answer)
			}
			if r := ubAsk(t, ub, "farm.example.com.", 200, 1); len(r.Answer) != 1 || r.Answer[0].Header().Ttl == 0 {
				t.Fatalf("query %d through unbound: %v, want one record with a TTL", i, r.Answer)
			}
		}
		return answered("zero.farm.example.com.") - zero0, answered("farm.example.com.") - cached0
	}
	for _, c := range []struct {
		name   string
		ub     string
		n      int
		spaced bool
	}{
		{"ttl 0 is not cached", plain, 12, false},
		{"ttl 0 is not cached, subnet cache", ecs, 3, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			zero, cached := ask(t, c.ub, c.n, c.spaced)
			t.Logf("%d client queries each: ttl 0s pool answered %d by farmdns, ttl 60s pool %d", c.n, zero, cached)
			if zero < uint64(c.n) {
				t.Errorf("ttl 0s: farmdns answered %d of %d client queries; unbound cached the rest", zero, c.n)
			}
			if cached >= uint64(c.n) {
				t.Errorf("ttl 60s: farmdns answered %d of %d client queries, want 1 (unbound caches it)", cached, c.n)
			}
		})
	}

	t.Run("a choice per client subnet", func(t *testing.T) {
		const subnets = 6
		before := answered("farm.example.com.")
		first := map[int]string{}
		distinct := map[string]bool{}
		for s := range subnets {
			for host := 1; host <= 2; host++ {
				r := ubAsk(t, ecs, "farm.example.com.", 210+s, host)
				if len(r.Answer) != 1 {
					t.Fatalf("client 127.0.%d.%d: %v", 210+s, host, r.Answer)
				}
				a := r.Answer[0].(*dns.A).A.String()
				if host == 1 {
					first[s], distinct[a] = a, true
				} else if a != first[s] {
					t.Errorf("127.0.%d.1 got %s, 127.0.%[1]d.2 (same /24) %s", 210+s, first[s], a)
				}
			}
		}
		asked := answered("farm.example.com.") - before
		t.Logf("%d client subnets, two clients each: %d distinct answers, farmdns answered %d", subnets, len(distinct), asked)
		if len(distinct) < 2 { // round robin gives 3, unless a rebuild restarts it
			t.Errorf("%d client subnets through one unbound got %d distinct answers of 3 nodes: not a choice per subnet", subnets, len(distinct))
		}
		if asked < subnets || asked >= 2*subnets { // unbound may retry a slow answer
			t.Errorf("farmdns answered %d queries for %d client subnets: unbound did not cache per subnet", asked, subnets)
		}
	})
}

// unboundBinary finds unbound (in /usr/sbin, which a user's PATH may lack).
func unboundBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("unbound"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/unbound"); err == nil {
		return "/usr/sbin/unbound"
	}
	consultest.Skipf(t, "unbound is not installed (make test-deps installs it)")
	return ""
}

// startUnbound runs unbound on a loopback port, resolving farm.example.com.
// from farmdns at upstream and nothing else, and returns its address once
// it answers. With ecs, it sends farmdns each client's subnet and keeps a
// cache per subnet.
func startUnbound(t *testing.T, bin, upstream string, ecs bool) string {
	t.Helper()
	host, upPort, _ := net.SplitHostPort(upstream)
	modules := `module-config: "validator iterator"`
	if ecs {
		modules = fmt.Sprintf("module-config: \"subnetcache validator iterator\"\n  send-client-subnet: %s\n  max-client-subnet-ipv4: 24", host)
	}
	// The port was free a moment ago; if another process took it since,
	// unbound exits, and another port is tried.
	var logs string
	for range 3 {
		dir := t.TempDir()
		port := consultest.FreePort(t)
		conf := fmt.Sprintf(`server:
  interface: 127.0.0.1
  port: %d
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: %q
  pidfile: %q
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  qname-minimisation: no
  prefetch: no
  %s
stub-zone:
  name: "farm.example.com."
  stub-addr: %s@%s
`, port, dir, filepath.Join(dir, "unbound.pid"), modules, host, upPort)
		path := filepath.Join(dir, "unbound.conf")
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
		var ok bool
		if logs, ok = runUnbound(t, bin, path, addr); ok {
			return addr
		}
	}
	t.Fatalf("unbound exited three times; its log:\n%s", logs)
	return ""
}

// runUnbound starts unbound with the config at path, stopped when the test
// ends, and waits until it answers at addr. ok is false if it exited
// first, with its log.
func runUnbound(t *testing.T, bin, path, addr string) (logs string, ok bool) {
	t.Helper()
	var out strings.Builder // written by one goroutine of exec's; read once unbound has exited
	cmd := exec.Command(bin, "-d", "-c", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() string {
		cmd.Process.Kill()
		<-exited
		return out.String()
	}
	deadline := time.Now().Add(15 * time.Second)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	for {
		select {
		case <-exited:
			return out.String(), false
		default:
		}
		// A static name: the pools' ledgers must not count this.
		if r, _, err := c.Exchange(new(dns.Msg).SetQuestion("www.farm.example.com.", dns.TypeA), addr); err == nil && r.Rcode == dns.RcodeSuccess {
			t.Cleanup(func() {
				if logs := stop(); t.Failed() {
					t.Logf("unbound's log:\n%s", logs)
				}
			})
			return "", true
		}
		if time.Now().After(deadline) {
			t.Fatalf("unbound did not answer within 15s; its log:\n%s", stop())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ubAsk asks unbound for name's A records as the client 127.0.<net>.<host>,
// a stub resolver with RD set.
func ubAsk(t *testing.T, ub, name string, net3, host int) *dns.Msg {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, byte(net3), byte(host))}, Timeout: 3 * time.Second}
	c := &dns.Client{Dialer: d}
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), ub)
	if err != nil {
		t.Fatalf("asking unbound for %s as 127.0.%d.%d: %v", name, net3, host, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("unbound answered %s for %s", dns.RcodeToString[r.Rcode], name)
	}
	return r
}

// poolOutcome reads how many queries for a pool's name farmdns answered
// with outcome.
func poolOutcome(t *testing.T, f *farm, name, outcome string) uint64 {
	t.Helper()
	for _, p := range f.srv.handler.PoolsStatus(time.Now()) {
		if p.Name == name {
			return p.Outcomes[outcome]
		}
	}
	t.Fatalf("no pool %s", name)
	return 0
}

// TestConfigECS: dns.ecs is on unless the config turns it off.
func TestConfigECS(t *testing.T) {
	for _, c := range []struct {
		extra string
		want  bool
	}{{"", true}, {"  ecs: true\n", true}, {"  ecs: false\n", false}} {
		_, st, err := load(writeConfig(t, strings.Replace(baseConfig, "dns:\n", "dns:\n"+c.extra, 1), goodZone))
		if err != nil {
			t.Fatal(err)
		}
		if st.Options.ECS != c.want {
			t.Errorf("%q: ECS %v, want %v", c.extra, st.Options.ECS, c.want)
		}
	}
}
