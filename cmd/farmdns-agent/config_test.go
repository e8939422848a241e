package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/farmdns/farmdns/cmd/farmdns-agent/conncount"
	"github.com/farmdns/farmdns/health"
)

// The shipped example must load, and mean what it says.
func TestExampleConfig(t *testing.T) {
	s, err := loadConfig("testdata/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.service != "ws" || s.serviceID != "ws-node1" || s.node != "node1" || s.port != 8080 ||
		s.capacity != 20000 || !s.register || s.meta["shard"] != "a" {
		t.Errorf("service: %+v", s)
	}
	if len(s.ports) != 1 || s.ports[0] != 8080 || s.method != conncount.Auto {
		t.Errorf("count: %v %v", s.ports, s.method)
	}
	want := damping{minChange: threshold{relative: true, percent: 1}, heartbeat: 10 * time.Second, minInterval: time.Second}
	if s.interval != time.Second || s.damping != want || s.prefix != health.DefaultLoadPrefix {
		t.Errorf("report: %v %+v %q", s.interval, s.damping, s.prefix)
	}
	if s.check != (health.Check{TTL: 15 * time.Second, DeregisterAfter: time.Minute}) || s.ttl != 15*time.Second {
		t.Errorf("check: %+v", s.check)
	}
	if s.grace != 30*time.Second || s.listen != "127.0.0.1:9154" {
		t.Errorf("drain/http: %v %q", s.grace, s.listen)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"-config", "testdata/agent.yaml", "-check"}, &out, &errb); code != 0 {
		t.Errorf("-check: exit %d: %s", code, errb.String())
	}
}

func TestConfigDefaults(t *testing.T) {
	s, err := parseConfig([]byte("service: {name: ws, port: 8080}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ports) != 1 || s.ports[0] != 8080 {
		t.Errorf("count.ports defaults to service.port: %v", s.ports)
	}
	if s.serviceID != "" || s.node != "" {
		t.Errorf("id and node resolve at run time: %q %q", s.serviceID, s.node)
	}
	if s.damping.minInterval != time.Second || s.damping.heartbeat != 10*time.Second || s.listen != defaultListen {
		t.Errorf("defaults: %+v %q", s.damping, s.listen)
	}
	s, err = parseConfig([]byte("service: {name: ws}\ncount: {http: {url: 'http://127.0.0.1:1/n'}}\nreport: {interval: 500ms, min_change: 25}\nhttp: {listen: 'off'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.httpSrc == nil || s.httpSrc.Timeout != 500*time.Millisecond || s.damping.minChange != (threshold{absolute: 25}) || s.listen != "" {
		t.Errorf("http source: %+v %+v %q", s.httpSrc, s.damping, s.listen)
	}
}

// Every configuration error names its key.
func TestConfigErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"", "service.name"},
		{"service: {port: 80}", "service.name: required"},
		{"service: {name: 'w s', port: 80}", "service.name"},
		{"service: {name: ws, port: 80, bogus: 1}", "service.bogus (line 1): unknown key"},
		{"service:\n  name: ws\n  port: 80\n  check: {type: ttl}\n", "service.check: only applies when service.register is true"},
		{"service: {name: ws, port: 70000}", "service.port"},
		{"service: {name: ws, register: true}", "service.port: required when service.register is true"},
		{"service: {name: ws, port: 80, id: 'a/b'}", "service.id"},
		{"service: {name: ws, port: 80, capacity: -1}", "service.capacity"},
		{"service: {name: ws, port: 80, register: true, check: {type: http}}", "service.check.type"},
		{"service: {name: ws, port: 80, register: true, check: {type: tcp, ttl: 5s}}", "service.check.ttl: does not apply"},
		{"service: {name: ws, port: 80, register: true, check: {deregister_after: 10s}}", "service.check.deregister_after"},
		{"service: {name: ws}", "count.ports: required"},
		{"service: {name: ws}\ncount: {ports: [80, 80]}", "count.ports[1]: 80: listed twice"},
		{"service: {name: ws}\ncount: {ports: [0]}", "count.ports[0]"},
		{"service: {name: ws}\ncount:\n  ports:\n    - 80\n    - x\n", "count.ports[1] (line 5)"},
		{"service: {name: ws}\ncount: {ports: [80], method: ebpf}", "count.method"},
		{"service: {name: ws}\ncount: {ports: [80], file: {path: /x}}", "count: set only one of"},
		{"service: {name: ws}\ncount: {http: {url: 'ftp://x/'}}", "count.http.url"},
		{"service: {name: ws}\ncount: {http: {url: 'http://x/', accepted_metric: a}}", "count.http.accepted_metric"},
		{"service: {name: ws}\ncount: {http: {url: 'http://x/', metric: 'bad-name'}}", "count.http.metric"},
		{"service: {name: ws}\ncount: {file: {}}", "count.file.path: required"},
		{"service: {name: ws, port: 80}\nreport: {interval: 10ms}", "report.interval"},
		{"service: {name: ws, port: 80}\nreport: {interval: 5s, heartbeat: 2s}", "report.heartbeat"},
		{"service: {name: ws, port: 80}\nreport: {min_interval: 20s}", "report.min_interval"},
		{"service: {name: ws, port: 80}\nreport: {min_change: lots}", "report.min_change"},
		{"service: {name: ws, port: 80}\nreport: {min_change: 150%}", "report.min_change"},
		{"service: {name: ws, port: 80}\nreport: {interval: soon}", "report.interval (line 2)"},
		{"service: {name: ws, port: 80}\nreport: {prefix: /farmdns/load}", "report.prefix"},
		{"service: {name: ws, port: 80}\ndrain: {grace: -1s}", "drain.grace"},
		{"service: {name: ws, port: 80}\ndrain: {until: -1}", "drain.until"},
		{"service: {name: ws, port: 80}\nhttp: {listen: nowhere}", "http.listen"},
		{"service: {name: ws, port: 80}\nlog: {level: loud}", "log.level"},
		{"service: {name: ws, port: 80}\nconsul: {address: 'nope'}", "consul.address"},
		{"service: {name: ws, port: 80}\nconsul: {tls: {cert_file: /c}}", "consul.tls.cert_file"},
		{"service: {name: ws, port: 80}\n---\nservice: {name: x}\n", "more than one YAML document"},
		{"service: [", "yaml:"},
	} {
		_, err := parseConfig([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant an error containing %q", tc.yaml, err, tc.want)
		}
	}
}

// All errors are reported at once, not one per run.
func TestConfigErrorsAllAtOnce(t *testing.T) {
	_, err := parseConfig([]byte("service: {port: -1}\nreport: {min_change: x}\n"))
	for _, key := range []string{"service.name", "service.port", "report.min_change"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("error %v does not mention %s", err, key)
		}
	}
}

func TestRunBadConfigExitsTwo(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"-config", "testdata/does-not-exist.yaml", "-check"}, &out, &errb); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if !strings.Contains(errb.String(), "does-not-exist.yaml") {
		t.Errorf("stderr %q does not name the file", errb.String())
	}
}

func TestDialable(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9154": "127.0.0.1:9154",
		":9154":          "127.0.0.1:9154",
		"0.0.0.0:9154":   "127.0.0.1:9154",
		"[::]:9154":      "[::1]:9154",
		"[::1]:9154":     "[::1]:9154",
	} {
		if got := dialable(in); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
}
