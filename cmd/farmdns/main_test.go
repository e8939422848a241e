package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/cmd/internal/adminhttp"
)

const goodZone = `$TTL 300
@ SOA ns1 hostmaster 1 7200 3600 1209600 60
@ NS ns1
ns1 A 192.0.2.53
www A 192.0.2.80
`

// writeConfig writes a config and its zone file into a temp dir.
func writeConfig(t *testing.T, config, zone string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "farm.zone"), []byte(zone), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "farmdns.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runServer starts farmdns with the config at path; stop (also run when the
// test ends) shuts it down and waits.
func runServer(t *testing.T, path string) (*server, func()) {
	t.Helper()
	cfg, st, err := load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := newServer(path, cfg, st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := srv.start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stop: %v", err)
		}
	}
	t.Cleanup(stop)
	return srv, stop
}

const baseConfig = `dns:
  listen: ["127.0.0.1:0"]
http:
  listen: "127.0.0.1:0"
zones:
  - origin: farm.example.com.
    file: farm.zone
`

func TestConfigErrors(t *testing.T) {
	tests := []struct{ name, config, want string }{
		{"unknown key", baseConfig + "bogus: 1\n", "field bogus not found"},
		{"unknown nested key", strings.Replace(baseConfig, "dns:\n", "dns:\n  listn: []\n", 1), "field listn not found"},
		{"bad listen", strings.Replace(baseConfig, `["127.0.0.1:0"]`, `["localhost"]`, 1), `dns.listen[0]: "localhost" is not host:port`},
		{"bad http", strings.Replace(baseConfig, `"127.0.0.1:0"`+"\nzones", `"x"`+"\nzones", 1), `http.listen: "x" is not host:port`},
		{"valid", baseConfig + "log:\n  level: debug\n", ""},
		{"no zones", "dns:\n  listen: [\"127.0.0.1:0\"]\n", "zones: no zones configured"},
		{"bad origin", strings.Replace(baseConfig, "farm.example.com.", "bad..name", 1), `zones[0].origin: "bad..name" is not a domain name`},
		{"twice", baseConfig + "  - origin: FARM.example.com\n    file: farm.zone\n", "zones[1].origin: farm.example.com. is configured twice"},
		{"no file", strings.Replace(baseConfig, "    file: farm.zone\n", "", 1), "zones[0].file: missing"},
		{"transfer", strings.Replace(baseConfig, "dns:\n", "dns:\n  transfer_allow: [\"10.0.0.0/33\"]\n", 1), "dns.transfer_allow[0]"},
		{"long nsid", strings.Replace(baseConfig, "dns:\n", "dns:\n  nsid: "+strings.Repeat("n", 129)+"\n", 1), "dns.nsid: 129 octets, longer than 128"},
		{"max udp", strings.Replace(baseConfig, "dns:\n", "dns:\n  max_udp_size: 100\n", 1), "dns.max_udp_size: 100 is not between 512 and 65535"},
		{"log level", baseConfig + "log:\n  level: loud\n", "log.level: want debug, info, warn or error"},
		{"wrong type", strings.Replace(baseConfig, "dns:\n", "dns:\n  max_tcp_connections: many\n", 1), "cannot unmarshal"},
		{"empty", "", "empty file"},
		{"not yaml", "\t{[", "yaml:"},
	}
	for _, tt := range tests {
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

func TestCheck(t *testing.T) {
	var out, errOut bytes.Buffer
	path := writeConfig(t, baseConfig, goodZone)
	if code := run([]string{"-check", "-config", path}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "ok: 1 zones, 4 records") {
		t.Errorf("summary %q", out.String())
	}

	out.Reset()
	errOut.Reset()
	path = writeConfig(t, baseConfig, goodZone+"www CNAME ns1\nbad A 1.2.3\n")
	if code := run([]string{"-check", "-config", path}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d for a broken zone", code)
	}
	// Every problem is listed with its file and line.
	for _, want := range []string{"farm.zone:7: bad A A: \"1.2.3\"", "check failed"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, errOut.String())
		}
	}
}

func TestShippedExampleIsValid(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"-check", "-config", "../../deploy/example/farmdns.yaml"}, &out, &errOut); code != 0 {
		t.Fatalf("deploy/example does not pass -check: %s", errOut.String())
	}
}

func TestBadZoneAtStartup(t *testing.T) {
	var out, errOut bytes.Buffer
	path := writeConfig(t, baseConfig, "@ SOA ns1 hostmaster 1 2 3 4 5\n")
	if code := run([]string{"-config", path}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d: a bad zone must stop the start", code)
	}
	if !strings.Contains(errOut.String(), "farm.zone: no NS records") {
		t.Errorf("the error does not name the file and problem: %s", errOut.String())
	}
}

// TestServeAndReload runs the server, answers a query, reloads a broken
// config (kept out), then a good one (taken in), then stops on SIGTERM's path.
func TestServeAndReload(t *testing.T) {
	path := writeConfig(t, baseConfig, goodZone)
	cfg, st, err := load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Until run has called signal.Notify, SIGHUP's default action would kill
	// the whole test binary: catch it here too, for the test's duration.
	hupGuard := make(chan os.Signal, 8)
	signal.Notify(hupGuard, syscall.SIGHUP)
	defer signal.Stop(hupGuard)
	srv := newServer(path, cfg, st, slog.New(slog.DiscardHandler))
	reloaded := make(chan error, 1)
	srv.reloaded = reloaded
	if err := srv.start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.run(ctx) }()
	addr := srv.dns.BoundAddrs()[0].String()
	ask := func() *dns.Msg {
		t.Helper()
		c := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := c.Exchange(new(dns.Msg).SetQuestion("www.farm.example.com.", dns.TypeA), addr)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := ask(); len(r.Answer) != 1 {
		t.Fatalf("before reload: %v", r)
	}
	zone := filepath.Join(filepath.Dir(path), "farm.zone")
	reloadAndWait := func(wantErr bool) {
		t.Helper()
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		select {
		case err := <-reloaded:
			if (err != nil) != wantErr {
				t.Fatalf("reload: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no reload")
		}
	}
	metric := func(name string) string {
		t.Helper()
		resp, err := http.Get("http://" + srv.webLn.Addr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		t.Fatalf("no %s in /metrics", name)
		return ""
	}
	os.WriteFile(zone, []byte("garbage\n"), 0o644)
	reloadAndWait(true)
	if v := metric("farmdns_config_last_reload_successful"); v != "0" {
		t.Errorf("after a failed reload farmdns_config_last_reload_successful is %s", v)
	}
	if r := ask(); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.80" {
		t.Fatalf("a broken reload changed what is served: %v", r)
	}
	os.WriteFile(zone, []byte(strings.Replace(goodZone, "192.0.2.80", "192.0.2.81", 1)), 0o644)
	reloadAndWait(false)
	if r := ask(); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.81" {
		t.Fatalf("a good reload was not taken: %v", r)
	}
	if v := metric("farmdns_config_last_reload_successful"); v != "1" {
		t.Errorf("after a good reload farmdns_config_last_reload_successful is %s", v)
	}
	if v := metric(`farmdns_dns_requests_total{proto="udp",qtype="A",rcode="NOERROR",zone="farm.example.com."}`); v != "3" {
		t.Errorf("queries counted: %s, want 3", v)
	}
	// The query log switches on and off over HTTP (locally, with the admin
	// header) and with SIGUSR1.
	qlog := "http://" + srv.webLn.Addr().String() + "/debug/querylog"
	post := func(every string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, qlog, strings.NewReader(url.Values{"every": {every}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		adminhttp.Token{}.Authorize(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", qlog, err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := post("10"); resp.StatusCode != 200 {
		t.Fatalf("POST %s: %s", qlog, resp.Status)
	}
	if srv.handler.QueryLog() != 10 {
		t.Errorf("query log every %d after POST every=10", srv.handler.QueryLog())
	}
	if resp := post("lots"); resp.StatusCode != 400 {
		t.Errorf("bad every accepted: %s", resp.Status)
	}
	srv.toggleQueryLog()
	if srv.handler.QueryLog() != 0 {
		t.Error("toggle did not switch the query log off")
	}
	srv.toggleQueryLog()
	if srv.handler.QueryLog() != 1 {
		t.Error("toggle did not switch the query log on at log.query_sample")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop")
	}
}

// TestShippedFarmExampleIsValid loads the production-shaped example, with its
// systemd credential path pointed at a token file that exists here.
func TestShippedFarmExampleIsValid(t *testing.T) {
	b, err := os.ReadFile("../../deploy/example/farmdns-farm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	zone, err := os.ReadFile("../../deploy/example/farm.example.com.zone")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("secret\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "farm.example.com.zone"), zone, 0o644)
	config := strings.ReplaceAll(string(b), "/run/credentials/farmdns.service/consul-token", token)
	config = strings.ReplaceAll(config, "/var/lib/farmdns/", dir+"/")
	path := filepath.Join(dir, "farmdns.yaml")
	os.WriteFile(path, []byte(config), 0o644)
	cfg, st, err := load(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(cfg.Zones[0].Pools); n != 2 || len(cfg.watcherConfig().Services) != 2 {
		t.Errorf("%d pools watching %v", n, cfg.watcherConfig().Services)
	}
	if st.Zones.Find("farm.example.com.") == nil {
		t.Error("zone not loaded")
	}
}

func TestPoolConfigErrors(t *testing.T) {
	pool := func(p string) string {
		return baseConfig + "    pools:\n      - name: \"@\"\n        service: ws\n" + p
	}
	for _, tt := range []struct{ name, config, want string }{
		{"unknown key", pool("        answerz: 2\n"), "field answerz not found"},
		{"bad mode", pool("        mode: cluster\n"), "mode"},
		{"answers", pool("        answers: 0\n"), "zones[0].pools[0]: answers: 0 is not between 1 and 8"},
		{"ttl", pool("        ttl: 1500ms\n"), "ttl: 1.5s is not a whole number of seconds"},
		{"ttl_min", pool("        ttl_min: 2s\n"), "zones[0].pools[0]: ttl_min: 2s is not a whole number of seconds between 0s and the TTL (1s)"},
		{"shards without lb", pool("        mode: shards\n        shard_meta: shard\n"), "zones[0].pools[0].lb_service: required in shards mode"},
		{"no service", strings.Replace(pool(""), "        service: ws\n", "", 1), "zones[0].pools[0].service: missing"},
		{"twice", pool("      - name: farm.example.com.\n        service: ws\n"), `zones[0].pools[1].name: "farm.example.com." is configured twice`},
		{"clash", strings.Replace(pool(""), `name: "@"`, "name: www", 1), "pool name www.farm.example.com. clashes with the static A record"},
		{"consul tls", pool("") + "consul:\n  tls:\n    cert_file: /x\n", "consul.tls"},
		{"srv in shards", pool("        mode: shards\n        shard_meta: s\n        lb_service: lb\n        srv: true\n"), "zones[0].pools[0].srv: only in nodes mode"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := load(writeConfig(t, tt.config, goodZone))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

// TestExamplesAvoidMDNSPort: 5353 is multicast DNS; on a desktop running
// avahi the quick start could not bind it. The default and every example
// use 5380 instead.
func TestExamplesAvoidMDNSPort(t *testing.T) {
	cfg, err := parseConfig([]byte("zones: [{origin: a.example., file: a.zone}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.DNS.Listen, ","); got != "127.0.0.1:5380" {
		t.Errorf("default dns.listen %s, want 127.0.0.1:5380", got)
	}
	mdns := regexp.MustCompile(`\b5353\b`)
	for _, path := range []string{
		"../../README.md", "../../deploy/README.md", "../../deploy/example/farmdns.yaml",
		"../../deploy/demo/demo.sh", "../farmdns-demo/main.go",
	} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			// A line may name 5353 to say why it is not used.
			if mdns.MatchString(line) && !strings.Contains(line, "mDNS") && !strings.Contains(line, "multicast DNS") {
				t.Errorf("%s:%d uses port 5353 (mDNS): %s", path, i+1, strings.TrimSpace(line))
			}
		}
	}
}

// TestMakeCheckFormatting: make check finds unformatted and unparsable Go
// files in a tree that is not a git checkout (a tarball, a CI copy), and
// passes a clean one. GO=true stands in for go vet.
func TestMakeCheckFormatting(t *testing.T) {
	makeBin := requireTool(t, "make")
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, src string
		fail      bool
	}{
		{"unformatted", "package x\n\nfunc  f() {}\n", true},
		{"does not parse", "package x\n\nfunc f( {}\n", true},
		{"clean", "package x\n\nfunc f() {}\n", false},
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "Makefile"), mk, 0o644)
		os.MkdirAll(filepath.Join(dir, "pkg"), 0o755)
		os.WriteFile(filepath.Join(dir, "pkg", "x.go"), []byte(tt.src), 0o644)
		cmd := exec.Command(makeBin, "-s", "check", "GO=true")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PATH="+filepath.Join(runtime.GOROOT(), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"), "GIT_DIR="+filepath.Join(dir, "no-git"))
		out, err := cmd.CombinedOutput()
		if failed := err != nil; failed != tt.fail {
			t.Errorf("%s: make check failed=%v (%v), want %v:\n%s", tt.name, failed, err, tt.fail, out)
		}
		if tt.fail && !strings.Contains(string(out), "x.go") {
			t.Errorf("%s: the output does not name the file:\n%s", tt.name, out)
		}
	}
}

// TestReadmeListsTestDeps: the README says what make test installs, as the
// Makefile's APT_PACKAGES has it, and that it needs root.
func TestReadmeListsTestDeps(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^APT_PACKAGES\s*:?=\s*(.+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("no APT_PACKAGES in the Makefile")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The paragraph that starts with "`make test` installs".
	_, para, ok := strings.Cut(string(readme), "\n`make test` ")
	para, _, _ = strings.Cut(para, "\n\n")
	if !ok {
		t.Fatal("README has no paragraph starting with `make test`")
	}
	for _, pkg := range strings.Fields(string(m[1])) {
		if !strings.Contains(para, "`"+pkg+"`") {
			t.Errorf("README's make test paragraph does not list `%s`:\n%s", pkg, para)
		}
	}
	if !strings.Contains(para, "root") || !strings.Contains(para, "sudo") {
		t.Errorf("README's make test paragraph does not say it needs root or sudo:\n%s", para)
	}
}
