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
	"testing"
	"time"
)

// newTestServer builds (but does not start) a server from config; mutate,
// if set, changes the loaded config first.
func newTestServer(t *testing.T, config string, log *slog.Logger, mutate func(*Config)) *server {
	t.Helper()
	path := writeConfig(t, config, goodZone)
	cfg, st, err := load(path)
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(cfg)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return newServer(path, cfg, st, log)
}

// postQueryLog sends POST /debug/querylog every=7 straight through the
// HTTP handler, as a request from remote with the given headers, and says
// whether the query log was changed.
func postQueryLog(s *server, h http.Handler, remote, host string, header map[string]string) (int, bool) {
	s.handler.SetQueryLog(0)
	req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9153/debug/querylog", strings.NewReader("every=7"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = remote
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, s.handler.QueryLog() == 7
}

// TestHTTPStateChangeRefused: POST /debug/querylog changes the server's
// logging. A web page the operator opens (a form post, no preflight), a page
// that rebinds its name to 127.0.0.1, or another machine must not be able to
// do that; a local operator's tool that sends the admin header may.
func TestHTTPStateChangeRefused(t *testing.T) {
	s := newTestServer(t, baseConfig, nil, nil)
	h := s.httpHandler()
	admin := map[string]string{"Farmdns-Admin": "1"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"Farmdns-Admin": "1"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, tt := range []struct {
		name, remote, host string
		header             map[string]string
		want               int
	}{
		{"form post from another machine", "192.0.2.7:40000", "", nil, http.StatusForbidden},
		{"form post from loopback (a web page)", "127.0.0.1:40000", "", nil, http.StatusForbidden},
		{"admin header from another machine", "192.0.2.7:40000", "", admin, http.StatusForbidden},
		{"admin header and a foreign Origin", "127.0.0.1:40000", "", with("Origin", "http://evil.example"), http.StatusForbidden},
		{"admin header and Origin null", "127.0.0.1:40000", "", with("Origin", "null"), http.StatusForbidden},
		{"admin header, rebound Host", "127.0.0.1:40000", "evil.example:9153", admin, http.StatusForbidden},
		{"admin header through a local proxy", "127.0.0.1:40000", "", with("X-Forwarded-For", "192.0.2.7"), http.StatusForbidden},
		{"a bearer token when none is configured", "192.0.2.7:40000", "", map[string]string{"Authorization": "Bearer 0123456789abcdef0123"}, http.StatusForbidden},
		{"admin header from 127.0.0.1", "127.0.0.1:40000", "", admin, http.StatusOK},
		{"admin header from ::1", "[::1]:40000", "[::1]:9153", admin, http.StatusOK},
		{"admin header, Host localhost", "127.0.0.1:40000", "localhost:9153", admin, http.StatusOK},
	} {
		code, changed := postQueryLog(s, h, tt.remote, tt.host, tt.header)
		if code != tt.want || changed != (tt.want == http.StatusOK) {
			t.Errorf("%s: status %d, query log changed %v; want status %d", tt.name, code, changed, tt.want)
		}
	}
	// The read-only endpoints stay open to anyone who can reach the listener.
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/status", "/status.json", "/debug/querylog"} {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.RemoteAddr = "192.0.2.7:40000"
		req.Header.Set("Origin", "http://evil.example")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s from another machine: %d, want 200", path, rec.Code)
		}
	}
}

const testToken = "tok-0123456789abcdef-0123456789"

// TestHTTPTokenFile: with http.token_file, a request that presents the token
// may change state from anywhere; the token is re-read on reload and never
// logged.
func TestHTTPTokenFile(t *testing.T) {
	dir := t.TempDir()
	tokenPath := filepath.Join(dir, "http.token")
	if err := os.WriteFile(tokenPath, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	config := strings.Replace(baseConfig, "http:\n", "http:\n  token_file: "+tokenPath+"\n", 1)
	var logs bytes.Buffer
	s := newTestServer(t, config, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
	h := s.httpHandler()
	bearer := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }
	for _, tt := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"the token", bearer(testToken), http.StatusOK},
		{"the token, scheme in lower case", map[string]string{"Authorization": "bearer " + testToken}, http.StatusOK},
		{"a wrong token", bearer(testToken + "x"), http.StatusUnauthorized},
		{"a prefix of the token", bearer(testToken[:10]), http.StatusUnauthorized},
		{"basic auth", map[string]string{"Authorization": "Basic " + testToken}, http.StatusUnauthorized},
		{"no token", map[string]string{"Farmdns-Admin": "1"}, http.StatusForbidden},
	} {
		code, changed := postQueryLog(s, h, "192.0.2.7:40000", "", tt.header)
		if code != tt.want || changed != (tt.want == http.StatusOK) {
			t.Errorf("%s: status %d, query log changed %v; want status %d", tt.name, code, changed, tt.want)
		}
	}
	// Loopback with the admin header still works beside the token.
	if code, _ := postQueryLog(s, h, "127.0.0.1:40000", "", map[string]string{"Farmdns-Admin": "1"}); code != http.StatusOK {
		t.Errorf("loopback with the admin header and a token configured: %d", code)
	}

	// A reload reads the file again: the old token stops working.
	const newToken = "tok-fedcba9876543210-fedcba98765"
	if err := os.WriteFile(tokenPath, []byte(newToken), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.reload(); err != nil {
		t.Fatal(err)
	}
	if code, _ := postQueryLog(s, h, "192.0.2.7:40000", "", bearer(testToken)); code != http.StatusUnauthorized {
		t.Errorf("the old token after a reload: %d", code)
	}
	if code, _ := postQueryLog(s, h, "192.0.2.7:40000", "", bearer(newToken)); code != http.StatusOK {
		t.Errorf("the new token after a reload: %d", code)
	}
	// A reload whose token file went missing fails; the running token stays.
	os.Remove(tokenPath)
	if err := s.reload(); err == nil || !strings.Contains(err.Error(), "http.token_file") {
		t.Errorf("reload without the token file: %v", err)
	}
	if code, _ := postQueryLog(s, h, "192.0.2.7:40000", "", bearer(newToken)); code != http.StatusOK {
		t.Errorf("the token after a failed reload: %d", code)
	}
	for _, tok := range []string{testToken, newToken} {
		if strings.Contains(logs.String(), tok) || strings.Contains(fmt.Sprintf("%+v %#v", *s.cfg.Load(), *s.cfg.Load()), tok) {
			t.Errorf("the token %q shows in the logs or the printed config", tok)
		}
	}
}

func TestHTTPTokenFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "nope"), "http.token_file: "},
		{"empty", write("empty", " \n"), "http.token_file: " + filepath.Join(dir, "empty") + ": empty"},
		{"short", write("short", "abc\n"), "at least 16"},
		{"space inside", write("space", "0123456789 abcdef0123\n"), "printable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			config := strings.Replace(baseConfig, "http:\n", "http:\n  token_file: "+tt.path+"\n", 1)
			_, err := loadConfig(writeConfig(t, config, goodZone))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// startTestServer starts s on its configured (loopback, port 0) addresses
// and stops it at the end of the test.
func startTestServer(t *testing.T, s *server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
}

// TestHTTPServerLimits: an idle keep-alive connection is closed by the
// server, and an oversized header is refused.
func TestHTTPServerLimits(t *testing.T) {
	s := newTestServer(t, baseConfig, nil, func(c *Config) { c.HTTP.idleTimeout = 200 * time.Millisecond })
	startTestServer(t, s)
	addr := s.webLn.Addr().String()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// Generous: the server's idle timeout is 200 ms.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle keep-alive connection: read %v, want EOF (closed by the server)", err)
	}

	c2, err := net.Dial("tcp", addr)
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
