package dnsserver

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/dnsserver/rrl"
)

// Response rate limiting applies to UDP replies only, as they leave: the
// reply is built by then, fast path or slow, so its class is read from the
// wire form and both paths are limited alike. TCP is never limited: its
// handshake proves the client's address, which is all RRL is about.

// rrlState is a Server's rate limiting: the limiter in force, and counters
// that outlive it when a reload swaps in another.
type rrlState struct {
	limiter atomic.Pointer[rrl.Limiter]
	done    [3]atomic.Uint64 // by rrl.Action: what was done to each response
	would   [3]atomic.Uint64 // by rrl.Action: what log_only kept from being done
}

// SetRRL makes l limit the UDP responses from now on; nil turns limiting off.
// A reload with a new configuration swaps in a new limiter.
func (s *Server) SetRRL(l *rrl.Limiter) { s.rrl.limiter.Store(l) }

// limit returns what to send to client in place of reply msg: msg itself, its
// truncated form (built in *scratch), or nil for nothing.
func (r *rrlState) limit(l *rrl.Limiter, client netip.Addr, msg []byte, scratch *[]byte) []byte {
	var name [255]byte
	kind, n, qEnd := classify(msg, &name)
	act := l.Check(client, kind, name[:n])
	if act != rrl.Pass && l.LogOnly() {
		r.would[act].Add(1)
		act = rrl.Pass
	}
	r.done[act].Add(1)
	switch act {
	case rrl.Drop:
		return nil
	case rrl.Slip:
		*scratch = slipped((*scratch)[:0], msg, qEnd)
		return *scratch
	}
	return msg
}

// classify reads the class of reply msg: its kind, the name that goes with
// the kind (written to name, lower case, wire form; n octets), and where the
// question ends. Negative answers are named by the owner of their SOA, the
// zone, and referrals by the owner of their NS records, the delegation, as
// the original RRL design and Knot and NSD do.
func classify(msg []byte, name *[255]byte) (kind rrl.Kind, n, qEnd int) {
	if len(msg) < headerLen || binary.BigEndian.Uint16(msg[4:]) != 1 {
		return rrl.Error, 0, headerLen
	}
	n, end, ok := readName(msg, headerLen, name)
	if !ok || end+4 > len(msg) {
		return rrl.Error, 0, headerLen
	}
	qEnd = end + 4
	rcode := int(msg[3] & 0xF)
	an := int(binary.BigEndian.Uint16(msg[6:]))
	ns := binary.BigEndian.Uint16(msg[8:])
	tc, aa := msg[2]&0x02 != 0, msg[2]&0x04 != 0
	switch {
	case rcode == dns.RcodeSuccess && (an > 0 || tc):
		return rrl.Answer, n, qEnd // a truncated answer is still the answer
	case rcode == dns.RcodeNameError:
		kind = rrl.NXDomain
	case rcode == dns.RcodeSuccess && ns > 0 && aa:
		kind = rrl.NoData
	case rcode == dns.RcodeSuccess && ns > 0:
		kind = rrl.Referral
	default:
		// SERVFAIL, REFUSED, FORMERR, NOTIMP, and an empty NOERROR, which
		// is BADVERS (its rcode's upper bits are in the OPT record).
		return rrl.Error, 0, qEnd
	}
	off := qEnd
	for range an { // a CNAME chain that ends in NXDOMAIN
		if off, ok = skipRecord(msg, off); !ok {
			return kind, 0, qEnd
		}
	}
	if ns == 0 {
		return kind, 0, qEnd
	}
	if n, _, ok = readName(msg, off, name); !ok {
		n = 0
	}
	return kind, n, qEnd
}

// readName writes the name at off in msg, lower case and uncompressed, to
// dst, returning its length and the offset just past it in msg.
func readName(msg []byte, off int, dst *[255]byte) (n, end int, ok bool) {
	end = -1
	for hops := 0; off < len(msg); {
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				if end < 0 {
					end = off + 1
				}
				dst[n] = 0
				return n + 1, end, true
			}
			if off+1+c > len(msg) || n+1+c >= len(dst) {
				return 0, 0, false
			}
			dst[n] = byte(c)
			for i, b := range msg[off+1 : off+1+c] {
				if 'A' <= b && b <= 'Z' {
					b += 'a' - 'A'
				}
				dst[n+1+i] = b
			}
			n += 1 + c
			off += 1 + c
		case 0xC0:
			if off+2 > len(msg) || hops > 127 {
				return 0, 0, false // 127 labels is the most a name has: a loop
			}
			hops++
			if end < 0 {
				end = off + 2
			}
			off = int(binary.BigEndian.Uint16(msg[off:]) & 0x3FFF)
		default:
			return 0, 0, false
		}
	}
	return 0, 0, false
}

// skipRecord returns the offset just past the resource record at off.
func skipRecord(msg []byte, off int) (int, bool) {
	off, ok := skipName(msg, off)
	if !ok || off+10 > len(msg) {
		return 0, false
	}
	off += 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
	return off, off <= len(msg)
}

// slipped appends to dst the truncated form of reply msg: its header with TC
// set, its question, and its OPT record if it has one (the client asked with
// EDNS and must see it still on), but no other records. A real client asks
// again over TCP; a victim of forged queries gets no more octets than the
// forger sent.
func slipped(dst, msg []byte, qEnd int) []byte {
	dst = append(dst, msg[:qEnd]...)
	dst[2] |= 0x02 // TC
	if qEnd == headerLen {
		binary.BigEndian.PutUint16(dst[4:], 0) // no question was readable
	}
	binary.BigEndian.PutUint16(dst[6:], 0)
	binary.BigEndian.PutUint16(dst[8:], 0)
	binary.BigEndian.PutUint16(dst[10:], 0)
	if qEnd == headerLen {
		return dst
	}
	counts := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:]))
	total := counts + int(binary.BigEndian.Uint16(msg[10:]))
	off := qEnd
	for i := range total {
		next, ok := skipRecord(msg, off)
		if !ok {
			break
		}
		if i >= counts && msg[off] == 0 && binary.BigEndian.Uint16(msg[off+1:]) == dns.TypeOPT {
			binary.BigEndian.PutUint16(dst[10:], 1)
			return append(dst, msg[off:next]...)
		}
		off = next
	}
	return dst
}
