package conncount

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Layouts from linux/inet_diag.h and linux/netlink.h. They are written out
// here rather than taken from x/sys so that the byte order of each field is
// explicit: ports are big-endian, everything else is host order.
const (
	nlmsgHdrLen = 16 // struct nlmsghdr

	// struct inet_diag_req_v2: family, protocol, ext, pad (4 bytes),
	// idiag_states (4), struct inet_diag_sockid (48).
	inetDiagReqV2Len = 56
	// struct inet_diag_msg: family, state, timer, retrans (4),
	// struct inet_diag_sockid (48), expires, rqueue, wqueue, uid, inode (20).
	inetDiagMsgLen = 72
	// Offsets inside struct inet_diag_msg.
	offSport  = 4  // id.idiag_sport, big-endian
	offCookie = 44 // id.idiag_cookie[2], host order, low word first

	inetDiagReqBytecode = 1 // INET_DIAG_REQ_BYTECODE attribute
	bcJmp               = 1 // INET_DIAG_BC_JMP
	bcSEq               = 11

	tcpEstablished = 1 // TCP_ESTABLISHED in include/net/tcp_states.h

	// recvBufLen is larger than the biggest datagram the kernel builds for a
	// dump (32 KiB), so no message is ever truncated.
	recvBufLen = 64 << 10
)

// netlinkSource dumps TCP sockets in state ESTABLISHED with NETLINK_SOCK_DIAG,
// once for AF_INET and once for AF_INET6. With kernelFilter the request
// carries a bytecode program so that the kernel only sends the sockets on the
// counted ports; otherwise every established socket is sent and filtered here.
type netlinkSource struct {
	ports        *portSet
	kernelFilter bool
	fd           int
	seq          uint32
	reqs         [2][]byte // one request per family, built once
	buf          []byte
}

func newNetlinkSource(ports *portSet, kernelFilter bool) (*netlinkSource, error) {
	s := &netlinkSource{ports: ports, kernelFilter: kernelFilter, fd: -1, buf: make([]byte, recvBufLen)}
	var bc []byte
	if kernelFilter {
		bc = portFilter(ports.list())
	}
	s.reqs[0] = buildRequest(unix.AF_INET, bc)
	s.reqs[1] = buildRequest(unix.AF_INET6, bc)
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *netlinkSource) open() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	// A dump always ends, but never let a kernel or sandbox oddity hang the
	// counting loop forever.
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return fmt.Errorf("setsockopt SO_RCVTIMEO: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind: %w", err)
	}
	s.fd = fd
	return nil
}

func (s *netlinkSource) close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

func (s *netlinkSource) each(visit func(id uint64)) error {
	if s.fd < 0 {
		if err := s.open(); err != nil {
			return err
		}
	}
	for _, req := range s.reqs {
		if err := s.dump(req, visit); err != nil {
			// Unread parts of a failed dump would confuse the next one;
			// start over on a fresh socket.
			_ = s.close()
			return err
		}
	}
	return nil
}

func (s *netlinkSource) dump(req []byte, visit func(id uint64)) error {
	s.seq++
	binary.NativeEndian.PutUint32(req[8:12], s.seq)
	if _, err := unix.Write(s.fd, req); err != nil {
		return fmt.Errorf("send sock_diag request: %w", err)
	}
	for {
		n, err := unix.Read(s.fd, s.buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("read sock_diag reply: %w", err)
		}
		b := s.buf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			typ := binary.NativeEndian.Uint16(b[4:6])
			seq := binary.NativeEndian.Uint32(b[8:12])
			if l < nlmsgHdrLen || l > len(b) {
				return fmt.Errorf("sock_diag reply: bad message length %d", l)
			}
			msg := b[nlmsgHdrLen:l]
			if al := (l + 3) &^ 3; al < len(b) {
				b = b[al:]
			} else {
				b = nil
			}
			if seq != s.seq {
				continue // left over from an earlier request
			}
			switch typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(msg) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(msg[0:4])); errno != 0 {
						return fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
					}
				}
				return errors.New("sock_diag: unexpected acknowledgement")
			case unix.SOCK_DIAG_BY_FAMILY:
				if len(msg) < inetDiagMsgLen {
					return fmt.Errorf("sock_diag reply: short inet_diag_msg (%d bytes)", len(msg))
				}
				if !s.kernelFilter && !s.ports.has(binary.BigEndian.Uint16(msg[offSport:])) {
					continue
				}
				lo := uint64(binary.NativeEndian.Uint32(msg[offCookie:]))
				hi := uint64(binary.NativeEndian.Uint32(msg[offCookie+4:]))
				visit(hi<<32 | lo)
			}
		}
	}
}

// buildRequest returns a SOCK_DIAG_BY_FAMILY dump request for established TCP
// sockets of one address family, with an optional bytecode filter.
func buildRequest(family uint8, bytecode []byte) []byte {
	l := nlmsgHdrLen + inetDiagReqV2Len
	if bytecode != nil {
		l += 4 + len(bytecode) // struct nlattr + program, already 4-aligned
	}
	b := make([]byte, l)
	binary.NativeEndian.PutUint32(b[0:4], uint32(l))
	binary.NativeEndian.PutUint16(b[4:6], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(b[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	// b[8:12] sequence number, set per request; b[12:16] port id 0 (kernel).
	r := b[nlmsgHdrLen:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(r[4:8], 1<<tcpEstablished)
	if bytecode != nil {
		a := r[inetDiagReqV2Len:]
		binary.NativeEndian.PutUint16(a[0:2], uint16(4+len(bytecode)))
		binary.NativeEndian.PutUint16(a[2:4], inetDiagReqBytecode)
		copy(a[4:], bytecode)
	}
	return b
}

// portFilter compiles "sport == p1 || sport == p2 || ..." into inet_diag
// bytecode. Each op is {code u8, yes u8, no u16} and execution moves forward
// by yes or no bytes; the socket matches when execution lands exactly on the
// end of the program, and fails when it jumps past it. The kernel's verifier
// (inet_diag_bc_audit) only accepts "no" targets that lie on the chain of
// "yes" jumps from the start, so the program is a straight line:
//
//	S_EQ p1 (yes: next op, no: skip the JMP)   ; 8 bytes: op + port op
//	JMP     (always "no": to the end = match)  ; 4 bytes
//	S_EQ p2 ...
//	S_EQ pn (yes: end = match, no: end+4 = fail)
func portFilter(ports []uint16) []byte {
	const eqLen, jmpLen = 8, 4
	total := len(ports)*eqLen + (len(ports)-1)*jmpLen
	b := make([]byte, 0, total)
	op := func(code, yes uint8, no uint16) {
		b = append(b, code, yes)
		b = binary.NativeEndian.AppendUint16(b, no)
	}
	for i, p := range ports {
		op(bcSEq, eqLen, eqLen+jmpLen)
		op(0, 0, p) // the port operand lives in the "no" field of the next op
		if i < len(ports)-1 {
			rest := total - len(b) - jmpLen
			op(bcJmp, jmpLen, uint16(rest+jmpLen))
		}
	}
	return b
}
