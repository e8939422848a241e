package zones

import (
	"github.com/miekg/dns"
)

// Outcome is what a lookup found. The DNS server turns it into an rcode, the
// AA bit and the authority section in one place.
type Outcome int

const (
	// Success: the answer section holds the records asked for.
	Success Outcome = iota
	// NoData: the name exists but has no records of the type (NOERROR, empty answer).
	NoData
	// NameError: the name does not exist (NXDOMAIN).
	NameError
	// Delegation: the name is at or below a zone cut; Ns holds the child's NS set.
	Delegation
	// NameTooLong: a DNAME substitution made a name longer than 255 octets (YXDOMAIN).
	NameTooLong
	// Dynamic: the records asked for come from the pool in Result.Pool;
	// Answer holds the CNAME/DNAME chain that led there, if any.
	Dynamic
)

func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case NoData:
		return "nodata"
	case NameError:
		return "nxdomain"
	case Delegation:
		return "delegation"
	case NameTooLong:
		return "yxdomain"
	case Dynamic:
		return "dynamic"
	}
	return "unknown"
}

// Result is the outcome of a lookup with the records for each section. The
// records are shared with the zone and must not be modified.
type Result struct {
	Outcome Outcome
	Answer  []dns.RR // CNAME/DNAME chain, then the records asked for
	Ns      []dns.RR // the delegation's NS set; empty otherwise
	Extra   []dns.RR // glue for a delegation, addresses of NS/MX/SRV targets
	// Wildcard is true when the final name was answered from a wildcard.
	Wildcard bool
	// Pool is the binding's pool when Outcome is Dynamic.
	Pool int
	// Label is the first label of the name, when a Children binding made
	// it Dynamic; empty otherwise.
	Label string
}

// maxChain bounds CNAME/DNAME chasing inside the zone, so that a loop in the
// zone data ends the answer instead of the server.
const maxChain = 16

// Lookup answers qname/qtype from the zone. qname must be at or below the
// origin, in any case and spelling (see CanonicalName). The owner names of
// answer records keep the spelling of the question where they are
// synthesised (wildcards, DNAME) and the zone's spelling otherwise.
func (z *Zone) Lookup(qname string, qtype uint16) Result {
	var res Result
	name := qname
	for range maxChain {
		lname, ok := CanonicalName(name)
		if !ok {
			// Only a question can be no name: targets were checked.
			res.Outcome = NameError
			return res
		}
		n, cut, dname, ce := z.find(lname, qtype)
		switch {
		case cut != "":
			res.Outcome = Delegation
			ns := z.nodes[cut].get(dns.TypeNS)
			res.Ns = ns
			res.Extra = z.addresses(res.Extra, ns, true)
			return res
		case dname != nil:
			// RFC 6672 section 3: the DNAME itself, then a CNAME made for this
			// name. The labels above the DNAME's owner are counted, not its
			// characters: the two may spell the same labels differently.
			i, _ := dns.PrevLabel(name, dns.CountLabel(dname.Hdr.Name))
			target := name[:i] + dname.Target
			res.Answer = append(res.Answer, dname)
			if _, ok := CanonicalName(target); !ok { // longer than 255 octets
				res.Outcome = NameTooLong
				return res
			}
			res.Answer = append(res.Answer, &dns.CNAME{
				Hdr:    dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: dname.Hdr.Ttl},
				Target: target,
			})
			// The synthesised CNAME answers a CNAME question; else chase it.
			if qtype == dns.TypeCNAME || !z.holds(target) {
				res.Outcome = Success
				return res
			}
			name = target
			continue
		case n == nil:
			if pool, ok := z.nodes[ce].childBinding(); ok {
				if i, _ := dns.NextLabel(lname, 0); lname[i:] == ce {
					res.Outcome, res.Pool, res.Label = Dynamic, pool, lname[:i-1]
					return res
				}
			}
			// No exact match: try the wildcard at the closest encloser.
			n = z.nodes["*."+ce]
			if n == nil {
				res.Outcome = NameError
				return res
			}
			res.Wildcard = true
		default:
			res.Wildcard = false
		}

		if pool, ok := n.binding(qtype); ok {
			res.Outcome = Dynamic
			res.Pool = pool
			return res
		}
		if qtype == dns.TypeANY {
			// RFC 8482 section 4.1: one RRset stands for all of them, which
			// keeps ANY from being an amplifier.
			if len(n.rrsets) == 0 {
				res.Outcome = NoData
				return res
			}
			res.Outcome = Success
			res.Answer = appendOwned(res.Answer, n.rrsets[0].rrs, name, res.Wildcard)
			res.Extra = z.addresses(res.Extra, n.rrsets[0].rrs, false)
			return res
		}
		if rrs := n.get(qtype); rrs != nil {
			res.Outcome = Success
			res.Answer = appendOwned(res.Answer, rrs, name, res.Wildcard)
			res.Extra = z.addresses(res.Extra, rrs, false)
			return res
		}
		cname := n.get(dns.TypeCNAME)
		// RRSIG and NSEC belong to the CNAME's own name (RFC 4035 section 2.5).
		if cname == nil || qtype == dns.TypeCNAME || qtype == dns.TypeRRSIG || qtype == dns.TypeNSEC {
			res.Outcome = NoData
			return res
		}
		res.Answer = appendOwned(res.Answer, cname, name, res.Wildcard)
		target := cname[0].(*dns.CNAME).Target
		if !z.holds(target) || inChain(res.Answer, target) {
			// The rest of the chain is another server's to answer, or the
			// chain loops: the resolver will find the loop just the same.
			res.Outcome = Success
			return res
		}
		name = target
	}
	// A chain longer than maxChain: answer with what we have.
	res.Outcome = Success
	return res
}

// holds reports whether name is at or below the origin.
func (z *Zone) holds(name string) bool {
	lname, ok := CanonicalName(name)
	return ok && dns.IsSubDomain(z.Origin, lname)
}

// inChain reports whether name already owns a record of the chain.
func inChain(chain []dns.RR, name string) bool {
	lname, _ := CanonicalName(name)
	for _, rr := range chain {
		if owner, _ := CanonicalName(rr.Header().Name); owner == lname {
			return true
		}
	}
	return false
}

// find walks from the apex down towards lname. It returns the node of lname if it
// exists; or the name of the zone cut above it (a referral); or a DNAME above
// it; or, if lname does not exist, its closest encloser.
func (z *Zone) find(lname string, qtype uint16) (n *node, cut string, dname *dns.DNAME, ce string) {
	// Visit the ancestors of lname from the apex down: the label boundaries of
	// lname, read from the right.
	var offs [128]int // a name has at most 127 labels
	labels := 0
	for i, end := 0, false; !end; i, end = dns.NextLabel(lname, i) {
		offs[labels] = i
		labels++
	}
	ce = z.Origin
	for l := labels - dns.CountLabel(z.Origin); l >= 0; l-- {
		name := lname[offs[l]:]
		cur := z.nodes[name]
		if cur == nil {
			return nil, "", nil, ce
		}
		ce = name
		exact := name == lname
		// RFC 4035 section 3.1.4.1: DS lives on the parent side of a cut.
		if cur.cut && !(exact && qtype == dns.TypeDS) {
			return nil, name, nil, ""
		}
		if exact {
			return cur, "", nil, ""
		}
		if d := cur.get(dns.TypeDNAME); d != nil {
			return nil, "", d[0].(*dns.DNAME), ""
		}
	}
	return nil, "", nil, ce
}

// appendOwned appends rrs to dst; for a wildcard match it appends copies owned
// by name (RFC 4592 section 3.4.3). The zone's records are never modified.
func appendOwned(dst, rrs []dns.RR, name string, wildcard bool) []dns.RR {
	if !wildcard {
		return append(dst, rrs...)
	}
	for _, rr := range rrs {
		c := dns.Copy(rr)
		c.Header().Name = name
		dst = append(dst, c)
	}
	return dst
}

// addresses appends the in-zone A and AAAA records of the names that rrs
// point at (NS, MX, SRV targets): the additional section processing of
// RFC 1034 section 4.3.2 step 6. With glue set, names below a zone cut are
// included too, since a referral is useless without them.
func (z *Zone) addresses(dst, rrs []dns.RR, glue bool) []dns.RR {
	for _, rr := range rrs {
		var target string
		switch rr := rr.(type) {
		case *dns.NS:
			target = rr.Ns
		case *dns.MX:
			target = rr.Mx
		case *dns.SRV:
			target = rr.Target
		default:
			continue
		}
		target, ok := CanonicalName(target)
		if !ok || !dns.IsSubDomain(z.Origin, target) {
			continue
		}
		if !glue && z.occluded(target) {
			continue
		}
		if n := z.nodes[target]; n != nil {
			dst = append(dst, n.get(dns.TypeA)...)
			dst = append(dst, n.get(dns.TypeAAAA)...)
		}
	}
	return dst
}

// occluded reports whether name lies strictly below a zone cut: such data is
// glue, not authoritative.
func (z *Zone) occluded(name string) bool {
	_, cut, _, _ := z.find(name, dns.TypeA)
	return cut != "" && cut != name
}
