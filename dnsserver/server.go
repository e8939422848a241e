package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Server serves a Handler on UDP and TCP. Set its fields, then call Start.
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

	udp []*udpSocket
	tcp []*net.TCPListener

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

// udpSocket is one bound UDP socket.
type udpSocket struct {
	conn *net.UDPConn
	raw  syscall.RawConn
	// pktinfo: bound to a wildcard address, so each query's destination is
	// read and its reply sent from it (see pktinfo.go).
	pktinfo bool
	v6      bool // an IPv6 socket (perhaps dual-stack): replies carry IPV6_PKTINFO
}

// listen binds addr on UDP, then TCP on the same port. With port 0 the port
// the kernel picked for UDP may be taken on TCP: then it tries another.
func listen(ctx context.Context, addr string) (*udpSocket, *net.TCPListener, error) {
	host, port, _ := net.SplitHostPort(addr)
	tries := 1
	if port == "0" {
		tries = 20
	}
	udpNet, tcpNet := "udp", "tcp"
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		// 0.0.0.0 means IPv4, as for other servers; Go would otherwise
		// bind it as a dual-stack IPv6 socket.
		udpNet, tcpNet = "udp4", "tcp4"
	}
	u := &udpSocket{pktinfo: wildcardHost(host)}
	var ulc net.ListenConfig
	if u.pktinfo {
		ulc.Control = func(network, _ string, c syscall.RawConn) error {
			u.v6 = network == "udp6"
			return enablePktinfo(network, c)
		}
	}
	var lc net.ListenConfig
	for i := 1; ; i++ {
		pc, err := ulc.ListenPacket(ctx, udpNet, addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns listen %s: %w", addr, err)
		}
		u.conn = pc.(*net.UDPConn)
		u.conn.SetReadBuffer(udpReadBuffer) // best effort: the kernel caps it
		if u.raw, err = u.conn.SyscallConn(); err != nil {
			u.conn.Close()
			return nil, nil, fmt.Errorf("dns listen %s: %w", addr, err)
		}
		tcpAddr := u.conn.LocalAddr().String()
		l, err := lc.Listen(ctx, tcpNet, tcpAddr)
		if err == nil {
			return u, l.(*net.TCPListener), nil
		}
		u.conn.Close()
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
		out[i] = u.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return out
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
		u.conn.SetReadDeadline(now) // wakes the readers to drain, then end
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

func (s *Server) closeAll() {
	for _, u := range s.udp {
		u.conn.Close()
	}
	for _, t := range s.tcp {
		t.Close()
	}
	s.mu.Lock()
	for tc := range s.conns {
		tc.c.Close()
	}
	s.mu.Unlock()
}

// udpWriter sends the replies of one UDP reader. write is the one place a
// UDP reply is sent.
type udpWriter struct {
	sock *udpSocket
	to   netip.AddrPort
	// On a wildcard socket: where the query was sent, the reply's source.
	dst     netip.Addr
	ifindex uint32
	oob     []byte
	rrl     *rrlState
	slip    []byte // scratch for truncated replies
}

func (w *udpWriter) write(msg []byte) error {
	if l := w.rrl.limiter.Load(); l != nil {
		if msg = w.rrl.limit(l, w.to.Addr(), msg, &w.slip); msg == nil {
			return nil
		}
	}
	if !w.sock.pktinfo {
		_, err := w.sock.conn.WriteToUDPAddrPort(msg, w.to)
		return err
	}
	var oob []byte
	if w.dst.IsValid() {
		oob = appendPktinfo(w.oob[:0], w.sock.v6, w.dst, w.ifindex)
		w.oob = oob
	}
	_, _, err := w.sock.conn.WriteMsgUDPAddrPort(msg, oob, w.to)
	return err
}

// read reads one query into in and readies w to answer it.
func (w *udpWriter) read(in, oob []byte) (int, error) {
	if !w.sock.pktinfo {
		n, from, err := w.sock.conn.ReadFromUDPAddrPort(in)
		w.to = from
		return n, err
	}
	n, oobn, _, from, err := w.sock.conn.ReadMsgUDPAddrPort(in, oob)
	w.to = from
	w.dst, w.ifindex, _ = parsePktinfo(oob[:oobn])
	return n, err
}

// readNow is read for draining at Shutdown: it does not wait, whatever the
// socket's read deadline, and reports false once nothing is left.
func (w *udpWriter) readNow(in, oob []byte) (int, bool) {
	var n, oobn int
	var from unix.Sockaddr
	var err error
	cerr := w.sock.raw.Control(func(fd uintptr) {
		n, oobn, _, from, err = unix.Recvmsg(int(fd), in, oob, unix.MSG_DONTWAIT)
	})
	if cerr != nil || err != nil {
		return 0, false
	}
	switch sa := from.(type) {
	case *unix.SockaddrInet4:
		w.to = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		w.to = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	default:
		return 0, false
	}
	w.dst, w.ifindex, _ = parsePktinfo(oob[:oobn])
	return n, true
}

func (s *Server) serveUDP(u *udpSocket) {
	defer s.wg.Done()
	in := make([]byte, 65535)
	out := make([]byte, 65535)
	var oob []byte
	if u.pktinfo {
		oob = make([]byte, oobSize)
	}
	w := &udpWriter{sock: u, oob: make([]byte, 0, oobSize), rrl: &s.rrl}
	for i := 0; ; i++ {
		n, err := w.read(in, oob)
		if err != nil {
			if isTimeout(err) && s.closing.Load() {
				s.drainUDP(w, in, out, oob)
				return
			}
			if errors.Is(err, net.ErrClosed) || isTimeout(err) {
				return
			}
			s.Log.Warn("udp read", "err", err)
			continue
		}
		var start time.Time
		if i%udpTimingSample == 0 {
			start = time.Now()
		}
		s.Handler.serve(w, out, request{wire: in[:n], remote: w.to.Addr(), start: start})
	}
}

// drainUDP answers the queries left in the socket's receive buffer when
// Shutdown began: the read deadline that woke the reader would drop them.
func (s *Server) drainUDP(w *udpWriter, in, out, oob []byte) {
	for {
		n, ok := w.readNow(in, oob)
		if !ok {
			return
		}
		s.Handler.serve(w, out, request{wire: in[:n], remote: w.to.Addr()})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
