//go:build !linux

package dnsserver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Elsewhere than Linux, UDP is served the plain way: one socket per
// address, read by every reader through Go's netpoller, a reply sent per
// query. udp_linux.go has the fast version.

// udpSocket is an address's socket, shared by its readers.
type udpSocket struct {
	conn  *net.UDPConn
	raw   syscall.RawConn
	local netip.AddrPort
}

var defaultReaders = sync.OnceValue(func() int { return runtime.GOMAXPROCS(0) })

func spareP(int) {}

// listenUDP binds addr; its n readers share the one socket.
func listenUDP(addr string, n int) ([]*udpSocket, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dns listen %s: %w", addr, err)
	}
	if wildcardHost(host) {
		return nil, fmt.Errorf("dns listen %s: %w", addr, enablePktinfo("udp", nil))
	}
	network := "udp"
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		network = "udp4"
	}
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		return nil, fmt.Errorf("dns listen %s: %w", addr, err)
	}
	conn := pc.(*net.UDPConn)
	conn.SetReadBuffer(udpReadBuffer) // best effort: the kernel caps it
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("dns listen %s: %w", addr, err)
	}
	u := &udpSocket{conn: conn, raw: raw, local: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
	socks := make([]*udpSocket, max(n, 1))
	for i := range socks {
		socks[i] = u
	}
	return socks, nil
}

func closeUDP(socks []*udpSocket) {
	for _, u := range socks {
		u.conn.Close()
	}
}

// wake makes the readers answer what is queued and return.
func (u *udpSocket) wake() { u.conn.SetReadDeadline(time.Now()) }

// udpWriter sends the replies of one UDP reader. write is the one place a
// UDP reply is sent.
type udpWriter struct {
	sock *udpSocket
	to   netip.AddrPort
	rrl  *rrlState
	slip []byte // scratch for a truncated reply
}

func (w *udpWriter) write(msg []byte) error {
	if l := w.rrl.limiter.Load(); l != nil {
		if msg = w.rrl.limit(l, w.to.Addr(), msg, &w.slip); msg == nil {
			return nil
		}
	}
	_, err := w.sock.conn.WriteToUDPAddrPort(msg, w.to)
	return err
}

func (s *Server) serveUDP(u *udpSocket, shard int) {
	defer s.wg.Done()
	in := make([]byte, 65535)
	out := make([]byte, 65535)
	w := &udpWriter{sock: u, rrl: &s.rrl}
	for i := 0; ; i++ {
		n, from, err := u.conn.ReadFromUDPAddrPort(in)
		if err != nil {
			if isTimeout(err) && s.closing.Load() {
				s.drainUDP(w, in, out, shard)
				u.conn.Close()
				return
			}
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
		s.Handler.serve(w, out, request{wire: in[:n], remote: from.Addr(), start: start, shard: shard})
	}
}

// drainUDP answers the queries left in the socket's receive buffer when
// Shutdown began: the read deadline that woke the reader would drop them.
func (s *Server) drainUDP(w *udpWriter, in, out []byte, shard int) {
	for {
		var n int
		var from unix.Sockaddr
		var err error
		cerr := w.sock.raw.Control(func(fd uintptr) {
			n, _, _, from, err = unix.Recvmsg(int(fd), in, nil, unix.MSG_DONTWAIT)
		})
		if cerr != nil || err != nil {
			return
		}
		switch sa := from.(type) {
		case *unix.SockaddrInet4:
			w.to = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			w.to = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
		default:
			return
		}
		s.Handler.serve(w, out, request{wire: in[:n], remote: w.to.Addr(), shard: shard})
	}
}
