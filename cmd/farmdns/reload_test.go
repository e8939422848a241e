package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health/consultest"
)

// poolConfig is a config with one pool at the apex of farm.example.com fed by
// the Consul agent at addr; consul and pool add keys to their blocks.
func poolConfig(addr, consul, pool string) string {
	return fmt.Sprintf(`dns:
  listen: ["127.0.0.1:0"]
http:
  listen: "127.0.0.1:0"
consul:
  address: %q
%szones:
  - origin: farm.example.com.
    file: farm.zone
    pools:
      - name: "@"
        service: ws
%s`, addr, consul, pool)
}

// notACert is a file that exists but holds no certificate.
func notACert(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, []byte("this is not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// watchBreakers are settings that pass the config's own checks but fail
// when the Consul client or watcher is built; want names the key.
func watchBreakers(t *testing.T) []struct{ name, consul, pool, want string } {
	return []struct{ name, consul, pool, want string }{
		{"load_prefix root", "  load_prefix: \"/\"\n", "", "consul.load_prefix"},
		{"service with a slash", "", "      - name: www2\n        service: ws/x\n", "zones[0].pools[1].service"},
		{"lb_service with a slash", "", "      - name: shard\n        service: sh\n        mode: shards\n        shard_meta: shard\n        lb_service: lb/x\n", "zones[0].pools[1].lb_service"},
		{"ca_file not a certificate", "  tls:\n    ca_file: " + notACert(t) + "\n", "", "consul.tls"},
	}
}

// TestCheckRejectsWhatCannotWatch: -check fails on every setting that would
// keep the Consul watcher from being built, naming the key.
func TestCheckRejectsWhatCannotWatch(t *testing.T) {
	for _, tc := range watchBreakers(t) {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, poolConfig("127.0.0.1:8500", tc.consul, tc.pool), goodZone)
			var out, errOut bytes.Buffer
			if code := run([]string{"-check", "-config", path}, &out, &errOut); code != 1 {
				t.Fatalf("-check exit %d, want 1: %s%s", code, out.String(), errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.want) {
				t.Errorf("-check output does not name %s:\n%s", tc.want, errOut.String())
			}
		})
	}
}

// served is a farmdns serving a config file the test may rewrite.
type served struct {
	srv  *server
	path string
	dns  string
	web  string
}

// serve starts farmdns on config and stops it when the test ends.
func serve(t *testing.T, config string) *served {
	t.Helper()
	path := writeConfig(t, config, goodZone)
	srv, _ := runServer(t, path)
	return &served{srv: srv, path: path, dns: srv.dns.BoundAddrs()[0].String(), web: "http://" + srv.webLn.Addr().String()}
}

// rewrite replaces the config file; the next reload reads it.
func (s *served) rewrite(t *testing.T, config string) {
	t.Helper()
	if err := os.WriteFile(s.path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
}

// apex returns the addresses farmdns answers for the pool at the apex.
func (s *served) apex(t *testing.T) []string {
	t.Helper()
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion("farm.example.com.", dns.TypeA), s.dns)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rr := range r.Answer {
		out = append(out, rr.(*dns.A).A.String())
	}
	return out
}

func (s *served) reloadMetric(t *testing.T) string {
	t.Helper()
	for _, line := range strings.Split(httpBody(t, s.web+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, "farmdns_config_last_reload_successful "); ok {
			return v
		}
	}
	t.Fatal("no farmdns_config_last_reload_successful in /metrics")
	return ""
}

// TestReloadKeepsWatcherOnFailure: a reload whose Consul watcher cannot be
// built fails as a whole: it is counted failed and the running watcher keeps
// feeding the pools.
func TestReloadKeepsWatcherOnFailure(t *testing.T) {
	a := consultest.Start(t)
	registerNode(t, a, 1, 10)
	good := poolConfig(a.Addr, "", "        answers: 8\n")
	s := serve(t, good)
	eventually(t, 10*time.Second, "pool filled", func() bool { return len(s.apex(t)) == 1 })
	for i, tc := range watchBreakers(t) {
		t.Run(tc.name, func(t *testing.T) {
			s.rewrite(t, poolConfig(a.Addr, tc.consul, "        answers: 8\n"+tc.pool))
			if err := s.srv.reload(); err == nil {
				t.Fatal("the reload succeeded")
			} else if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("the reload error does not name %s: %v", tc.want, err)
			}
			if v := s.reloadMetric(t); v != "0" {
				t.Errorf("farmdns_config_last_reload_successful %s after a failed reload", v)
			}
			// The old watcher still runs: a new node reaches the answers.
			registerNode(t, a, 2+i, 10)
			want := fmt.Sprintf("127.0.0.%d", 12+i)
			eventually(t, 10*time.Second, "a node registered after the failed reload answered", func() bool {
				for _, got := range s.apex(t) {
					if got == want {
						return true
					}
				}
				return false
			})
			if code := httpGet(t, s.web+"/readyz"); code != http.StatusOK {
				t.Errorf("/readyz %d with the old watcher in sync", code)
			}
			s.rewrite(t, good)
			if err := s.srv.reload(); err != nil {
				t.Fatalf("reload of the good config: %v", err)
			}
		})
	}
}

// TestReadyzWithoutWatcher: pools configured but no watcher running is not
// ready, and a reload starts the missing watcher again.
func TestReadyzWithoutWatcher(t *testing.T) {
	a := consultest.Start(t)
	registerNode(t, a, 1, 10)
	s := serve(t, poolConfig(a.Addr, "", ""))
	eventually(t, 10*time.Second, "ready", func() bool { return httpGet(t, s.web+"/readyz") == http.StatusOK })
	s.srv.stopWatch()
	if code := httpGet(t, s.web+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d with pools and no watcher running", code)
	}
	if err := s.srv.reload(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "ready after the reload restarted the watcher", func() bool {
		return httpGet(t, s.web+"/readyz") == http.StatusOK
	})
}

// TestReloadRotatedToken: a token file rewritten in place (same path, new
// token) reaches Consul on reload.
func TestReloadRotatedToken(t *testing.T) {
	a := consultest.Start(t, consultest.WithACL())
	registerNode(t, a, 1, 10)
	p, _, err := a.Client.ACL().PolicyCreate(&api.ACLPolicy{Name: "farmdns-read", Rules: `
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
key_prefix "farmdns/load/" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := a.Client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("00000000-1111-2222-3333-444444444444\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := serve(t, poolConfig(a.Addr, "  token_file: "+tokenFile+"\n", ""))
	eventually(t, 10*time.Second, "the watcher failing with the revoked token", func() bool {
		return strings.Contains(httpBody(t, s.web+"/status.json"), "consul rejected the ACL token")
	})
	if got := s.apex(t); len(got) != 0 {
		t.Fatalf("pool answered %v with a token Consul rejects", got)
	}
	if err := os.WriteFile(tokenFile, []byte(tok.SecretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.reload(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "pool filled with the rotated token", func() bool { return len(s.apex(t)) == 1 })
}

// TestReloadRace reloads, alternating between two configs that need
// different watchers, while /status, /status.json, /metrics, /readyz and DNS
// queries run; under -race nothing they share may be read unsynchronised.
func TestReloadRace(t *testing.T) {
	a := consultest.Start(t)
	registerNode(t, a, 1, 10)
	configs := []string{
		poolConfig(a.Addr, "  max_report_age: 30s\n", ""),
		poolConfig(a.Addr, "  max_report_age: 31s\n", ""),
	}
	s := serve(t, configs[0])
	eventually(t, 10*time.Second, "pool filled", func() bool { return len(s.apex(t)) == 1 })
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, path := range []string{"/status", "/status.json", "/metrics", "/readyz"} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Get(s.web + path)
				if err != nil {
					t.Errorf("GET %s: %v", path, err)
					return
				}
				resp.Body.Close()
			}
		})
	}
	wg.Go(func() {
		c := &dns.Client{Timeout: 2 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := c.Exchange(new(dns.Msg).SetQuestion("farm.example.com.", dns.TypeA), s.dns); err != nil {
				t.Errorf("query: %v", err)
				return
			}
		}
	})
	for i := range 20 {
		s.rewrite(t, configs[(i+1)%2])
		if err := s.srv.reload(); err != nil {
			t.Errorf("reload %d: %v", i, err)
		}
		time.Sleep(10 * time.Millisecond) // let the readers in between reloads
	}
	close(stop)
	wg.Wait()
	eventually(t, 10*time.Second, "pool still answering", func() bool { return len(s.apex(t)) == 1 })
}
