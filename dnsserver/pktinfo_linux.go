package dnsserver

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// enablePktinfo asks the kernel for each datagram's destination address on
// a wildcard socket of network "udp4" or "udp6".
func enablePktinfo(network string, c syscall.RawConn) error {
	var err error
	cerr := c.Control(func(fd uintptr) {
		if network == "udp4" {
			err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		} else {
			// A dual-stack socket reports IPv4 destinations here too, as
			// IPv4-mapped addresses.
			err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		}
	})
	if cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("a wildcard address needs the query's destination (IP_PKTINFO), which this system refused: %w", err)
	}
	return nil
}

// cmsgLenSize is the size of the length field that starts a cmsghdr.
const cmsgLenSize = unix.SizeofCmsghdr - 8

// parsePktinfo returns the destination address and interface of a
// datagram from its control messages; ok is false if they have none.
func parsePktinfo(oob []byte) (dst netip.Addr, ifindex uint32, ok bool) {
	hdr := unix.CmsgLen(0)
	for len(oob) >= hdr {
		var l int
		if cmsgLenSize == 8 {
			l = int(binary.NativeEndian.Uint64(oob))
		} else {
			l = int(binary.NativeEndian.Uint32(oob))
		}
		if l < hdr || l > len(oob) {
			break
		}
		level := int32(binary.NativeEndian.Uint32(oob[cmsgLenSize:]))
		typ := int32(binary.NativeEndian.Uint32(oob[cmsgLenSize+4:]))
		data := oob[hdr:l]
		switch {
		case level == unix.IPPROTO_IP && typ == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo: ifindex, spec_dst, addr (the header's destination)
			return netip.AddrFrom4([4]byte(data[8:12])), binary.NativeEndian.Uint32(data), true
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo: addr, ifindex
			return netip.AddrFrom16([16]byte(data[:16])), binary.NativeEndian.Uint32(data[16:]), true
		}
		oob = oob[min(len(oob), cmsgAlign(l)):]
	}
	return netip.Addr{}, 0, false
}

func cmsgAlign(l int) int {
	const align = unix.SizeofPtr
	return (l + align - 1) &^ (align - 1)
}

// appendPktinfo appends the control message that sends a datagram from src
// on a socket of the given family. The interface is left to routing, except
// for a link-local source, which only means something on its own link.
func appendPktinfo(oob []byte, v6 bool, src netip.Addr, ifindex uint32) []byte {
	if !src.IsLinkLocalUnicast() {
		ifindex = 0
	}
	level, typ, size := unix.IPPROTO_IP, unix.IP_PKTINFO, unix.SizeofInet4Pktinfo
	if v6 {
		level, typ, size = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, unix.SizeofInet6Pktinfo
	}
	start := len(oob)
	if cmsgLenSize == 8 {
		oob = binary.NativeEndian.AppendUint64(oob, uint64(unix.CmsgLen(size)))
	} else {
		oob = binary.NativeEndian.AppendUint32(oob, uint32(unix.CmsgLen(size)))
	}
	oob = binary.NativeEndian.AppendUint32(oob, uint32(level))
	oob = binary.NativeEndian.AppendUint32(oob, uint32(typ))
	oob = append(oob, make([]byte, unix.CmsgLen(0)-(len(oob)-start))...)
	if v6 {
		a := src.As16() // an IPv4 source as IPv4-mapped, on a dual-stack socket
		oob = append(oob, a[:]...)
		oob = binary.NativeEndian.AppendUint32(oob, ifindex)
	} else {
		a := src.Unmap().As4()
		oob = binary.NativeEndian.AppendUint32(oob, ifindex)
		oob = append(oob, a[:]...)    // spec_dst: the source to use
		oob = append(oob, 0, 0, 0, 0) // addr: ignored when sending
	}
	return append(oob, make([]byte, unix.CmsgSpace(size)-(len(oob)-start))...)
}
