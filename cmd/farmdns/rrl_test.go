package main

import (
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"gopkg.in/yaml.v3"
)

func TestRRLConfigErrors(t *testing.T) {
	withRRL := func(block string) string {
		return strings.Replace(baseConfig, "dns:\n", "dns:\n  rrl:\n"+block, 1)
	}
	for _, tt := range []struct{ name, config, want string }{
		{"valid", withRRL("    responses_per_second: 200\n    slip: 0\n    window: 5s\n    exempt: [\"10.0.0.0/8\", \"::1\"]\n    log_only: true\n"), ""},
		{"unknown key", withRRL("    rate: 5\n"), "field rate not found"},
		{"negative rate", withRRL("    responses_per_second: -1\n"), "dns.rrl.responses_per_second: -1 is not between 0 (off) and 1000000"},
		{"slip", withRRL("    slip: 11\n"), "dns.rrl.slip: 11 is not between 0 (drop all) and 10"},
		{"ipv4", withRRL("    ipv4_prefix: 33\n"), "dns.rrl.ipv4_prefix: 33 is not between 8 and 32"},
		{"ipv6", withRRL("    ipv6_prefix: 4\n"), "dns.rrl.ipv6_prefix: 4 is not between 16 and 128"},
		{"window", withRRL("    window: 10ms\n"), "dns.rrl.window: 10ms is not between 1s and 1h"},
		{"window type", withRRL("    window: soon\n"), "cannot unmarshal"},
		{"exempt", withRRL("    exempt: [\"10.0.0.0/40\"]\n"), "dns.rrl.exempt[0]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(writeConfig(t, tt.config, goodZone))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestRRLConfigDefaults(t *testing.T) {
	cfg, err := loadConfig(writeConfig(t, baseConfig, goodZone))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.DNS.RRL
	if r.ResponsesPerSecond != 0 || *r.Slip != 2 || r.IPv4Prefix != 24 || r.IPv6Prefix != 56 || r.Window != 15*time.Second || r.LogOnly {
		t.Errorf("defaults %+v (slip %d)", r, *r.Slip)
	}
	if l, err := r.limiter(nil); l != nil || err != nil {
		t.Errorf("rate limiting is on by default: %v %v", l, err)
	}
}

// TestRRLReload: a reload switches rate limiting on, and off again.
func TestRRLReload(t *testing.T) {
	path := writeConfig(t, baseConfig, goodZone)
	srv, _ := runServer(t, path)
	addr := srv.dns.BoundAddrs()[0].String()
	// ask sends n queries and counts the full and truncated replies.
	ask := func(n int) (full, truncated int) {
		t.Helper()
		c := &dns.Client{Timeout: time.Second}
		for range n {
			r, _, err := c.Exchange(new(dns.Msg).SetQuestion("www.farm.example.com.", dns.TypeA), addr)
			switch {
			case err != nil:
			case r.Truncated:
				truncated++
			case len(r.Answer) == 1:
				full++
			}
		}
		return full, truncated
	}
	reload := func(config string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := srv.reload(); err != nil {
			t.Fatal(err)
		}
	}
	if full, _ := ask(30); full != 30 {
		t.Fatalf("rate limiting off: %d of 30 answered", full)
	}
	// Slip 1: every limited reply comes back truncated, none is dropped,
	// so the test waits for no timeouts.
	reload(strings.Replace(baseConfig, "dns:\n", "dns:\n  rrl:\n    responses_per_second: 5\n    slip: 1\n", 1))
	if full, truncated := ask(30); full > 10 || truncated < 20 {
		t.Errorf("after a reload with 5/s: %d full, %d truncated of 30", full, truncated)
	}
	resp, err := http.Get("http://" + srv.webLn.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `farmdns_rrl_responses_total{action="slip"}`) || strings.Contains(string(b), `farmdns_rrl_responses_total{action="slip"} 0`) {
		t.Errorf("/metrics lacks the slipped replies:\n%s", grepLines(string(b), "farmdns_rrl_"))
	}
	reload(baseConfig)
	if full, _ := ask(30); full != 30 {
		t.Errorf("rate limiting off again: %d of 30 answered", full)
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The production example ships with rate limiting on. (That the whole file
// is valid is TestShippedFarmExampleIsValid's job.)
func TestRRLShippedFarmExample(t *testing.T) {
	b, err := os.ReadFile("../../deploy/example/farmdns-farm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg Config
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.setDefaults()
	cfg.DNS.RRL.validate(func(key, format string, args ...any) { t.Errorf(key+": "+format, args...) })
	r := cfg.DNS.RRL
	if r.ResponsesPerSecond < 100 || *r.Slip == 0 || r.LogOnly {
		t.Errorf("farmdns-farm.yaml: rrl %+v, want it on with ample headroom for TTL-1s pools, slipping", r)
	}
	if l, err := r.limiter(nil); l == nil || err != nil {
		t.Errorf("farmdns-farm.yaml: no limiter: %v", err)
	}
}
