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
	"unsafe"

	"golang.org/x/sys/unix"
)

// The UDP readers. Each reader owns a socket of its own (SO_REUSEPORT: the
// kernel spreads the clients over the sockets by address and port), blocks
// in the kernel for the next queries instead of parking in Go's netpoller
// for each one (a blocking recvmmsg is one system call where the netpoller
// costs a failed read, an epoll_wait and a wake-up), takes up to udpBatch
// queries at once, and sends their replies in one sendmmsg. Readers share
// nothing on the way but the State they read: that is what lets UDP scale
// with cores, as Knot's UDP workers do.

// udpBatch is the most queries a reader takes from its socket at once.
// Under a light load a batch is one query; under a heavy one, the system
// calls are spread over up to this many.
const udpBatch = 16

// yieldEvery: a busy reader yields its P this often (see serveUDP), well
// within sysmon's 10 ms.
const yieldEvery = 4 * time.Millisecond

// udpMaxMsg is the largest query a reader takes and the largest reply it
// builds. Pages of the buffers that are never touched cost no memory.
const udpMaxMsg = 65535

// udpSocket is one reader's socket: blocking, so that its reader waits in
// the kernel.
type udpSocket struct {
	mu      sync.Mutex // orders wake against close: a closed fd's number may be reused
	closed  bool
	fd      int
	local   netip.AddrPort
	pktinfo bool // bound to a wildcard address (see pktinfo.go)
	v6      bool // AF_INET6 (perhaps dual-stack): replies carry IPV6_PKTINFO
}

// listenUDP binds n sockets to addr, all on one port: the first without
// SO_REUSEPORT, so that it fails if anything else holds the port (a second
// farmdns included), and with port 0 gets a port nobody shares; then it
// joins the port's reuseport group and the others bind beside it.
func listenUDP(addr string, n int) ([]*udpSocket, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dns listen %s: %w", addr, err)
	}
	network := "udp"
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		network = "udp4" // 0.0.0.0 means IPv4, as for other servers
	}
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, fmt.Errorf("dns listen %s: %w", addr, err)
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if !ap.Addr().IsValid() { // an empty host: every address, IPv6 and IPv4
		ap = netip.AddrPortFrom(netip.IPv6Unspecified(), ap.Port())
	}
	var socks []*udpSocket
	for i := range n {
		u, err := bindUDP(ap, wildcardHost(host), i > 0, n > 1)
		if err != nil {
			closeUDP(socks)
			return nil, fmt.Errorf("dns listen %s: %w", addr, err)
		}
		socks = append(socks, u)
		ap = u.local // the port picked for port 0
	}
	return socks, nil
}

func bindUDP(ap netip.AddrPort, pktinfo, reuseBefore, reuseAfter bool) (*udpSocket, error) {
	u := &udpSocket{pktinfo: pktinfo, v6: ap.Addr().Is6()}
	family, network := unix.AF_INET, "udp4"
	var sa unix.Sockaddr
	if !u.v6 {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family, network = unix.AF_INET6, "udp6"
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16(), ZoneId: zoneIndex(ap.Addr().Zone())}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	u.fd = fd
	fail := func(what string, err error) (*udpSocket, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if u.v6 {
		// [::] serves IPv4 too, as Go's own listeners do.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return fail("IPV6_V6ONLY", err)
		}
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, udpReadBuffer) // best effort: the kernel caps it
	if pktinfo {
		if err := enablePktinfo(network, fdConn(fd)); err != nil {
			return fail("pktinfo", err)
		}
	}
	if reuseBefore {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	if reuseAfter && !reuseBefore {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		u.local = netip.AddrPortFrom(netip.AddrFrom4(b.Addr), uint16(b.Port))
	case *unix.SockaddrInet6:
		u.local = netip.AddrPortFrom(netip.AddrFrom16(b.Addr).WithZone(ap.Addr().Zone()), uint16(b.Port))
	}
	return u, nil
}

func zoneIndex(zone string) uint32 {
	if zone == "" {
		return 0
	}
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index)
	}
	return 0
}

func closeUDP(socks []*udpSocket) {
	for _, u := range socks {
		u.close()
	}
}

func (u *udpSocket) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.closed {
		u.closed = true
		unix.Close(u.fd)
	}
}

// wake makes the socket's reader answer what is queued and return: reads
// return what is waiting, then an empty datagram, once the socket is shut
// for reading. (Closing a descriptor would not wake a thread blocked on it.)
func (u *udpSocket) wake() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.closed {
		unix.Shutdown(u.fd, unix.SHUT_RD) // ENOTCONN on an unconnected socket, but it wakes the reader
	}
}

// fdConn hands a descriptor to code written for a syscall.RawConn.
type fdConn int

func (fd fdConn) Control(f func(uintptr)) error  { f(uintptr(fd)); return nil }
func (fd fdConn) Read(func(uintptr) bool) error  { return errors.ErrUnsupported }
func (fd fdConn) Write(func(uintptr) bool) error { return errors.ErrUnsupported }

var _ syscall.RawConn = fdConn(0)

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// udpReader is one reader's batch: the buffers each query of a batch is
// read into, and its reply built in, stay put until the replies are sent.
type udpReader struct {
	s     *Server
	sock  *udpSocket
	hdrs  [udpBatch]mmsghdr
	iovs  [udpBatch]unix.Iovec
	names [udpBatch]unix.RawSockaddrInet6
	oob   [udpBatch][oobSize]byte
	in    [udpBatch][]byte
	out   [udpBatch][]byte
	w     udpWriter
}

// udpWriter sends the replies of one UDP reader: write queues each reply
// of a batch, flush sends them. write is the one place a UDP reply leaves.
type udpWriter struct {
	sock *udpSocket
	to   netip.AddrPort
	// On a wildcard socket: where the query was sent, the reply's source.
	dst     netip.Addr
	ifindex uint32
	name    *unix.RawSockaddrInet6 // to, as the kernel gave it
	namelen uint32

	n    int
	hdrs [2 * udpBatch]mmsghdr // a reply per query, and room to spare
	iovs [2 * udpBatch]unix.Iovec
	oob  [2 * udpBatch][oobSize]byte

	rrl *rrlState
	// A slipped reply of each slot: it must stay put until the flush, as
	// the replies do.
	slip [2 * udpBatch][]byte
}

// write queues msg to the current query's client. msg is sent by the next
// flush, so it must stay as it is until then: each query of a batch builds
// its reply in a buffer of its own.
func (w *udpWriter) write(msg []byte) error {
	if len(msg) == 0 {
		return nil
	}
	if w.n == len(w.hdrs) {
		w.flush()
	}
	i := w.n
	if l := w.rrl.limiter.Load(); l != nil {
		if msg = w.rrl.limit(l, w.to.Addr(), msg, &w.slip[i]); msg == nil {
			return nil
		}
	}
	w.n++
	w.iovs[i] = unix.Iovec{Base: &msg[0]}
	w.iovs[i].SetLen(len(msg))
	h := &w.hdrs[i].hdr
	*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(w.name)), Namelen: w.namelen, Iov: &w.iovs[i], Iovlen: 1}
	if w.sock.pktinfo && w.dst.IsValid() {
		oob := appendPktinfo(w.oob[i][:0], w.sock.v6, w.dst, w.ifindex)
		h.Control = &oob[0]
		h.SetControllen(len(oob))
	}
	return nil
}

// flush sends the queued replies. A reply the kernel refuses (no route to
// its client, say) is dropped, as a lost datagram would be.
func (w *udpWriter) flush() {
	for off := 0; off < w.n; {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(w.sock.fd), uintptr(unsafe.Pointer(&w.hdrs[off])), uintptr(w.n-off), 0, 0, 0)
		switch {
		case e == unix.EINTR:
		case e != 0:
			off++ // the first one failed: skip it
		default:
			off += int(n)
		}
	}
	w.n = 0
}

func newUDPReader(s *Server, u *udpSocket) *udpReader {
	r := &udpReader{s: s, sock: u}
	r.w.sock, r.w.rrl = u, &s.rrl
	in := make([]byte, udpBatch*udpMaxMsg)
	out := make([]byte, udpBatch*udpMaxMsg)
	for i := range r.hdrs {
		r.in[i] = in[i*udpMaxMsg : (i+1)*udpMaxMsg : (i+1)*udpMaxMsg]
		r.out[i] = out[i*udpMaxMsg : (i+1)*udpMaxMsg : (i+1)*udpMaxMsg]
		r.iovs[i] = unix.Iovec{Base: &r.in[i][0]}
		r.iovs[i].SetLen(udpMaxMsg)
		r.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		r.hdrs[i].hdr.Iov = &r.iovs[i]
		r.hdrs[i].hdr.Iovlen = 1
		if u.pktinfo {
			r.hdrs[i].hdr.Control = &r.oob[i][0]
		}
	}
	return r
}

// recv blocks until at least one query is waiting and returns how many it
// read, up to udpBatch.
func (r *udpReader) recv() (int, error) {
	for i := range r.hdrs {
		h := &r.hdrs[i].hdr
		h.Namelen = unix.SizeofSockaddrInet6
		if r.sock.pktinfo {
			h.SetControllen(oobSize)
		}
		h.Flags = 0
	}
	for {
		// MSG_WAITFORONE: wait for the first query only, take the rest
		// of the batch if it is there already.
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(r.sock.fd), uintptr(unsafe.Pointer(&r.hdrs[0])), udpBatch, unix.MSG_WAITFORONE, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

// sockaddrAddr reads an address and port as the kernel wrote them.
func sockaddrAddr(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := uint16(sa.Port>>8) | uint16(sa.Port<<8) // network order
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	}
	return netip.AddrPort{}
}

// serveUDP is one reader: it answers batches of queries until Shutdown has
// woken it and its socket is empty, then closes the socket.
func (s *Server) serveUDP(u *udpSocket, shard int) {
	defer s.wg.Done()
	defer u.close()
	r := newUDPReader(s, u)
	w := &r.w
	timed := 0
	var yielded time.Time
	for {
		if now := time.Now(); now.Sub(yielded) > yieldEvery {
			// A goroutine that never leaves its P looks stuck to sysmon,
			// which after 10 ms takes the P from it in the middle of a
			// wait, then polls every 20 µs for a while. Yielding now and
			// then shows the reader is alive.
			runtime.Gosched()
			yielded = now
		}
		n, err := r.recv()
		if err != nil {
			if s.closing.Load() {
				return
			}
			s.Log.Warn("udp read", "err", err)
			time.Sleep(10 * time.Millisecond) // a persistent error must not spin a core
			continue
		}
		done := n == 0 && s.closing.Load()
		for i := range n {
			l := int(r.hdrs[i].len)
			if l == 0 && s.closing.Load() {
				done = true // shut for reading, and everything queued is read
				break
			}
			w.name, w.namelen = &r.names[i], r.hdrs[i].hdr.Namelen
			w.to = sockaddrAddr(&r.names[i])
			if u.pktinfo {
				w.dst, w.ifindex, _ = parsePktinfo(r.oob[i][:r.hdrs[i].hdr.Controllen])
			}
			var start time.Time
			if timed++; timed == udpTimingSample {
				timed, start = 0, time.Now()
			}
			s.Handler.serve(w, r.out[i], request{wire: r.in[i][:l], remote: w.to.Addr(), start: start, shard: shard})
		}
		w.flush()
		if done {
			return
		}
	}
}

// defaultReaders is how many readers serve each UDP address: one per core
// Go was given when the process started.
var defaultReaders = sync.OnceValue(func() int { return runtime.GOMAXPROCS(0) })

// spareP makes sure Go has a P more than there are readers. A reader
// waiting in recvmmsg keeps its P; with none left idle, Go's sysmon takes
// it back from each reader that waits longer than 20 µs, and starts a
// thread to look for work, which at 50,000 queries a second costs a third
// of the CPU a query takes. With a P idle the wait costs nothing. The extra
// P runs what readers do not (TCP, the Consul watcher, GC), and readers
// spend most of their time in the kernel.
func spareP(readers int) {
	if runtime.GOMAXPROCS(0) <= readers {
		runtime.GOMAXPROCS(readers + 1)
	}
}
