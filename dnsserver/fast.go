package dnsserver

import (
	"encoding/binary"
	"slices"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/policy"
	"github.com/farmdns/farmdns/zones"
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
	// complete: every name of every zone is in names, so that a name
	// missing from it does not exist, and NXDOMAIN may be answered for it.
	complete bool
}

// The negative answers are prepared too: at each name, a NODATA reply for
// any of the plainType types it has none of, and, for the names below it
// that do not exist, an NXDOMAIN reply. Both are taken from the slow path's
// answer to a probe, and only kept when that answer is the plain one: a
// CNAME, a wildcard, a delegation, a DNAME or a pool binding on the way
// leaves those queries to the slow path.
const (
	exact       = iota // the reply to its own type
	otherType          // NODATA for any plainType type not listed at the name
	nxBelow            // NXDOMAIN for names below this one that do not exist
	poolTargets        // the names below are a pool's SRV targets (see fastTarget)
)

// plainType reports whether a qtype is answered like any type a name does not
// hold: the common data types, and none with rules of its own (DS, ANY,
// RRSIG, NSEC, transfers, meta types).
func plainType(t uint16) bool {
	switch t {
	case dns.TypeA, dns.TypeNS, dns.TypeCNAME, dns.TypeSOA, dns.TypePTR, dns.TypeMX, dns.TypeTXT,
		dns.TypeAAAA, dns.TypeSRV, dns.TypeNAPTR, dns.TypeSSHFP, dns.TypeTLSA, dns.TypeSVCB,
		dns.TypeHTTPS, dns.TypeCAA:
		return true
	}
	return false
}

// probeType is a type no zone holds (private use): a name's answer to it is
// its answer to every plainType type it does not hold.
const probeType = 65534

// nxProbeLabel starts a name that should not exist below each name, to
// learn what the names there that do not exist get.
const nxProbeLabel = "nx--probe-farmdns"

// preparedAnswer is the reply to one (name, type) question, class IN. For a
// pool's name, the records are chosen for each query; body then holds the
// NODATA reply for when the pool has nothing to offer.
type preparedAnswer struct {
	zone       string // origin, for metrics
	pool       int    // index into State.pools, if dynamic
	dynamic    bool
	kind       uint8 // exact, otherType or nxBelow
	qtype      uint16
	flags      uint16 // AA and rcode; RD and CD come from each query
	an, ns, ar uint16
	body       []byte // the sections after the question, compressed against it
	// nxBelow: body was made for the probe's question, of probeLen octets;
	// the compression pointers at ptrs move with the real question's length.
	probeLen int
	ptrs     []uint16
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
	p.complete = true
	for _, z := range st.Zones.Zones() {
		z.Walk(func(name string, types []uint16) {
			if count >= maxPrepared {
				p.complete = false
				return
			}
			key := make([]byte, 255)
			n, err := dns.PackDomainName(name, key, 0, nil, false)
			if err != nil {
				return
			}
			qtypes := append(slices.Clone(types), extraTypes...)
			if srvPool(st, z, name) {
				qtypes = append(qtypes, dns.TypeSRV) // dynamic: see fastSRV
			}
			slices.Sort(qtypes)
			var answers []preparedAnswer
			for _, qt := range slices.Compact(qtypes) {
				if qt == dns.TypeTXT && name == statusLabel+z.Origin {
					continue // the status records, for allowed clients (statusTXT)
				}
				a, ok := prepareOne(st, z, buf, name, qt, n)
				if ok {
					a.zone = z.Origin
					answers = append(answers, a)
					count++
				}
			}
			if name != statusLabel+z.Origin {
				if a, ok := prepareOther(st, z, buf, name, types, n); ok {
					answers = append(answers, a)
				}
			}
			if a, ok := prepareNX(st, z, buf, name); ok {
				answers = append(answers, a)
			}
			if a, ok := prepareTargets(st, z, name); ok {
				answers = append(answers, a)
			}
			p.names[string(key[:n])] = answers
		})
	}
	return p
}

// prepareOne runs the slow path for one question and keeps its reply. A
// pool's name is not run (that would count an answer in its ledger): it is
// kept as dynamic, with its NODATA reply. A CNAME chain into a pool is left
// to the slow path.
func prepareOne(st *State, z *zones.Zone, buf []byte, name string, qtype uint16, nameLen int) (preparedAnswer, bool) {
	q := new(dns.Msg).SetQuestion(name, qtype)
	q.RecursionDesired = false
	var r *dns.Msg
	res := z.Lookup(name, qtype)
	switch {
	case res.Outcome == zones.Dynamic && len(res.Answer) == 0:
		r = reply(q)
		r.Authoritative = true
		r.Ns = []dns.RR{z.NegativeSOA()}
	case res.Outcome == zones.Dynamic:
		return preparedAnswer{}, false
	default:
		r, _, _ = answer(st, q, request{tcp: true})
	}
	out, err := r.PackBuffer(buf)
	if err != nil || len(out) < headerLen+nameLen+4 {
		return preparedAnswer{}, false
	}
	return preparedAnswer{
		pool:    res.Pool,
		dynamic: res.Outcome == zones.Dynamic,
		qtype:   qtype,
		flags:   binary.BigEndian.Uint16(out[2:]) & (1<<10 | 0xF), // AA, rcode
		an:      binary.BigEndian.Uint16(out[6:]),
		ns:      binary.BigEndian.Uint16(out[8:]),
		ar:      binary.BigEndian.Uint16(out[10:]),
		body:    slices.Clone(out[headerLen+nameLen+4:]),
	}, true
}

// prepareOther prepares the NODATA reply a name gives every plainType type
// it does not hold, if the slow path would give it for each of them.
func prepareOther(st *State, z *zones.Zone, buf []byte, name string, types []uint16, nameLen int) (preparedAnswer, bool) {
	for t := range uint16(dns.TypeCAA + 1) { // plainType types are all below CAA
		if plainType(t) && !slices.Contains(types, t) && z.Lookup(name, t).Outcome != zones.NoData {
			return preparedAnswer{}, false // a CNAME, a delegation, a binding...
		}
	}
	a, ok := prepareOne(st, z, buf, name, probeType, nameLen)
	if !ok || a.dynamic || a.flags != 1<<10 || a.an != 0 || a.ns != 1 || a.ar != 0 {
		return preparedAnswer{}, false
	}
	a.kind, a.qtype, a.zone = otherType, 0, z.Origin
	return a, true
}

// prepareNX prepares the NXDOMAIN reply for the names below name that do
// not exist, if the slow path gives one: from a probe name below it, with
// the compression pointers into its question noted, to be moved for each
// query's own name.
func prepareNX(st *State, z *zones.Zone, buf []byte, name string) (preparedAnswer, bool) {
	probe := nxProbeLabel + "." + name
	if len(probe) > 254 {
		return preparedAnswer{}, false
	}
	if res := z.Lookup(probe, dns.TypeA); res.Outcome != zones.NameError || res.Wildcard {
		return preparedAnswer{}, false
	}
	q := new(dns.Msg).SetQuestion(probe, dns.TypeA)
	q.RecursionDesired = false
	r, _, _ := answer(st, q, request{tcp: true})
	if r.Rcode != dns.RcodeNameError || !r.Authoritative || len(r.Answer) != 0 || len(r.Ns) != 1 || len(r.Extra) != 0 {
		return preparedAnswer{}, false
	}
	if _, ok := r.Ns[0].(*dns.SOA); !ok {
		return preparedAnswer{}, false
	}
	var wire [256]byte
	probeLen, err := dns.PackDomainName(probe, wire[:], 0, nil, false)
	if err != nil {
		return preparedAnswer{}, false
	}
	out, err := r.PackBuffer(buf)
	if err != nil || len(out) < headerLen+probeLen+4 {
		return preparedAnswer{}, false
	}
	body := slices.Clone(out[headerLen+probeLen+4:])
	// The SOA: owner, type, class, TTL, length, then MNAME and RNAME.
	var ptrs []uint16
	off := 0
	for i := range 3 {
		end, ptr, ok := skipNamePtr(body, off)
		if !ok {
			return preparedAnswer{}, false
		}
		if ptr >= 0 {
			// Only names within the encloser's part of the question, or
			// within the body, are pointed at: they move by the same amount.
			if target := int(binary.BigEndian.Uint16(body[ptr:]) & 0x3FFF); target < headerLen+len(nxProbeLabel)+1 {
				return preparedAnswer{}, false
			}
			ptrs = append(ptrs, uint16(ptr))
		}
		off = end
		if i == 0 {
			off += 10
		}
	}
	return preparedAnswer{
		zone:     z.Origin,
		kind:     nxBelow,
		flags:    binary.BigEndian.Uint16(out[2:]) & (1<<10 | 0xF),
		ns:       1,
		body:     body,
		probeLen: probeLen,
		ptrs:     ptrs,
	}, true
}

// srvPool reports whether name's SRV records come from a pool, as answerSRV
// answers them: no chain on the way, not a name of the pool's own SRV
// targets (whose spelling the reply's compression would then depend on),
// and target names that need no escapes.
func srvPool(st *State, z *zones.Zone, name string) bool {
	res := z.Lookup(name, dns.TypeSRV)
	if res.Outcome != zones.Dynamic || len(res.Answer) != 0 || res.Label != "" || res.Pool >= len(st.pools) {
		return false
	}
	_, targets := SRVNames(st.pools[res.Pool].spec.Service, st.pools[res.Pool].spec.Name)
	var wire [256]byte
	l, err := dns.PackDomainName(targets, wire[:], 0, nil, false)
	// fastSRV writes the targets' names from targetNames.under.
	return err == nil && l == len(targets)+1 && !dns.IsSubDomain(targets, name)
}

// prepareTargets marks name as the one the SRV target names of a pool are
// under, if the slow path answers every name one label below it from the
// pool (answerSRVTarget): no chain, no DNAME, and no zone of its own below.
func prepareTargets(st *State, z *zones.Zone, name string) (preparedAnswer, bool) {
	probe := nxProbeLabel + "." + name
	if len(probe) > 254 || st.Zones.Find(probe) != z {
		return preparedAnswer{}, false
	}
	res := z.Lookup(probe, dns.TypeA)
	if res.Outcome != zones.Dynamic || res.Label != nxProbeLabel || len(res.Answer) != 0 || res.Pool >= len(st.pools) {
		return preparedAnswer{}, false
	}
	for _, other := range st.Zones.Zones() {
		if other.Origin != name && dns.IsSubDomain(name, other.Origin) {
			return preparedAnswer{}, false
		}
	}
	return preparedAnswer{zone: z.Origin, kind: poolTargets, pool: res.Pool}, true
}

// skipNamePtr returns where the name at off in msg ends, and where its
// compression pointer is (-1: none).
func skipNamePtr(msg []byte, off int) (end, ptr int, ok bool) {
	for off < len(msg) {
		c := int(msg[off])
		switch {
		case c == 0:
			return off + 1, -1, true
		case c&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, 0, false
			}
			return off + 2, off, true
		case c > 63:
			return 0, 0, false
		}
		off += 1 + c
	}
	return 0, 0, false
}

// fastQuery is what the fast path needs from a query.
type fastQuery struct {
	key      []byte // lower-case qname, wire form
	qtype    uint16
	qEnd     int // end of the question section
	edns     bool
	udpSize  uint16
	do, nsid bool
	ecs      subnet // checked; the caller clears it when ECS is off
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
			if code == dns.EDNS0SUBNET {
				// Checked as the slow path checks it; a malformed or second
				// one is FORMERR, which the slow path answers.
				e, ok := parseECS(msg[o+4 : o+4+l])
				if !ok || q.ecs.sent {
					return q, false
				}
				q.ecs = e
			} else if !fastOption(code) {
				return q, false
			}
			q.nsid = q.nsid || code == dns.EDNS0NSID
			o += 4 + l
		}
		return q, true
	}
	return q, off == len(msg)
}

// fastOption reports whether the slow path accepts an option with this code
// whatever its content, so that the fast path may skip it unread. miekg/dns
// rejects some malformed options (a TCP keepalive of the wrong length, say),
// which the slow path answers FORMERR; those, and codes it may learn to
// parse later, take the slow path. ECS is read by parseFast itself.
func fastOption(code uint16) bool {
	switch code {
	case dns.EDNS0NSID, dns.EDNS0DAU, dns.EDNS0DHU, dns.EDNS0N3U, dns.EDNS0COOKIE, dns.EDNS0PADDING:
		return true
	}
	return code >= 65001 && code <= 65534 // local and experimental use (RFC 6891 section 9)
}

// fastAnswer writes the reply to a plain query into buf if a prepared answer
// fits the client. ok false means: use the slow path.
func fastAnswer(st *State, buf []byte, req request) (out []byte, info replyInfo, ok bool) {
	var key [255]byte
	q, ok := parseFast(req.wire, &key)
	if !ok {
		return nil, info, false
	}
	a := findPrepared(st.prepared, q)
	if a == nil {
		return nil, info, false
	}
	info = replyInfo{answered: true, zone: a.zone, qtype: q.qtype, rcode: int(a.flags & 0xF), fast: true}
	if !st.Options.ECS {
		q.ecs = subnet{} // ignored, as the slow path does
	}
	optLen := 0
	if q.edns {
		optLen = 11 + q.ecs.len()
		if nsid := st.Options.nsid(); q.nsid && nsid != "" {
			optLen += 4 + len(nsid)
		}
	}
	limit := min(len(buf), fastLimit(q, req.tcp, st.Options.MaxUDPSize))
	switch {
	case a.kind == poolTargets:
		out, ok = fastTarget(st, buf, req, q, a, limit-optLen)
		return out, info, ok
	case a.dynamic && q.qtype == dns.TypeSRV:
		out, info.rcode, ok = fastSRV(st, buf, req, q, a, limit-optLen)
		return out, info, ok
	case a.dynamic:
		out, info.rcode, ok = fastPool(st, buf, req, q, a, limit-optLen)
		return out, info, ok
	}
	if q.qEnd+len(a.body)+optLen > limit {
		return nil, info, false // the slow path truncates
	}
	out = appendHeader(buf[:0], req.wire, q, a.flags, a.an, a.ns, a.ar)
	start := len(out)
	out = append(out, a.body...)
	if a.kind == nxBelow {
		// The body was made for the probe's question; this one's name is
		// longer or shorter by delta, and so is everything after it.
		delta := len(q.key) - a.probeLen
		for _, p := range a.ptrs {
			at := start + int(p)
			target := int(binary.BigEndian.Uint16(out[at:])&0x3FFF) + delta
			binary.BigEndian.PutUint16(out[at:], 0xC000|uint16(target))
		}
	}
	if q.edns {
		out = appendOPT(out, st, q, q.ecs) // scope 0: the same answer for every client
	}
	return out, info, true
}

// isStatusName reports whether a wire-form name is _status.<something>,
// which the slow path answers for allowed clients (statusTXT).
func isStatusName(key []byte) bool {
	l := len(statusLabel) - 1
	return len(key) > l && int(key[0]) == l && string(key[1:1+l]) == statusLabel[:l]
}

// findPrepared returns the prepared reply to q, if any: its own type at its
// name, else NODATA for a plain type the name lacks, else, for a name that
// does not exist, the NXDOMAIN of its closest existing ancestor.
func findPrepared(p *prepared, q fastQuery) *preparedAnswer {
	answers, found := p.names[string(q.key)]
	var other *preparedAnswer
	for i := range answers {
		switch a := &answers[i]; {
		case a.kind == exact && a.qtype == q.qtype:
			return a
		case a.kind == otherType:
			other = a
		}
	}
	if !plainType(q.qtype) {
		return nil
	}
	if found {
		return other
	}
	// A name below a pool's target names is one of them, unless the zone
	// holds it after all (another binding): names says which, if complete.
	if p.complete && (q.qtype == dns.TypeA || q.qtype == dns.TypeAAAA) {
		if a := targetsAbove(p, q.key); a != nil {
			return a
		}
	}
	if !p.complete || isStatusName(q.key) {
		return nil
	}
	for off := int(q.key[0]) + 1; off < len(q.key); off += int(q.key[off]) + 1 {
		answers, found := p.names[string(q.key[off:])]
		if !found {
			continue
		}
		// The closest encloser: if it has no NXDOMAIN ready (a wildcard,
		// a delegation...), the slow path answers.
		for i := range answers {
			if answers[i].kind == nxBelow {
				return &answers[i]
			}
		}
		return nil
	}
	return nil
}

// targetsAbove returns the poolTargets mark of the name one label above key,
// if it has one.
func targetsAbove(p *prepared, key []byte) *preparedAnswer {
	if key[0] == 0 {
		return nil
	}
	answers := p.names[string(key[1+int(key[0]):])]
	for i := range answers {
		if answers[i].kind == poolTargets {
			return &answers[i]
		}
	}
	return nil
}

// appendHeader appends our header and the query's question.
func appendHeader(out, msg []byte, q fastQuery, flags, an, ns, ar uint16) []byte {
	out = append(out, msg[0], msg[1]) // ID
	// QR; AA and rcode from the answer; RD and CD from the query.
	flags |= 0x8000 | binary.BigEndian.Uint16(msg[2:])&(1<<8|1<<4)
	out = binary.BigEndian.AppendUint16(out, flags)
	out = binary.BigEndian.AppendUint16(out, 1)
	out = binary.BigEndian.AppendUint16(out, an)
	out = binary.BigEndian.AppendUint16(out, ns)
	if q.edns {
		ar++
	}
	out = binary.BigEndian.AppendUint16(out, ar)
	return append(out, msg[headerLen:q.qEnd]...)
}

// fastPool answers a pool's name with the records its policy chooses for
// this query, as many as fit in room octets: fewer records rather than TC.
// It returns the reply and its rcode. Whatever the pool may answer must fit
// before it is asked: its choice is counted in its ledger, and falling back
// to the slow path after choosing would count a choice twice.
func fastPool(st *State, buf []byte, req request, q fastQuery, a *preparedAnswer, room int) ([]byte, int, bool) {
	fit := (room - q.qEnd) / addressRRLen(q.qtype)
	if fit < 1 || q.qEnd+len(a.body) > room {
		return nil, 0, false
	}
	var dst [policy.MaxAnswers]int
	c := choose(st.pools[a.pool], dst[:0:min(fit, policy.MaxAnswers)], q.qtype, asker(req.remote, q.ecs), req.shard)
	var out []byte
	rcode := dns.RcodeSuccess
	ecs := q.ecs
	switch c.outcome {
	case policy.OutcomeAnswer, policy.OutcomeFailOpen:
		out = appendHeader(buf[:0], req.wire, q, 1<<10, uint16(len(c.picked)), 0, 0)
		out, _ = c.appendAddressRecords(out, len(c.picked))
		ecs = ecs.dependent() // see answerIn
	case policy.OutcomeNoData:
		out = appendHeader(buf[:0], req.wire, q, a.flags, a.an, a.ns, a.ar)
		out = append(out, a.body...)
	default: // see answerPool
		rcode = dns.RcodeServerFailure
		out = appendHeader(buf[:0], req.wire, q, uint16(rcode), 0, 0, 0)
	}
	if q.edns {
		out = appendOPT(out, st, q, ecs)
	}
	return out, rcode, true
}

// fastTarget answers an SRV target's name, <label>.nodes.<pool name>, with
// the target's address, as answerSRVTarget does. A name of no target, or a
// question for the other family's type, is left to the slow path (NXDOMAIN,
// NODATA). Nothing is chosen, so nothing is counted in the ledger.
func fastTarget(st *State, buf []byte, req request, q fastQuery, a *preparedAnswer, room int) ([]byte, bool) {
	p := st.pools[a.pool].cur.Load()
	if p == nil {
		return nil, false
	}
	// Labels are made of lower case letters, digits and hyphens: a label
	// that matches one is spelt the same in the slow path's Result.Label.
	i, found := p.targets.byLabel[string(q.key[1:1+q.key[0]])]
	if !found {
		return nil, false
	}
	addr := p.Records()[i].Address
	if !addr.IsValid() || (q.qtype == dns.TypeAAAA) != addr.Is6() || q.qEnd+addressRRLen(q.qtype) > room {
		return nil, false
	}
	out := appendHeader(buf[:0], req.wire, q, 1<<10, 1, 0, 0)
	out = appendAddressRR(out, headerLen, uint32(p.Config().TTL/time.Second), addr)
	if q.edns {
		out = appendOPT(out, st, q, q.ecs) // scope 0: the same answer for every client
	}
	return out, true
}

// fastSRV answers a pool's SRV name as answerSRV does, with as many records
// as fit in room octets, and returns the reply and its rcode. As in
// fastPool, everything that can make it fall back to the slow path is
// checked before the pool is asked.
//
// The reply is the one miekg/dns packs for the slow path: each SRV record
// owned by a pointer to the question, its target written whole (RFC 2782),
// then the targets' addresses, each owned by a pointer to its target's name
// in the SRV record (the first place miekg/dns saw that name).
func fastSRV(st *State, buf []byte, req request, q fastQuery, a *preparedAnswer, room int) ([]byte, int, bool) {
	slot := st.pools[a.pool]
	fit := policy.MaxAnswers
	if p := slot.cur.Load(); p != nil && p.targets.maxPair > 0 {
		fit = min(fit, (room-q.qEnd)/p.targets.maxPair)
	}
	if fit < 1 || q.qEnd+len(a.body) > room {
		return nil, 0, false // TC, or a NODATA that does not fit: the slow path's
	}
	var dst [policy.MaxAnswers]int
	c := choose(slot, dst[:0:fit], dns.TypeSRV, asker(req.remote, q.ecs), req.shard)
	var out []byte
	rcode := dns.RcodeSuccess
	ecs := q.ecs
	switch c.outcome {
	case policy.OutcomeNoData:
		out = appendHeader(buf[:0], req.wire, q, a.flags, a.an, a.ns, a.ar)
		out = append(out, a.body...)
	case policy.OutcomeServFail:
		rcode = dns.RcodeServerFailure
		out = appendHeader(buf[:0], req.wire, q, uint16(rcode), 0, 0, 0)
	default:
		n := uint16(len(c.picked))
		out = appendHeader(buf[:0], req.wire, q, 1<<10, n, 0, n)
		out = c.appendSRV(out)
		if n > 0 {
			ecs = ecs.dependent() // see answerIn
		}
	}
	if q.edns {
		out = appendOPT(out, st, q, ecs)
	}
	return out, rcode, true
}

// appendSRV appends the SRV records of a choice and then their targets'
// addresses, in wire form, for fastSRV.
func (c *choice) appendSRV(out []byte) []byte {
	var at [policy.MaxAnswers]int // where each target's name is
	records, names := c.pool.Records(), c.pool.targets
	now := time.Now().UnixNano()
	for k, i := range c.picked {
		label := names.names[i][:len(names.names[i])-len(names.suffix)]
		out = append(out, 0xC0, headerLen)
		out = binary.BigEndian.AppendUint16(out, dns.TypeSRV)
		out = binary.BigEndian.AppendUint16(out, dns.ClassINET)
		out = binary.BigEndian.AppendUint32(out, c.ttl)
		out = binary.BigEndian.AppendUint16(out, uint16(6+1+len(label)+len(names.under)))
		out = binary.BigEndian.AppendUint16(out, 0) // priority
		out = binary.BigEndian.AppendUint16(out, c.pool.Weight(i, now))
		out = binary.BigEndian.AppendUint16(out, records[i].Port)
		at[k] = len(out)
		out = append(out, byte(len(label)))
		out = append(out, label...)
		out = append(out, names.under...)
	}
	for _, i := range c.picked {
		// miekg/dns points to a name where it first wrote it: a target
		// picked twice (if a policy ever did) is named there.
		out = appendAddressRR(out, at[slices.Index(c.picked, i)], c.ttl, records[i].Address)
	}
	return out
}

// appendOPT appends our OPT record, as responseOPT builds it for the slow
// path, with ecs echoed if the query sent one.
func appendOPT(out []byte, st *State, q fastQuery, ecs subnet) []byte {
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
	rdlen := ecs.len()
	nsid := st.Options.nsid()
	if !q.nsid {
		nsid = ""
	}
	if nsid != "" {
		rdlen += 4 + len(nsid)
	}
	out = binary.BigEndian.AppendUint16(out, uint16(rdlen))
	if nsid != "" {
		out = binary.BigEndian.AppendUint16(out, dns.EDNS0NSID)
		out = binary.BigEndian.AppendUint16(out, uint16(len(nsid)))
		out = append(out, nsid...)
	}
	if ecs.sent {
		out = appendECS(out, ecs)
	}
	return out
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
