// Package adminhttp is what farmdns and farmdns-agent share for their own
// HTTP listeners (/metrics, /healthz, and a few requests that change state):
// the server's timeouts and size limits, and the guard in front of the
// requests that change state.
//
// A request that changes state is let through when it presents
// "Authorization: Bearer <token>" matching the configured token, or when it
// comes from this machine (from loopback, or over a connection whose two ends
// have the same address: a listener on a private address for Prometheus),
// directly (no proxy headers), addressed to a loopback host or to the
// listener's own address, without an Origin, and with the header
// Farmdns-Admin. A browser
// cannot be made to send that: a page on another origin needs a CORS
// preflight for the custom header, which these servers never grant; a page
// that rebinds its own name to 127.0.0.1 still sends its own Host and Origin.
package adminhttp

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// Header is the request header a local client sends with a request that
// changes state (any non-empty value; "1" by convention).
const Header = "Farmdns-Admin"

// Server limits. A listener for scrapes and health checks needs little:
// these bound what one slow or idle client can hold.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	// WriteTimeout leaves room for a large /metrics on a busy machine.
	WriteTimeout = 30 * time.Second
	// IdleTimeout outlasts Prometheus's usual scrape intervals (15 s to
	// 60 s), so a scraper keeps its connection, but an idle one goes.
	IdleTimeout    = 90 * time.Second
	MaxHeaderBytes = 16 << 10
)

// NewServer returns an http.Server for h with the limits above and the given
// idle timeout (IdleTimeout unless a test wants it short).
func NewServer(h http.Handler, idle time.Duration, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       idle,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// MinTokenLen is the shortest token accepted: a token guards draining a node
// from anywhere on the network, so it must not be guessable.
const MinTokenLen = 16

// Token is a bearer token. It never prints: fmt, slog and JSON all show
// "[redacted]", so a logged config cannot leak it. The zero Token is none.
type Token struct{ b []byte }

// ReadToken reads a token from a file: surrounding white space is trimmed;
// the rest must be at least MinTokenLen printable ASCII characters without
// spaces (it travels in an HTTP header).
func ReadToken(path string) (Token, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Token{}, err
	}
	s := strings.TrimSpace(string(b))
	switch {
	case s == "":
		return Token{}, fmt.Errorf("%s: empty", path)
	case len(s) < MinTokenLen:
		return Token{}, fmt.Errorf("%s: the token has %d characters, want at least %d", path, len(s), MinTokenLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return Token{}, fmt.Errorf("%s: want printable ASCII without spaces (character %d is not)", path, i+1)
		}
	}
	return Token{b: []byte(s)}, nil
}

// IsZero reports whether no token is set.
func (t Token) IsZero() bool { return len(t.b) == 0 }

// String hides the token.
func (t Token) String() string {
	if t.IsZero() {
		return ""
	}
	return "[redacted]"
}

// GoString hides the token from %#v.
func (t Token) GoString() string { return t.String() }

// Format hides the token from every verb, %+v included.
func (t Token) Format(f fmt.State, _ rune) { fmt.Fprint(f, t.String()) }

// LogValue hides the token from slog.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.String()) }

// MarshalText hides the token from encoders.
func (t Token) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Authorize adds what a Guard asks of a local client to req: the admin
// header, and the token if there is one.
func (t Token) Authorize(req *http.Request) {
	req.Header.Set(Header, "1")
	if !t.IsZero() {
		req.Header.Set("Authorization", "Bearer "+string(t.b))
	}
}

// Guard lets through only the requests that may change state (see the
// package comment). Its token can be swapped while it serves.
type Guard struct {
	token atomic.Pointer[Token]
	log   *slog.Logger
}

// NewGuard returns a guard accepting tok (none if zero) and local requests.
func NewGuard(tok Token, log *slog.Logger) *Guard {
	g := &Guard{log: log}
	g.SetToken(tok)
	return g
}

// SetToken replaces the accepted token (for a config reload).
func (g *Guard) SetToken(tok Token) { g.token.Store(&tok) }

// Protect wraps h: a refused request gets 401 (a wrong token) or 403 and
// never reaches h.
func (g *Guard) Protect(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, why := g.check(r)
		if code != 0 {
			// Debug only: anyone who can reach the listener can send these.
			g.log.Debug("state-changing request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "why", why)
			if code == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="farmdns"`)
			}
			http.Error(w, why, code)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// errNoToken is the explanation a refused client gets.
var errNoToken = errors.New("refused: send Authorization: Bearer <the http.token_file token>, or send the " + Header + " header from loopback, without Origin or proxy headers")

// check returns 0 if r may change state, else the status and why not.
func (g *Guard) check(r *http.Request) (int, string) {
	if auth := r.Header.Get("Authorization"); auth != "" {
		tok := g.token.Load()
		if tok.IsZero() {
			return http.StatusForbidden, "refused: no http.token_file is configured, so no token is accepted"
		}
		scheme, got, _ := strings.Cut(auth, " ")
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), tok.b) != 1 {
			return http.StatusUnauthorized, "refused: wrong token"
		}
		return 0, ""
	}
	switch {
	case r.Header.Get(Header) == "":
		// A form post from any web page would get this far: no preflight.
		return http.StatusForbidden, errNoToken.Error()
	case !local(r):
		return http.StatusForbidden, errNoToken.Error()
	case r.Header.Get("Forwarded") != "" || r.Header.Get("X-Forwarded-For") != "":
		// A local proxy makes every client look like loopback.
		return http.StatusForbidden, errNoToken.Error()
	case r.Header.Get("Origin") != "":
		// Only browsers send Origin; a local tool has no reason to.
		return http.StatusForbidden, errNoToken.Error()
	case !localHost(r):
		// A page whose name was rebound to 127.0.0.1 keeps its own Host.
		return http.StatusForbidden, errNoToken.Error()
	}
	return 0, ""
}

// local reports whether r comes from this machine: from a loopback address,
// or from the address it was sent to (the kernel routes such a connection
// over loopback, and drops packets from outside that claim a local source).
func local(r *http.Request) bool {
	remote, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	from := remote.Addr().Unmap()
	if from.IsLoopback() {
		return true
	}
	to, ok := localAddr(r)
	return ok && to == from
}

// localAddr is the address r's connection was accepted on.
func localAddr(r *http.Request) (netip.Addr, bool) {
	la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return netip.Addr{}, false
	}
	ap, err := netip.ParseAddrPort(la.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// localHost reports whether r's Host names this machine: localhost, a
// loopback address, or the address r's connection was accepted on.
func localHost(r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	to, ok := localAddr(r)
	return a.IsLoopback() || (ok && a == to)
}
