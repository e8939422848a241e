package consuldns

import (
	"encoding/hex"
	"strings"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
)

// locality is the datacenter or peer a name's suffix labels select.
type locality struct {
	dc   string // "" means the catalog's own
	peer string
}

// parseLocality reads the labels between the query keyword and the domain:
// none, "<dc>", "<dc>.dc", "<peer>.peer", or two such pairs.
func parseLocality(labels []string) (locality, bool) {
	switch len(labels) {
	case 0:
		return locality{}, true
	case 1:
		return locality{dc: labels[0]}, true
	case 2, 4:
		var l locality
		for i := 0; i < len(labels); i += 2 {
			switch labels[i+1] {
			case "dc":
				l.dc = labels[i]
			case "peer":
				l.peer = labels[i]
			default:
				return locality{}, false
			}
		}
		if l.dc != "" && l.peer != "" {
			return locality{}, false
		}
		return l, true
	}
	return locality{}, false
}

// local reports whether l names the catalog's own datacenter. Other
// datacenters and peers are not in the view; Consul answers them NXDOMAIN
// when it has no path to them.
func (l locality) local(cat *health.Catalog) bool {
	return l.peer == "" && (l.dc == "" || l.dc == cat.Datacenter)
}

// lookup parses the question's name and answers it from cat.
func (r *Resolver) lookup(q dns.Question, a ask, cat *health.Catalog, depth int) result {
	name := r.trimDomain(strings.ToLower(dns.Fqdn(q.Name)))
	var buf [8]string
	kind, parts, suffix := parseName(splitLabels(name, buf[:0]), q.Qtype)
	if kind == "" || len(parts) == 0 {
		return result{out: nameError}
	}
	switch kind {
	case "service":
		loc, ok := parseLocality(suffix)
		if !ok || !loc.local(cat) {
			return result{out: nameError}
		}
		service, tag := serviceTag(parts)
		return r.service(q, a, cat, service, tag, depth)
	case "connect", "ingress":
		// The view holds no mesh proxies or ingress gateways, and Consul
		// answers a service without them NXDOMAIN.
		return result{out: nameError}
	case "virtual":
		if _, ok := parseLocality(suffix); !ok {
			return result{out: nameError}
		}
		// No virtual IPs are in the view: Consul answers an empty NOERROR.
		return result{out: found}
	case "node":
		// Other types get an empty NOERROR before the node is even looked up.
		switch q.Qtype {
		case dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeANY:
		default:
			if _, ok := parseLocality(suffix); !ok {
				return result{out: nameError}
			}
			return result{out: found}
		}
		loc, ok := parseLocality(suffix)
		if !ok || !loc.local(cat) {
			return result{out: nameError}
		}
		return r.node(q, cat, strings.Join(parts, "."), depth)
	case "query":
		// No prepared queries are in the view; Consul answers a missing one
		// NXDOMAIN, with an ECS scope that is not global.
		if len(suffix) > 1 {
			return result{out: nameError}
		}
		return result{out: nameError, ecsLocal: true}
	case "addr":
		return r.addr(q, name, parts)
	}
	return result{out: nameError}
}

// splitLabels appends name's labels to out, as dns.SplitDomainName returns
// them; a plain name (the common case) is split without allocating more
// than out, others go to dns.SplitDomainName.
func splitLabels(name string, out []string) []string {
	name = strings.TrimSuffix(name, ".")
	if name == "" || name[0] == '.' || strings.Contains(name, "..") || strings.IndexByte(name, '\\') >= 0 {
		return dns.SplitDomainName(name)
	}
	for {
		i := strings.IndexByte(name, '.')
		if i < 0 {
			return append(out, name)
		}
		out = append(out, name[:i])
		name = name[i+1:]
	}
}

// parseName splits a name's labels (domain trimmed) at the rightmost
// keyword, which decides the kind; for SRV a label starting with "_" before
// any keyword makes an RFC 2782 service name. kind is "" when none is found.
func parseName(labels []string, qtype uint16) (kind string, parts, suffix []string) {
	for i := len(labels) - 1; i >= 0; i-- {
		switch labels[i] {
		case "service", "connect", "virtual", "ingress", "node", "query", "addr":
			return labels[i], labels[:i], labels[i+1:]
		default:
			if qtype == dns.TypeSRV && strings.HasPrefix(labels[i], "_") {
				return "service", labels[:i+1], labels[i+1:]
			}
		}
	}
	return "", nil, nil
}

// serviceTag reads the service and tag from the labels before "service".
func serviceTag(parts []string) (service, tag string) {
	service, tag = parts[len(parts)-1], strings.Join(parts[:len(parts)-1], ".")
	if len(parts) == 2 && strings.HasPrefix(parts[0], "_") && strings.HasPrefix(parts[1], "_") {
		service, tag = parts[0][1:], parts[1][1:]
		if tag == "tcp" {
			tag = "" // _svc._tcp asks for every instance
		}
	}
	return service, tag
}

// addr answers <hex>.addr.<anything>: eight hex digits are an IPv4 address,
// thirty-two an IPv6 one. A question of another type gets the record in the
// additional section, as Consul does.
func (r *Resolver) addr(q dns.Question, name string, parts []string) result {
	if len(parts) != 1 {
		return result{out: nameError}
	}
	ip, err := hex.DecodeString(parts[0])
	if err != nil {
		return result{out: nameError}
	}
	owner := name + r.responseDomain(q.Name)
	hdr := dns.RR_Header{Name: owner, Class: dns.ClassINET, Ttl: ttl(r.cfg.NodeTTL)}
	var rr dns.RR
	var want uint16
	switch len(ip) {
	case 4:
		hdr.Rrtype, want = dns.TypeA, dns.TypeA
		rr = &dns.A{Hdr: hdr, A: ip}
	case 16:
		hdr.Rrtype, want = dns.TypeAAAA, dns.TypeAAAA
		rr = &dns.AAAA{Hdr: hdr, AAAA: ip}
	default:
		return result{out: nameError}
	}
	if q.Qtype == want || q.Qtype == dns.TypeANY {
		return result{answer: []dns.RR{rr}}
	}
	return result{extra: []dns.RR{rr}}
}

// node answers <node>.node: its address, and its meta as TXT (in the answer
// for TXT and ANY, else in the additional section).
func (r *Resolver) node(q dns.Question, cat *health.Catalog, name string, depth int) result {
	n := cat.Nodes[name]
	if n == nil {
		return result{out: nameError}
	}
	var res result
	if q.Qtype != dns.TypeTXT {
		res.answer = r.nodeRecords(n, q.Qtype, q.Name, cat, depth)
	}
	meta := metaTXT(q.Name, n, ttl(r.cfg.NodeTTL))
	if q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY {
		res.answer = append(res.answer, meta...)
	} else {
		res.extra = append(res.extra, meta...)
	}
	return res
}

// service answers [tag.]svc.service and its RFC 2782 forms.
func (r *Resolver) service(q dns.Question, a ask, cat *health.Catalog, service, tag string, depth int) result {
	in := r.healthy(cat.Services[service], tag)
	if len(in) == 0 {
		return result{out: nameError}
	}
	d := r.serviceTTL(service)
	ord := r.order.Order(OrderQuery{
		Service: service, Tag: strings.ToLower(tag), Qtype: q.Qtype,
		Client: a.client, Room: a.room, TTL: d, Catalog: cat,
	}, in)
	s := svcQuery{q: q, edns: a.edns, cat: cat, ttl: ttl(d), depth: depth}
	var res result
	if q.Qtype == dns.TypeSRV {
		res.answer, res.extra = r.srvRecords(s, ord)
	} else {
		res.answer = r.addressRecords(s, ord.In)
	}
	if len(res.answer) == 0 {
		res.out = noData
	}
	return res
}
