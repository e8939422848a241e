package consuldns

import (
	"encoding/hex"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
)

// accept says which address families a question prefers when a node or
// service has lan_ipv4/lan_ipv6 tagged addresses.
type accept uint8

const (
	acceptIPv4 accept = 1 << iota
	acceptIPv6
	acceptAny = acceptIPv4 | acceptIPv6
)

func acceptFor(qtype uint16) accept {
	switch qtype {
	case dns.TypeA:
		return acceptIPv4
	case dns.TypeAAAA:
		return acceptIPv6
	}
	return acceptAny
}

// pickAddress chooses among an address and its lan_ipv6/lan_ipv4 tagged
// forms: a tagged address of a family the question takes, else the address
// itself, whatever its family. (Consul's translation means to filter by
// family too, but its "any" test matches every question, so it never does;
// an A question about an IPv6 address then finds no A record, which is the
// answer clients get.)
func pickAddress(a accept, def, v4, v6 string) string {
	switch {
	case a&acceptIPv6 != 0 && v6 != "":
		return v6
	case a&acceptIPv4 != 0 && v4 != "":
		return v4
	}
	return def
}

// addressRecord returns ip as an A or AAAA record with no owner yet, or nil
// when the question cannot take that family. TXT takes both: Consul answers
// TXT on a service with its addresses.
func addressRecord(qtype uint16, ip net.IP, ttl uint32) dns.RR {
	if v4 := ip.To4(); v4 != nil {
		switch qtype {
		case dns.TypeSRV, dns.TypeA, dns.TypeANY, dns.TypeNS, dns.TypeTXT:
			return &dns.A{Hdr: dns.RR_Header{Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: v4}
		}
		return nil
	}
	switch qtype {
	case dns.TypeSRV, dns.TypeAAAA, dns.TypeANY, dns.TypeNS, dns.TypeTXT:
		return &dns.AAAA{Hdr: dns.RR_Header{Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: ip}
	}
	return nil
}

// nodeRecords answers a node's address under owner: an A or AAAA record, or
// a CNAME when the usable address is not an IP.
func (r *Resolver) nodeRecords(n *health.CatalogNode, qtype uint16, owner string, cat *health.Catalog, depth int) []dns.RR {
	t := ttl(r.cfg.NodeTTL)
	addr := pickAddress(acceptFor(qtype), n.Address, n.LANv4, n.LANv6)
	ip := cat.IP(addr)
	if ip == nil {
		target := dns.Fqdn(n.Address)
		out := []dns.RR{&dns.CNAME{
			Hdr:    dns.RR_Header{Name: owner, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: t},
			Target: target,
		}}
		return append(out, r.chase(target, cat, depth)...)
	}
	rr := addressRecord(qtype, ip, t)
	if rr == nil {
		return nil
	}
	rr.Header().Name = owner
	return []dns.RR{rr}
}

// metaTXT returns a node's meta as TXT records under owner: key=value in
// RFC 1464 form, or the bare value for keys starting "rfc1035-".
func metaTXT(owner string, n *health.CatalogNode, ttl uint32) []dns.RR {
	out := make([]dns.RR, 0, len(n.Meta))
	for k, v := range n.Meta {
		txt := v
		if len(k) < len("rfc1035-") || !strings.EqualFold(k[:len("rfc1035-")], "rfc1035-") {
			txt = rfc1464(k, v)
		}
		out = append(out, &dns.TXT{
			Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl},
			Txt: []string{txt},
		})
	}
	return out
}

// keyQuoter quotes a meta key; built once, as building one costs far more
// than a whole answer (a Replacer is safe for concurrent use).
var keyQuoter = strings.NewReplacer("`", "``", "=", "`=")

// rfc1464 writes key=value, quoting with backquotes the key's backquotes,
// equals signs and leading and trailing spaces, and the value's backquotes.
func rfc1464(key, value string) string {
	if plainMeta(key, value) {
		// The common case, built in one allocation.
		return key + "=" + value
	}
	trimmed := strings.TrimLeft(key, " ")
	lead := len(key) - len(trimmed)
	core := strings.TrimRight(trimmed, " ")
	trail := len(trimmed) - len(core)
	core = keyQuoter.Replace(core)
	var b strings.Builder
	b.WriteString(strings.Repeat("` ", lead))
	b.WriteString(core)
	b.WriteString(strings.Repeat("` ", trail))
	b.WriteByte('=')
	b.WriteString(strings.ReplaceAll(value, "`", "``"))
	return b.String()
}

// svcQuery is one service question being answered.
type svcQuery struct {
	q     dns.Question
	edns  bool
	cat   *health.Catalog
	ttl   uint32 // the service's TTL
	depth int    // CNAME chasing left
}

// addressRecords answers a service question of any type but SRV: one
// record set per instance, duplicates (two instances of one node) once,
// CNAMEs only when no instance has an address.
func (r *Resolver) addressRecords(s svcQuery, in []*health.CatalogInstance) []dns.RR {
	answer := make([]dns.RR, 0, len(in))
	var cname []dns.RR
	seen := make(map[rrKey]bool, len(in))
	count := 0
	for _, i := range in {
		// Each instance's records are appended, then taken back when
		// they are not kept.
		n := len(answer)
		answer, _ = r.instanceRecords(s, i, answer, nil)
		recs := answer[n:]
		if len(recs) == 0 {
			continue
		}
		key := dedupKey(recs[0])
		if seen[key] {
			answer = answer[:n]
			continue
		}
		seen[key] = true
		if _, ok := recs[0].(*dns.CNAME); ok {
			if cname == nil {
				cname = slices.Clone(recs)
			}
			answer = answer[:n]
			continue
		}
		count++
		if count == r.cfg.AnswerLimit {
			break
		}
	}
	if len(answer) == 0 {
		return cname
	}
	return answer
}

// rrKey is what dedupKey returns: comparable without building a string for
// the common records.
type rrKey struct {
	rrtype uint16
	addr   netip.Addr
	text   string // a CNAME's target, or another record's text
}

// dedupKey identifies an instance's first record within one answer, where
// owner, class and TTL are the same for all: Consul compares the records'
// text, which costs far more.
func dedupKey(rr dns.RR) rrKey {
	switch v := rr.(type) {
	case *dns.A:
		a, _ := netip.AddrFromSlice(v.A.To4())
		return rrKey{rrtype: dns.TypeA, addr: a}
	case *dns.AAAA:
		a, _ := netip.AddrFromSlice(v.AAAA.To16())
		return rrKey{rrtype: dns.TypeAAAA, addr: a}
	case *dns.CNAME:
		return rrKey{rrtype: dns.TypeCNAME, text: v.Target}
	}
	return rrKey{text: rr.String()}
}

// srvKey is one node/address/port an SRV answer lists once.
type srvKey struct {
	node, addr string
	port       int
}

// srvRecords answers a service's SRV question: one SRV per distinct
// node/address/port, the targets' addresses and the nodes' meta as
// additional records.
func (r *Resolver) srvRecords(s svcQuery, ord Ordered) (answer, extra []dns.RR) {
	answer = make([]dns.RR, 0, len(ord.In))
	seen := make(map[srvKey]bool, len(ord.In))
	respDomain := r.responseDomain(s.q.Name)
	for n, i := range ord.In {
		key := srvKey{i.Node.Name, pickAddress(acceptAny, i.Address, i.LANv4, i.LANv6), i.Port}
		if seen[key] {
			continue
		}
		seen[key] = true
		k := len(answer)
		answer, extra = r.instanceRecords(s, i, answer, extra)
		if srv, ok := firstSRV(answer[k:]); ok && ord.Weights != nil {
			srv.Weight = ord.Weights[n]
		}
		extra = append(extra, metaTXT(nodeName(i.Node, s.cat, respDomain), i.Node, s.ttl)...)
	}
	return answer, extra
}

// firstSRV returns the SRV record an instance answers with, if any.
func firstSRV(rrs []dns.RR) (*dns.SRV, bool) {
	if len(rrs) == 0 {
		return nil, false
	}
	srv, ok := rrs[0].(*dns.SRV)
	return srv, ok
}

func nodeName(n *health.CatalogNode, cat *health.Catalog, respDomain string) string {
	return n.Name + ".node." + cat.Datacenter + "." + respDomain
}

// instanceRecords answers one instance, appending to answer and extra: for
// SRV the SRV record and its target's address; otherwise its address, or a
// CNAME for a hostname.
func (r *Resolver) instanceRecords(s svcQuery, i *health.CatalogInstance, answer, extra []dns.RR) ([]dns.RR, []dns.RR) {
	a := acceptFor(s.q.Qtype)
	svc := pickAddress(a, i.Address, i.LANv4, i.LANv6)
	node := pickAddress(a, i.Node.Address, i.Node.LANv4, i.Node.LANv6)
	if svc == "" && node == "" {
		return answer, extra
	}
	svcIP, nodeIP := s.cat.IP(svc), s.cat.IP(node)
	switch {
	case svc == "" && nodeIP != nil:
		if node != i.Node.Address {
			// A tagged address: name it by the IP, not the node.
			return r.ipRecords(s, i, nodeIP, answer, extra)
		}
		return r.nodeIPRecords(s, i, nodeIP, answer, extra)
	case svc == "":
		return r.hostRecords(s, i, node, answer, extra)
	case svcIP != nil:
		return r.ipRecords(s, i, svcIP, answer, extra)
	case dns.Fqdn(svc) == s.q.Name && nodeIP != nil:
		// A service address naming the question itself means the node.
		return r.nodeIPRecords(s, i, nodeIP, answer, extra)
	}
	return r.hostRecords(s, i, svc, answer, extra)
}

func (r *Resolver) srv(s svcQuery, i *health.CatalogInstance, target string) *dns.SRV {
	return &dns.SRV{
		Hdr:      dns.RR_Header{Name: s.q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: s.ttl},
		Priority: 1,
		Weight:   weight(i),
		Port:     uint16(i.Port),
		Target:   target,
	}
}

// weight is Consul's default SRV weight: 1 for passing and warning alike.
func weight(*health.CatalogInstance) uint16 { return 1 }

// nodeIPRecords answers with the node's IP; an SRV targets the node's name.
func (r *Resolver) nodeIPRecords(s svcQuery, i *health.CatalogInstance, ip net.IP, answer, extra []dns.RR) ([]dns.RR, []dns.RR) {
	q := s.q
	rr := addressRecord(q.Qtype, ip, s.ttl)
	if rr == nil {
		return answer, extra
	}
	if q.Qtype == dns.TypeSRV {
		target := nodeName(i.Node, s.cat, r.responseDomain(q.Name))
		rr.Header().Name = target
		return append(answer, r.srv(s, i, target)), append(extra, rr)
	}
	rr.Header().Name = q.Name
	return append(answer, rr), extra
}

// ipRecords answers with an IP of the service's own; an SRV targets the IP
// written as <hex>.addr.<dc>.<domain>, even when it is the node's address.
func (r *Resolver) ipRecords(s svcQuery, i *health.CatalogInstance, ip net.IP, answer, extra []dns.RR) ([]dns.RR, []dns.RR) {
	q := s.q
	rr := addressRecord(q.Qtype, ip, s.ttl)
	if rr == nil {
		return answer, extra
	}
	if q.Qtype == dns.TypeSRV {
		h := hex.EncodeToString(ip)
		if v4 := ip.To4(); v4 != nil {
			h = hex.EncodeToString(v4)
		}
		target := h + ".addr." + s.cat.Datacenter + "." + r.responseDomain(q.Name)
		rr.Header().Name = target
		return append(answer, r.srv(s, i, target)), append(extra, rr)
	}
	rr.Header().Name = q.Name
	return append(answer, rr), extra
}

// hostRecords answers with a hostname: an SRV targets it, anything else gets
// a CNAME; a name in the served domain is chased and its records added.
func (r *Resolver) hostRecords(s svcQuery, i *health.CatalogInstance, host string, answer, extra []dns.RR) ([]dns.RR, []dns.RR) {
	q, t := s.q, s.ttl
	target := dns.Fqdn(host)
	var more []dns.RR
	for _, rr := range r.chase(target, s.cat, s.depth) {
		switch rr.Header().Rrtype {
		case dns.TypeCNAME, dns.TypeA, dns.TypeAAAA:
		default:
			continue
		}
		rr = dns.Copy(rr)
		rr.Header().Ttl = t
		more = append(more, rr)
		if len(more) == maxCNAMERecords && !s.edns {
			break
		}
	}
	if q.Qtype == dns.TypeSRV {
		return append(answer, r.srv(s, i, target)), append(extra, more...)
	}
	cname := &dns.CNAME{
		Hdr:    dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: t},
		Target: target,
	}
	return append(append(answer, cname), more...), extra
}

// chase answers an ANY question for a name in the served domain, so a CNAME
// into the domain carries its records; other names are not resolved (there
// are no recursors).
func (r *Resolver) chase(name string, cat *health.Catalog, depth int) []dns.RR {
	lower := strings.ToLower(name)
	if !strings.HasSuffix(lower, "."+r.domain) && (r.alt == "" || !strings.HasSuffix(lower, "."+r.alt)) {
		return nil
	}
	if depth < 1 {
		return nil
	}
	q := dns.Question{Name: name, Qtype: dns.TypeANY, Qclass: dns.ClassINET}
	return r.lookup(q, ask{}, cat, depth-1).answer
}

// plainMeta reports whether key=value needs no quoting: no backquote or
// equals sign in the key, no backquote in the value, no space at the key's
// ends.
func plainMeta(key, value string) bool {
	if strings.Contains(value, "`") {
		return false
	}
	if key == "" {
		return true
	}
	return key[0] != ' ' && key[len(key)-1] != ' ' && !strings.ContainsAny(key, "`=")
}
