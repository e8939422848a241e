package dnsserver

import "encoding/binary"

// wellFormed reports whether msg is exactly one DNS message: every section
// as long as the header's counts say, and nothing after the last record.
// miekg/dns forgives both (it fixes up counts, ignores trailing bytes); an
// authoritative server should not, as Knot and NSD do not.
func wellFormed(msg []byte) bool {
	if len(msg) < headerLen {
		return false
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	rrs := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	off := headerLen
	var ok bool
	for range qd {
		if off, ok = skipName(msg, off); !ok || off+4 > len(msg) {
			return false
		}
		off += 4 // type, class
	}
	for range rrs {
		if off, ok = skipName(msg, off); !ok || off+10 > len(msg) {
			return false
		}
		off += 10 + int(binary.BigEndian.Uint16(msg[off+8:])) // type, class, TTL, length, data
		if off > len(msg) {
			return false
		}
	}
	return off == len(msg)
}

// skipName returns the offset just past the name at off. A compression
// pointer ends a name; where it points is checked when the name is read.
func skipName(msg []byte, off int) (int, bool) {
	for off < len(msg) {
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				return off + 1, true
			}
			off += 1 + c
		case 0xC0:
			return off + 2, off+2 <= len(msg)
		default:
			return 0, false // label types 01 and 10 are unused (RFC 6891 section 5)
		}
	}
	return 0, false
}
