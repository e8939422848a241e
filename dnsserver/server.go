package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves a Handler on UDP and TCP. Set its fields, then call Start.
//
// Each address is served over UDP by one reader per core Go had at start,
// each with a socket of its own (see udp_linux.go). Start raises GOMAXPROCS
// by one so that a P stays idle while the readers wait in the kernel.
type Server struct {
	// Handler answers the queries.
	Handler *Handler
	// Addrs are the host:port addresses to listen on, each on UDP and TCP.
	// Port 0 picks a free port, the same for UDP and TCP. An IPv4 address
	// serves IPv4 only; [::] and an empty host serve IPv6 and IPv4. On a
	// wildcard address each UDP reply leaves from the address its query
	// was sent to.
	Addrs []string
	// TCPIdleTimeout closes a TCP connection on which no query starts for
	// this long (RFC 7766 section 6.2.3), and one whose client does not take
	// a reply for this long. A connection also ends after 12 idle timeouts,
	// between queries, and a query must arrive whole within 3 s (at most the
	// idle timeout) of its first octet. Default 10 s.
	TCPIdleTimeout time.Duration
	// MaxTCPConns caps concurrent TCP connections. A new connection closes
	// the longest-idle one to make room; one client network (IPv4 /24, IPv6
	// /56) may hold an eighth of them (at least one), and beyond that its
	// own longest-idle connection makes room. Default 1000.
	MaxTCPConns int
	// Log receives errors and state changes; never one line per query.
	Log *slog.Logger

	udp   []*udpSocket // every reader's socket
	bound []netip.AddrPort
	tcp   []*net.TCPListener

	readers int // UDP readers (and sockets) per address; 0: defaultReaders

	tcpLimits atomic.Pointer[tcpLimits]
	closing   atomic.Bool // Shutdown began

	wg            sync.WaitGroup
	mu            sync.Mutex // guards the fields below and each tcpConn's state
	conns         map[*tcpConn]struct{}
	prefixes      map[netip.Prefix]int // connections per client network
	lastEvictWarn time.Time

	rrl rrlState // rate limiting of UDP responses; see SetRRL
}

// udpTimingSample: one UDP query in this many is timed for the latency
// histogram. Reading the clock twice costs more than a fast-path reply.
const udpTimingSample = 8

// udpReadBuffer is the socket receive buffer asked for: a burst of queries
// waits in the kernel instead of being dropped while a reader is busy.
const udpReadBuffer = 4 << 20

// Start binds every address and starts serving. Either every socket is bound
// or none is left open: a server never starts half-configured.
func (s *Server) Start(ctx context.Context) error {
	s.tcpLimits.Store(newTCPLimits(s.TCPIdleTimeout, s.MaxTCPConns))
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	s.conns = map[*tcpConn]struct{}{}
	s.prefixes = map[netip.Prefix]int{}
	if s.readers == 0 {
		s.readers = defaultReaders()
	}
	for _, addr := range s.Addrs {
		u, t, err := listen(ctx, addr, s.readers)
		if err != nil {
			closeUDP(s.udp)
			s.closeAll()
			return err
		}
		s.udp = append(s.udp, u...)
		s.bound = append(s.bound, u[0].local)
		s.tcp = append(s.tcp, t)
	}
	spareP(s.readers)
	// One reader per core and socket: each answers its queries to the end
	// before reading more, so nothing is queued in Go.
	for i, u := range s.udp {
		s.wg.Add(1)
		go s.serveUDP(u, i)
	}
	for _, t := range s.tcp {
		s.wg.Add(1)
		go s.serveTCP(t)
	}
	return nil
}

// listen binds addr on UDP, a socket per reader, then TCP on the same
// port. With port 0 the port the kernel picked for UDP may be taken on TCP:
// then it tries another.
func listen(ctx context.Context, addr string, readers int) ([]*udpSocket, *net.TCPListener, error) {
	_, port, _ := net.SplitHostPort(addr)
	tries := 1
	if port == "0" {
		tries = 20
	}
	tcpNet := "tcp"
	if a, err := netip.ParseAddr(addrHost(addr)); err == nil && a.Is4() {
		// 0.0.0.0 means IPv4, as for other servers; Go would otherwise
		// bind it as a dual-stack IPv6 socket.
		tcpNet = "tcp4"
	}
	var lc net.ListenConfig
	for i := 1; ; i++ {
		u, err := listenUDP(addr, readers)
		if err != nil {
			return nil, nil, err
		}
		tcpAddr := u[0].local.String()
		l, err := lc.Listen(ctx, tcpNet, tcpAddr)
		if err == nil {
			return u, l.(*net.TCPListener), nil
		}
		closeUDP(u)
		if i == tries {
			return nil, nil, fmt.Errorf("dns listen %s/tcp: %w", tcpAddr, err)
		}
	}
}

func addrHost(addr string) string {
	host, _, _ := net.SplitHostPort(addr)
	return host
}

// BoundAddrs returns the bound UDP addresses, in the order of s.Addrs; TCP uses the
// same ones.
func (s *Server) BoundAddrs() []netip.AddrPort {
	return slices.Clone(s.bound)
}

// Shutdown stops accepting connections and answers every query that reached
// the server before it was called: those being answered, and those waiting
// in the sockets' receive buffers, over UDP and on open TCP connections.
// Then it closes every socket. If ctx ends first, everything is closed at
// once. (Connections still in the kernel's accept queue are reset.)
func (s *Server) Shutdown(ctx context.Context) error {
	now := time.Now()
	s.mu.Lock()
	s.closing.Store(true)
	for tc := range s.conns {
		if tc.state == connWaiting {
			tc.c.SetReadDeadline(now) // wakes it to answer what is waiting, then end
		}
	}
	s.mu.Unlock()
	for _, u := range s.udp {
		u.wake() // the reader answers what is queued, then closes the socket
	}
	for _, t := range s.tcp {
		t.Close()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.closeAll()
	return err
}

// closeAll closes the TCP side. Each UDP reader closes its own socket when
// it returns: a descriptor closed under a reader could be reused by anything.
func (s *Server) closeAll() {
	for _, t := range s.tcp {
		t.Close()
	}
	s.mu.Lock()
	for tc := range s.conns {
		tc.c.Close()
	}
	s.mu.Unlock()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
