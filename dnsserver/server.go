package dnsserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"
)

// Server serves a Handler on UDP and TCP. Set its fields, then call Start.
type Server struct {
	// Handler answers the queries.
	Handler *Handler
	// Addrs are the host:port addresses to listen on, each on UDP and TCP.
	// Port 0 picks a free port, the same for UDP and TCP.
	Addrs []string
	// TCPIdleTimeout closes a TCP connection that sends no query for this long
	// (RFC 7766 section 6.2.3). Default 10 s.
	TCPIdleTimeout time.Duration
	// MaxTCPConns caps concurrent TCP connections; more are closed at once.
	// Default 1000.
	MaxTCPConns int
	// Log receives errors and state changes; never one line per query.
	Log *slog.Logger

	udp []*net.UDPConn
	tcp []*net.TCPListener

	wg      sync.WaitGroup
	mu      sync.Mutex // guards conns and closing
	conns   map[*net.TCPConn]struct{}
	closing bool
	slots   chan struct{}

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
	if s.TCPIdleTimeout == 0 {
		s.TCPIdleTimeout = 10 * time.Second
	}
	if s.MaxTCPConns == 0 {
		s.MaxTCPConns = 1000
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	s.conns = map[*net.TCPConn]struct{}{}
	s.slots = make(chan struct{}, s.MaxTCPConns)
	for _, addr := range s.Addrs {
		u, t, err := listen(ctx, addr)
		if err != nil {
			s.closeAll()
			return err
		}
		s.udp = append(s.udp, u)
		s.tcp = append(s.tcp, t)
	}
	for _, u := range s.udp {
		// One reader per core: each answers its query to the end before
		// reading the next, so nothing is queued in Go.
		for range runtime.GOMAXPROCS(0) {
			s.wg.Add(1)
			go s.serveUDP(u)
		}
	}
	for _, t := range s.tcp {
		s.wg.Add(1)
		go s.serveTCP(t)
	}
	return nil
}

// listen binds addr on UDP, then TCP on the same port. With port 0 the port
// the kernel picked for UDP may be taken on TCP: then it tries another.
func listen(ctx context.Context, addr string) (*net.UDPConn, *net.TCPListener, error) {
	_, port, _ := net.SplitHostPort(addr)
	tries := 1
	if port == "0" {
		tries = 20
	}
	var lc net.ListenConfig
	for i := 1; ; i++ {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns listen %s: %w", addr, err)
		}
		u := pc.(*net.UDPConn)
		u.SetReadBuffer(udpReadBuffer) // best effort: the kernel caps it
		tcpAddr := u.LocalAddr().String()
		l, err := lc.Listen(ctx, "tcp", tcpAddr)
		if err == nil {
			return u, l.(*net.TCPListener), nil
		}
		u.Close()
		if i == tries {
			return nil, nil, fmt.Errorf("dns listen %s/tcp: %w", tcpAddr, err)
		}
	}
}

// BoundAddrs returns the bound UDP addresses, in the order of s.Addrs; TCP uses the
// same ones.
func (s *Server) BoundAddrs() []netip.AddrPort {
	out := make([]netip.AddrPort, len(s.udp))
	for i, u := range s.udp {
		out[i] = u.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return out
}

// Shutdown stops reading queries, lets the ones being answered finish, and
// closes every socket. If ctx ends first, connections are closed at once.
func (s *Server) Shutdown(ctx context.Context) error {
	now := time.Now()
	for _, u := range s.udp {
		u.SetReadDeadline(now) // readers finish their query, then see the deadline
	}
	for _, t := range s.tcp {
		t.Close()
	}
	s.mu.Lock()
	s.closing = true
	for c := range s.conns {
		c.SetReadDeadline(now) // idle connections end; a query in hand is still answered
	}
	s.mu.Unlock()
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

func (s *Server) closeAll() {
	for _, u := range s.udp {
		u.Close()
	}
	for _, t := range s.tcp {
		t.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

type udpWriter struct {
	conn *net.UDPConn
	to   netip.AddrPort
	rrl  *rrlState
	slip []byte // scratch for truncated replies
}

func (w *udpWriter) write(msg []byte) error {
	if l := w.rrl.limiter.Load(); l != nil {
		if msg = w.rrl.limit(l, w.to.Addr(), msg, &w.slip); msg == nil {
			return nil
		}
	}
	_, err := w.conn.WriteToUDPAddrPort(msg, w.to)
	return err
}

func (s *Server) serveUDP(conn *net.UDPConn) {
	defer s.wg.Done()
	in := make([]byte, 65535)
	out := make([]byte, 65535)
	w := &udpWriter{conn: conn, rrl: &s.rrl}
	for i := 0; ; i++ {
		n, from, err := conn.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || isTimeout(err) {
				return
			}
			s.Log.Warn("udp read", "err", err)
			continue
		}
		w.to = from
		var start time.Time
		if i%udpTimingSample == 0 {
			start = time.Now()
		}
		s.Handler.serve(w, out, request{wire: in[:n], remote: from.Addr(), start: start})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

type tcpWriter struct {
	conn *net.TCPConn
	buf  []byte
}

// write sends msg with its two-octet length (RFC 1035 section 4.2.2) in one
// segment where it fits.
func (w *tcpWriter) write(msg []byte) error {
	w.buf = binary.BigEndian.AppendUint16(w.buf[:0], uint16(len(msg)))
	w.buf = append(w.buf, msg...)
	w.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := w.conn.Write(w.buf)
	return err
}

func (s *Server) serveTCP(l *net.TCPListener) {
	defer s.wg.Done()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.Log.Warn("tcp accept", "err", err)
			time.Sleep(10 * time.Millisecond) // out of descriptors: let some close
			continue
		}
		select {
		case s.slots <- struct{}{}:
		default:
			s.Log.Warn("tcp connection limit reached; closing new connection", "limit", s.MaxTCPConns, "client", c.RemoteAddr())
			c.Close()
			continue
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		if s.closing {
			c.SetReadDeadline(time.Now()) // accepted just as Shutdown began
		}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serveConn(c)
	}
}

// serveConn answers queries on one connection in the order they arrive;
// a client may send several without waiting (RFC 7766 section 6.2.1.1).
func (s *Server) serveConn(c *net.TCPConn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
		<-s.slots
		s.wg.Done()
	}()
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
	in := make([]byte, 65535)
	out := make([]byte, 65535)
	w := &tcpWriter{conn: c, buf: make([]byte, 0, 2+65535)}
	var length [2]byte
	for {
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			return
		}
		c.SetReadDeadline(time.Now().Add(s.TCPIdleTimeout))
		s.mu.Unlock()
		if _, err := io.ReadFull(c, length[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(length[:]))
		if _, err := io.ReadFull(c, in[:n]); err != nil {
			return
		}
		s.Handler.serve(w, out, request{wire: in[:n], tcp: true, remote: remote, start: time.Now()})
	}
}
