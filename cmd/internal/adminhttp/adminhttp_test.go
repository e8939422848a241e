package adminhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const secret = "s3cret-0123456789abcdef"

func token(t *testing.T) Token {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("  "+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := ReadToken(p)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestGuard runs requests straight through a guard. local is the address
// the connection was accepted on ("" for none, as behind a recorder).
func TestGuard(t *testing.T) {
	g := NewGuard(token(t), slog.New(slog.DiscardHandler))
	h := g.Protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	admin := http.Header{Header: {"1"}}
	for _, tt := range []struct {
		name, remote, local, host string
		header                    http.Header
		want                      int
	}{
		{"the token from anywhere", "198.51.100.9:4000", "", "ns1.example:9153", http.Header{"Authorization": {"Bearer " + secret}}, 200},
		{"a wrong token from loopback", "127.0.0.1:4000", "", "127.0.0.1:9153", http.Header{"Authorization": {"Bearer x" + secret}, Header: {"1"}}, 401},
		{"admin header from loopback", "127.0.0.1:4000", "", "127.0.0.1:9153", admin, 200},
		{"admin header from an IPv4-mapped loopback", "[::ffff:127.0.0.1]:4000", "", "127.0.0.1:9153", admin, 200},
		{"admin header, same address on both ends", "10.0.0.1:4000", "10.0.0.1:9154", "10.0.0.1:9154", admin, 200},
		{"admin header from a neighbour", "10.0.0.2:4000", "10.0.0.1:9154", "10.0.0.1:9154", admin, 403},
		{"admin header, same address, foreign Host", "10.0.0.1:4000", "10.0.0.1:9154", "evil.example:9154", admin, 403},
		{"no admin header from loopback", "127.0.0.1:4000", "", "127.0.0.1:9153", http.Header{}, 403},
	} {
		req := httptest.NewRequest(http.MethodPost, "/drain", nil)
		req.RemoteAddr, req.Host, req.Header = tt.remote, tt.host, tt.header
		if tt.local != "" {
			la, err := net.ResolveTCPAddr("tcp", tt.local)
			if err != nil {
				t.Fatal(err)
			}
			req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, la))
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, rec.Code, tt.want)
		}
		if strings.Contains(rec.Body.String(), secret) {
			t.Errorf("%s: the answer shows the token", tt.name)
		}
	}
}

// TestTokenNeverPrints: a token in a printed or logged config shows as
// [redacted].
func TestTokenNeverPrints(t *testing.T) {
	tok := token(t)
	cfg := struct{ Token Token }{tok}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("config", "token", tok, "cfg", cfg)
	j, _ := json.Marshal(cfg)
	for _, s := range []string{fmt.Sprint(tok), fmt.Sprintf("%v %+v %#v %s %q %x", cfg, cfg, cfg, tok, tok, tok), logs.String(), string(j)} {
		if strings.Contains(s, secret) || strings.Contains(s, fmt.Sprintf("%x", secret)) {
			t.Errorf("the token shows: %s", s)
		}
	}
	req := httptest.NewRequest(http.MethodPost, "/", nil)
	tok.Authorize(req)
	if req.Header.Get("Authorization") != "Bearer "+secret || req.Header.Get(Header) == "" {
		t.Errorf("Authorize set %v", req.Header)
	}
}
