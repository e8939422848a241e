package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// offlineConfig is a configuration whose Consul never answers (nothing
// listens on port 1): enough for the HTTP side, which never needs Consul.
func offlineConfig(t *testing.T, http string) string {
	t.Helper()
	app := newTCPServer(t)
	return fmt.Sprintf(`consul: {address: "127.0.0.1:1"}
service: {name: ws, port: %d}
count: {ports: [%d]}
report: {interval: 100ms}
drain: {grace: 0s}
http: %s
`, app.port, app.port, http)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// offlineAgent builds, but does not run, an agent from config.
func offlineAgent(t *testing.T, config string) *Agent {
	t.Helper()
	cfg, err := parseConfig([]byte(config))
	if err != nil {
		t.Fatal(err)
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	src, err := newSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.close() })
	return newAgent(cfg, slog.New(slog.DiscardHandler), src, nil, m)
}

// postDrain sends POST /drain (a form post) straight through the agent's
// handler and says whether a drain was requested.
func postDrain(a *Agent, remote, host string, header map[string]string) (int, bool) {
	req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9154/drain", strings.NewReader("x=1"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = remote
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	a.handler(prometheus.NewRegistry()).ServeHTTP(rec, req)
	select {
	case <-a.drainReqs:
		return rec.Code, true
	default:
		return rec.Code, false
	}
}

// TestDrainRefused: a drain empties the node. A web page the operator opens,
// a page rebinding its name to 127.0.0.1, or any machine on the network the
// listener is on (it is on a private address for Prometheus) must not be
// able to ask for one.
func TestDrainRefused(t *testing.T) {
	a := offlineAgent(t, offlineConfig(t, `{listen: "127.0.0.1:9154"}`))
	admin := map[string]string{"Farmdns-Admin": "1"}
	with := func(k, v string) map[string]string { return map[string]string{"Farmdns-Admin": "1", k: v} }
	for _, tt := range []struct {
		name, remote, host string
		header             map[string]string
		want               int
	}{
		{"form post from another machine", "10.0.0.7:40000", "", nil, http.StatusForbidden},
		{"form post from loopback (a web page)", "127.0.0.1:40000", "", nil, http.StatusForbidden},
		{"admin header from another machine", "10.0.0.7:40000", "", admin, http.StatusForbidden},
		{"admin header and a foreign Origin", "127.0.0.1:40000", "", with("Origin", "http://evil.example"), http.StatusForbidden},
		{"admin header, rebound Host", "127.0.0.1:40000", "evil.example:9154", admin, http.StatusForbidden},
		{"admin header through a local proxy", "127.0.0.1:40000", "", with("Forwarded", "for=10.0.0.7"), http.StatusForbidden},
		{"admin header from loopback", "127.0.0.1:40000", "", admin, http.StatusAccepted},
	} {
		code, drained := postDrain(a, tt.remote, tt.host, tt.header)
		if code != tt.want || drained != (tt.want == http.StatusAccepted) {
			t.Errorf("%s: status %d, drain requested %v; want status %d", tt.name, code, drained, tt.want)
		}
	}
}

// TestDrainTokenFile: with http.token_file, the token lets a request drain
// from anywhere; anything else is refused.
func TestDrainTokenFile(t *testing.T) {
	const token = "agent-token-0123456789abcdef"
	path := writeFile(t, "http.token", token+"\n")
	a := offlineAgent(t, offlineConfig(t, fmt.Sprintf(`{listen: "10.0.0.1:9154", token_file: %q}`, path)))
	for _, tt := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"the token", map[string]string{"Authorization": "Bearer " + token}, http.StatusAccepted},
		{"a wrong token", map[string]string{"Authorization": "Bearer " + token[1:]}, http.StatusUnauthorized},
		{"no token", map[string]string{"Farmdns-Admin": "1"}, http.StatusForbidden},
	} {
		code, drained := postDrain(a, "10.0.0.7:40000", "10.0.0.1:9154", tt.header)
		if code != tt.want || drained != (tt.want == http.StatusAccepted) {
			t.Errorf("%s: status %d, drain requested %v; want status %d", tt.name, code, drained, tt.want)
		}
	}
	cfg, _ := parseConfig([]byte(offlineConfig(t, fmt.Sprintf(`{token_file: %q}`, path))))
	if s := fmt.Sprintf("%+v %#v", *cfg, *cfg); strings.Contains(s, token) {
		t.Error("the token shows in the printed settings")
	}

	for _, tt := range []struct{ name, path, want string }{
		{"missing", filepath.Join(t.TempDir(), "nope"), "http.token_file: "},
		{"empty", writeFile(t, "empty", "\n"), "empty"},
		{"short", writeFile(t, "short", "0123456789"), "at least 16"},
	} {
		_, err := parseConfig([]byte(offlineConfig(t, fmt.Sprintf(`{token_file: %q}`, tt.path))))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want it to contain %q", tt.name, err, tt.want)
		}
	}
}

// served is serve running in this process.
type served struct {
	sigs    chan os.Signal
	done    chan struct{}
	drained bool // valid once done is closed
	err     error
}

// runServe runs serve in this process until it returns; at the end of the
// test a signal makes it drain and return if it still runs.
func runServe(t *testing.T, cfg *settings) *served {
	t.Helper()
	s := &served{sigs: make(chan os.Signal, 2), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.drained, s.err = serve(context.Background(), cfg, slog.New(slog.DiscardHandler), s.sigs)
	}()
	waitFor(t, "the HTTP listener", func() (bool, string) {
		c, err := net.Dial("tcp", cfg.listen)
		if err == nil {
			c.Close()
		}
		return err == nil, fmt.Sprint(err)
	})
	t.Cleanup(func() {
		select {
		case s.sigs <- syscall.SIGTERM:
		default:
		}
		if !s.wait() {
			t.Error("serve did not return")
		}
	})
	return s
}

// wait says whether serve returned within waitBound.
func (s *served) wait() bool {
	select {
	case <-s.done:
		return true
	case <-time.After(waitBound):
		return false
	}
}

// TestAgentHTTPServerLimits: an idle keep-alive connection is closed by the
// agent, and an oversized header is refused.
func TestAgentHTTPServerLimits(t *testing.T) {
	listen := freeAddr(t)
	cfg, err := parseConfig([]byte(offlineConfig(t, fmt.Sprintf(`{listen: %q}`, listen))))
	if err != nil {
		t.Fatal(err)
	}
	cfg.httpIdle = 200 * time.Millisecond
	runServe(t, cfg)

	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// Generous: the idle timeout is 200 ms.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle keep-alive connection: read %v, want EOF (closed by the agent)", err)
	}

	c2, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c2, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 128<<10))
	resp, err = http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 128 KiB header: %s, want 431", resp.Status)
	}
}

// TestDrainCommandSendsCredentials: "farmdns-agent drain" with the agent's
// own config file gets through the guard, with a token and without.
func TestDrainCommandSendsCredentials(t *testing.T) {
	for _, withToken := range []bool{false, true} {
		t.Run(fmt.Sprintf("token=%v", withToken), func(t *testing.T) {
			listen := freeAddr(t)
			httpBlock := fmt.Sprintf(`{listen: %q}`, listen)
			if withToken {
				tok := writeFile(t, "http.token", "drain-token-0123456789abcdef\n")
				httpBlock = fmt.Sprintf(`{listen: %q, token_file: %q}`, listen, tok)
			}
			path := writeFile(t, "agent.yaml", offlineConfig(t, httpBlock))
			cfg, err := loadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			s := runServe(t, cfg)
			var out, errb bytes.Buffer
			if code := run([]string{"drain", "-config", path, "-wait", waitBound.String()}, &out, &errb); code != 0 {
				t.Fatalf("drain: exit %d\n%s%s", code, out.String(), errb.String())
			}
			if !s.wait() {
				t.Fatal("the agent did not stop after the drain")
			}
			if s.err != nil || !s.drained {
				t.Errorf("serve returned drained on request %v, %v; want true, nil", s.drained, s.err)
			}
		})
	}
}
