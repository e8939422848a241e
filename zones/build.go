package zones

import (
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// builder collects a zone's records and checks them as a whole.
type builder struct {
	origin, file string
	nodes        map[string]*node
	lines        map[string]int // first line of each owner name, for messages
	records      int
	errs         Errors
}

func newBuilder(origin, file string) *builder {
	return &builder{origin: origin, file: file, nodes: map[string]*node{}, lines: map[string]int{}}
}

func (b *builder) errorf(line int, format string, args ...any) {
	b.errs = append(b.errs, &Error{File: b.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// unsupported lists the types of a signed zone. farmdns serves unsigned zones
// only: a signed zone served without its signatures and denial proofs would be
// bogus to every validating resolver, so refusing it is the honest choice.
var unsupported = map[uint16]bool{
	dns.TypeRRSIG: true, dns.TypeNSEC: true, dns.TypeNSEC3: true, dns.TypeNSEC3PARAM: true,
}

func (b *builder) add(rr dns.RR, line int) {
	h := rr.Header()
	owner, ok := CanonicalName(h.Name)
	switch {
	case !ok:
		b.errorf(line, "%s: not a domain name", h.Name)
		return
	case h.Class != dns.ClassINET:
		b.errorf(line, "%s: class %s: only IN is served", h.Name, dns.Class(h.Class))
		return
	case !dns.IsSubDomain(b.origin, owner):
		b.errorf(line, "%s: out of zone %s", h.Name, b.origin)
		return
	case unsupported[h.Rrtype]:
		b.errorf(line, "%s %s: DNSSEC-signed zones are not supported", h.Name, dns.Type(h.Rrtype))
		return
	case h.Rrtype == dns.TypeSOA && owner != b.origin:
		b.errorf(line, "%s: SOA is only allowed at the apex %s", h.Name, b.origin)
		return
	}
	n := b.nodes[owner]
	if n == nil {
		n = &node{}
		b.nodes[owner] = n
		b.lines[owner] = line
	}
	i := slices.IndexFunc(n.rrsets, func(s rrset) bool { return s.typ == h.Rrtype })
	if i < 0 {
		n.rrsets = append(n.rrsets, rrset{typ: h.Rrtype})
		i = len(n.rrsets) - 1
	}
	set := &n.rrsets[i]
	for _, have := range set.rrs {
		if dns.IsDuplicate(have, rr) {
			return // a set has no duplicates (RFC 2181 section 5)
		}
	}
	if len(set.rrs) > 0 {
		// RFC 2181 section 5.2: all records of a set share one TTL.
		h.Ttl = set.rrs[0].Header().Ttl
	}
	set.rrs = append(set.rrs, rr)
	b.records++
}

func (b *builder) finish(bindings []Binding) (*Zone, error) {
	apex := b.nodes[b.origin]
	switch {
	case apex == nil || apex.get(dns.TypeSOA) == nil:
		b.errorf(0, "no SOA record at the apex %s", b.origin)
	case len(apex.get(dns.TypeSOA)) > 1:
		b.errorf(b.lines[b.origin], "more than one SOA record at the apex %s", b.origin)
	}
	if apex != nil && apex.get(dns.TypeNS) == nil {
		b.errorf(0, "no NS records at the apex %s", b.origin)
	}
	for owner, n := range b.nodes {
		b.checkNode(owner, n)
	}
	for _, bd := range bindings {
		b.bind(bd)
	}
	if len(b.errs) > 0 {
		slices.SortStableFunc(b.errs, func(x, y *Error) int { return x.Line - y.Line })
		return nil, b.errs
	}
	for owner := range b.nodes {
		b.addEmptyNonTerminals(owner)
	}
	for _, n := range b.nodes {
		slices.SortFunc(n.rrsets, func(x, y rrset) int { return int(x.typ) - int(y.typ) })
	}
	return &Zone{
		Origin:  b.origin,
		File:    b.file,
		soa:     apex.get(dns.TypeSOA)[0].(*dns.SOA),
		nodes:   b.nodes,
		records: b.records,
	}, nil
}

func (b *builder) checkNode(owner string, n *node) {
	line := b.lines[owner]
	if cname := n.get(dns.TypeCNAME); cname != nil {
		if len(cname) > 1 {
			b.errorf(line, "%s: more than one CNAME record", owner)
		}
		if len(n.rrsets) > 1 {
			b.errorf(line, "%s: CNAME and other data at the same name (RFC 1034 section 3.6.2)", owner)
		}
	}
	if len(n.get(dns.TypeDNAME)) > 1 {
		b.errorf(line, "%s: more than one DNAME record", owner)
	}
	if n.get(dns.TypeNS) != nil && owner != b.origin {
		n.cut = true
		if strings.HasPrefix(owner, "*.") {
			b.errorf(line, "%s: a wildcard cannot be a delegation (RFC 4592 section 4.2)", owner)
		}
	}
}

// addEmptyNonTerminals adds the names between owner and the apex that hold no
// records: they exist (NODATA, not NXDOMAIN), RFC 4592 section 2.2.2.
func (b *builder) addEmptyNonTerminals(owner string) {
	for name := owner; name != b.origin; {
		i, _ := dns.NextLabel(name, 0)
		name = name[i:]
		if b.nodes[name] != nil {
			return
		}
		b.nodes[name] = &node{}
	}
}

// bind makes a name dynamic. The zone file may not hold records of the bound
// types (or a CNAME) there: which of the two would answer is not obvious.
func (b *builder) bind(bd Binding) {
	name, ok := CanonicalName(bd.Name)
	if bd.Name == "@" {
		name = b.origin
	} else if !dns.IsFqdn(bd.Name) {
		name, ok = CanonicalName(bd.Name + "." + b.origin)
	}
	switch {
	case !ok || !dns.IsSubDomain(b.origin, name):
		b.errorf(0, "pool name %q is not in zone %s", bd.Name, b.origin)
		return
	case strings.HasPrefix(name, "*."):
		b.errorf(0, "pool name %s: a wildcard cannot be a pool", name)
		return
	}
	for anc := name; anc != b.origin; {
		if n := b.nodes[anc]; n != nil && n.cut {
			b.errorf(b.lines[anc], "pool name %s is at or below the delegation %s", name, anc)
			return
		}
		i, _ := dns.NextLabel(anc, 0)
		anc = anc[i:]
	}
	n := b.nodes[name]
	if n == nil {
		n = &node{}
		b.nodes[name] = n
	}
	if bd.Children {
		// The names below are the pool's: the zone file may hold none.
		for owner := range b.nodes {
			if owner != name && dns.IsSubDomain(name, owner) {
				b.errorf(b.lines[owner], "%s: the names below %s belong to a pool", owner, name)
			}
		}
		if _, taken := n.childBinding(); taken {
			b.errorf(0, "pool name %s: the names below are bound to two pools", name)
		}
	}
	for _, t := range append([]uint16{dns.TypeCNAME}, bd.Types...) {
		if n.get(t) != nil {
			b.errorf(b.lines[name], "pool name %s clashes with the static %s record of the zone file", name, dns.Type(t))
		}
	}
	for _, t := range bd.Types {
		if _, taken := n.binding(t); taken && !bd.Children {
			b.errorf(0, "pool name %s: %s is bound to two pools", name, dns.Type(t))
		}
	}
	n.dynamic = append(n.dynamic, Binding{Name: name, Types: bd.Types, Pool: bd.Pool, Children: bd.Children})
}
