package dnsserver

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// EDNS Client Subnet (RFC 7871). A resolver that sends ECS tells us which
// network its client is in; a pool's choice is then made for that network,
// so a public resolver serving many networks gets a separate, counted choice
// for each rather than one choice that all its networks share. The subnet is
// used for the choice and echoed in the reply, and nothing else: it is never
// logged, and never a metrics label.

// Caps on the client subnet a choice is made for: the same /24 and /56 the
// querier's own address is keyed by. Finer prefixes would only split one
// network into many askers (and leak more of the client than we need).
const (
	ecsCap4 = 24
	ecsCap6 = 56
)

// subnet is a query's ECS option, checked, as the reply echoes it.
type subnet struct {
	sent   bool   // false: no option, or ECS is off (the option is ignored)
	family uint16 // 1 IPv4, 2 IPv6; 0 with source 0 means "no address"
	source uint8  // SOURCE PREFIX-LENGTH as sent
	scope  uint8  // SCOPE PREFIX-LENGTH of the reply
	addr   [16]byte
}

// parseECS checks the data of one ECS option (RFC 7871 section 6). A
// malformed option is FORMERR: an unknown family, a source prefix longer
// than the address, a scope set in a query, an address of other than the
// octets the source prefix needs, or address bits set beyond it. Family 0
// with a zero source and no address is what some clients send for "do not
// use my address" (BIND accepts it too): it is no client information.
func parseECS(data []byte) (subnet, bool) {
	if len(data) < 4 {
		return subnet{}, false
	}
	s := subnet{sent: true, family: binary.BigEndian.Uint16(data), source: data[2]}
	addr := data[4:]
	maxBits := 0
	switch s.family {
	case 0:
	case 1:
		maxBits = 32
	case 2:
		maxBits = 128
	default:
		return subnet{}, false
	}
	if int(s.source) > maxBits || data[3] != 0 || len(addr) != (int(s.source)+7)/8 {
		return subnet{}, false
	}
	if rem := s.source % 8; rem != 0 && addr[len(addr)-1]&(0xFF>>rem) != 0 {
		return subnet{}, false
	}
	copy(s.addr[:], addr)
	return s, true
}

// capped returns the client subnet a choice is made for: the source
// prefix, no longer than /24 or /56. ok is false when the option carries no
// client information (a /0 source): the querier itself is the asker then.
func (s subnet) capped() (p netip.Prefix, ok bool) {
	if !s.sent || s.source == 0 {
		return netip.Prefix{}, false
	}
	if s.family == 1 {
		a := netip.AddrFrom4([4]byte(s.addr[:4]))
		return netip.PrefixFrom(a, min(int(s.source), ecsCap4)).Masked(), true
	}
	return netip.PrefixFrom(netip.AddrFrom16(s.addr), min(int(s.source), ecsCap6)).Masked(), true
}

// dependent returns s with the scope of an answer that depends on the
// client: the prefix its choice was made for (0 for a /0 source, whose
// answer depends only on the querier).
func (s subnet) dependent() subnet {
	if p, ok := s.capped(); ok {
		s.scope = uint8(p.Bits())
	}
	return s
}

// asker returns the network a pool's choice is made for: the client subnet
// of the query's ECS option, capped, or else the querier's /24 (IPv4) or /56
// (IPv6), so that one resolver's A and AAAA queries for a name get the same
// nodes.
func asker(remote netip.Addr, ecs subnet) netip.Prefix {
	if p, ok := ecs.capped(); ok {
		return p
	}
	a := remote.Unmap()
	bits := ecsCap6
	if a.Is4() {
		bits = ecsCap4
	}
	p, _ := a.Prefix(bits) // an invalid address (tests) gives the zero prefix
	return p
}

// len is the length of the option in our reply: code, length, data.
func (s subnet) len() int {
	if !s.sent {
		return 0
	}
	return 4 + 4 + (int(s.source)+7)/8
}

// option returns the option for our reply (RFC 7871 section 7.2.1: family,
// source prefix and address as sent, our scope).
func (s subnet) option() *dns.EDNS0_SUBNET {
	o := &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: s.family, SourceNetmask: s.source, SourceScope: s.scope}
	switch s.family {
	case 1:
		o.Address = net.IP(s.addr[:4])
	case 2:
		o.Address = net.IP(s.addr[:])
	}
	return o
}

// appendECS appends the option in wire form, as option() packs.
func appendECS(out []byte, s subnet) []byte {
	n := (int(s.source) + 7) / 8
	out = binary.BigEndian.AppendUint16(out, dns.EDNS0SUBNET)
	out = binary.BigEndian.AppendUint16(out, uint16(4+n))
	out = binary.BigEndian.AppendUint16(out, s.family)
	out = append(out, s.source, s.scope)
	return append(out, s.addr[:n]...)
}

// queryECS finds and checks the ECS option of a well-formed query in wire
// form, for the slow path: miekg/dns forgives an address of the wrong
// length or with bits set beyond the prefix, so the raw option is read. ok
// is false for a malformed option, or more than one: which would the answer
// depend on?
func queryECS(msg []byte) (s subnet, ok bool) {
	if len(msg) < headerLen {
		return s, true
	}
	off := headerLen
	for range binary.BigEndian.Uint16(msg[4:]) {
		if off, ok = skipName(msg, off); !ok {
			return s, true // not well-formed: unpacking fails first
		}
		off += 4
	}
	an, ns, ar := binary.BigEndian.Uint16(msg[6:]), binary.BigEndian.Uint16(msg[8:]), binary.BigEndian.Uint16(msg[10:])
	for i := range int(an) + int(ns) + int(ar) {
		if off, ok = skipName(msg, off); !ok || off+10 > len(msg) {
			return s, true
		}
		rrtype, rdEnd := binary.BigEndian.Uint16(msg[off:]), off+10+int(binary.BigEndian.Uint16(msg[off+8:]))
		if rdEnd > len(msg) {
			return s, true
		}
		if i >= int(an)+int(ns) && rrtype == dns.TypeOPT {
			if s, ok = optECS(msg[off+10:rdEnd], s); !ok {
				return subnet{}, false
			}
		}
		off = rdEnd
	}
	return s, true
}

// optECS reads the options of one OPT record's data, adding its ECS option
// to s (already found: none if !s.sent). ok is false for a malformed or a
// second ECS option.
func optECS(data []byte, s subnet) (subnet, bool) {
	for o := 0; o+4 <= len(data); {
		code, l := binary.BigEndian.Uint16(data[o:]), int(binary.BigEndian.Uint16(data[o+2:]))
		if o+4+l > len(data) {
			return s, true // unpacking fails first
		}
		if code == dns.EDNS0SUBNET {
			e, ok := parseECS(data[o+4 : o+4+l])
			if !ok || s.sent {
				return subnet{}, false
			}
			s = e
		}
		o += 4 + l
	}
	return s, true
}
