package dnsserver

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// TCP is where one client can hurt every other: a slot held is a slot
// another resolver's truncation fallback or AXFR cannot have. So each
// connection is bounded in every way a client could stretch it: the wait for
// a query to start (the idle timeout), the time to send one once started,
// the time to take a reply, its whole lifetime, and its network's share of
// the slots. At the cap, the connection idle the longest makes room.

const (
	// tcpMessageTimeout bounds reading one query once its first octet has
	// arrived (at most the idle timeout): a client that dribbles a query an
	// octet at a time loses its connection.
	tcpMessageTimeout = 3 * time.Second
	// tcpLifetimeIdles is a connection's lifetime in idle timeouts (2
	// minutes by default): after it the connection ends between queries,
	// however busy, and the client reconnects if it still has work.
	tcpLifetimeIdles = 12
	// tcpPrefixShare: one client network (IPv4 /24, IPv6 /56) may hold at
	// most 1/tcpPrefixShare of the connections (at least one), so a single
	// host or network cannot take every slot.
	tcpPrefixShare = 8
	// tcpWarnEvery spaces the warnings that connections are being evicted.
	tcpWarnEvery = time.Minute
)

// tcpLimits are the TCP settings in force; a new value is swapped in whole.
type tcpLimits struct {
	idle      time.Duration
	maxConns  int
	perPrefix int
}

func newTCPLimits(idle time.Duration, maxConns int) *tcpLimits {
	if idle <= 0 {
		idle = 10 * time.Second
	}
	if maxConns <= 0 {
		maxConns = 1000
	}
	return &tcpLimits{idle: idle, maxConns: maxConns, perPrefix: max(1, maxConns/tcpPrefixShare)}
}

func (l *tcpLimits) lifetime() time.Duration { return tcpLifetimeIdles * l.idle }
func (l *tcpLimits) message() time.Duration  { return min(l.idle, tcpMessageTimeout) }

// SetTCPLimits changes the idle timeout and the connection cap while serving
// (zero or less: the default, as for TCPIdleTimeout and MaxTCPConns). Open
// connections take the new timeout from their next query; the cap applies
// from the next connection accepted, which evicts down to it.
func (s *Server) SetTCPLimits(idle time.Duration, maxConns int) {
	s.tcpLimits.Store(newTCPLimits(idle, maxConns))
}

// clientPrefix is the network a client's share of connections is counted
// in: a /24 for IPv4, a /56 for IPv6 (what one site is usually given).
func clientPrefix(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 56
	if a.Is4() {
		bits = 24
	}
	p, _ := a.Prefix(bits)
	return p
}

// connState is where a connection is in its cycle; guarded by Server.mu.
type connState uint8

const (
	connWaiting   connState = iota // for the first octet of a query
	connReading                    // the rest of a query
	connAnswering                  // never evicted: the reply is owed
)

// tcpConn is one accepted connection.
type tcpConn struct {
	c      *net.TCPConn
	remote netip.Addr
	prefix netip.Prefix
	born   time.Time

	// Guarded by Server.mu.
	state     connState
	idleSince time.Time // when it last started waiting for a query
	gone      bool      // out of the table: evicted or ended
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
		s.admit(c)
	}
}

// admit makes room for c and starts serving it, or closes it if every
// connection in its way is answering a query.
func (s *Server) admit(c *net.TCPConn) {
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	now := time.Now()
	tc := &tcpConn{c: c, remote: remote, prefix: clientPrefix(remote), born: now, idleSince: now}
	lim := s.tcpLimits.Load()
	s.mu.Lock()
	ok := s.makeRoom(tc.prefix, lim, now)
	if ok {
		s.conns[tc] = struct{}{}
		s.prefixes[tc.prefix]++
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if !ok {
		c.Close()
		return
	}
	go s.serveConn(tc)
}

// makeRoom evicts until a connection from p fits: the network's own
// longest-idle one while it is at its share, then the longest-idle of all
// while the server is at its cap. It reports false if only connections
// answering a query are left to evict. s.mu must be held.
func (s *Server) makeRoom(p netip.Prefix, lim *tcpLimits, now time.Time) bool {
	for s.prefixes[p] >= lim.perPrefix {
		if !s.evictIdlest(p, true, lim, now) {
			return false
		}
	}
	for len(s.conns) >= lim.maxConns {
		if !s.evictIdlest(p, false, lim, now) {
			return false
		}
	}
	return true
}

// evictIdlest closes the connection idle the longest (in network p only, if
// samePrefix) that is not answering a query. s.mu must be held.
func (s *Server) evictIdlest(p netip.Prefix, samePrefix bool, lim *tcpLimits, now time.Time) bool {
	var victim *tcpConn
	for tc := range s.conns {
		if tc.state == connAnswering || samePrefix && tc.prefix != p {
			continue
		}
		if victim == nil || tc.idleSince.Before(victim.idleSince) {
			victim = tc
		}
	}
	if victim == nil {
		return false
	}
	s.forget(victim)
	victim.c.Close() // its reader sees the error and ends
	if now.Sub(s.lastEvictWarn) >= tcpWarnEvery {
		s.lastEvictWarn = now
		reason := "connection limit"
		if samePrefix {
			reason = "client network's share"
		}
		s.Log.Warn("tcp connections full; closing the longest-idle", "reason", reason, "network", victim.prefix, "max", lim.maxConns, "per_network", lim.perPrefix)
	}
	return true
}

// forget takes tc out of the table. s.mu must be held.
func (s *Server) forget(tc *tcpConn) {
	if tc.gone {
		return
	}
	tc.gone = true
	delete(s.conns, tc)
	if s.prefixes[tc.prefix]--; s.prefixes[tc.prefix] <= 0 {
		delete(s.prefixes, tc.prefix)
	}
}

// serveConn answers queries on one connection in the order they arrive;
// a client may send several without waiting (RFC 7766 section 6.2.1.1).
func (s *Server) serveConn(tc *tcpConn) {
	defer func() {
		s.mu.Lock()
		s.forget(tc)
		s.mu.Unlock()
		tc.c.Close()
		s.wg.Done()
	}()
	w := &tcpWriter{conn: tc.c}
	var length [2]byte // outside the loop: it escapes, so this is one allocation, not one per query
	for {
		lim := s.tcpLimits.Load()
		if !s.awaitQuery(tc, lim) {
			return
		}
		n, err := tc.c.Read(length[:])
		if err != nil {
			if isTimeout(err) && s.closing.Load() {
				continue // woken by Shutdown: answer what was sent before it
			}
			return
		}
		if !s.advance(tc, connReading, lim) {
			return
		}
		if n < len(length) {
			if _, err := io.ReadFull(tc.c, length[n:]); err != nil {
				return
			}
		}
		size := int(binary.BigEndian.Uint16(length[:]))
		in := getBuf(size)
		if _, err := io.ReadFull(tc.c, (*in)[:size]); err != nil || !s.advance(tc, connAnswering, lim) {
			putBuf(in)
			return
		}
		out := getBuf(dns.MaxMsgSize)
		w.timeout = lim.idle
		s.Handler.serve(w, *out, request{wire: (*in)[:size], tcp: true, remote: tc.remote, start: time.Now()})
		putBuf(out)
		putBuf(in)
		if w.err != nil {
			return // the client does not take its replies
		}
	}
}

// awaitQuery readies tc to wait for its next query, with a deadline of the
// idle timeout or the end of its lifetime, whichever is first. It reports
// false when the connection should end instead: evicted, past its lifetime,
// or, once Shutdown began, with no query already waiting to be read.
func (s *Server) awaitQuery(tc *tcpConn, lim *tcpLimits) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if tc.gone {
		return false
	}
	tc.state, tc.idleSince = connWaiting, now
	if s.closing.Load() {
		if !pending(tc.c) {
			return false
		}
		tc.c.SetReadDeadline(now.Add(lim.message()))
		return true
	}
	end := tc.born.Add(lim.lifetime())
	if !now.Before(end) {
		return false
	}
	deadline := now.Add(lim.idle)
	if end.Before(deadline) {
		deadline = end
	}
	tc.c.SetReadDeadline(deadline)
	return true
}

// advance moves tc on to reading the rest of a query (which then has the
// message timeout to arrive) or to answering it. It reports false if tc was
// evicted meanwhile.
func (s *Server) advance(tc *tcpConn, to connState, lim *tcpLimits) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tc.gone {
		return false
	}
	tc.state = to
	if to == connReading {
		// Under s.mu, so Shutdown's wake-up deadline cannot land after it.
		tc.c.SetReadDeadline(time.Now().Add(lim.message()))
	}
	return true
}

// pending reports whether c has data waiting to be read, without waiting
// and whatever its read deadline.
func pending(c *net.TCPConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, _ = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	})
	return n > 0
}

type tcpWriter struct {
	conn    *net.TCPConn
	timeout time.Duration // for each write; the idle timeout
	length  [2]byte
	vec     [2][]byte
	bufs    net.Buffers
	err     error // the first write error; nothing is written after it
}

// write sends msg with its two-octet length (RFC 1035 section 4.2.2) in one
// gathered write. A client that does not take a reply within the timeout
// loses the connection: it would hold its slot for nothing.
func (w *tcpWriter) write(msg []byte) error {
	if w.err != nil {
		return w.err
	}
	binary.BigEndian.PutUint16(w.length[:], uint16(len(msg)))
	w.vec = [2][]byte{w.length[:], msg}
	w.bufs = w.vec[:]
	w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	_, w.err = w.bufs.WriteTo(w.conn)
	return w.err
}

// bufClasses pool message buffers by size, so a connection holds memory only
// while it reads or answers a query, and only as much as the query needs.
var bufClasses = [...]*bufClass{{size: 512}, {size: 4096}, {size: dns.MaxMsgSize}}

type bufClass struct {
	size int
	pool sync.Pool
}

// getBuf returns a buffer of at least n octets (n at most 65535).
func getBuf(n int) *[]byte {
	for _, c := range bufClasses {
		if n <= c.size {
			if b, ok := c.pool.Get().(*[]byte); ok {
				return b
			}
			b := make([]byte, c.size)
			return &b
		}
	}
	panic("dnsserver: buffer over 64 KiB")
}

func putBuf(b *[]byte) {
	for _, c := range bufClasses {
		if len(*b) == c.size {
			c.pool.Put(b)
			return
		}
	}
}
