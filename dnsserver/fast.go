package dnsserver

import (
	"encoding/binary"
	"slices"

	"github.com/miekg/dns"
)

// The fast path answers the common questions without unpacking or packing a
// dns.Msg. When a State is built, the slow path (answer) is run once for each
// common question and its reply kept in wire form; a query that matches one
// is answered by copying: our header, the query's own question (so its case
// is echoed byte for byte), the kept sections, and an OPT if the query had
// one. Anything unusual goes to the slow path, so the two can never disagree
// on anything but speed.

// prepared is the set of ready-made replies of one State.
type prepared struct {
	names map[string][]preparedAnswer // by lower-case owner name in wire form
}

// preparedAnswer is the reply to one (name, type) question, class IN.
type preparedAnswer struct {
	zone       string // origin, for metrics
	qtype      uint16
	flags      uint16 // AA and rcode; RD and CD come from each query
	an, ns, ar uint16
	body       []byte // the sections after the question, compressed against it
}

// maxPrepared bounds the replies kept per State: a huge zone is answered from
// the slow path beyond it rather than using unbounded memory.
const maxPrepared = 1 << 20

// extraTypes are prepared at every name besides the types it holds: the
// NODATA answers resolvers ask for most.
var extraTypes = []uint16{dns.TypeA, dns.TypeAAAA}

func prepare(st *State) *prepared {
	p := &prepared{names: map[string][]preparedAnswer{}}
	if st.Zones == nil {
		return p
	}
	buf := make([]byte, dns.MaxMsgSize)
	count := 0
	for _, z := range st.Zones.Zones() {
		z.Walk(func(name string, types []uint16) {
			if count >= maxPrepared {
				return
			}
			key := make([]byte, 255)
			n, err := dns.PackDomainName(name, key, 0, nil, false)
			if err != nil {
				return
			}
			qtypes := append(slices.Clone(types), extraTypes...)
			slices.Sort(qtypes)
			var answers []preparedAnswer
			for _, qt := range slices.Compact(qtypes) {
				if a, ok := prepareOne(st, buf, name, qt, n); ok {
					a.zone = z.Origin
					answers = append(answers, a)
					count++
				}
			}
			p.names[string(key[:n])] = answers
		})
	}
	return p
}

// prepareOne runs the slow path for one question and keeps its reply.
func prepareOne(st *State, buf []byte, name string, qtype uint16, nameLen int) (preparedAnswer, bool) {
	q := new(dns.Msg).SetQuestion(name, qtype)
	q.RecursionDesired = false
	r, _ := answer(st, q, request{tcp: true})
	out, err := r.PackBuffer(buf)
	if err != nil || len(out) < headerLen+nameLen+4 {
		return preparedAnswer{}, false
	}
	return preparedAnswer{
		qtype: qtype,
		flags: binary.BigEndian.Uint16(out[2:]) & (1<<10 | 0xF), // AA, rcode
		an:    binary.BigEndian.Uint16(out[6:]),
		ns:    binary.BigEndian.Uint16(out[8:]),
		ar:    binary.BigEndian.Uint16(out[10:]),
		body:  slices.Clone(out[headerLen+nameLen+4:]),
	}, true
}

// fastQuery is what the fast path needs from a query.
type fastQuery struct {
	key      []byte // lower-case qname, wire form
	qtype    uint16
	qEnd     int // end of the question section
	edns     bool
	udpSize  uint16
	do, nsid bool
}

// parseFast reads a plain query: QUERY opcode, one question of class IN with
// an uncompressed name, no answer or authority records, at most an OPT of
// version 0 in the additional section, and nothing after it. ok is false for
// anything else, which the slow path then handles in full.
func parseFast(msg []byte, key *[255]byte) (q fastQuery, ok bool) {
	if len(msg) < headerLen+5 ||
		msg[2]&0xFA != 0 || // QR, opcode, TC must be clear (AA and RD may be anything)
		binary.BigEndian.Uint16(msg[4:]) != 1 || binary.BigEndian.Uint16(msg[6:]) != 0 ||
		binary.BigEndian.Uint16(msg[8:]) != 0 || binary.BigEndian.Uint16(msg[10:]) > 1 {
		return q, false
	}
	off := headerLen
	n := 0
	for {
		c := int(msg[off])
		if c == 0 {
			break
		}
		if c > 63 || off+1+c >= len(msg) || n+1+c >= 255 {
			return q, false // a pointer, an old label type, or too long
		}
		key[n] = byte(c)
		for i := 1; i <= c; i++ {
			b := msg[off+i]
			if 'A' <= b && b <= 'Z' {
				b += 'a' - 'A'
			}
			key[n+i] = b
		}
		n += 1 + c
		off += 1 + c
	}
	key[n] = 0
	n++
	off++
	if off+4 > len(msg) || binary.BigEndian.Uint16(msg[off+2:]) != dns.ClassINET {
		return q, false
	}
	q.key = key[:n]
	q.qtype = binary.BigEndian.Uint16(msg[off:])
	off += 4
	q.qEnd = off
	if msg[11] == 1 {
		// The OPT record: root owner, type 41, then size, extended rcode,
		// version, flags, and options.
		if off+11 > len(msg) || msg[off] != 0 || binary.BigEndian.Uint16(msg[off+1:]) != dns.TypeOPT || msg[off+6] != 0 {
			return q, false
		}
		q.edns = true
		q.udpSize = binary.BigEndian.Uint16(msg[off+3:])
		q.do = msg[off+7]&0x80 != 0
		rdEnd := off + 11 + int(binary.BigEndian.Uint16(msg[off+9:]))
		if rdEnd != len(msg) {
			return q, false
		}
		for o := off + 11; o < rdEnd; {
			if o+4 > rdEnd {
				return q, false
			}
			code, l := binary.BigEndian.Uint16(msg[o:]), int(binary.BigEndian.Uint16(msg[o+2:]))
			if o+4+l > rdEnd {
				return q, false
			}
			q.nsid = q.nsid || code == dns.EDNS0NSID
			o += 4 + l
		}
		return q, true
	}
	return q, off == len(msg)
}

// fastAnswer writes the reply to a plain query into buf if a prepared answer
// fits the client. ok false means: use the slow path.
func fastAnswer(st *State, buf, msg []byte, tcp bool) (out []byte, a *preparedAnswer, ok bool) {
	var key [255]byte
	q, ok := parseFast(msg, &key)
	if !ok {
		return nil, nil, false
	}
	answers := st.prepared.names[string(q.key)]
	for i := range answers {
		if answers[i].qtype == q.qtype {
			a = &answers[i]
			break
		}
	}
	if a == nil {
		return nil, nil, false
	}
	optLen := 0
	if q.edns {
		optLen = 11
		if q.nsid && st.Options.NSID != "" {
			optLen += 4 + len(st.Options.NSID)
		}
	}
	size := q.qEnd + len(a.body) + optLen
	if size > len(buf) || size > fastLimit(q, tcp, st.Options.MaxUDPSize) {
		return nil, nil, false // the slow path truncates
	}
	out = buf[:0]
	out = append(out, msg[0], msg[1]) // ID
	// QR; AA and rcode from the answer; RD and CD from the query.
	flags := 0x8000 | a.flags | binary.BigEndian.Uint16(msg[2:])&(1<<8|1<<4)
	out = binary.BigEndian.AppendUint16(out, flags)
	out = binary.BigEndian.AppendUint16(out, 1)
	out = binary.BigEndian.AppendUint16(out, a.an)
	out = binary.BigEndian.AppendUint16(out, a.ns)
	ar := a.ar
	if q.edns {
		ar++
	}
	out = binary.BigEndian.AppendUint16(out, ar)
	out = append(out, msg[headerLen:q.qEnd]...)
	out = append(out, a.body...)
	if q.edns {
		out = appendOPT(out, st, q)
	}
	return out, a, true
}

// appendOPT appends our OPT record, as responseOPT builds it for the slow path.
func appendOPT(out []byte, st *State, q fastQuery) []byte {
	size := st.Options.MaxUDPSize
	if size == 0 {
		size = DefaultMaxUDPSize
	}
	out = append(out, 0) // root
	out = binary.BigEndian.AppendUint16(out, dns.TypeOPT)
	out = binary.BigEndian.AppendUint16(out, size)
	out = append(out, 0, 0) // extended rcode, version
	var doBit byte
	if q.do {
		doBit = 0x80
	}
	out = append(out, doBit, 0)
	if q.nsid && st.Options.NSID != "" {
		out = binary.BigEndian.AppendUint16(out, uint16(4+len(st.Options.NSID)))
		out = binary.BigEndian.AppendUint16(out, dns.EDNS0NSID)
		out = binary.BigEndian.AppendUint16(out, uint16(len(st.Options.NSID)))
		return append(out, st.Options.NSID...)
	}
	return binary.BigEndian.AppendUint16(out, 0)
}

// fastLimit is limit for a query read by parseFast.
func fastLimit(q fastQuery, tcp bool, maxUDP uint16) int {
	switch {
	case tcp:
		return dns.MaxMsgSize
	case !q.edns:
		return dns.MinMsgSize
	}
	return int(max(dns.MinMsgSize, min(q.udpSize, maxUDP)))
}
